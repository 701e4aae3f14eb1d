//! `make bench` (`cargo xtask bench`): the benchmark scenarios of BENCHMARKS.md
//! ([`SCENARIOS`]), each against fresh private processes started through the test kit
//! (until 2026-12-07 `scripts/bench.sh`). Results go to `bench/` (`BENCH_OUT`), in the
//! formats the script wrote, and the knobs are the environment variables it read.
//! `simple.rs`, `publish.rs`, `silent.rs`, `webhooks.rs`, `lifecycle.rs`: the scenarios
//! of one kind each; `fanout.rs`: the fan-out family's machinery, `family.rs` its
//! scenarios, `report.rs` their summaries.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use testkit::{Gateway, KilledOnDrop, Server};

use crate::kit::{self, gateway_env, Load, Profile, Result, Workspace, GATEWAY_READY};

mod family;
mod fanout;
mod lifecycle;
mod publish;
mod report;
mod silent;
mod simple;
mod webhooks;

pub(crate) use report::{run as report, ReportCmd};
pub(crate) use silent::{flood, FloodArgs};

/// Every scenario, in the order `all` runs them (`profile` runs only by name).
pub(crate) const SCENARIOS: [&str; 17] = [
    "publish-path",
    "durable",
    "cluster",
    "fanout",
    "storm",
    "idle",
    "broadcast",
    "peer",
    "compare",
    "cost",
    "small",
    "budget",
    "micro",
    "lifecycle",
    "silent",
    "webhooks",
    "profile",
];

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenarios to run, in order (none, or `all`: every one; BENCHMARKS.md lists them).
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Where results go (relative to the workspace).
    #[arg(long, env = "BENCH_OUT", default_value = "bench")]
    out: PathBuf,
    /// Sessions of the lifecycle scenario.
    #[arg(long, env = "BENCH_LIFECYCLE_SESSIONS", default_value_t = 100_000)]
    lifecycle_sessions: u64,
    /// Clients of the connect storm.
    #[arg(long, env = "BENCH_STORM_CLIENTS", default_value_t = 10_000)]
    storm_clients: usize,
    /// The servers the broadcast scenario runs against (`roomcast`, `floor`).
    #[arg(
        long,
        env = "BENCH_BROADCAST_SERVERS",
        default_value = "roomcast floor"
    )]
    broadcast_servers: String,
    /// Publishing time of each webhook run.
    #[arg(long, env = "BENCH_WEBHOOK_DURATION", default_value = "10s")]
    webhook_duration: String,
}

const SECRET: &str = "bench-secret-0123456789abcdef";

/// Runs the scenarios asked for (none, or `all`: every one but `profile`), then prints
/// the table of what the results in the output directory say.
pub(crate) async fn run(args: Args) -> Result<bool> {
    let all = args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == "all");
    let picked: Vec<&str> = if all {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| *s != "profile")
            .collect()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = picked.iter().find(|s| !SCENARIOS.contains(s)) {
        return Err(format!(
            "no scenario {unknown:?}; the scenarios: {} (or all)",
            SCENARIOS.join(" ")
        ));
    }
    let ws = Workspace::new(Profile::Release);
    ws.build()?;
    let bench = Bench {
        out: ws.root.join(&args.out),
        work: ws.root.join(".run/bench"),
        ws,
    };
    for dir in [&bench.out, &bench.work] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let knobs = family::Knobs::from_env()?;
    for scenario in picked {
        match scenario {
            "publish-path" => publish::publish_path(&bench).await?,
            "durable" => publish::durable(&bench).await?,
            "storm" => simple::storm(&bench, args.storm_clients).await?,
            "broadcast" => {
                for server in args.broadcast_servers.split_whitespace() {
                    simple::broadcast(&bench, server).await?;
                }
            }
            "micro" => publish::micro(&bench)?,
            "silent" => silent::silent(&bench).await?,
            "webhooks" => webhooks::webhooks(&bench, &args.webhook_duration).await?,
            "lifecycle" => lifecycle::lifecycle(&bench, args.lifecycle_sessions).await?,
            "fanout" => family::fanout(&bench, &knobs).await?,
            "idle" => family::idle(&bench, &knobs).await?,
            "peer" => family::peer(&bench, &knobs).await?,
            "compare" => family::compare(&bench, &knobs).await?,
            "cost" => family::cost(&bench, &knobs).await?,
            "small" => family::small(&bench).await?,
            "budget" => family::budget(&bench).await?,
            "cluster" => family::cluster(&bench, &knobs).await?,
            _ => family::profile(&bench).await?,
        }
    }
    eprintln!("{}", report::table(&bench.out)?);
    Ok(true)
}

/// Where a benchmark runs: the workspace, its results and its scratch files.
#[derive(Clone)]
pub(crate) struct Bench {
    ws: Workspace,
    out: PathBuf,
    work: PathBuf,
}

impl Bench {
    /// A fresh Redis as the scripts start one (no persistence, 20,000 clients).
    fn redis(&self) -> Server {
        Server::start(&["--maxclients", "20000"], false)
    }

    /// A copy to move into a blocking task.
    fn shallow(&self) -> Bench {
        self.clone()
    }

