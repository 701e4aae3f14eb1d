//! The fan-out family's scenarios (BENCHMARKS.md sections 1, 3, 6, "Redis Cluster",
//! profiles, small rooms): `fanout`, `idle`, `peer`, `compare`, `cost`, `small`,
//! `budget`, `cluster` and `profile`, on the machinery of `fanout.rs`. Their knobs are
//! the environment variables `make bench` has always read (an empty
//! `BENCH_COMPARE_RATES` or `BENCH_PINNED_RATES` skips that half of `compare`).

use std::process::{Command, Stdio};

use super::fanout::{
    fanout_run, fanout_search, idle_run, remove_prefixed, socketio_ready, Fleet, Kind, Load1,
};
use super::report::{self, pretty};
use super::{log, Bench};
use crate::kit::{Load, Result};

/// The environment's knobs, with the defaults `make bench` documents.
pub(crate) struct Knobs {
    duration: String,
    rates: Vec<String>,
    idle_per_node: usize,
    compare_rates: Vec<String>,
    pinned_rates: Vec<String>,
    compare_servers: Vec<String>,
    cluster_rate: String,
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

impl Knobs {
    pub(crate) fn from_env() -> Result<Knobs> {
        let idle = var("BENCH_IDLE_PER_NODE", "15000");
        Ok(Knobs {
            duration: var("BENCH_DURATION", "15s"),
            rates: words(&var("BENCH_RATES", "10 20 30 40 60 80 100 120")),
            idle_per_node: idle
                .parse()
                .map_err(|_| format!("BENCH_IDLE_PER_NODE: not a number: {idle}"))?,
            compare_rates: words(&var("BENCH_COMPARE_RATES", "20 40")),
            pinned_rates: words(&var(
                "BENCH_PINNED_RATES",
                "2.5 5 10 20 30 40 50 60 80 100 120",
            )),
            compare_servers: words(&var("BENCH_COMPARE_SERVERS", "floor roomcast socketio")),
            cluster_rate: var("BENCH_CLUSTER_RATE", "20"),
        })
    }
}

/// `fanout`: the search against two gateways.
pub(crate) async fn fanout(b: &Bench, k: &Knobs) -> Result<()> {
    let fleet = Fleet::standalone(b, false)?
        .serve(b, Kind::Roomcast)
        .await?;
    fanout_search(b, &fleet, "roomcast", &k.rates, &k.duration).await
}

/// `idle`: idle capacity of two gateways.
pub(crate) async fn idle(b: &Bench, k: &Knobs) -> Result<()> {
    let fleet = Fleet::standalone(b, false)?
        .serve(b, Kind::Roomcast)
        .await?;
    idle_run(b, &fleet, "roomcast", k.idle_per_node).await
}

/// `peer`: the fan-out search and idle capacity of two Socket.IO peers.
pub(crate) async fn peer(b: &Bench, k: &Knobs) -> Result<()> {
    socketio_ready(b)?;
    let fleet = Fleet::standalone(b, false)?
        .serve(b, Kind::Socketio)
        .await?;
    fanout_search(b, &fleet, "socketio", &k.rates, &k.duration).await?;
    drop(fleet);
    let fleet = Fleet::standalone(b, false)?
        .serve(b, Kind::Socketio)
        .await?;
    idle_run(b, &fleet, "socketio", k.idle_per_node).await
}

/// The fan-out load at each rate against each compared server, each on a fresh Redis
/// (`fanout-<prefix>-<server>-r<rate>.json`). Pinned, a server's steps stop at the
/// first that fails the p99 bound.
async fn compare_servers(
    b: &Bench,
    k: &Knobs,
    prefix: &str,
    rates: &[String],
    pinned: bool,
) -> Result<()> {
    if rates.is_empty() {
        return Ok(());
    }
    for server in &k.compare_servers {
        let kind = Kind::parse(server)?;
        remove_prefixed(&b.out, &format!("fanout-{prefix}-{server}-"));
        let fleet = Fleet::standalone(b, pinned)?.serve(b, kind).await?;
        for rate in rates {
            let file = b.out.join(format!("fanout-{prefix}-{server}-r{rate}.json"));
            log(&format!(
                "{prefix} {server}: 100 sessions x 10 displays, {rate} msg/s per session"
            ));
            let label = format!("{prefix}-{server}");
            fanout_run(b, &fleet, &label, rate, &file, &Load1::fanout(&k.duration)).await?;
            let verdict = report::step(&file, report::P99_BOUND_MS)?;
            if prefix == "pinned" && verdict != 0 {
                break;
            }
        }
    }
    Ok(())
}

/// `compare`: the floor peer, Roomcast and the Socket.IO peer under one load, then
/// pinned (servers and Redis on core 0, the load generator on core 1).
pub(crate) async fn compare(b: &Bench, k: &Knobs) -> Result<()> {
    socketio_ready(b)?;
    compare_servers(b, k, "compare", &k.compare_rates, false).await?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if cores >= 2 && taskset {
        compare_servers(b, k, "pinned", &k.pinned_rates, true).await?;
    } else {
        eprintln!("bench: the pinned comparison needs taskset and two cores; skipped");
    }
    b.write("compare.json", &(pretty(&report::compare(&b.out)?)? + "\n"))?;
    eprintln!("{}", report::compare_markdown(&b.out)?);
    Ok(())
}

/// `cost`: two gateways, 100 sessions at 40 msg/s with 2 and then 10 displays per
/// session: CPU per published message split into a part per message and one per
/// delivery.
pub(crate) async fn cost(b: &Bench, k: &Knobs) -> Result<()> {
    for d in [2, 10] {
        let fleet = Fleet::standalone(b, false)?
            .serve(b, Kind::Roomcast)
            .await?;
        log(&format!(
            "cost: 100 sessions x {d} displays, 40 msg/s per session"
        ));
        let load = Load1 {
            displays: d,
            ..Load1::fanout(&k.duration)
        };
        let file = b.out.join(format!("cost-d{d}.json"));
        fanout_run(b, &fleet, &format!("cost{d}"), "40", &file, &load).await?;
    }
    let text = pretty(&report::cost(&b.out)?)? + "\n";
    eprint!("{text}");
    b.write("cost.json", &text)
}

/// The placements a small-room step runs: one floor process has nothing to split.
fn placements(kind: Kind) -> &'static [&'static str] {
    if kind == Kind::Floor {
        &["split"]
    } else {
        &["split", "colocated"]
    }
}

