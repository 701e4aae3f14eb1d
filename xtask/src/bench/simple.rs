//! Scenarios that are one load-generator run against fresh servers: the connect storm
//! (section 4 of BENCHMARKS.md) and the broadcast to 10,000 displays (section 2).

use serde::Serialize;

use super::{clk_tck, cpu_ticks, load_with_cpu, log, print_table, ws_urls, Bench};
use crate::kit::{Load, Result};

/// `storm`: `clients` clients (one in ten a controller) connect and join, 1,000 in
/// flight, to two gateways; `bench/storm-10k.json` is the load generator's report.
pub(crate) async fn storm(b: &Bench, clients: usize) -> Result<()> {
    let redis = b.redis();
    let gateways = b.gateways(&redis, 2, &[]).await;
    log(&format!(
        "connect storm: {clients} clients connect and join, 1,000 in flight"
    ));
    let addrs: Vec<_> = gateways.iter().map(|g| g.addr).collect();
    let mut args = ws_urls(&addrs, "/ws");
    args.extend(
        [
            "--secret",
            super::SECRET,
            "--sessions",
            &(clients / 10).to_string(),
            "--displays",
            "9",
            "--rate",
            "0",
            "--duration",
            "2s",
            "--drain",
            "0s",
            "--concurrency",
            "1000",
            "--prefix",
            "storm",
            "--json",
            &b.out.join("storm-10k.json").display().to_string(),
        ]
        .map(String::from),
    );
    Load::spawn(&b.ws, &b.work, "storm", &args, None)?
        .wait()
        .await?;
    print_table(&b.work, "storm");
    Ok(())
}

/// The CPU a run used (the `.cpu` file beside its report, which the final table and
/// BENCHMARKS.md read): servers and Redis in clock ticks, the load generator in
/// seconds.
#[derive(Debug, Serialize)]
struct RunCpu {
    server_ticks: u64,
    redis_ticks: u64,
    clk_tck: u64,
    loadgen_cpu_s: f64,
}

/// `broadcast`: one session, 10,000 displays, 10 msg/s for 20 s, against two gateways
/// (`roomcast`) or the floor peer (`floor`: what this machine can deliver at all, as the
/// generator and the servers share its two cores). CPU over the whole run, joins included.
pub(crate) async fn broadcast(b: &Bench, server: &str) -> Result<()> {
    let redis = b.redis();
    let (gateways, floor, file) = match server {
        "floor" => (
            Vec::new(),
            Some(b.floor().await?),
            "broadcast-10k-floor.json",
        ),
        "roomcast" => (b.gateways(&redis, 2, &[]).await, None, "broadcast-10k.json"),
        other => return Err(format!("broadcast: no server {other:?} (roomcast, floor)")),
    };
    let mut addrs: Vec<_> = gateways.iter().map(|g| g.addr).collect();
    let mut pids: Vec<u32> = gateways.iter().map(testkit::Gateway::pid).collect();
    if let Some(f) = &floor {
        addrs.push(f.addr);
        pids.push(f.process.0.id());
    }
    log(&format!(
        "broadcast {server}: 1 session, 10,000 displays, 10 msg/s"
    ));
    let redis_pid = redis.pid().unwrap_or(0);
    let servers = || pids.iter().map(|p| cpu_ticks(*p, false)).sum::<u64>();
    let (s0, r0) = (servers(), cpu_ticks(redis_pid, false));
    let path = b.out.join(file);
    let mut args = ws_urls(&addrs, "/ws");
    args.extend(
        [
            "--secret",
            super::SECRET,
            "--sessions",
            "1",
            "--displays",
            "10000",
            "--rate",
            "10",
            "--payload",
            "64",
            "--duration",
            "20s",
            "--drain",
            "5s",
            "--concurrency",
            "1000",
            "--prefix",
            &format!("bcast{server}"),
            "--json",
            &path.display().to_string(),
        ]
        .map(String::from),
    );
    let mut load = Load::spawn(&b.ws, &b.work, &format!("broadcast-{server}"), &args, None)?;
    let loadgen_cpu_s = load_with_cpu(&mut load).await?;
    let cpu = RunCpu {
        server_ticks: servers().saturating_sub(s0),
        redis_ticks: cpu_ticks(redis_pid, false).saturating_sub(r0),
        clk_tck: clk_tck(),
        loadgen_cpu_s,
    };
    print_table(&b.work, &format!("broadcast-{server}"));
    let text = serde_json::to_string(&cpu).map_err(|e| e.to_string())?;
    b.write(&format!("{file}.cpu"), &(text + "\n"))
}
