//! The `loadtest` command line as a user meets it: usage errors exit 64 with a reason, and
//! a gateway that is not there is a counted error in the report, not a crash.
//!
//! These tests are also why `cargo test --workspace` builds the `loadtest` binary that
//! `gateway/tests/it/loadgen.rs` runs against real gateways: cargo builds a package's
//! binaries for its integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .env_remove("ROOMCAST_JWT_SECRET")
        .output()
        .expect("loadtest runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_exit_64_with_a_reason() {
    let url = "ws://127.0.0.1:9/ws";
    let cases: [(&[&str], &str); 5] = [
        (&["--url", url], "--secret"),
        (
            &["--url", url, "--no-auth", "--protocol", "xml"],
            "--protocol",
        ),
        (&["--url", url, "--no-auth", "--rate=-1"], "--rate"),
        (&["--url", url, "--no-auth", "--workers", "0"], "--workers"),
        (
            &["--url", url, "--protocol", "socketio", "--reconnect"],
            "--reconnect",
        ),
    ];
    for (args, reason) in cases {
        let out = loadtest(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(reason), "{args:?}: {}", stderr(&out));
    }
    // clap's own refusal (a missing --url) is a usage error too.
    assert_eq!(loadtest(&["--no-auth"]).status.code(), Some(2));
}

#[test]
fn help_names_every_knob_the_benchmarks_use() {
    let out = loadtest(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--url",
        "--sessions",
        "--displays",
        "--rate",
        "--payload",
        "--duration",
        "--ramp",
        "--concurrency",
        "--protocol",
        "--source",
        "--workers",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn an_unreachable_gateway_is_a_counted_error_in_the_report() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let report = std::env::temp_dir().join(format!("loadtest-cli-{}.json", std::process::id()));
    let out = loadtest(&[
        "--url",
        &url,
        "--no-auth",
        "--sessions",
        "2",
        "--displays",
        "1",
        "--duration",
        "0s",
        "--drain",
        "0s",
        "--progress",
        "false",
        "--json",
        report.to_str().expect("utf-8 temp path"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = std::fs::read_to_string(&report).expect("report written");
    let _ = std::fs::remove_file(&report);
    let r: serde_json::Value = serde_json::from_str(&json).expect("report is JSON");
    let refused = &r["errors"]["connect: Connection refused (os error 111)"];
    assert_eq!(refused, 4, "every client's failure counted by kind: {r}");
    assert_eq!(r["connect_join"]["count"], 0, "{r}");
    assert_eq!(r["delivered"], 0, "{r}");
    assert_eq!(
        r["lost"], 0,
        "nothing was published, so nothing was lost: {r}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("error         connect: Connection refused (os error 111): 4"),
        "{table}"
    );
}