fn placement_flag(placement: &str) -> &'static str {
    if placement == "colocated" {
        "session"
    } else {
        "client"
    }
}

/// `small`: SMALL_SESSIONS (500) sessions x 1 controller + D displays (SMALL_DISPLAYS
/// "1 3") at SMALL_RATES ("10 1") msg/s per session for SMALL_DURATION (30s), on
/// SMALL_SERVERS ("floor roomcast socketio"), split and co-located.
pub(crate) async fn small(b: &Bench) -> Result<()> {
    let duration = var("SMALL_DURATION", "30s");
    let sessions: usize = var("SMALL_SESSIONS", "500")
        .parse()
        .map_err(|_| "SMALL_SESSIONS: not a number")?;
    let servers = words(&var("SMALL_SERVERS", "floor roomcast socketio"));
    if servers.iter().any(|s| s == "socketio") {
        socketio_ready(b)?;
    }
    remove_prefixed(&b.out, "small-");
    for d in words(&var("SMALL_DISPLAYS", "1 3")) {
        let displays: usize = d
            .parse()
            .map_err(|_| format!("SMALL_DISPLAYS: not a number: {d}"))?;
        for server in &servers {
            let kind = Kind::parse(server)?;
            for placement in placements(kind) {
                let fleet = Fleet::standalone(b, false)?.serve(b, kind).await?;
                for rate in words(&var("SMALL_RATES", "10 1")) {
                    let file = b
                        .out
                        .join(format!("small-d{d}-{server}-{placement}-r{rate}.json"));
                    log(&format!("small rooms: {server} {placement}, {sessions} x (1 + {d}), {rate} msg/s per session"));
                    let load = Load1 {
                        sessions,
                        displays,
                        placement: placement_flag(placement),
                        duration: duration.clone(),
                        perf_events: None,
                    };
                    let label = format!("s{d}{server}{}", &placement[..1]);
                    fanout_run(b, &fleet, &label, &rate, &file, &load).await?;
                }
            }
        }
    }
    b.write("small.json", &(pretty(&report::small(&b.out)?)? + "\n"))?;
    eprintln!("{}", report::small_markdown(&b.out)?);
    Ok(())
}

/// uprobes on malloc, calloc and realloc in the libc the gateway links (root only).
fn libc_probes(b: &Bench) -> Result<()> {
    let ldd = Command::new("ldd")
        .arg(b.ws.gateway())
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libc = ldd
        .lines()
        .find(|l| l.contains("libc.so"))
        .and_then(|l| l.split_whitespace().nth(2))
        .ok_or("bench: no libc in ldd's answer")?;
    let listed = Command::new("perf")
        .args(["probe", "-l"])
        .output()
        .map_err(|e| format!("perf: {e}"))?;
    let listed = String::from_utf8_lossy(&listed.stdout);
    for f in ["malloc", "calloc", "realloc"] {
        if listed.contains(&format!("probe_libc:{f} ")) {
            continue;
        }
        let added = Command::new("perf")
            .args(["probe", "-q", "-x", libc, "--add", f])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("perf: {e}"))?;
        if !added.success() {
            return Err(format!(
                "bench: cannot add a uprobe on {f} in {libc} (needs root)"
            ));
        }
    }
    Ok(())
}

