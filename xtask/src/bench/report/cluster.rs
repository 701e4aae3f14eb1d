//! The cluster scenario's summary: the publish path on 1, 2 and 3 primaries, and the
//! fan-out on a standalone Redis against a 3-primary cluster.

use std::path::Path;

use roomcast_loadtest::report::Report;
use serde::Serialize;

use super::{load, CpuFile, Ordered};
use crate::kit::Result;

/// A `publish_path` run on a cluster of `primaries`, with the CPU Redis spent on it.
pub(crate) fn cluster_publish(
    run: &serde_json::Value,
    primaries: u32,
    redis_ticks: u64,
    clk: f64,
) -> serde_json::Value {
    let mut run = run.clone();
    let seconds = redis_ticks as f64 / clk;
    let publishes = run["publishes"].as_f64().unwrap_or(0.0).max(1.0);
    run["primaries"] = primaries.into();
    run["redis_cpu_s"] = seconds.into();
    run["redis_cpu_us_per_publish"] = (seconds * 1e6 / publishes).into();
    run
}

/// One placement of the cluster scenario's fan-out.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterFanout {
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
    duplicated_or_reordered: u64,
    server_cpu_us_per_delivery: f64,
    redis_cpu_us_per_delivery: f64,
}

/// `cluster.json`: the publish path on 1, 2 and 3 primaries, and the fan-out on a
/// standalone Redis against a 3-primary cluster.
#[derive(Debug, Serialize)]
pub(crate) struct Cluster {
    scenario: &'static str,
    publish_path: Vec<serde_json::Value>,
    fanout: Ordered<ClusterFanout>,
}

pub(crate) fn cluster(work: &Path, out: &Path) -> Result<Cluster> {
    let publish_path = (1..=3)
        .map(|n| load(&work.join(format!("cluster-publish-{n}.json"))))
        .collect::<Result<Vec<_>>>()?;
    let mut fanout = Vec::new();
    for label in ["standalone", "cluster3"] {
        let path = out.join(format!("cluster-fanout-{label}.json"));
        let r: Report = load(&path)?;
        let c = CpuFile::read(&path)?;
        let per = |ticks: u64| c.seconds(ticks) * 1e6 / r.delivered.max(1) as f64;
        fanout.push((
            label.to_string(),
            ClusterFanout {
                deliveries_per_s: r.deliveries_per_s,
                p50_ms: r.latency.p50_ms,
                p99_ms: r.latency.p99_ms,
                lost: r.lost,
                duplicated_or_reordered: r.duplicated_or_reordered,
                server_cpu_us_per_delivery: per(c.server_ticks),
                redis_cpu_us_per_delivery: per(c.redis_ticks),
            },
        ));
    }
    Ok(Cluster {
        scenario: "cluster",
        publish_path,
        fanout: Ordered(fanout),
    })
}
