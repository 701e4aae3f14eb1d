//! The `xtask` binary as `make` runs it. Also what makes `cargo test --workspace` build
//! `target/debug/xtask` with the test run's features, so that the short soak of `make
//! test` runs without a build of its own.

use std::process::Command;

#[test]
fn an_unknown_scenario_is_refused_before_anything_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["chaos", "kil"])
        .output()
        .expect("run xtask");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no scenario \"kil\"") && err.contains("partition"),
        "{err}"
    );
}

#[test]
fn an_unknown_benchmark_is_refused_with_the_list_before_anything_builds() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["bench", "fanout", "fanot"])
        .output()
        .expect("run xtask");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no scenario \"fanot\"") && err.contains("small budget"),
        "{err}"
    );
}
