//! `make chaos` (`cargo xtask chaos`): the fault scenarios of BENCHMARKS.md's Reliability
//! section. Each starts private processes through the test kit (a redis-server, three
//! gateways, sometimes the fault proxy in front of Redis), runs the load generator's
//! reconnecting clients at a steady load, injects one fault at a fixed time after
//! publishing starts, and judges the load generator's acked-vs-delivered accounting
//! against what the scenario expects ([`verdict`]). Each report is written back with a
//! `chaos` section; `summary.md` tabulates every judged report in the output directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use roomcast_loadtest::report::Report;
use serde::{Deserialize, Serialize};
use testkit::{Gateway, Proxy, Server};

use crate::kit::{self, gateway_env, log, Clock, Load, Profile, Result, Workspace, GATEWAY_READY};
use crate::report::grouped;

/// The knobs of `make chaos`, each also read from the environment it documents.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenarios to run, in order (none, or `all`: every one).
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Sessions of the load.
    #[arg(long, env = "CHAOS_SESSIONS", default_value_t = 200)]
    sessions: usize,
    /// Displays per session.
    #[arg(long, env = "CHAOS_DISPLAYS", default_value_t = 10)]
    displays: usize,
    /// Messages per second per session.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 20.0)]
    rate: f64,
    /// Seconds of publishing (the latency scenario publishes 60 s past its fault).
    #[arg(long, env = "CHAOS_PUBLISH", default_value_t = 60)]
    publish: u64,
    /// Seconds after publishing starts at which the fault comes.
    #[arg(long, env = "CHAOS_FAULT_AT", default_value_t = 20)]
    fault_at: u64,
    /// Where reports and the summary go (relative to the workspace).
    #[arg(long, env = "CHAOS_OUT", default_value = "bench/chaos")]
    out: PathBuf,
}

const SECRET: &str = "chaos-secret-0123456789abcdef";

/// The scenarios, in the order of the summary table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// SIGKILL one of three gateways.
    Kill,
    /// SIGTERM (drain) one of three gateways.
    Term,
    /// `CLIENT KILL TYPE pubsub` every 2 s for 30 s.
    Pubsub,
    /// Redis crashes and restarts; AOF with fsync always.
    RestartAlways,
    /// The same with fsync every second (loss allowed, and reported).
    RestartEverysec,
    /// The same without persistence: every display told of the reset.
    RestartNone,
    /// Redis 50 ms, then 500 ms away for 20 s each.
    Latency,
    /// One gateway cut off from Redis for 10 s.
    Partition,
    /// 20 % of displays leave and come back three times.
    Churn,
}

impl Scenario {
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }

    /// What the accounting must show after this fault.
    fn expectation(self) -> Expectation {
        match self {
            Scenario::RestartEverysec => Expectation::Report,
            Scenario::RestartNone => Expectation::Reset,
            _ => Expectation::Balanced,
        }
    }

    fn redis_args(self) -> &'static [&'static str] {
        match self {
            Scenario::RestartAlways => &["--appendonly", "yes", "--appendfsync", "always"],
            Scenario::RestartEverysec => &["--appendonly", "yes", "--appendfsync", "everysec"],
            _ => &["--appendonly", "no"],
        }
    }

    fn fault(self, at: u64) -> String {
        match self {
            Scenario::Kill => format!("SIGKILL one of 3 gateways at {at}s"),
            Scenario::Term => format!("SIGTERM (drain) one of 3 gateways at {at}s"),
            Scenario::Pubsub => format!("CLIENT KILL TYPE pubsub every 2 s for 30 s from {at}s"),
            Scenario::RestartAlways | Scenario::RestartEverysec | Scenario::RestartNone => {
                format!(
                    "Redis SIGKILL and restart at {at}s ({})",
                    self.redis_args().join(" ")
                )
            }
            Scenario::Latency => {
                format!("Redis behind a proxy: +50 ms for 20 s from {at}s, then +500 ms for 20 s")
            }
            Scenario::Partition => {
                format!("one of 3 gateways partitioned from Redis for 10 s at {at}s")
            }
            Scenario::Churn => {
                format!("20 % of displays leave and come back, at {at}s, +10 s and +20 s")
            }
        }
    }
}

