//! The idle scenario's summary: RSS per held connection and CPU at rest, per server
//! process and for Redis.

use serde::{Deserialize, Serialize};

use super::{half_even, round_to};
use crate::kit::Result;

/// One server process of the idle scenario.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IdleNode {
    pub(crate) port: u16,
    pub(crate) connections: u64,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_bytes: u64,
    pub(crate) rss_per_connection_bytes: Option<i64>,
    pub(crate) cpu_percent_of_one_core: f64,
}

/// `idle-<label>.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Idle {
    pub(crate) scenario: String,
    pub(crate) server: String,
    pub(crate) cpu_window_s: f64,
    pub(crate) nodes: Vec<IdleNode>,
    pub(crate) rss_per_connection_bytes: Option<i64>,
    /// Redis at idle: the presence refreshes of every node's members.
    pub(crate) redis_cpu_percent_of_one_core: Option<f64>,
}

/// The idle summary from `port rss_before rss connections ticks` lines (one per node).
pub(crate) fn idle(
    label: &str,
    window: f64,
    clk: f64,
    redis_ticks: Option<u64>,
    lines: &str,
) -> Result<Idle> {
    let mut nodes = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().map_err(|e| format!("idle: {line:?}: {e}")))
            .collect::<Result<_>>()?;
        let [port, before, rss, conns, ticks] = f[..] else {
            return Err(format!(
                "idle: want `port before rss connections ticks`, got {line:?}"
            ));
        };
        nodes.push(IdleNode {
            port: port as u16,
            connections: conns,
            rss_before_bytes: before,
            rss_bytes: rss,
            rss_per_connection_bytes: (conns > 0)
                .then(|| half_even((rss as f64 - before as f64) / conns as f64) as i64),
            cpu_percent_of_one_core: round_to(100.0 * ticks as f64 / clk / window, 2),
        });
    }
    let per_conn: Vec<i64> = nodes
        .iter()
        .filter_map(|n| n.rss_per_connection_bytes)
        .filter(|v| *v != 0)
        .collect();
    Ok(Idle {
        scenario: "idle".into(),
        server: label.into(),
        cpu_window_s: window,
        rss_per_connection_bytes: (!per_conn.is_empty())
            .then(|| half_even(per_conn.iter().sum::<i64>() as f64 / per_conn.len() as f64) as i64),
        nodes,
        redis_cpu_percent_of_one_core: redis_ticks
            .map(|t| round_to(100.0 * t as f64 / clk / window, 2)),
    })
}
