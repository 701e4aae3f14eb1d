//! The summaries of the fan-out family's comparisons: `compare` (the floor peer, Roomcast
//! and the Socket.IO peer under one load, then pinned), `cost` (a published message
//! against a delivery), `small` (small rooms) and `budget` (system calls, context
//! switches and allocations per message), each with its Markdown table.

use std::collections::BTreeMap;
use std::path::Path;

use roomcast_loadtest::report::Report;
use serde::{Deserialize, Serialize};

use super::{
    half_even, load, passes, py_float, round_to, row, steps, CommandCosts, Ordered, Row,
    P99_BOUND_MS,
};
use crate::kit::Result;

const COMPARED: [&str; 3] = ["floor", "roomcast", "socketio"];

/// The ratios issue 15 set goals on, at one rate.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ratios {
    server_cpu_roomcast_over_floor: Option<f64>,
    server_cpu_roomcast_over_socketio: Option<f64>,
    server_and_redis_cpu_roomcast_over_socketio: Option<f64>,
    p99_roomcast_over_socketio: Option<f64>,
}

/// One server's pinned search.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Pinned {
    best_deliveries_per_s_per_core: i64,
    best_rate_per_session: Option<f64>,
    steps: Vec<Row>,
}

/// `compare.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Compare {
    scenario: String,
    setup: String,
    pinned_setup: String,
    /// By rate (as the report files name it), then by server.
    unpinned: BTreeMap<String, BTreeMap<String, Row>>,
    ratios: BTreeMap<String, Ratios>,
    pinned: BTreeMap<String, Pinned>,
    pinned_roomcast_over_socketio: Option<f64>,
    pinned_roomcast_over_floor: Option<f64>,
}

fn judged(out: &Path, label: &str) -> Result<Vec<Row>> {
    Ok(steps(out, label)?
        .iter()
        .map(|(p, r)| Row {
            passed: Some(passes(r, P99_BOUND_MS)),
            ..row(r, Some(p))
        })
        .collect())
}

/// A rate as Python printed it (`20.0`, `2.5`): the key of `unpinned` and `ratios`.
fn rate_key(rate: f64) -> String {
    py_float(rate)
}

pub(crate) fn compare(out: &Path) -> Result<Compare> {
    let mut unpinned: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    for server in COMPARED {
        for r in judged(out, &format!("compare-{server}"))? {
            unpinned
                .entry(rate_key(r.rate_per_session))
                .or_default()
                .insert(server.to_string(), r);
        }
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(round_to(a / b, 2)),
        _ => None,
    };
    let ratios = unpinned
        .iter()
        .map(|(rate, by)| {
            let per = |server: &str, f: fn(&Row) -> Option<f64>| by.get(server).and_then(f);
            let cpu = |r: &Row| r.server_cpu_us_per_delivery;
            let total =
                |r: &Row| Some(r.server_cpu_us_per_delivery? + r.redis_cpu_us_per_delivery?);
            let p99 = |r: &Row| Some(r.p99_ms);
            let x = Ratios {
                server_cpu_roomcast_over_floor: ratio(per("roomcast", cpu), per("floor", cpu)),
                server_cpu_roomcast_over_socketio: ratio(
                    per("roomcast", cpu),
                    per("socketio", cpu),
                ),
                server_and_redis_cpu_roomcast_over_socketio: ratio(
                    per("roomcast", total),
                    per("socketio", total),
                ),
                p99_roomcast_over_socketio: ratio(per("roomcast", p99), per("socketio", p99)),
            };
            (rate.clone(), x)
        })
        .collect();
    let mut pinned = BTreeMap::new();
    for server in COMPARED {
        let rows = judged(out, &format!("pinned-{server}"))?;
        let best = rows
            .iter()
            .filter(|r| r.passed == Some(true))
            .max_by_key(|r| r.deliveries_per_s);
        pinned.insert(
            server.to_string(),
            Pinned {
                best_deliveries_per_s_per_core: best.map_or(0, |b| b.deliveries_per_s),
                best_rate_per_session: best.map(|b| b.rate_per_session),
                steps: rows,
            },
        );
    }
    let best = |s: &str| {
        pinned
            .get(s)
            .map_or(0, |p| p.best_deliveries_per_s_per_core) as f64
    };
    let over = |a: &str, b: &str| (best(b) != 0.0).then(|| round_to(best(a) / best(b), 2));
    Ok(Compare {
        scenario: "compare".into(),
        setup: "100 sessions x (1 controller + 10 displays), 64 B payload; floor: 1 process, roomcast and socketio: 2 instances on one Redis".into(),
        pinned_setup: "servers and Redis on core 0 (taskset), the load generator on core 1; steps until p99 >= 50 ms or a loss".into(),
        pinned_roomcast_over_socketio: over("roomcast", "socketio"),
        pinned_roomcast_over_floor: over("roomcast", "floor"),
        unpinned,
        ratios,
        pinned,
    })
}

