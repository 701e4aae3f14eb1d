//! The publish path against Redis alone (sections 5 and "Durable mode" of BENCHMARKS.md)
//! and the in-process hot path: the gateway's `publish_path` and `fanout` benches, and
//! redis-benchmark running the same script, as the ceiling.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use testkit::Server;

use super::{log, Bench};
use crate::kit::{RedisReader, Result};

/// `publish-path`: `Store::publish` (the `publish_path` bench: fred, EVALSHA publish.lua,
/// 64 in flight), then redis-benchmark running the same script without and with
/// pipelining (16 deep: what Redis itself can take). `bench/publish-path.json`.
pub(crate) async fn publish_path(b: &Bench) -> Result<()> {
    const CONCURRENCY: &str = "64";
    let redis = b.redis();
    log(&format!(
        "publish path: Store::publish (fred, EVALSHA publish.lua), {CONCURRENCY} in flight"
    ));
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let ours = b.cargo_bench(
        "publish_path",
        &[url, "10".into(), CONCURRENCY.into(), "100".into()],
    )?;
    eprint!("{ours}");
    let ours: Value =
        serde_json::from_str(&ours).map_err(|e| format!("publish_path printed no JSON: {e}"))?;
    // What the gateway loads: the webhook events prelude in front of publish.lua.
    let script = ["redis/events.lua", "redis/publish.lua"]
        .iter()
        .map(|f| std::fs::read_to_string(b.ws.root.join(f)).map_err(|e| format!("{f}: {e}")))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let reader = RedisReader::connect(redis.port).await?;
    let sha = reader.script_load(&script).await?;
    let mut rps = Vec::new();
    for depth in ["1", "16"] {
        log(&format!(
            "publish path ceiling: redis-benchmark EVALSHA publish.lua, {CONCURRENCY} clients, pipeline {depth}"
        ));
        let csv = redis_benchmark(redis.port, CONCURRENCY, depth, &sha)?;
        eprint!("{csv}");
        std::fs::write(b.work.join(format!("redis-benchmark-P{depth}.csv")), &csv)
            .map_err(|e| e.to_string())?;
        rps.push(requests_per_s(&csv));
    }
    let report = publish_path_report(&ours, rps[0], rps[1]);
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    eprint!("{text}");
    b.write("publish-path.json", &text)
}

