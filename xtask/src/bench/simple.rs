//! Scenarios that are one load-generator run against fresh servers: the connect storm
//! (section 4 of BENCHMARKS.md) and the broadcast to 10,000 displays (section 2).

use super::fanout::{Fleet, Kind};
use super::report::{self, CpuFile};
use super::{clk_tck, load_with_cpu, log, print_table, Bench};
use crate::kit::{self, Load, Result};

/// `storm`: `clients` clients (one in ten a controller) connect and join, 1,000 in
/// flight, to two gateways; `bench/storm-10k.json` is the load generator's report.
pub(crate) async fn storm(b: &Bench, clients: usize) -> Result<()> {
    let redis = b.redis();
    let gateways = b.gateways(&redis, 2, &[]).await;
    log(&format!(
        "connect storm: {clients} clients connect and join, 1,000 in flight"
    ));
    let mut args = kit::url_args(&gateways, false);
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

/// `broadcast`: one session, 10,000 displays, 10 msg/s for 20 s, against two gateways
/// (`roomcast`) or the floor peer (`floor`: what this machine can deliver at all, as the
/// generator and the servers share its two cores). CPU over the whole run, joins included.
pub(crate) async fn broadcast(b: &Bench, server: &str) -> Result<()> {
    let (kind, file) = match server {
        "floor" => (Kind::Floor, "broadcast-10k-floor.json"),
        "roomcast" => (Kind::Roomcast, "broadcast-10k.json"),
        other => return Err(format!("broadcast: no server {other:?} (roomcast, floor)")),
    };
    let fleet = Fleet::standalone(b, false)?.serve(b, kind).await?;
    log(&format!(
        "broadcast {server}: 1 session, 10,000 displays, 10 msg/s"
    ));
    let (s0, r0) = (fleet.server_ticks(), fleet.redis_ticks());
    let path = b.out.join(file);
    let mut args = fleet.urls();
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
    print_table(&b.work, &format!("broadcast-{server}"));
    // Over the whole run, joins included: no publishing window.
    CpuFile {
        server_ticks: fleet.server_ticks().saturating_sub(s0),
        redis_ticks: fleet.redis_ticks().saturating_sub(r0),
        clk_tck: clk_tck(),
        loadgen_cpu_s: Some(report::round_to(loadgen_cpu_s, 3)),
        ..CpuFile::default()
    }
    .write(&path)
}