fn or_dash(v: Option<f64>, unit: &str, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$} {unit}"))
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "None".into(), py_float)
}

/// `compare.json` as the tables of BENCHMARKS.md.
pub(crate) fn compare_markdown(out: &Path) -> Result<String> {
    let s: Compare = load(&out.join("compare.json"))?;
    let mut lines = vec![
        "| msg/s per session | server | deliveries/s | lost / dup | server CPU per delivery | Redis CPU per delivery | p50 | p99 | publish→ack p50 |".to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut rates: Vec<&String> = s.unpinned.keys().collect();
    rates.sort_by(|a, b| {
        a.parse::<f64>()
            .unwrap_or(0.0)
            .total_cmp(&b.parse().unwrap_or(0.0))
    });
    for rate in &rates {
        for server in COMPARED {
            if let Some(r) = s.unpinned[*rate].get(server) {
                lines.push(format!(
                    "| {rate} | {server} | {} | {} / {} | {} | {} | {} | {} | {} |",
                    crate::report::grouped(r.deliveries_per_s as f64, 0),
                    r.lost,
                    r.duplicated_or_reordered,
                    or_dash(r.server_cpu_us_per_delivery, "µs", 1),
                    or_dash(r.redis_cpu_us_per_delivery, "µs", 1),
                    or_dash(Some(r.p50_ms), "ms", 2),
                    or_dash(Some(r.p99_ms), "ms", 2),
                    or_dash(r.ack_p50_ms, "ms", 2),
                ));
            }
        }
    }
    lines.push(String::new());
    lines.push("| msg/s per session | server CPU Roomcast / floor | server CPU Roomcast / Socket.IO | server + Redis CPU Roomcast / Socket.IO | p99 Roomcast / Socket.IO |".into());
    lines.push("|---|---|---|---|---|".into());
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), py_float);
    for rate in &rates {
        let x = &s.ratios[*rate];
        lines.push(format!(
            "| {rate} | {} | {} | {} | {} |",
            f(x.server_cpu_roomcast_over_floor),
            f(x.server_cpu_roomcast_over_socketio),
            f(x.server_and_redis_cpu_roomcast_over_socketio),
            f(x.p99_roomcast_over_socketio)
        ));
    }
    lines.push(String::new());
    lines.push("| pinned (servers and Redis on one core) | best deliveries/s at p99 < 50 ms | at msg/s per session | steps run |".into());
    lines.push("|---|---|---|---|".into());
    for server in COMPARED {
        if let Some(p) = s.pinned.get(server) {
            lines.push(format!(
                "| {server} | {} | {} | {} |",
                crate::report::grouped(p.best_deliveries_per_s_per_core as f64, 0),
                opt(p.best_rate_per_session),
                p.steps.len()
            ));
        }
    }
    lines.push(format!(
        "\nRoomcast / Socket.IO per core: {}; Roomcast / floor: {}",
        opt(s.pinned_roomcast_over_socketio),
        opt(s.pinned_roomcast_over_floor)
    ));
    Ok(lines.join("\n"))
}

