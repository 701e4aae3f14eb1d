//! The fan-out family's machinery: the processes of one run ([`Fleet`]: a Redis, one
//! server or a cluster's nodes, and the servers under test, Roomcast's gateways, the
//! floor peer or the Socket.IO peer, pinned to core 0 when asked), one measured run
//! ([`fanout_run`]: the load generator, the servers' and Redis's CPU over the whole run
//! and over the publishing window, Redis's commandstats at both ends of the window,
//! `perf stat` counts when asked), the fan-out search and the idle run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Gateway, Server};

use super::report::{self, pretty, CpuFile};
use super::{clk_tck, cpu_ticks, load_with_cpu, log, print_table, Bench, Peer};
use crate::kit::{Load, Result};

/// A server the family runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One process, no Redis: what this machine can deliver at all.
    Floor,
    /// Two gateways on one Redis.
    Roomcast,
    /// Two Socket.IO peers on one Redis (the Redis adapter).
    Socketio,
}

impl Kind {
    pub(crate) fn parse(name: &str) -> Result<Kind> {
        match name {
            "floor" => Ok(Kind::Floor),
            "roomcast" => Ok(Kind::Roomcast),
            "socketio" => Ok(Kind::Socketio),
            other => Err(format!("no server {other:?} (floor, roomcast, socketio)")),
        }
    }

    fn protocol(self) -> &'static str {
        if self == Kind::Socketio {
            "socketio"
        } else {
            "json"
        }
    }
}

/// A process under test.
enum Proc {
    Gateway(Gateway),
    Other(Peer),
}

impl Proc {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Proc::Gateway(g) => g.addr,
            Proc::Other(p) => p.addr,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Proc::Gateway(g) => g.pid(),
            Proc::Other(p) => p.process.0.id(),
        }
    }
}

/// The processes of one run. Servers are stopped before Redis (field order).
pub(crate) struct Fleet {
    servers: Vec<Proc>,
    kind: Kind,
    redis: Vec<Server>,
    pub(crate) redis_url: String,
    pinned: bool,
}

/// Pins `pid`'s threads to `core` (`taskset -a -p`): threads started later inherit it.
fn pin(pid: u32, core: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", core, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or(format!("taskset -p {pid} failed"))
}

impl Fleet {
    /// A fresh standalone Redis (pinned to core 0 with `pinned`) and no server yet.
    pub(crate) fn standalone(b: &Bench, pinned: bool) -> Result<Fleet> {
        let redis = b.redis();
        if pinned {
            pin(redis.pid().unwrap_or(0), "0")?;
        }
        Ok(Fleet {
            redis_url: format!("redis://127.0.0.1:{}", redis.port),
            redis: vec![redis],
            servers: Vec::new(),
            kind: Kind::Roomcast,
            pinned,
        })
    }