/// `budget`: the small-room load (BUDGET_SESSIONS 500 x 1 + 1, BUDGET_RATE 10,
/// BUDGET_DURATION 15s) on the floor and on two gateways split and co-located, with
/// `perf stat` counting system calls, context switches and allocations per process.
pub(crate) async fn budget(b: &Bench) -> Result<()> {
    libc_probes(b)?;
    let sessions: usize = var("BUDGET_SESSIONS", "500")
        .parse()
        .map_err(|_| "BUDGET_SESSIONS: not a number")?;
    let rate = var("BUDGET_RATE", "10");
    remove_prefixed(&b.out, "budget-");
    for server in ["floor", "roomcast"] {
        let kind = Kind::parse(server)?;
        for placement in placements(kind) {
            let fleet = Fleet::standalone(b, false)?.serve(b, kind).await?;
            let file = b.out.join(format!("budget-{server}-{placement}.json"));
            log(&format!(
                "budget: {server} {placement}, {sessions} x (1 + 1), {rate} msg/s per session"
            ));
            let load = Load1 {
                sessions,
                displays: 1,
                placement: placement_flag(placement),
                duration: var("BUDGET_DURATION", "15s"),
                perf_events: Some(
                    "raw_syscalls:sys_enter,context-switches,probe_libc:malloc,probe_libc:calloc,probe_libc:realloc"
                        .into(),
                ),
            };
            fanout_run(
                b,
                &fleet,
                &format!("b{server}{}", &placement[..1]),
                &rate,
                &file,
                &load,
            )
            .await?;
        }
    }
    b.write("budget.json", &(pretty(&report::budget(&b.out)?)? + "\n"))?;
    eprintln!("{}", report::budget_markdown(&b.out)?);
    Ok(())
}

/// `cluster`: `Store::publish` on 1, 2 and 3 primaries (64 in flight, 1,000 sessions),
/// then the fan-out at one load on a standalone Redis and on the 3-primary cluster.
pub(crate) async fn cluster(b: &Bench, k: &Knobs) -> Result<()> {
    for n in 1..=3 {
        let fleet = Fleet::cluster(n).await?;
        log(&format!(
            "cluster: Store::publish on {n} primaries, 64 in flight, 1000 sessions"
        ));
        let r0 = fleet.redis_ticks();
        let args = [
            fleet.redis_url.clone(),
            "10".into(),
            "64".into(),
            "1000".into(),
        ];
        let out = b.cargo_bench("publish_path", &args)?;
        let run: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("publish_path printed no JSON: {e}"))?;
        let run = report::cluster_publish(
            &run,
            n as u32,
            fleet.redis_ticks().saturating_sub(r0),
            super::clk_tck() as f64,
        );
        let text = serde_json::to_string(&run).map_err(|e| e.to_string())?;
        eprintln!("{text}");
        std::fs::write(b.work.join(format!("cluster-publish-{n}.json")), text)
            .map_err(|e| e.to_string())?;
    }
    for label in ["standalone", "cluster3"] {
        let fleet = if label == "standalone" {
            Fleet::standalone(b, false)?
        } else {
            Fleet::cluster(3).await?
        };
        let gateways = b.gateways_on(&fleet.redis_url, 2, &[]).await;
        let fleet = fleet.with_gateways(gateways);
        log(&format!(
            "cluster: fan-out on {label}, {} msg/s per session",
            k.cluster_rate
        ));
        let file = b.out.join(format!("cluster-fanout-{label}.json"));
        fanout_run(
            b,
            &fleet,
            &format!("cl{label}"),
            &k.cluster_rate,
            &file,
            &Load1::fanout(&k.duration),
        )
        .await?;
    }
    let text = pretty(&report::cluster(&b.work, &b.out)?)? + "\n";
    eprint!("{text}");
    b.write("cluster.json", &text)
}