/// One run of `cost`: its row and its CPU per published message.
#[derive(Debug, Serialize)]
pub(crate) struct CostRun {
    #[serde(flatten)]
    row: Row,
    server_cpu_us_per_publish: f64,
    redis_cpu_us_per_publish: f64,
}

/// `cost.json`: gateway CPU per published message with 2 and 10 displays per session,
/// split into a fixed part per message and a part per delivery.
#[derive(Debug, Serialize)]
pub(crate) struct Cost {
    scenario: &'static str,
    setup: &'static str,
    gateway_us_per_published_message: f64,
    gateway_us_per_delivery: f64,
    runs: BTreeMap<String, CostRun>,
}

/// CPU µs per message published in the window: servers and Redis.
fn per_publish(r: &Row) -> Result<(f64, f64, f64)> {
    let published = r
        .published_in_window
        .ok_or("no publishing window was measured")?;
    let c = r.cpu.as_ref().ok_or("no CPU was measured")?;
    let us = |s: Option<f64>| 1e6 * s.unwrap_or(0.0) / published.max(1.0);
    Ok((
        us(c.window_server_cpu_s),
        us(c.window_redis_cpu_s),
        published,
    ))
}

pub(crate) fn cost(out: &Path) -> Result<Cost> {
    let mut runs = BTreeMap::new();
    let mut server = BTreeMap::new();
    for d in [2u32, 10] {
        let path = out.join(format!("cost-d{d}.json"));
        let r = row(&load(&path)?, Some(&path));
        let (server_us, redis_us, _) = per_publish(&r)?;
        server.insert(d, server_us);
        runs.insert(
            format!("displays_{d}"),
            CostRun {
                row: r,
                server_cpu_us_per_publish: round_to(server_us, 1),
                redis_cpu_us_per_publish: round_to(redis_us, 1),
            },
        );
    }
    let per_delivery = (server[&10] - server[&2]) / 8.0;
    Ok(Cost {
        scenario: "cost",
        setup: "2 gateways, 100 sessions x (1 controller + D displays), 40 msg/s per session, 64 B",
        gateway_us_per_published_message: round_to(server[&2] - 2.0 * per_delivery, 1),
        gateway_us_per_delivery: round_to(per_delivery, 2),
        runs,
    })
}

/// One run of `small`.
#[derive(Debug, Serialize)]
pub(crate) struct SmallRun {
    displays: u32,
    server: String,
    placement: String,
    rate_per_session: f64,
    messages_per_s: i64,
    server_cpu_us_per_message: f64,
    redis_cpu_us_per_message: f64,
    total_cpu_us_per_message: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    lost: u64,
    duplicated_or_reordered: u64,
    offered_share: f64,
    errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_floor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_socketio: Option<f64>,
}

/// `small.json`.
#[derive(Debug, Serialize)]
pub(crate) struct Small {
    scenario: &'static str,
    setup: &'static str,
    runs: Vec<SmallRun>,
}

/// `small-d<D>-<server>-<placement>-r<rate>.json`: displays, server, placement, rate.
fn small_name(name: &str) -> Option<(u32, String, String, f64)> {
    let rest = name.strip_prefix("small-d")?.strip_suffix(".json")?;
    let (d, rest) = rest.split_once('-')?;
    let (rest, rate) = rest.rsplit_once("-r")?;
    let (server, placement) = rest.rsplit_once('-')?;
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let rate_ok = !rate.is_empty() && rate.chars().all(|c| c.is_ascii_digit() || c == '.');
    (word(server) && matches!(placement, "split" | "colocated") && rate_ok)
        .then(|| {
            Some((
                d.parse().ok()?,
                server.to_string(),
                placement.to_string(),
                rate.parse().ok()?,
            ))
        })
        .flatten()
}