    /// A private Redis Cluster of `n` primaries, no replicas, the slots split evenly
    /// (redis-cli --cluster create wants three, so they are assigned by hand).
    pub(crate) async fn cluster(n: usize) -> Result<Fleet> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--cluster-announce-ip",
            "127.0.0.1",
            "--maxclients",
            "20000",
        ];
        let redis: Vec<Server> = (0..n).map(|_| Server::start(&args, true)).collect();
        for (i, s) in redis.iter().enumerate() {
            let (lo, hi) = (16384 * i / n, 16384 * (i + 1) / n - 1);
            s.cmd(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()]);
            if i > 0 {
                redis[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &s.port.to_string()]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !redis.iter().all(|s| {
            s.cmd(&["CLUSTER", "INFO"])
                .is_some_and(|i| i.contains("cluster_state:ok"))
        }) {
            if Instant::now() > deadline {
                return Err(format!("the {n}-primary cluster was not ok within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let nodes: Vec<String> = redis
            .iter()
            .skip(1)
            .map(|s| format!("node=127.0.0.1:{}", s.port))
            .collect();
        let mut url = format!("redis-cluster://127.0.0.1:{}", redis[0].port);
        if !nodes.is_empty() {
            url = format!("{url}?{}", nodes.join("&"));
        }
        Ok(Fleet {
            redis_url: url,
            redis,
            servers: Vec::new(),
            kind: Kind::Roomcast,
            pinned: false,
        })
    }

    /// Starts the servers of `kind` on this Redis: the floor's one process, two
    /// gateways, or two Socket.IO peers.
    pub(crate) async fn serve(mut self, b: &Bench, kind: Kind) -> Result<Fleet> {
        self.kind = kind;
        match kind {
            Kind::Floor => self.servers.push(Proc::Other(b.floor().await?)),
            Kind::Roomcast => {
                for g in b.gateways_on(&self.redis_url, 2, &[]).await {
                    self.servers.push(Proc::Gateway(g));
                }
            }
            Kind::Socketio => {
                for _ in 0..2 {
                    let peer = socketio_peer(b, &self.redis_url).await?;
                    self.servers.push(Proc::Other(peer));
                }
            }
        }
        if self.pinned {
            for s in &self.servers {
                pin(s.pid(), "0")?;
            }
        }
        Ok(self)
    }

    /// Adds gateways started apart (the cluster scenario's, on the cluster's URL).
    pub(crate) fn with_gateways(mut self, gateways: Vec<Gateway>) -> Fleet {
        self.servers.extend(gateways.into_iter().map(Proc::Gateway));
        self
    }

    pub(crate) fn server_ticks(&self) -> u64 {
        self.servers.iter().map(|s| cpu_ticks(s.pid(), false)).sum()
    }

    pub(crate) fn redis_ticks(&self) -> u64 {
        self.redis
            .iter()
            .map(|s| cpu_ticks(s.pid().unwrap_or(0), false))
            .sum()
    }

    pub(crate) fn first_server_pid(&self) -> u32 {
        self.servers.first().map_or(0, Proc::pid)
    }

    pub(crate) fn redis_pid(&self) -> u32 {
        self.redis.first().and_then(Server::pid).unwrap_or(0)
    }

    fn addrs(&self) -> Vec<std::net::SocketAddr> {
        self.servers.iter().map(Proc::addr).collect()
    }

    /// The load generator's `--url`s for these servers.
    pub(crate) fn urls(&self) -> Vec<String> {
        let path = if self.kind == Kind::Socketio {
            ""
        } else {
            "/ws"
        };
        super::ws_urls(&self.addrs(), path)
    }

    /// A standalone Redis's `INFO commandstats` into `path` (a cluster has none).
    fn commandstats(&self, path: &Path) {
        let [redis] = &self.redis[..] else { return };
        if let Some(reply) = redis.cmd(&["INFO", "commandstats"]) {
            // The bulk reply's body, without its `$<length>` line.
            let body = reply.split_once("\r\n").map_or("", |(_, b)| b);
            let _ = std::fs::write(path, body);
        }
    }
}

/// One Socket.IO peer (`loadtest/peers/socketio`, under node) on `redis_url`.
async fn socketio_peer(b: &Bench, redis_url: &str) -> Result<Peer> {
    let mut node = Command::new("node");
    node.arg(b.ws.root.join("loadtest/peers/socketio/server.js"))
        .env("REDIS_URL", redis_url);
    b.peer("socketio", node).await
}

/// The Socket.IO peer's packages (`npm ci`), when a scenario runs it.
pub(crate) fn socketio_ready(b: &Bench) -> Result<()> {
    let status = Command::new("npm")
        .args(["ci", "--silent", "--no-audit", "--no-fund"])
        .current_dir(b.ws.root.join("loadtest/peers/socketio"))
        .status()
        .map_err(|e| {
            format!("the Socket.IO peer needs node and npm (apt-get install -y nodejs npm): {e}")
        })?;
    status
        .success()
        .then_some(())
        .ok_or("npm ci failed for the Socket.IO peer".into())
}

/// How a run loads its servers.
#[derive(Debug, Clone)]
pub(crate) struct Load1 {
    pub(crate) sessions: usize,
    pub(crate) displays: usize,
    pub(crate) placement: &'static str,
    /// Publishing time (`15s`); a whole number of seconds is also the measured window.
    pub(crate) duration: String,
    /// `perf stat -e` events counted in each server and in Redis over the window.
    pub(crate) perf_events: Option<String>,
}

impl Load1 {
    pub(crate) fn fanout(duration: &str) -> Load1 {
        Load1 {
            sessions: 100,
            displays: 10,
            placement: "client",
            duration: duration.into(),
            perf_events: None,
        }
    }
}

/// One measured run at `rate` msg/s per session: the report in `file`, the CPU in
/// `file.cpu`, commandstats in `file.commands0`/`1`, perf counts in `file.perf-*`.
pub(crate) async fn fanout_run(
    b: &Bench,
    fleet: &Fleet,
    label: &str,
    rate: &str,
    file: &Path,
    l: &Load1,
) -> Result<()> {
    let (s0, r0) = (fleet.server_ticks(), fleet.redis_ticks());
    let started = report::with_suffix(file, ".started");
    let _ = std::fs::remove_file(&started);
    let mut args = fleet.urls();
    args.extend(
        [
            "--protocol",
            fleet.kind.protocol(),
            "--secret",
            super::SECRET,
            "--sessions",
            &l.sessions.to_string(),
            "--displays",
            &l.displays.to_string(),
            "--rate",
            rate,
            "--payload",
            "64",
            "--duration",
            &l.duration,
            "--ramp",
            "2s",
            "--prefix",
            &format!("f{label}{rate}"),
            "--json",
            &file.display().to_string(),
            "--placement",
            l.placement,
        ]
        .map(String::from),
    );
    let pin = fleet.pinned.then_some("1");
    let name = format!("run-{label}");
    let mut load = Load::spawn_pinned(&b.ws, &b.work, &name, &args, Some(&started), pin)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started.exists() && !load.ended() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (w0, wr0) = (fleet.server_ticks(), fleet.redis_ticks());
    fleet.commandstats(&report::with_suffix(file, ".commands0"));
    let mut window = l
        .duration
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let (mut w1, mut wr1) = (w0, wr0);
    if started.exists() && window > 0 {
        match &l.perf_events {
            Some(events) => perf_stat_window(fleet, file, window, events).await?,
            None => tokio::time::sleep(Duration::from_secs(window)).await,
        }
        (w1, wr1) = (fleet.server_ticks(), fleet.redis_ticks());
        fleet.commandstats(&report::with_suffix(file, ".commands1"));
    } else {
        window = 0;
    }
    let loadgen_cpu_s = load_with_cpu(&mut load).await?;
    print_table(&b.work, &name);
    CpuFile {
        server_ticks: fleet.server_ticks().saturating_sub(s0),
        redis_ticks: fleet.redis_ticks().saturating_sub(r0),
        clk_tck: clk_tck(),
        loadgen_cpu_s: Some(report::round_to(loadgen_cpu_s, 3)),
        window_s: window,
        window_server_ticks: w1.saturating_sub(w0),
        window_redis_ticks: wr1.saturating_sub(wr0),
    }
    .write(file)?;
    let _ = std::fs::remove_file(&started);
    Ok(())
}

/// `perf stat` of `events` in every server process and in Redis for `seconds`, one per
/// process (`<file>.perf-<port>`, `<file>.perf-redis`).
async fn perf_stat_window(fleet: &Fleet, file: &Path, seconds: u64, events: &str) -> Result<()> {
    let mut targets: Vec<(u32, String)> = fleet
        .servers
        .iter()
        .map(|s| (s.pid(), s.addr().port().to_string()))
        .collect();
    targets.push((fleet.redis_pid(), "redis".into()));
    let stats: Vec<_> = targets
        .into_iter()
        .map(|(pid, who)| {
            tokio::process::Command::new("perf")
                .args(["stat", "-x,", "-e", events, "-p", &pid.to_string(), "-o"])
                .arg(report::with_suffix(file, &format!(".perf-{who}")))
                .args(["--", "sleep", &seconds.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        })
        .collect();
    for status in futures_util::future::join_all(stats).await {
        status.map_err(|e| format!("perf stat: {e}"))?;
    }
    Ok(())
}

/// Steps the per-session rate up while p99 stays under 50 ms with nothing lost,
/// duplicated or reordered, and stops at the first failing step or once the load
/// generator can no longer offer the rate (it shares the cores); then runs at a quarter
/// of the best achieved rate. `fanout-<label>-summary.json`.
pub(crate) async fn fanout_search(
    b: &Bench,
    fleet: &Fleet,
    label: &str,
    rates: &[String],
    duration: &str,
) -> Result<()> {
    let load = Load1::fanout(duration);
    for rate in rates {
        let file = b.out.join(format!("fanout-{label}-r{rate}.json"));
        log(&format!(
            "fan-out {label}: 100 sessions x 10 displays, {rate} msg/s per session"
        ));
        fanout_run(b, fleet, label, rate, &file, &load).await?;
        if report::step(&file, report::P99_BOUND_MS)? != 0 {
            break;
        }
    }
    let quarter = report::quarter(&b.out, label)?;
    if quarter.is_empty() {
        eprintln!("bench: fan-out {label} failed at the lowest rate");
        return Ok(());
    }
    log(&format!(
        "fan-out {label} at 25 % of the best achieved rate: {quarter} msg/s per session"
    ));
    let file = b.out.join(format!("fanout-{label}-quarter.json"));
    fanout_run(b, fleet, label, &quarter, &file, &load).await?;
    let summary = pretty(&report::fanout(&b.out, label)?)? + "\n";
    b.write(&format!("fanout-{label}-summary.json"), &summary)
}

/// Idle capacity: `per_node` joined connections on each server, held; RSS per
/// connection and CPU over a 30 s window (heartbeats, 25 s, and presence refreshes fall
/// inside it), Redis's too. `idle-<label>.json`.
pub(crate) async fn idle_run(b: &Bench, fleet: &Fleet, label: &str, per_node: usize) -> Result<()> {
    let ports: Vec<u16> = fleet.addrs().iter().map(|a| a.port()).collect();
    let total = per_node * ports.len();
    let mut before = Vec::new();
    for p in &ports {
        before.push(super::health_value(*p, super::HealthField::Rss).await?);
    }
    log(&format!(
        "idle {label}: {per_node} joined connections on each of {} instances",
        ports.len()
    ));
    let mut args = fleet.urls();
    args.extend(
        [
            "--protocol",
            fleet.kind.protocol(),
            "--secret",
            super::SECRET,
            "--sessions",
            &(total / 15).to_string(),
            "--displays",
            "14",
            "--rate",
            "0",
            "--duration",
            "90s",
            "--drain",
            "0s",
            "--concurrency",
            "500",
            "--workers",
            &ports.len().to_string(),
            "--prefix",
            &format!("idle{label}"),
            "--json",
            &b.out
                .join(format!("idle-{label}-loadtest.json"))
                .display()
                .to_string(),
        ]
        .map(String::from),
    );
    // Each worker's clients all go to one node (index modulo workers = index modulo urls).
    let mut load = Load::spawn(&b.ws, &b.work, &format!("idle-{label}"), &args, None)?;
    for p in &ports {
        let deadline = Instant::now() + Duration::from_secs(120);
        while super::health_value(*p, super::HealthField::Conns)
            .await
            .unwrap_or(0)
            < per_node as u64
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "idle: {per_node} connections on {p} not reached within 120 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Let the join burst's allocations settle before reading RSS: a measurement
    // window, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r0 = fleet.redis_ticks();
    let pids: Vec<u32> = fleet.servers.iter().map(Proc::pid).collect();
    let t0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p, false)).collect();
    const WINDOW: u64 = 30;
    tokio::time::sleep(Duration::from_secs(WINDOW)).await;
    let redis_used = fleet.redis_ticks().saturating_sub(r0);
    let mut lines = String::new();
    for (i, p) in ports.iter().enumerate() {
        let rss = super::health_value(*p, super::HealthField::Rss).await?;
        let conns = super::health_value(*p, super::HealthField::Conns).await?;
        let used = cpu_ticks(pids[i], false).saturating_sub(t0[i]);
        lines.push_str(&format!("{p} {} {rss} {conns} {used}\n", before[i]));
    }
    load.wait().await?;
    let summary = report::idle(
        label,
        WINDOW as f64,
        clk_tck() as f64,
        Some(redis_used),
        &lines,
    )?;
    let text = pretty(&summary)? + "\n";
    eprint!("{text}");
    b.write(&format!("idle-{label}.json"), &text)
}

/// `<out>/<prefix>*` removed (a scenario's earlier results, which its summary would mix in).
pub(crate) fn remove_prefixed(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