/// perf record of `pid` for 8 s (PROFILE_CALLGRAPH: `fp`, 999 Hz frame pointers;
/// `dwarf`, 299 Hz DWARF stacks; `offcpu`, every sched_switch with DWARF stacks), folded
/// by `scripts/perf_fold.py` into `profile-<name>.folded` and its heaviest frames.
fn profile_pid(b: &Bench, name: &str, pid: u32) -> Result<()> {
    let callgraph = var("PROFILE_CALLGRAPH", "fp");
    let how: &[&str] = match callgraph.as_str() {
        "dwarf" => &["-F", "299", "--call-graph", "dwarf,16384"],
        "offcpu" => &["-e", "sched:sched_switch", "--call-graph", "dwarf,16384"],
        _ => &["-F", "999", "-g"],
    };
    let name = if callgraph == "fp" {
        name.to_string()
    } else {
        format!("{name}-{callgraph}")
    };
    let data = b.work.join(format!("perf-{name}.data"));
    Command::new("perf")
        .arg("record")
        .args(how)
        .arg("-o")
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("perf record: {e}"))?;
    let folded = b.out.join(format!("profile-{name}.folded"));
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf script: {e}"))?;
    let fold = |args: &[&str], input: Option<&[u8]>, to: &std::path::Path| -> Result<()> {
        let mut child = Command::new("python3")
            .arg(b.ws.root.join("scripts/perf_fold.py"))
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(std::fs::File::create(to).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("perf_fold.py: {e}"))?;
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin.write_all(bytes).map_err(|e| e.to_string())?;
        }
        child.wait().map_err(|e| e.to_string())?;
        Ok(())
    };
    fold(&["fold"], Some(&script.stdout), &folded)?;
    let folded_s = folded.display().to_string();
    fold(
        &["top", &folded_s, "30"],
        None,
        &b.out.join(format!("profile-{name}.txt")),
    )?;
    if callgraph != "fp" {
        fold(
            &["parts", &folded_s],
            None,
            &b.out.join(format!("profile-{name}-parts.txt")),
        )?;
        Command::new("gzip")
            .arg("-f")
            .arg(&folded)
            .status()
            .map_err(|e| format!("gzip: {e}"))?;
    }
    Ok(())
}

/// `profile`: where the CPU goes under the fan-out load (PROFILE_RATE 40) or, with
/// PROFILE_LOAD=small, the small-room load (500 x 1 + 1, PROFILE_RATE 10, split: the
/// first gateway holds the controllers): one gateway and Redis, then the floor.
pub(crate) async fn profile(b: &Bench) -> Result<()> {
    let small = var("PROFILE_LOAD", "fanout") == "small";
    let rate = var("PROFILE_RATE", if small { "10" } else { "40" });
    let tag = if small { "-small" } else { "" };
    let callgraph = var("PROFILE_CALLGRAPH", "fp");
    let suffix = if callgraph == "fp" {
        String::new()
    } else {
        format!("-{callgraph}")
    };
    for server in ["roomcast", "floor"] {
        let fleet = Fleet::standalone(b, false)?
            .serve(b, Kind::parse(server)?)
            .await?;
        log(&format!(
            "profile {server}: {} load at {rate} msg/s per session",
            if small { "small" } else { "fanout" }
        ));
        let mut args = fleet.urls();
        let (sessions, displays) = if small { ("500", "1") } else { ("100", "10") };
        args.extend(
            [
                "--secret",
                super::SECRET,
                "--sessions",
                sessions,
                "--displays",
                displays,
                "--placement",
                "client",
                "--rate",
                &rate,
                "--payload",
                "64",
                "--duration",
                "14s",
                "--ramp",
                "2s",
                "--prefix",
                &format!("prof{server}"),
                "--json",
                &b.out
                    .join(format!("profile-{server}{tag}{suffix}-loadtest.json"))
                    .display()
                    .to_string(),
            ]
            .map(String::from),
        );
        let mut load = Load::start(
            &b.ws,
            &b.work,
            &format!("profile-{server}"),
            &args,
            std::time::Duration::from_secs(60),
        )
        .await?;
        if server == "roomcast" {
            let (gateway, redis) = (fleet.first_server_pid(), fleet.redis_pid());
            let (a, r) = tokio::join!(
                tokio::task::spawn_blocking({
                    let b = b.shallow();
                    let name = format!("gateway{tag}");
                    move || profile_pid(&b, &name, gateway)
                }),
                tokio::task::spawn_blocking({
                    let b = b.shallow();
                    let name = format!("redis{tag}");
                    move || profile_pid(&b, &name, redis)
                }),
            );
            a.map_err(|e| e.to_string())??;
            r.map_err(|e| e.to_string())??;
        } else {
            let floor = fleet.first_server_pid();
            let b2 = b.shallow();
            let name = format!("floor{tag}");
            tokio::task::spawn_blocking(move || profile_pid(&b2, &name, floor))
                .await
                .map_err(|e| e.to_string())??;
        }
        load.wait().await?;
    }
    Ok(())
}