/// Files of `dir` whose names `parse` accepts, sorted by name, with what it read.
fn matching<T>(
    dir: &Path,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<(std::path::PathBuf, T)>> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let parsed = parse(path.file_name()?.to_str()?)?;
            Some((path, parsed))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

pub(crate) fn small(out: &Path) -> Result<Small> {
    let mut runs = Vec::new();
    for (path, (displays, server, placement, rate)) in matching(out, small_name)? {
        let r = row(&load::<Report>(&path)?, Some(&path));
        let (server_us, redis_us, published) = per_publish(&r)?;
        let window = r.cpu.as_ref().and_then(|c| c.window_s).unwrap_or(0.0);
        runs.push(SmallRun {
            displays,
            server,
            placement,
            rate_per_session: rate,
            messages_per_s: half_even(published / window.max(1.0)) as i64,
            server_cpu_us_per_message: round_to(server_us, 1),
            redis_cpu_us_per_message: round_to(redis_us, 1),
            total_cpu_us_per_message: round_to(server_us + redis_us, 1),
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            max_ms: r.max_ms,
            lost: r.lost,
            duplicated_or_reordered: r.duplicated_or_reordered,
            offered_share: r.offered_share,
            errors: r.errors,
            vs_floor: None,
            vs_socketio: None,
        });
    }
    let total = |server: &str, d: u32, rate: f64, placement: Option<&str>| {
        runs.iter()
            .find(|x| {
                x.server == server
                    && x.displays == d
                    && x.rate_per_session == rate
                    && placement.is_none_or(|p| x.placement == p)
            })
            .map(|x| x.total_cpu_us_per_message)
    };
    let vs: Vec<(Option<f64>, Option<f64>)> = runs
        .iter()
        .map(|x| {
            let floor = total("floor", x.displays, x.rate_per_session, None);
            let peer = total(
                "socketio",
                x.displays,
                x.rate_per_session,
                Some(&x.placement),
            );
            let over =
                |base: Option<f64>| base.map(|b| round_to(x.total_cpu_us_per_message / b, 2));
            (over(floor), over(peer))
        })
        .collect();
    for (x, (floor, peer)) in runs.iter_mut().zip(vs) {
        x.vs_floor = floor;
        x.vs_socketio = peer;
    }
    Ok(Small {
        scenario: "small",
        setup: "sessions x (1 controller + D displays), 64 B, CPU over the publishing window",
        runs,
    })
}

pub(crate) fn small_markdown(out: &Path) -> Result<String> {
    let mut runs = small(out)?.runs;
    runs.sort_by(|a, b| {
        (a.displays, -a.rate_per_session, &a.server, &a.placement)
            .partial_cmp(&(b.displays, -b.rate_per_session, &b.server, &b.placement))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut lines = vec![
        "| displays | server | placement | msg/s | server µs/msg | Redis µs/msg | total | × floor | × Socket.IO | p99 ms | lost |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let blank = |v: Option<f64>| v.map_or_else(String::new, py_float);
    for x in runs {
        lines.push(format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.displays,
            x.server,
            x.placement,
            x.messages_per_s,
            py_float(x.server_cpu_us_per_message),
            py_float(x.redis_cpu_us_per_message),
            py_float(x.total_cpu_us_per_message),
            blank(x.vs_floor),
            blank(x.vs_socketio),
            py_float(x.p99_ms),
            x.lost
        ));
    }
    Ok(lines.join("\n"))
}

/// A `perf stat -x,` output file: `{event: count}`.
fn perf_counts(path: &Path) -> Result<BTreeMap<String, f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.trim().split(',').collect();
            let count = parts.first()?;
            let numeric =
                !count.is_empty() && count.chars().all(|c| c.is_ascii_digit() || c == '.');
            (parts.len() > 2 && numeric)
                .then(|| Some((parts[2].to_string(), count.parse().ok()?)))?
        })
        .collect())
}

/// One process's counts per published message.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Counts(BTreeMap<String, f64>);

/// One run of `budget`.
#[derive(Debug, Serialize)]
pub(crate) struct BudgetRun {
    server: String,
    placement: String,
    published_in_window: i64,
    /// By process, in the order of their `perf stat` files (servers by pid, then Redis).
    per_message: Ordered<Counts>,
    servers_per_message: BTreeMap<String, f64>,
    redis_commands_per_publish: Option<CommandCosts>,
    p99_ms: f64,
    lost: u64,
}

