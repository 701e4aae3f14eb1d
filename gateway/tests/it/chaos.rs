//! The short forms of `make chaos` (`cargo xtask chaos`), in every `make test`: faults
//! injected under steady load from the load generator's reconnecting clients, whose
//! accounting must balance: every acked message delivered to every display once and in
//! order, across the fault (`--fail-on-loss` makes the generator exit 3 otherwise).
//!
//! Each test starts its own Redis and gateways, runs `loadtest --reconnect` for about a
//! minute, injects its fault once messages flow, and reads the JSON report.

use std::time::Duration;

use serde_json::Value;
use testkit::*;

const SESSIONS: usize = 24;
const DISPLAYS: usize = 5;
/// Publishing time; the fault comes once messages flow (a few seconds in).
const PUBLISH: &str = "60s";

/// Gateway settings for a load generator: every client comes from 127.0.0.1.
const LOAD_ENV: &[(&str, &str)] = &[
    ("ROOMCAST_MAX_PENDING_PER_IP", "0"),
    ("ROOMCAST_LOG", "info"),
];

/// A running load generator and where its report will be.
struct Load {
    child: tokio::process::Child,
    report: std::path::PathBuf,
}

impl Load {
    /// `loadtest --reconnect --fail-on-loss` over `gateways`, watching their readiness.
    fn start(name: &str, gateways: &[&Gateway]) -> Load {
        let report =
            std::env::temp_dir().join(format!("roomcast-chaos-{name}-{}.json", std::process::id()));
        let mut cmd = tokio::process::Command::new(loadtest_bin());
        for g in gateways {
            cmd.args(["--url", &g.ws_url()]);
            cmd.args(["--ready-url", &format!("http://{}/health/ready", g.addr)]);
        }
        cmd.args(["--sessions", &SESSIONS.to_string()])
            .args(["--displays", &DISPLAYS.to_string()])
            .args(["--rate", "10", "--duration", PUBLISH, "--drain", "5s"])
            .args(["--reconnect", "--fail-on-loss", "--progress", "false"])
            .args(["--prefix", name, "--json"])
            .arg(&report)
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("loadtest starts");
        Load { child, report }
    }

    /// Waits for the run to end; its report (the test fails on a non-zero exit).
    async fn report(self) -> Value {
        let out = tokio::time::timeout(Duration::from_secs(150), self.child.wait_with_output())
            .await
            .expect("loadtest finished within 150 s")
            .expect("loadtest ran");
        let text = std::fs::read(&self.report).unwrap_or_default();
        let _ = std::fs::remove_file(&self.report);
        let r: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        // The figures, for the test log (`--nocapture`).
        eprintln!(
            "chaos: acked {} delivered {} lost {} duplicated {} reconnects {} retries {} caught up p50/p99/max {}/{}/{} ms worst second {} readiness {} errors {}",
            r["acked"], r["delivered"], r["lost"], r["duplicated"], r["reconnects"],
            r["publish_retries"], r["recovery"]["p50_ms"], r["recovery"]["p99_ms"],
            r["recovery"]["max_ms"], r["worst_second"], r["readiness"], r["errors"]
        );
        assert!(
            out.status.success(),
            "loadtest exited {:?}: {}\n{}\nreport: {r}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }
}

/// Waits until the gateways together have delivered `n` messages: the load is steady.
async fn flowing(gateways: &[&Gateway], n: f64) {
    wait_for(Duration::from_secs(30), "messages flowing", || async {
        let mut total = 0.0;
        for g in gateways {
            total += g.metric("roomcast_messages_delivered_total", "").await;
        }
        total >= n
    })
    .await;
}

/// The accounting every scenario must balance.
fn assert_balanced(r: &Value) {
    for field in ["lost", "duplicated", "out_of_order", "unexplained"] {
        assert_eq!(r[field], 0, "{field}: {r}");
    }
    // Nothing here loses Redis' keys or outruns the history window.
    assert_eq!(r["numbering_resets"], 0, "{r}");
    assert_eq!(r["unrecoverable"], 0, "{r}");
    assert_eq!(r["reset_lost"], 0, "{r}");
    let acked = r["acked"].as_u64().expect("acked");
    assert!(acked >= (SESSIONS * 100) as u64, "publishing went on: {r}");
    assert!(
        r["delivered"].as_u64().expect("delivered") >= acked * DISPLAYS as u64,
        "every display got at least every acked message: {r}"
    );
}

fn start_gateways(redis: &Redis, n: usize) -> Vec<Gateway> {
    (0..n)
        .map(|_| Gateway::start(&redis.url(), LOAD_ENV))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_of_three_gateways_loses_no_acked_message() {
    let redis = Redis::start();
    let mut gws = start_gateways(&redis, 3);
    for g in &gws {
        g.wait_ready().await;
    }
    let all: Vec<&Gateway> = gws.iter().collect();
    let load = Load::start("kill", &all);
    flowing(&all, 15_000.0).await;
    let killed = format!("http://{}/health/ready", gws[2].addr);
    gws[2].kill();
    let r = load.report().await;
    assert_balanced(&r);
    // A third of the clients were on the killed gateway, and came back elsewhere.
    let reconnects = r["reconnects"].as_u64().expect("reconnects");
    assert!(
        reconnects >= (SESSIONS * (DISPLAYS + 1) / 3) as u64,
        "{reconnects}: {r}"
    );
    assert!(r["recovery"]["count"].as_u64() > Some(0), "{r}");
    assert!(
        r["readiness"][&killed]["not_ready_s"].as_f64() > Some(1.0),
        "the killed gateway's readiness was watched: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_gateway_moves_its_clients_without_loss() {
    let redis = Redis::start();
    let mut gws = start_gateways(&redis, 3);
    for g in &gws {
        g.wait_ready().await;
    }
    let all: Vec<&Gateway> = gws.iter().collect();
    let load = Load::start("term", &all);
    flowing(&all, 15_000.0).await;
    let drained = format!("http://{}/health/ready", gws[2].addr);
    gws[2].terminate();
    let code = tokio::task::block_in_place(|| gws[2].wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "the drained gateway exits cleanly");
    let r = load.report().await;
    assert_balanced(&r);
    assert!(
        r["reconnects"].as_u64() >= Some((SESSIONS * (DISPLAYS + 1) / 3) as u64),
        "{r}"
    );
    assert!(
        r["readiness"][&drained]["dips"].as_u64() >= Some(1),
        "readiness went 503 first: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connections_killed_repeatedly_lose_and_reorder_nothing() {
    let redis = Redis::start();
    let gws = start_gateways(&redis, 2);
    for g in &gws {
        g.wait_ready().await;
    }
    let all: Vec<&Gateway> = gws.iter().collect();
    let load = Load::start("pubsub", &all);
    flowing(&all, 15_000.0).await;
    // Every 3 s for about 30 s, on every node.
    let mut every = tokio::time::interval(Duration::from_secs(3));
    for _ in 0..10 {
        every.tick().await;
        let killed =
            tokio::task::block_in_place(|| redis.cmd_all(&["CLIENT", "KILL", "TYPE", "pubsub"]));
        assert!(killed.iter().all(Option::is_some), "{killed:?}");
    }
    let r = load.report().await;
    assert_balanced(&r);
}