/// What a scenario's report must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Expectation {
    /// Every acked message delivered to every display once, in order; no numbering
    /// reset, nothing beyond the history window.
    Balanced,
    /// The same, except that every display must have been told its session's numbering
    /// started over (Redis lost the keys).
    Reset,
    /// The accounting is reported, loss included (a durability setting that allows it);
    /// only a run without acks fails.
    Report,
}

/// The `chaos` section a judged report carries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Chaos {
    scenario: String,
    fault: String,
    expectation: Expectation,
    slow_consumer_closes: u64,
    passed: bool,
    problems: Vec<String>,
}

/// A load report with its verdict, as written to `<scenario>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Judged {
    #[serde(flatten)]
    report: Report,
    chaos: Chaos,
}

/// What is wrong with `r` for `expectation` (nothing: it passes).
pub(crate) fn verdict(r: &Report, expectation: Expectation) -> Vec<String> {
    let mut problems = Vec::new();
    if r.acked == 0 {
        problems.push("nothing was acked".to_string());
    }
    let mut check = |fields: &[(&str, u64)]| {
        for (field, n) in fields {
            if *n > 0 {
                problems.push(format!("{field} {n}"));
            }
        }
    };
    if expectation != Expectation::Report {
        check(&[
            ("lost", r.lost),
            ("duplicated", r.duplicated),
            ("out_of_order", r.out_of_order),
            ("unexplained", r.unexplained),
        ]);
    }
    if expectation == Expectation::Balanced {
        check(&[
            ("numbering_resets", r.numbering_resets),
            ("unrecoverable", r.unrecoverable),
            ("reset_lost", r.reset_lost),
        ]);
    }
    if expectation == Expectation::Reset {
        let displays = (r.sessions * r.displays_per_session) as u64;
        if r.numbering_resets < displays {
            problems.push(format!(
                "only {} of {displays} displays were told of the reset",
                r.numbering_resets
            ));
        }
    }
    problems
}

/// Runs the scenarios asked for; `Ok(false)` when one failed its verdict.
pub(crate) async fn run(args: Args) -> Result<bool> {
    let scenarios = pick(&args.scenarios)?;
    let ws = Workspace::new(Profile::Release);
    ws.build()?;
    let out = ws.root.join(&args.out);
    let work = ws.root.join(".run/chaos");
    for dir in [&out, &work] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut failed = Vec::new();
    for s in scenarios {
        log(&format!(
            "chaos: {} ({} sessions x {} displays, {} msg/s each, {}s)",
            s.name(),
            args.sessions,
            args.displays,
            args.rate,
            args.publish
        ));
        let judged = scenario(s, &args, &ws, &out, &work).await?;
        if !judged.chaos.passed {
            failed.push(s.name());
        }
    }
    let md = markdown(&out)?;
    std::fs::write(out.join("summary.md"), &md).map_err(|e| e.to_string())?;
    print!("{md}");
    if !failed.is_empty() {
        eprintln!("chaos: failed: {}", failed.join(" "));
    }
    Ok(failed.is_empty())
}

/// The scenarios named (none or `all`: every one, in order).
fn pick(names: &[String]) -> Result<Vec<Scenario>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(Scenario::value_variants().to_vec());
    }
    names
        .iter()
        .map(|n| {
            Scenario::from_str(n, false).map_err(|_| {
                let known: Vec<String> = Scenario::value_variants()
                    .iter()
                    .map(|s| s.name())
                    .collect();
                format!(
                    "no scenario {n:?}; the scenarios: {} (or all)",
                    known.join(" ")
                )
            })
        })
        .collect()
}

