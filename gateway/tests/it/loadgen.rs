//! The load generator against real gateways: what `make bench` and BENCHMARKS.md rely on
//! (counts, loss detection, worker sharding) checked end to end on a small run.

use std::time::Duration;

use serde_json::Value;
use testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_workers_count_every_delivery_across_two_gateways() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let bin = loadtest_bin();
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build -p roomcast-loadtest)",
        bin.display()
    );
    let report =
        std::env::temp_dir().join(format!("roomcast-loadtest-{}.json", std::process::id()));
    let run = tokio::process::Command::new(&bin)
        .args(["--url", &a.ws_url(), "--url", &b.ws_url()])
        .args(["--sessions", "6", "--displays", "4", "--rate", "20"])
        .args(["--duration", "2s", "--drain", "2s", "--workers", "2"])
        .args(["--progress", "false", "--prefix", "itest"])
        .arg("--json")
        .arg(&report)
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadtest finished within 60 s")
        .expect("loadtest ran");
    assert!(
        out.status.success(),
        "loadtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&report).expect("report written"))
        .expect("report is JSON");
    let _ = std::fs::remove_file(&report);
    let published = r["published"].as_u64().expect("published");
    assert!(published >= 6 * 20, "publishers ran: {r}");
    assert_eq!(r["acked"].as_u64(), Some(published), "{r}");
    assert_eq!(r["expected"].as_u64(), Some(published * 4), "{r}");
    assert_eq!(
        r["delivered"], r["expected"],
        "every display got every message: {r}"
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["duplicated_or_reordered"], 0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["workers"], 2, "{r}");
    assert_eq!(
        r["connect_join"]["count"].as_u64(),
        Some(6 * 5),
        "both workers' clients are in the merged report: {r}"
    );
    for phase in ["connect", "join"] {
        assert_eq!(r[phase]["count"].as_u64(), Some(6 * 5), "{phase}: {r}");
    }
    assert_eq!(
        r["latency"]["count"].as_u64(),
        Some(published * 4),
        "a latency sample per delivery: {r}"
    );
    assert_eq!(
        r["ack"]["count"].as_u64(),
        Some(published),
        "a publish→ack sample per acked publish, from both workers: {r}"
    );
    assert!(r["ack"]["p50_ms"].as_f64() > Some(0.0), "{r}");
}
