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

/// `--placement`: `client` deals a session's controller and display out to different
/// gateways (the split case of BENCHMARKS.md "Small rooms"), `session` keeps every client
/// of a session on one gateway and deals out the sessions (the co-located case). Read
/// back from presence, which names each member's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_splits_or_colocates_a_sessions_clients() {
    const KEY: &str = "loadgen-placement-key-0123456789";
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", KEY)]);
    let b = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", KEY)]);
    a.wait_ready().await;
    b.wait_ready().await;
    for (placement, colocated) in [("client", false), ("session", true)] {
        let prefix = format!("place{placement}");
        let run = tokio::process::Command::new(loadtest_bin())
            .args(["--url", &a.ws_url(), "--url", &b.ws_url()])
            .args(["--sessions", "4", "--displays", "1", "--rate", "5"])
            .args(["--duration", "6s", "--drain", "1s", "--progress", "false"])
            .args(["--placement", placement, "--prefix", &prefix])
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .kill_on_drop(true)
            .output();
        let running = tokio::spawn(run);
        // Each session's two members, by node, once both have joined.
        let mut nodes_of = Vec::new();
        for s in 0..4 {
            let path = format!("/api/v1/sessions/{prefix}-{s}/presence/users");
            let deadline = std::time::Instant::now() + DEADLINE;
            let mut nodes: Vec<String> = loop {
                let r = call(a.addr, "GET", &path, Some(KEY), None).await;
                let nodes: Vec<String> = r.json()["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|m| m["node"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if nodes.len() == 2 {
                    break nodes;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{path}: both members never present ({})",
                    r.body
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            nodes.sort();
            nodes_of.push(nodes);
        }
        for nodes in &nodes_of {
            assert_eq!(nodes[0] == nodes[1], colocated, "{placement}: {nodes_of:?}");
        }
        let gateways: std::collections::HashSet<_> = nodes_of.iter().flatten().collect();
        assert_eq!(
            gateways.len(),
            2,
            "both gateways serve ({placement}): {nodes_of:?}"
        );
        let out = running.await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