/// `budget.json`.
#[derive(Debug, Serialize)]
pub(crate) struct Budget {
    scenario: &'static str,
    setup: &'static str,
    runs: Vec<BudgetRun>,
}

const TOTALS: [&str; 3] = ["syscalls", "context_switches", "allocations"];

pub(crate) fn budget(out: &Path) -> Result<Budget> {
    let names: BTreeMap<&str, &str> = [
        ("raw_syscalls:sys_enter", "syscalls"),
        ("context-switches", "context_switches"),
        ("probe_libc:malloc", "malloc"),
        ("probe_libc:calloc", "calloc"),
        ("probe_libc:realloc", "realloc"),
    ]
    .into();
    let parse = |name: &str| {
        let rest = name.strip_prefix("budget-")?.strip_suffix(".json")?;
        let (server, placement) = rest.rsplit_once('-')?;
        let word = !server.is_empty()
            && server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        (word && matches!(placement, "split" | "colocated"))
            .then(|| (server.to_string(), placement.to_string()))
    };
    let mut runs = Vec::new();
    for (path, (server, placement)) in matching(out, parse)? {
        let r = row(&load::<Report>(&path)?, Some(&path));
        let Some(published) = r.published_in_window.filter(|p| *p > 0.0) else {
            continue;
        };
        let prefix = format!(
            "{}.perf-",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        );
        let mut processes = Vec::new();
        for (perf, who) in matching(out, |n| n.strip_prefix(&prefix).map(String::from))? {
            let mut c: BTreeMap<String, f64> = perf_counts(&perf)?
                .into_iter()
                .map(|(k, v)| {
                    (
                        names.get(k.as_str()).map_or(k.clone(), |n| n.to_string()),
                        v / published,
                    )
                })
                .collect();
            let allocations: f64 = ["malloc", "calloc", "realloc"]
                .iter()
                .map(|k| c.remove(*k).unwrap_or(0.0))
                .sum();
            c.insert("allocations".into(), allocations);
            let key = if who == "redis" {
                who
            } else {
                format!("server {who}")
            };
            processes.push((
                key,
                Counts(c.into_iter().map(|(k, v)| (k, round_to(v, 2))).collect()),
            ));
        }
        let servers_per_message = TOTALS
            .iter()
            .map(|k| {
                let sum: f64 = processes
                    .iter()
                    .filter(|(who, _)| who.as_str() != "redis")
                    .map(|(_, c)| c.0.get(*k).copied().unwrap_or(0.0))
                    .sum();
                (k.to_string(), round_to(sum, 2))
            })
            .collect();
        runs.push(BudgetRun {
            server,
            placement,
            published_in_window: half_even(published) as i64,
            per_message: Ordered(processes),
            servers_per_message,
            redis_commands_per_publish: r.redis_commands_per_publish,
            p99_ms: r.p99_ms,
            lost: r.lost,
        });
    }
    Ok(Budget {
        scenario: "budget",
        setup: "sessions x (1 controller + 1 display), counts per published message over the publishing window",
        runs,
    })
}

pub(crate) fn budget_markdown(out: &Path) -> Result<String> {
    let mut lines = vec![
        "| server | placement | process | syscalls | context switches | allocations |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let cell = |c: &Counts, k: &str| c.0.get(k).map_or_else(String::new, |v| py_float(*v));
    for x in budget(out)?.runs {
        for (who, c) in &x.per_message.0 {
            lines.push(format!(
                "| {} | {} | {who} | {} | {} | {} |",
                x.server,
                x.placement,
                cell(c, "syscalls"),
                cell(c, "context_switches"),
                cell(c, "allocations")
            ));
        }
        let t = &x.servers_per_message;
        let total = |k: &str| t.get(k).map_or_else(String::new, |v| py_float(*v));
        lines.push(format!(
            "| {} | {} | **all server processes** | {} | {} | {} |",
            x.server,
            x.placement,
            total("syscalls"),
            total("context_switches"),
            total("allocations")
        ));
    }
    Ok(lines.join("\n"))
}