/// One scenario: its processes, its load, its fault, its verdict.
async fn scenario(
    s: Scenario,
    args: &Args,
    ws: &Workspace,
    out: &Path,
    work: &Path,
) -> Result<Judged> {
    let mut redis_args = s.redis_args().to_vec();
    redis_args.extend(["--maxclients", "20000"]);
    let mut redis = Server::start(&redis_args, false);
    let proxy = match s {
        Scenario::Latency | Scenario::Partition => Some(Proxy::start(redis.addr()).await),
        _ => None,
    };
    let direct = format!("redis://127.0.0.1:{}", redis.port);
    let mut gateways = Vec::new();
    for k in 0..3 {
        // Latency: every gateway behind the proxy; partition: the third one.
        let url = match (&proxy, s) {
            (Some(p), Scenario::Latency) => p.url(),
            (Some(p), Scenario::Partition) if k == 2 => p.url(),
            _ => direct.clone(),
        };
        let env = gateway_env(&url, SECRET, &[]);
        gateways.push(Gateway::launch(&ws.gateway(), &env, work, "chaos", GATEWAY_READY).await);
    }

    let name = s.name();
    let at = args.fault_at;
    let publish = if s == Scenario::Latency {
        at + 60
    } else {
        args.publish
    };
    let report_path = out.join(format!("{name}.json"));
    let mut load_args = kit::url_args(&gateways, true);
    load_args.extend(
        [
            "--secret",
            SECRET,
            "--sessions",
            &args.sessions.to_string(),
            "--displays",
            &args.displays.to_string(),
            "--rate",
            &args.rate.to_string(),
            "--payload",
            "64",
            "--duration",
            &format!("{publish}s"),
            "--drain",
            "10s",
            "--ramp",
            "5s",
            "--reconnect",
            "--prefix",
            &kit::unique(&format!("c{name}")),
            "--json",
            &report_path.display().to_string(),
        ]
        .map(String::from),
    );
    if s == Scenario::Churn {
        load_args.extend(
            [
                "--churn-at",
                &format!("{at}s,{}s,{}s", at + 10, at + 20),
                "--churn-fraction",
                "0.2",
            ]
            .map(String::from),
        );
    }
    let mut load = Load::start(ws, work, &name, &load_args, Duration::from_secs(120)).await?;
    let clock = Clock::start();
    let at = at as f64;
    clock.at(at).await;
    match (s, &proxy) {
        (Scenario::Kill, _) => gateways[2].kill(),
        (Scenario::Term, _) => gateways[2].terminate(),
        (Scenario::Pubsub, _) => {
            for t in (0..=28).step_by(2) {
                clock.at(at + f64::from(t)).await;
                redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
        }
        (Scenario::RestartAlways | Scenario::RestartEverysec | Scenario::RestartNone, _) => {
            // A crash, then a start with the same settings and files.
            tokio::task::block_in_place(|| redis.restart());
        }
        (Scenario::Latency, Some(p)) => {
            p.set_delay(Duration::from_millis(50));
            clock.at(at + 20.0).await;
            p.set_delay(Duration::from_millis(500));
            clock.at(at + 40.0).await;
            p.set_delay(Duration::ZERO);
        }
        (Scenario::Partition, Some(p)) => {
            p.blackhole();
            clock.at(at + 10.0).await;
            p.heal();
        }
        (Scenario::Churn, _) | (Scenario::Latency | Scenario::Partition, None) => {}
    }
    load.wait().await?;

    // What the gateways still running counted: a killed one answers nothing.
    let mut slow = 0.0;
    for g in &gateways {
        slow += kit::metric_sum(
            &g.get("/metrics").await.1,
            "roomcast_slow_consumer_disconnects_total",
        );
    }
    if let Ok(table) = std::fs::read_to_string(work.join(format!("{name}.table"))) {
        eprint!("{table}");
    }
    let report = kit::read_report(&report_path)?;
    let problems = verdict(&report, s.expectation());
    let judged = Judged {
        report,
        chaos: Chaos {
            scenario: name.clone(),
            fault: s.fault(args.fault_at),
            expectation: s.expectation(),
            slow_consumer_closes: slow as u64,
            passed: problems.is_empty(),
            problems,
        },
    };
    let text = serde_json::to_string_pretty(&judged).map_err(|e| e.to_string())?;
    std::fs::write(&report_path, text + "\n").map_err(|e| e.to_string())?;
    let status = if judged.chaos.passed {
        "passed".to_string()
    } else {
        format!("FAILED: {}", judged.chaos.problems.join("; "))
    };
    eprintln!("chaos {name}: {status}");
    Ok(judged)
}

/// The Reliability table of every judged report in `dir`.
pub(crate) fn markdown(dir: &Path) -> Result<String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut rows: Vec<Judged> = entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let text =
                std::fs::read_to_string(path.extension()?.eq("json").then_some(&path)?).ok()?;
            serde_json::from_str(&text).ok()
        })
        .collect();
    let order = |j: &Judged| {
        Scenario::from_str(&j.chaos.scenario, false).map_or(usize::MAX, |s| s as usize)
    };
    rows.sort_by_key(order);
    let mut out = vec![
        "| scenario | fault | acked | delivered | lost | dup / reordered | resets (seqs) | beyond window | reconnects | publish retries | caught up p50 / p99 / max | worst second p99 | max not ready | slow-consumer closes | verdict |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for j in &rows {
        let (r, c) = (&j.report, &j.chaos);
        let rec = &r.recovery;
        let caught = if rec.count > 0 {
            format!(
                "{:.0} / {:.0} / {:.0} ms",
                rec.p50_ms, rec.p99_ms, rec.max_ms
            )
        } else {
            "-".into()
        };
        let worst = r.worst_second.map_or("0 ms (t=- s)".into(), |w| {
            format!("{:.0} ms (t={} s)", w.p99_ms, w.t)
        });
        let not_ready = r
            .readiness
            .values()
            .map(|v| v.not_ready_s)
            .fold(0.0, f64::max);
        let verdict = if c.passed {
            "pass".to_string()
        } else {
            format!("FAIL: {}", c.problems.join("; "))
        };
        out.push(format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} ({}) | {} | {} | {} | {caught} | {worst} | {not_ready:.1} s | {} | {verdict} |",
            c.scenario,
            c.fault,
            grouped(r.acked as f64, 0),
            grouped(r.delivered as f64, 0),
            r.lost,
            r.duplicated,
            r.out_of_order,
            r.numbering_resets,
            r.reset_lost,
            r.unrecoverable,
            grouped(r.reconnects as f64, 0),
            r.publish_retries,
            c.slow_consumer_closes,
        ));
    }
    Ok(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committed chaos report (`bench/chaos/kill.json`), read with the load generator's
    /// own types: the judged format round-trips.
    fn committed(name: &str) -> Judged {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bench/chaos")
            .join(name);
        let text = std::fs::read_to_string(&path).expect("a committed chaos report");
        serde_json::from_str(&text).expect("a judged report")
    }

    #[test]
    fn each_expectation_fails_on_what_it_forbids() {
        let mut r = committed("kill.json").report;
        assert!(verdict(&r, Expectation::Balanced).is_empty());
        r.numbering_resets = 3;
        assert_eq!(
            verdict(&r, Expectation::Balanced),
            vec!["numbering_resets 3"]
        );
        let displays = (r.sessions * r.displays_per_session) as u64;
        assert_eq!(
            verdict(&r, Expectation::Reset),
            vec![format!(
                "only 3 of {displays} displays were told of the reset"
            )]
        );
        r.numbering_resets = displays;
        assert!(verdict(&r, Expectation::Reset).is_empty());
        r.lost = 5;
        assert_eq!(verdict(&r, Expectation::Reset), vec!["lost 5"]);
        assert!(
            verdict(&r, Expectation::Report).is_empty(),
            "loss is reported, not failed"
        );
        r.acked = 0;
        assert_eq!(verdict(&r, Expectation::Report), vec!["nothing was acked"]);
    }

    #[test]
    fn the_summary_lists_judged_reports_in_scenario_order() {
        let dir = testkit::scratch_dir("chaos-md");
        for name in ["partition.json", "kill.json"] {
            let j = committed(name);
            let text = serde_json::to_string(&j).expect("json");
            std::fs::write(dir.join(name), text).expect("write");
        }
        std::fs::write(dir.join("other.json"), "{\"not\": \"a report\"}").expect("write");
        let md = markdown(&dir).expect("markdown");
        let rows: Vec<&str> = md.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{md}");
        assert!(
            rows[0].starts_with("| kill |") && rows[1].starts_with("| partition |"),
            "{md}"
        );
        assert!(rows.iter().all(|r| r.ends_with("| pass |")), "{md}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn scenarios_are_picked_by_name_or_all() {
        assert_eq!(pick(&[]).expect("all").len(), 9);
        assert_eq!(pick(&["all".into()]).expect("all").len(), 9);
        assert_eq!(
            pick(&["restart-none".into(), "kill".into()]).expect("two"),
            vec![Scenario::RestartNone, Scenario::Kill]
        );
        let e = pick(&["kil".into()]).expect_err("unknown");
        assert!(e.contains("kill term pubsub restart-always"), "{e}");
    }
}