    /// `n` gateways on `redis` with the load generator's settings plus `extra`.
    async fn gateways(&self, redis: &Server, n: usize, extra: &[(&str, &str)]) -> Vec<Gateway> {
        let url = format!("redis://127.0.0.1:{}", redis.port);
        self.gateways_on(&url, n, extra).await
    }

    /// `n` gateways on the Redis at `url` (a cluster's too).
    async fn gateways_on(&self, url: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Gateway> {
        let env = gateway_env(url, SECRET, extra);
        let mut gateways = Vec::new();
        for _ in 0..n {
            gateways.push(
                Gateway::launch(&self.ws.gateway(), &env, &self.work, "bench", GATEWAY_READY).await,
            );
        }
        gateways
    }

    /// The floor peer (`loadtest/peers/floor`): one process, as it has nothing to share.
    async fn floor(&self) -> Result<Peer> {
        self.peer("floor", std::process::Command::new(self.ws.bin("floor")))
            .await
    }

    /// A server that is not a gateway (the floor peer, a Socket.IO peer): `cmd` on a free
    /// port (`PORT`), its output in `<work>/<name>-<port>.log`, answering `/health`.
    async fn peer(&self, name: &str, mut cmd: std::process::Command) -> Result<Peer> {
        let port = testkit::free_port();
        let log = std::fs::File::create(self.work.join(format!("{name}-{port}.log")))
            .map_err(|e| e.to_string())?;
        let child = cmd
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the {name} peer: {e}"))?;
        let peer = Peer {
            process: KilledOnDrop(child),
            addr: ([127, 0, 0, 1], port).into(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while testkit::http_get(peer.addr, "/health").await.0 != 200 {
            if std::time::Instant::now() > deadline {
                return Err(format!("the {name} peer on {port} did not answer /health"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(peer)
    }

    /// `cargo bench` of the gateway's `bench` target (release), its stdout.
    fn cargo_bench(&self, bench: &str, args: &[String]) -> Result<String> {
        let out = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .current_dir(&self.ws.root)
            .args([
                "bench",
                "-q",
                "-p",
                "roomcast-gateway",
                "--bench",
                bench,
                "--",
            ])
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run cargo bench: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo bench --bench {bench} failed ({})",
                out.status
            ));
        }
        String::from_utf8(out.stdout).map_err(|e| e.to_string())
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// What the idle run reads of a server's `/health`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HealthField {
    Rss,
    Conns,
}

/// Resident memory or connections, from a gateway's `/health` or the Socket.IO peer's
/// (which answers its own shape).
pub(crate) async fn health_value(port: u16, field: HealthField) -> Result<u64> {
    let (status, body) = testkit::http_get(([127, 0, 0, 1], port).into(), "/health").await;
    let h: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("/health on {port} answered {status}: {e}"))?;
    let roomcast = h.get("checks").is_some();
    let v = match (field, roomcast) {
        (HealthField::Rss, true) => &h["checks"]["memory"]["rss_bytes"],
        (HealthField::Conns, true) => &h["checks"]["connections"]["count"],
        (HealthField::Rss, false) => &h["rss_bytes"],
        (HealthField::Conns, false) => &h["sockets"],
    };
    v.as_u64()
        .ok_or_else(|| format!("/health on {port} has no {field:?}"))
}

/// A server process other than a gateway (the floor peer).
struct Peer {
    process: KilledOnDrop,
    addr: std::net::SocketAddr,
}

/// User plus system CPU of `pid` so far, in clock ticks; with `children`, that of the
/// children it waited for too (a load generator's workers).
fn cpu_ticks(pid: u32, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the first, utime
    // the 12th, then stime, cutime, cstime.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(4)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let take = if children { 4 } else { 2 };
    fields.iter().take(take).sum()
}

/// Whether `pid` has exited and waits to be reaped.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Runs the load generator to its end and answers its CPU seconds, its workers' included
/// (read from the kernel's accounting of the exited process before it is reaped).
async fn load_with_cpu(load: &mut Load) -> Result<f64> {
    let pid = load.pid();
    while !is_zombie(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ticks = cpu_ticks(pid, true);
    load.wait().await?;
    Ok(ticks as f64 / clk_tck() as f64)
}

/// `<work>/<name>.table` (the load generator's table) to stderr, as the scripts printed it.
fn print_table(work: &Path, name: &str) {
    if let Ok(table) = std::fs::read_to_string(work.join(format!("{name}.table"))) {
        eprint!("{table}");
    }
}

/// The `--url` arguments for gateways (`/ws`) or a peer (its root).
fn ws_urls(addrs: &[std::net::SocketAddr], path: &str) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--url".to_string(), format!("ws://{a}{path}")])
        .collect()
}

pub(crate) use kit::log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_of_this_process_is_read_and_grows() {
        let pid = std::process::id();
        let before = cpu_ticks(pid, false);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while cpu_ticks(pid, false) == before && started.elapsed() < Duration::from_secs(10) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(cpu_ticks(pid, false) > before, "{x}");
        assert!(!is_zombie(pid));
        assert!(
            is_zombie(u32::MAX),
            "a pid that does not exist is not waited for"
        );
    }
}