/// redis-benchmark's CSV for `EVALSHA sha` with publish.lua's keys and arguments: an
/// entry tail of the size the gateway sends for a 64-byte payload (the script only
/// concatenates it), webhooks off, no idempotency key. With an argument missing the
/// script would fail half-way, and redis-benchmark counts errors as requests.
fn redis_benchmark(port: u16, clients: &str, depth: &str, sha: &str) -> Result<String> {
    let now = gateway::util::now_ms();
    let key = |k: &str| format!("rc:{{s:rb-__rand_int__}}:{k}");
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            clients,
            "-n",
            "400000",
            "-r",
            "100",
        ])
        .args(["-P", depth, "--csv", "EVALSHA", sha, "6"])
        .args([
            key("seq"),
            key("hist"),
            key("meta"),
            key("ch"),
            key("ev"),
            key("idem:"),
        ])
        .args([
            "x".repeat(120),
            "100".into(),
            "86400000".into(),
            now.to_string(),
            String::new(),
        ])
        .args([
            (now + 86_400_000).to_string(),
            "3600000".into(),
            "rb-id".into(),
            String::new(),
            String::new(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// The requests per second of redis-benchmark's `--csv` output (its first data row).
fn requests_per_s(csv: &str) -> Option<f64> {
    csv.lines()
        .map(|l| {
            l.split(',')
                .map(|f| f.trim_matches('"'))
                .collect::<Vec<_>>()
        })
        .find(|row| row.len() > 1 && row[0] != "test")
        .and_then(|row| row[1].parse().ok())
}

/// `bench/publish-path.json`.
#[derive(Debug, Serialize)]
struct PublishPath {
    scenario: &'static str,
    gateway_store_publish_per_s: i64,
    gateway_failed: Value,
    redis_benchmark_per_s: Option<i64>,
    redis_benchmark_pipelined_16_per_s: Option<i64>,
    ceiling_per_s: Option<i64>,
    ratio_to_ceiling: Option<f64>,
    concurrency: Value,
    sessions: Value,
    redis_pool: Value,
}

/// `ours` is what the `publish_path` bench printed.
fn publish_path_report(ours: &Value, plain: Option<f64>, pipelined: Option<f64>) -> PublishPath {
    let per_s = ours["publishes_per_s"].as_f64().unwrap_or(0.0);
    let ceiling = plain.into_iter().chain(pipelined).reduce(f64::max);
    PublishPath {
        scenario: "publish-path",
        gateway_store_publish_per_s: per_s.round() as i64,
        gateway_failed: ours["failed"].clone(),
        redis_benchmark_per_s: plain.map(|v| v.round() as i64),
        redis_benchmark_pipelined_16_per_s: pipelined.map(|v| v.round() as i64),
        ceiling_per_s: ceiling.map(|v| v.round() as i64),
        ratio_to_ceiling: ceiling.map(|c| (per_s / c * 1000.0).round() / 1000.0),
        concurrency: ours["concurrency"].clone(),
        sessions: ours["sessions"].clone(),
        redis_pool: ours["redis_pool"].clone(),
    }
}

/// One concurrency of the durable scenario: without and with the WAIT.
#[derive(Debug, Serialize)]
struct Durability {
    publishes_per_s: [Value; 2],
    mean_ms: [Value; 2],
    throughput_ratio: f64,
}

impl Durability {
    fn of(off: &Value, on: &Value) -> Durability {
        let per_s = |r: &Value| r["publishes_per_s"].as_f64().unwrap_or(0.0);
        Durability {
            publishes_per_s: [
                off["publishes_per_s"].clone(),
                on["publishes_per_s"].clone(),
            ],
            mean_ms: [off["mean_ms"].clone(), on["mean_ms"].clone()],
            throughput_ratio: per_s(on) / per_s(off),
        }
    }
}

/// `bench/durable.json`.
#[derive(Debug, Serialize)]
struct Durable {
    scenario: &'static str,
    /// What the `publish_path` bench printed, per run.
    runs: Vec<Value>,
    concurrency_1: Durability,
    concurrency_64: Durability,
}

/// `durable`: what a WAIT for one replica costs the publish path, at 1 and 64 in
/// flight (the `publish_path` bench with `ROOMCAST_REDIS_WAIT_REPLICAS` 0 and 1).
/// `bench/durable.json`.
pub(crate) async fn durable(b: &Bench) -> Result<()> {
    let primary = b.redis();
    let port = primary.port.to_string();
    let replica = Server::start(&["--replicaof", "127.0.0.1", &port], false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !replica
        .cmd(&["INFO", "replication"])
        .is_some_and(|i| i.contains("master_link_status:up"))
    {
        if std::time::Instant::now() > deadline {
            return Err("durable: the replica did not sync within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("redis://127.0.0.1:{port}");
    let mut runs = Vec::new();
    for concurrency in ["1", "64"] {
        let mut pair = Vec::new();
        for wait in ["0", "1"] {
            log(&format!(
                "durable: Store::publish, WAIT_REPLICAS={wait}, {concurrency} in flight"
            ));
            let args = [
                url.clone(),
                "10".into(),
                concurrency.into(),
                "100".into(),
                wait.into(),
            ];
            let out = b.cargo_bench("publish_path", &args)?;
            eprint!("{out}");
            pair.push(
                serde_json::from_str::<Value>(&out)
                    .map_err(|e| format!("publish_path printed no JSON: {e}"))?,
            );
        }
        runs.push((concurrency, pair));
    }
    let (one, many) = (&runs[0].1, &runs[1].1);
    let report = Durable {
        scenario: "durable",
        concurrency_1: Durability::of(&one[0], &one[1]),
        concurrency_64: Durability::of(&many[0], &many[1]),
        runs: runs.iter().flat_map(|(_, pair)| pair.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    eprint!("{text}");
    b.write("durable.json", &text)
}

/// `micro`: the criterion benches of the encode and fan-out hot path, in process.
pub(crate) fn micro(b: &Bench) -> Result<()> {
    log("cargo bench: encode and fan-out hot path");
    let out = b.cargo_bench("fanout", &[])?;
    eprint!("{out}");
    std::fs::write(b.work.join("criterion.txt"), out).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_read_from_redis_benchmarks_first_data_row() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"EVALSHA abc\",\"43099.14\",\"1.4\"\n";
        assert_eq!(requests_per_s(csv), Some(43099.14));
        assert_eq!(requests_per_s("\"test\",\"rps\"\n"), None);
    }

    #[test]
    fn the_ceiling_is_the_faster_of_the_two_benchmarks() {
        let ours = serde_json::json!({"publishes_per_s": 59725.4, "failed": 0, "concurrency": 64, "sessions": 100, "redis_pool": 4});
        let r = publish_path_report(&ours, Some(43099.0), Some(65242.0));
        assert_eq!(r.ceiling_per_s, Some(65242));
        assert_eq!(r.ratio_to_ceiling, Some(0.915));
        let none = publish_path_report(&ours, None, None);
        assert_eq!(none.ratio_to_ceiling, None);
    }
}
