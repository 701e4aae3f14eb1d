//! `silent` (section 8 of BENCHMARKS.md): 20,000 connections that never send a byte.
//! Two flooding processes (`xtask flood`, each 10,000 sockets: one process could not hold
//! both under the open-files cap) against one gateway, its ops listener probed meanwhile.
//! Once with the defaults (the per-address cap answers most floods at once) and once
//! without the per-address cap, as if the sockets came from many addresses (the
//! descriptor budget and the header timeout do the work).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{log, Bench};
use crate::kit::Result;

/// The flood's knobs (`xtask flood`, run by the silent scenario).
#[derive(Debug, clap::Args)]
pub(crate) struct FloodArgs {
    /// A loopback address: the flood sends nowhere else.
    addr: SocketAddr,
    /// Connections to open.
    count: usize,
    /// Seconds to hold them at most.
    hold: f64,
}

/// What a flood saw (one JSON line on stdout, read back by the scenario).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Flood {
    attempted: usize,
    connect_failed: usize,
    refused: Refused,
    closed_silently: usize,
    /// Seconds from connect to the server's close, of the sockets it closed silently.
    closed_after_s: ClosedAfter,
    still_open_at_end: usize,
}

/// Percentiles of the silent closes (`{}` when there were none).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClosedAfter {
    #[serde(skip_serializing_if = "Option::is_none")]
    p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Refused {
    #[serde(rename = "429")]
    too_many: usize,
    #[serde(rename = "503")]
    unavailable: usize,
}

/// `bench/silent-<variant>.json`.
#[derive(Debug, Serialize)]
struct Silent {
    variant: &'static str,
    floods: Vec<Flood>,
    ready_probes: Probes,
    /// Lines of the gateway's log that say an accept failed.
    accept_failed_log_lines: usize,
    /// The refusal and accept-error counters, as scraped.
    metrics: Vec<String>,
}

/// `/health/ready` on the ops listener, every 0.5 s during the flood.
#[derive(Debug, Serialize)]
struct Probes {
    answered_200: usize,
    total: usize,
    max_s: Option<f64>,
}

/// How one silent socket ended.
enum Fate {
    ConnectFailed,
    Refused429,
    Refused503,
    Closed(f64),
    StillOpen,
}

/// `xtask flood`: opens `count` connections that never send a byte, holds them up to
/// `hold` seconds, and prints how the server treated them.
pub(crate) async fn flood(args: FloodArgs) -> Result<bool> {
    if !args.addr.ip().is_loopback() {
        return Err("the flood sends to loopback addresses only".into());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.hold);
    let tasks: Vec<_> = (0..args.count)
        .map(|_| tokio::spawn(silent_socket(args.addr, deadline)))
        .collect();
    let mut out = Flood {
        attempted: args.count,
        ..Flood::default()
    };
    let mut closed = Vec::new();
    for task in tasks {
        match task.await.unwrap_or(Fate::ConnectFailed) {
            Fate::ConnectFailed => out.connect_failed += 1,
            Fate::Refused429 => out.refused.too_many += 1,
            Fate::Refused503 => out.refused.unavailable += 1,
            Fate::Closed(after) => closed.push(after),
            Fate::StillOpen => out.still_open_at_end += 1,
        }
    }
    closed.sort_by(f64::total_cmp);
    out.closed_silently = closed.len();
    if let Some(max) = closed.last() {
        let pick = |q: f64| {
            let v = closed[((q * closed.len() as f64) as usize).min(closed.len() - 1)];
            Some((v * 1000.0).round() / 1000.0)
        };
        out.closed_after_s = ClosedAfter {
            p50: pick(0.5),
            p99: pick(0.99),
            max: Some(*max),
        };
    }
    println!(
        "{}",
        serde_json::to_string(&out).map_err(|e| e.to_string())?
    );
    Ok(true)
}

async fn silent_socket(addr: SocketAddr, deadline: Instant) -> Fate {
    let started = Instant::now();
    let watch = async {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return Fate::ConnectFailed;
        };
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap_or(0);
        let answer = &buf[..n];
        if answer.starts_with(b"HTTP/1.1 429") {
            Fate::Refused429
        } else if answer.starts_with(b"HTTP/1.1 503") {
            Fate::Refused503
        } else {
            Fate::Closed(started.elapsed().as_secs_f64())
        }
    };
    tokio::time::timeout_at(deadline.into(), watch)
        .await
        .unwrap_or(Fate::StillOpen)
}

/// The scenario: both variants, `bench/silent-<variant>.json`.
pub(crate) async fn silent(b: &Bench) -> Result<()> {
    for (variant, cap) in [("default", "256"), ("no-per-ip-cap", "0")] {
        let redis = b.redis();
        let ops = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
        let ops_listen = ops.to_string();
        let env = [
            ("ROOMCAST_OPS_LISTEN", ops_listen.as_str()),
            ("ROOMCAST_MAX_PENDING_PER_IP", cap),
        ];
        let gateways = b.gateways(&redis, 1, &env).await;
        let addr = gateways[0].addr;
        log(&format!(
            "silent sockets ({variant}): 2 x 10,000 silent connections, header timeout 10 s"
        ));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let floods: Vec<_> = (0..2)
            .map(|_| {
                tokio::process::Command::new(&exe)
                    .args(["flood", &addr.to_string(), "10000", "15"])
                    .kill_on_drop(true)
                    .output()
            })
            .collect();
        let floods = tokio::spawn(futures_util::future::join_all(floods));
        let mut probes = Vec::new();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                testkit::http_get(ops, "/health/ready"),
            );
            let status = probe.await.map_or(0, |(status, _)| status);
            probes.push((status, started.elapsed().as_secs_f64()));
        }
        let mut reports = Vec::new();
        for out in floods.await.map_err(|e| e.to_string())? {
            let out = out.map_err(|e| format!("the flood: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout);
            reports.push(
                serde_json::from_str::<Flood>(text.trim())
                    .map_err(|e| format!("the flood printed no report ({e}): {text}"))?,
            );
        }
        let metrics: Vec<String> = testkit::http_get(ops, "/metrics")
            .await
            .1
            .lines()
            .filter(|l| {
                l.starts_with("roomcast_connections_refused_total")
                    || l.starts_with("roomcast_accept_errors_total")
            })
            .map(String::from)
            .collect();
        let log_file = b.work.join(format!("gateway-{}.log", addr.port()));
        let accept_failed = std::fs::read_to_string(&log_file).map_or(0, |l| {
            l.lines().filter(|l| l.contains("accept failed")).count()
        });
        let answered = probes.iter().filter(|(s, _)| *s == 200).count();
        // A probe that timed out counts its 2 s, as curl's did.
        let max_s = probes
            .iter()
            .map(|(_, t)| (t * 1e6).round() / 1e6)
            .reduce(f64::max);
        let report = Silent {
            variant,
            floods: reports,
            ready_probes: Probes {
                answered_200: answered,
                total: probes.len(),
                max_s,
            },
            accept_failed_log_lines: accept_failed,
            metrics,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
        eprint!("{text}");
        b.write(&format!("silent-{variant}.json"), &text)?;
        drop(gateways);
    }
    Ok(())
}
