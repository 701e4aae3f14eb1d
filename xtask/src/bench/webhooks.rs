//! `webhooks` (section 9 of BENCHMARKS.md): `message.published` at 1k and 10k events/s
//! (10 messages/s per session, 100 and 1,000 sessions, one display each) into
//! `webhook-sink` on loopback: events delivered per second and their lag. Each rate runs
//! twice, webhooks off then on, so one run gives what recording costs a publish
//! (publish→ack, Redis and gateway CPU per publish). Then the join hook: 1,000 joins with
//! a hook answering in 1 ms, against none. `bench/webhooks.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use roomcast_loadtest::report::{Lag, Report, SinkReport};
use serde::Serialize;
use testkit::KilledOnDrop;

use super::{clk_tck, cpu_ticks, log, print_table, Bench};
use crate::kit::{self, Load, Result};

/// The secret the gateways sign with (standard-webhooks form).
const WH_SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ==";

/// A running `webhook-sink` and where its report will be.
struct Sink {
    process: KilledOnDrop,
    url: String,
    report: PathBuf,
}

impl Sink {
    async fn start(b: &Bench, report: PathBuf) -> Result<Sink> {
        let addr_file = b.work.join("sink-addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::File::create(b.work.join("sink.log")).map_err(|e| e.to_string())?;
        let child = Command::new(b.ws.bin("webhook-sink"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(["--idle", "3s", "--json"])
            .arg(&report)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start webhook-sink: {e}"))?;
        let process = KilledOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read_to_string(&addr_file) {
                Ok(addr) if !addr.is_empty() => {
                    return Ok(Sink {
                        process,
                        url: format!("http://{addr}"),
                        report,
                    })
                }
                _ if Instant::now() > deadline => return Err("webhook-sink did not start".into()),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits for the sink to stop by itself (after its idle time), up to `within`.
    async fn finished(mut self, within: Duration) -> Result<SinkReport> {
        let deadline = Instant::now() + within;
        while matches!(self.process.0.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                return Err("webhook-sink did not drain in time".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_sink(&self.report)
    }

    /// Stops the sink (SIGTERM: it writes its report) and waits for it.
    async fn stop(self) -> Result<SinkReport> {
        let pid = self.process.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.finished(Duration::from_secs(10)).await
    }
}

fn read_sink(path: &Path) -> Result<SinkReport> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a sink report: {e}", path.display()))
}

/// What one publishing run cost, per publish.
#[derive(Debug, Serialize)]
struct PublishRow {
    published: u64,
    acked: u64,
    publish_per_s: f64,
    ack_ms: Quantiles,
    redis_cpu_us_per_publish: f64,
    gateway_cpu_us_per_publish: f64,
}

#[derive(Debug, Serialize)]
struct Quantiles {
    p50: f64,
    p99: f64,
}

fn publish_row(lt: &Report, redis_ticks: u64, gateway_ticks: u64, clk: f64) -> PublishRow {
    let published = lt.published.max(1) as f64;
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    PublishRow {
        published: lt.published,
        acked: lt.acked,
        publish_per_s: round1(lt.published as f64 / lt.publish_s.max(0.001)),
        ack_ms: Quantiles {
            p50: lt.ack.p50_ms,
            p99: lt.ack.p99_ms,
        },
        redis_cpu_us_per_publish: round1(redis_ticks as f64 / clk / published * 1e6),
        gateway_cpu_us_per_publish: round1(gateway_ticks as f64 / clk / published * 1e6),
    }
}

/// One offered rate: what the sink got, and the publish path without and with webhooks.
#[derive(Debug, Serialize)]
struct Rate {
    offered_events_per_s: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    events_per_s: f64,
    lag_ms: Lag,
    publish_off: PublishRow,
    publish_on: PublishRow,
}

/// Joins without and with the hook.
#[derive(Debug, Serialize)]
struct Joins {
    joins: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `bench/webhooks.json`.
#[derive(Debug, Serialize)]
struct Webhooks {
    scenario: &'static str,
    rates: BTreeMap<String, Rate>,
    join_hook_1ms: BTreeMap<String, Joins>,
}

pub(crate) async fn webhooks(b: &Bench, duration: &str) -> Result<()> {
    let clk = clk_tck() as f64;
    let mut rates = BTreeMap::new();
    for target in [1000u64, 10_000] {
        let sessions = target / 10;
        let mut runs: BTreeMap<&str, PublishRow> = BTreeMap::new();
        let mut sink_report = None;
        for hooks in ["off", "on"] {
            let redis = b.redis();
            let sink = if hooks == "on" {
                Some(Sink::start(b, b.out.join(format!("webhooks-{target}-sink.json"))).await?)
            } else {
                None
            };
            let hook_url = sink
                .as_ref()
                .map(|s| format!("{}/hook", s.url))
                .unwrap_or_default();
            let env: Vec<(&str, &str)> = if sink.is_some() {
                vec![
                    ("ROOMCAST_WEBHOOK_URLS", hook_url.as_str()),
                    ("ROOMCAST_WEBHOOK_SECRETS", WH_SECRET),
                    ("ROOMCAST_WEBHOOK_EVENTS", "message.published"),
                    ("ROOMCAST_WEBHOOK_CONCURRENCY", "256"),
                ]
            } else {
                Vec::new()
            };
            let gateways = b.gateways(&redis, 2, &env).await;
            log(&format!(
                "webhooks {hooks}: {target} messages/s over {sessions} sessions for {duration}"
            ));
            let pids: Vec<u32> = gateways.iter().map(testkit::Gateway::pid).collect();
            let redis_pid = redis.pid().unwrap_or(0);
            let ticks = || {
                let g: u64 = pids.iter().map(|p| cpu_ticks(*p, false)).sum();
                (cpu_ticks(redis_pid, false), g)
            };
            let (r0, g0) = ticks();
            let report = b.out.join(format!("webhooks-{target}-{hooks}.json"));
            let mut args = kit::url_args(&gateways, false);
            args.extend(
                [
                    "--secret",
                    super::SECRET,
                    "--sessions",
                    &sessions.to_string(),
                    "--displays",
                    "1",
                    "--rate",
                    "10",
                    "--duration",
                    duration,
                    "--drain",
                    "2s",
                    "--prefix",
                    &format!("wh{hooks}"),
                    "--json",
                    &report.display().to_string(),
                ]
                .map(String::from),
            );
            let name = format!("webhooks-{target}-{hooks}");
            Load::spawn(&b.ws, &b.work, &name, &args, None)?
                .wait()
                .await?;
            print_table(&b.work, &name);
            // The same window for both runs (the load generator's, its 2 s drain
            // included): at 1k/s every delivery is done within it (the sink's lag says
            // so), at 10k/s not.
            let (r1, g1) = ticks();
            let lt = kit::read_report(&report)?;
            runs.insert(
                hooks,
                publish_row(&lt, r1.saturating_sub(r0), g1.saturating_sub(g0), clk),
            );
            if let Some(sink) = sink {
                sink_report = Some(sink.finished(Duration::from_secs(120)).await?);
            }
        }
        let sink = sink_report.ok_or("no sink report")?;
        let (Some(off), Some(on)) = (runs.remove("off"), runs.remove("on")) else {
            return Err("webhooks: a publishing run is missing".into());
        };
        rates.insert(
            target.to_string(),
            Rate {
                offered_events_per_s: target,
                delivered: sink.unique,
                duplicates: sink.duplicates,
                out_of_order: sink.out_of_order,
                events_per_s: (sink.events_per_s * 10.0).round() / 10.0,
                lag_ms: sink.lag_ms,
                publish_off: off,
                publish_on: on,
            },
        );
    }
    let mut join = BTreeMap::new();
    for hooks in ["off", "on"] {
        let redis = b.redis();
        let sink = if hooks == "on" {
            Some(Sink::start(b, b.out.join("webhooks-join-sink.json")).await?)
        } else {
            None
        };
        let hook_url = sink
            .as_ref()
            .map(|s| format!("{}/join", s.url))
            .unwrap_or_default();
        let env: Vec<(&str, &str)> = if sink.is_some() {
            vec![
                ("ROOMCAST_JOIN_HOOK_URL", hook_url.as_str()),
                ("ROOMCAST_WEBHOOK_SECRETS", WH_SECRET),
            ]
        } else {
            Vec::new()
        };
        let gateways = b.gateways(&redis, 1, &env).await;
        log(&format!("join hook {hooks}: 1,000 joins, 100 in flight"));
        let report = b.out.join(format!("webhooks-join-{hooks}.json"));
        let mut args = kit::url_args(&gateways, false);
        args.extend(
            [
                "--secret",
                super::SECRET,
                "--sessions",
                "500",
                "--displays",
                "1",
                "--rate",
                "0",
                "--duration",
                "1s",
                "--drain",
                "0s",
                "--concurrency",
                "100",
                "--prefix",
                &format!("jh{hooks}"),
                "--json",
                &report.display().to_string(),
            ]
            .map(String::from),
        );
        let name = format!("webhooks-join-{hooks}");
        Load::spawn(&b.ws, &b.work, &name, &args, None)?
            .wait()
            .await?;
        print_table(&b.work, &name);
        if let Some(sink) = sink {
            sink.stop().await?;
        }
        let lt = kit::read_report(&report)?;
        join.insert(
            hooks.to_string(),
            Joins {
                joins: lt.join.count,
                p50_ms: lt.join.p50_ms,
                p99_ms: lt.join.p99_ms,
            },
        );
    }
    let summary = Webhooks {
        scenario: "webhooks",
        rates,
        join_hook_1ms: join,
    };
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())? + "\n";
    eprint!("{text}");
    b.write("webhooks.json", &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bench")
            .join(name)
    }

    #[test]
    fn committed_reports_read_with_the_types_that_wrote_them() {
        let sink = read_sink(&committed("webhooks-1000-sink.json")).expect("a sink report");
        assert!(
            sink.unique > 0 && sink.lag_ms.max >= sink.lag_ms.p50,
            "{sink:?}"
        );
        let lt = kit::read_report(&committed("webhooks-1000-on.json")).expect("a load report");
        // 100 clock ticks a second: 1 s of Redis CPU over the run's publishes.
        let row = publish_row(&lt, 100, 200, 100.0);
        let per = |us: f64| (us / lt.published as f64 * 10.0).round() / 10.0;
        assert_eq!(row.redis_cpu_us_per_publish, per(1e6));
        assert_eq!(row.gateway_cpu_us_per_publish, per(2e6));
        assert_eq!(row.ack_ms.p99, lt.ack.p99_ms);
    }
}
