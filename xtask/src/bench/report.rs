//! The fan-out family's summaries (until 2026-12-07 `scripts/bench_report.py`, which
//! re-parsed the load generator's JSON): a step's verdict, the row every summary is
//! built from (throughput, loss, latency, and the CPU the servers and Redis spent per
//! delivery over the publishing window), the fan-out search's summary and table, and
//! the table `make bench` ends with. Reports are read as
//! `roomcast_loadtest::report::Report`; the summaries written here are read back with
//! their own types. `family.rs`: compare, cost, small, budget; `idle.rs`; `cluster.rs`;
//! `cli.rs`: `cargo xtask report`, which renders them again from results on disk. The
//! output is the Python's, field for field, rounding and printing included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use roomcast_loadtest::report::Report;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kit::Result;

mod cli;
mod cluster;
mod family;
mod idle;
pub(crate) use cli::{run, ReportCmd};
pub(crate) use cluster::{cluster, cluster_publish};
pub(crate) use family::{
    budget, budget_markdown, compare, compare_markdown, cost, small, small_markdown,
};
pub(crate) use idle::{idle, Idle};

/// The p99 bound of a fan-out step.
pub(crate) const P99_BOUND_MS: f64 = 50.0;

pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn pretty(value: &impl Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

/// A fan-out step passes with p99 under the bound and nothing lost, duplicated,
/// reordered or refused: every published message reached every display.
pub(crate) fn passes(r: &Report, p99_ms: f64) -> bool {
    r.latency.p99_ms < p99_ms
        && r.lost == 0
        && r.duplicated_or_reordered == 0
        && r.errors.is_empty()
        && r.delivered == r.expected
}

/// How much of the offered publish rate the load generator managed to send.
pub(crate) fn offered_share(r: &Report) -> f64 {
    let wanted = r.sessions as f64 * r.rate_per_session * r.publish_s;
    if wanted > 0.0 {
        r.published as f64 / wanted
    } else {
        0.0
    }
}

/// `x` rounded to `digits` decimals as Python's `round` does: from the exact binary
/// value, ties to even (which Rust's exact float formatting also does; scaling by a
/// power of ten first would round the product, not `x`).
pub(crate) fn round_to(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// The nearest whole number, halves to even (Python's `round`).
pub(crate) fn half_even(x: f64) -> f64 {
    round_to(x, 0)
}

/// A float as Python prints it (`str(20.0)` is `20.0`): the tables keep the figures
/// they always showed.
pub(crate) fn py_float(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        x.to_string()
    }
}

/// The `.cpu` file beside a report, written by the runs that measure CPU and read by
/// every summary: clock ticks the servers and Redis used over the run and over the
/// publishing window (absent when there was none), and the load generator's CPU seconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CpuFile {
    pub(crate) server_ticks: u64,
    pub(crate) redis_ticks: u64,
    pub(crate) clk_tck: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) loadgen_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) window_s: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) window_server_ticks: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) window_redis_ticks: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl CpuFile {
    /// The `.cpu` file of the report at `report`.
    pub(crate) fn read(report: &Path) -> Result<CpuFile> {
        load(&with_suffix(report, ".cpu"))
    }

    /// Writes it beside the report at `report`.
    pub(crate) fn write(&self, report: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| e.to_string())? + "\n";
        let path = with_suffix(report, ".cpu");
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Ticks as seconds.
    pub(crate) fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.clk_tck.max(1) as f64
    }
}

/// A run's CPU, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Cpu {
    pub(crate) server_cpu_s: f64,
    pub(crate) redis_cpu_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) loadgen_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) window_redis_cpu_s: Option<f64>,
}

fn cpu(path: &Path) -> Option<Cpu> {
    let c = CpuFile::read(path).ok()?;
    let windowed = c.window_s > 0;
    Some(Cpu {
        server_cpu_s: c.seconds(c.server_ticks),
        redis_cpu_s: c.seconds(c.redis_ticks),
        loadgen_cpu_s: c.loadgen_cpu_s.map(|s| round_to(s, 2)),
        window_s: windowed.then_some(c.window_s as f64),
        window_server_cpu_s: windowed.then(|| c.seconds(c.window_server_ticks)),
        window_redis_cpu_s: windowed.then(|| c.seconds(c.window_redis_ticks)),
    })
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// One Redis command's cost per published message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommandCost {
    pub(crate) calls: f64,
    pub(crate) us: f64,
}

/// A map that keeps the order it was built in (serde_json's own sorts its keys).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ordered<T>(pub(crate) Vec<(String, T)>);

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Commands by their µs per publish, costliest first (a map in that order).
#[derive(Debug, Clone, Default)]
pub(crate) struct CommandCosts(pub(crate) Vec<(String, CommandCost)>);

impl Serialize for CommandCosts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for CommandCosts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let map = BTreeMap::<String, CommandCost>::deserialize(d)?;
        let mut v: Vec<_> = map.into_iter().collect();
        v.sort_by(|a, b| b.1.us.total_cmp(&a.1.us));
        Ok(CommandCosts(v))
    }
}

/// `{command: (calls, usec)}` of a saved `INFO commandstats`.
fn commandstats(path: &Path) -> Option<BTreeMap<String, (u64, u64)>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut stats = BTreeMap::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        if let (Some(calls), Some(usec)) = (field("calls"), field("usec")) {
            stats.insert(name.to_string(), (calls, usec));
        }
    }
    Some(stats)
}

/// Redis commands run over the window, per published message: calls and µs of each
/// (scripts count as EVALSHA; the commands a script runs are counted again under their
/// own names, inside its µs).
fn commands_per_publish(path: &Path, published: f64) -> Option<CommandCosts> {
    let before = commandstats(&with_suffix(path, ".commands0"))?;
    let after = commandstats(&with_suffix(path, ".commands1"))?;
    if published == 0.0 {
        return None;
    }
    let mut out: Vec<(String, CommandCost)> = after
        .into_iter()
        .filter_map(|(name, (calls, usec))| {
            let (c0, u0) = before.get(&name).copied().unwrap_or((0, 0));
            (calls > c0).then(|| {
                let cost = CommandCost {
                    calls: round_to((calls - c0) as f64 / published, 3),
                    us: round_to(usec.saturating_sub(u0) as f64 / published, 2),
                };
                (name, cost)
            })
        })
        .collect();
    out.sort_by(|a, b| b.1.us.total_cmp(&a.1.us));
    Some(CommandCosts(out))
}

/// One run as every summary shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) rate_per_session: f64,
    pub(crate) offered_share: f64,
    pub(crate) published: u64,
    pub(crate) delivered: u64,
    pub(crate) deliveries_per_s: i64,
    pub(crate) lost: u64,
    pub(crate) duplicated_or_reordered: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) errors: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ack_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ack_p99_ms: Option<f64>,
    #[serde(flatten)]
    pub(crate) cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_delivery: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redis_cpu_us_per_delivery: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_measured_over: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) published_in_window: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redis_commands_per_publish: Option<CommandCosts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) loadgen_cpu_us_per_delivery: Option<f64>,
    /// Whether it passed the fan-out bound (in the summaries that judge steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) passed: Option<bool>,
}

/// Deliveries in the first `seconds` of publishing, from the report's timeline.
fn delivered_within(r: &Report, seconds: f64) -> u64 {
    r.timeline
        .iter()
        .filter(|p| (p.t as f64) < seconds)
        .map(|p| p.delivered)
        .sum()
}

/// The row of report `r`, with the CPU of its `.cpu` file when `path` has one.
pub(crate) fn row(r: &Report, path: Option<&Path>) -> Row {
    let l = &r.latency;
    let mut out = Row {
        rate_per_session: r.rate_per_session,
        offered_share: round_to(offered_share(r), 3),
        published: r.published,
        delivered: r.delivered,
        deliveries_per_s: half_even(r.deliveries_per_s) as i64,
        lost: r.lost,
        duplicated_or_reordered: r.duplicated_or_reordered,
        p50_ms: l.p50_ms,
        p90_ms: l.p90_ms,
        p99_ms: l.p99_ms,
        p999_ms: l.p999_ms,
        max_ms: l.max_ms,
        errors: r.errors.clone(),
        ..Row::default()
    };
    if r.ack.count > 0 {
        out.ack_p50_ms = Some(r.ack.p50_ms);
        out.ack_p99_ms = Some(r.ack.p99_ms);
    }
    let Some((c, path)) = path.and_then(|p| Some((cpu(p)?, p))) else {
        return out;
    };
    // Per delivery over the publishing window when it was measured (connecting and
    // closing left out), else over the whole run.
    let in_window = c.window_s.map_or(0, |w| delivered_within(r, w));
    if in_window > 0 {
        let per = |s: Option<f64>| round_to(1e6 * s.unwrap_or(0.0) / in_window as f64, 2);
        out.server_cpu_us_per_delivery = Some(per(c.window_server_cpu_s));
        out.redis_cpu_us_per_delivery = Some(per(c.window_redis_cpu_s));
        out.cpu_measured_over = Some(format!(
            "publishing window, {} s, {in_window} deliveries",
            c.window_s.map_or_else(String::new, py_number)
        ));
        // Messages published in the window, counted by what reached the displays.
        let published = in_window as f64 / r.displays_per_session.max(1) as f64;
        out.published_in_window = Some(published);
        out.redis_commands_per_publish = commands_per_publish(path, published);
    } else if r.delivered > 0 {
        let per = |s: f64| round_to(1e6 * s / r.delivered as f64, 2);
        out.server_cpu_us_per_delivery = Some(per(c.server_cpu_s));
        out.redis_cpu_us_per_delivery = Some(per(c.redis_cpu_s));
        out.cpu_measured_over = Some("whole run".into());
        out.loadgen_cpu_us_per_delivery = c.loadgen_cpu_s.map(per);
    }
    out.cpu = Some(c);
    out
}

/// A number the scripts wrote as an integer (the `.cpu` file's `window_s`), as Python
/// prints it.
fn py_number(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// The reports `fanout-<label>-r<rate>.json` in `out`, by rate.
pub(crate) fn steps(out: &Path, label: &str) -> Result<Vec<(PathBuf, Report)>> {
    let prefix = format!("fanout-{label}-r");
    let mut found: Vec<(f64, PathBuf)> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let rate: f64 = name
                .strip_prefix(&prefix)?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((rate, path))
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found
        .into_iter()
        .map(|(_, p)| Ok((p.clone(), load(&p)?)))
        .collect()
}

fn best_step(steps: &[(PathBuf, Report)]) -> Option<&Report> {
    steps
        .iter()
        .map(|(_, r)| r)
        .filter(|r| passes(r, P99_BOUND_MS))
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))
}

/// A quarter of the best passing step's achieved per-session publish rate ("" if none).
pub(crate) fn quarter(out: &Path, label: &str) -> Result<String> {
    let steps = steps(out, label)?;
    Ok(best_step(&steps).map_or_else(String::new, |r| {
        let achieved = r.published as f64 / r.publish_s / r.sessions as f64;
        py_float(round_to(achieved / 4.0, 2).max(0.5))
    }))
}

/// `fanout-<label>-summary.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Fanout {
    scenario: String,
    server: String,
    setup: String,
    p99_bound_ms: f64,
    best_deliveries_per_s: i64,
    best_step_rate_per_session: Option<f64>,
    steps: Vec<Row>,
    at_25_percent: Option<Row>,
}

pub(crate) fn fanout(out: &Path, label: &str) -> Result<Fanout> {
    let steps = steps(out, label)?;
    let best = best_step(&steps);
    let quarter_path = out.join(format!("fanout-{label}-quarter.json"));
    let at_25_percent = if quarter_path.exists() {
        Some(row(&load(&quarter_path)?, Some(&quarter_path)))
    } else {
        None
    };
    Ok(Fanout {
        scenario: "fanout".into(),
        server: label.into(),
        setup: "100 sessions x (1 controller + 10 displays), 2 instances, 64 B payload".into(),
        p99_bound_ms: P99_BOUND_MS,
        best_deliveries_per_s: best.map_or(0, |r| half_even(r.deliveries_per_s) as i64),
        best_step_rate_per_session: best.map(|r| r.rate_per_session),
        steps: steps
            .iter()
            .map(|(p, r)| Row {
                passed: Some(passes(r, P99_BOUND_MS)),
                ..row(r, Some(p))
            })
            .collect(),
        at_25_percent,
    })
}

/// Whether a row passes the fan-out bound (a summary's row, its report not at hand).
fn passes_row(r: &Row) -> bool {
    r.p99_ms < P99_BOUND_MS && r.lost == 0 && r.duplicated_or_reordered == 0 && r.errors.is_empty()
}

/// The fan-out summary as a Markdown table (for BENCHMARKS.md).
pub(crate) fn markdown(out: &Path, label: &str) -> Result<String> {
    let s: Fanout = load(&out.join(format!("fanout-{label}-summary.json")))?;
    let mut lines = vec![
        "| msg/s per session | sent of offered | deliveries/s | lost / dup | p50 | p90 | p99 | p99.9 | max | server CPU per delivery | generator CPU per delivery | p99 < 50 ms |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut rows: Vec<(String, Row)> = s
        .steps
        .iter()
        .map(|r| (py_float(r.rate_per_session), r.clone()))
        .collect();
    if let Some(q) = s.at_25_percent {
        let passed = passes_row(&q);
        rows.push((
            format!("{} (25 %)", py_float(q.rate_per_session)),
            Row {
                passed: Some(passed),
                ..q
            },
        ));
    }
    let or_dash = |v: Option<f64>| v.map_or_else(|| "-".to_string(), py_float);
    for (name, r) in rows {
        lines.push(format!(
            "| {name} | {:.0} % | {} | {} / {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} µs | {} µs | {} |",
            100.0 * r.offered_share,
            crate::report::grouped(r.deliveries_per_s as f64, 0),
            r.lost,
            r.duplicated_or_reordered,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            or_dash(r.server_cpu_us_per_delivery),
            or_dash(r.loadgen_cpu_us_per_delivery),
            if r.passed == Some(true) { "yes" } else { "no" },
        ));
    }
    Ok(lines.join("\n"))
}

/// The lines `make bench` ends with: what each scenario found, from the files in `out`.
pub(crate) fn table(out: &Path) -> Result<String> {
    let mut lines = Vec::new();
    let opt = |v: Option<f64>| v.map_or_else(|| "None".to_string(), py_float);
    for label in ["roomcast", "socketio"] {
        let p = out.join(format!("fanout-{label}-summary.json"));
        if p.exists() {
            let s: Fanout = load(&p)?;
            let q = s.at_25_percent.as_ref();
            lines.push(format!(
                "fan-out {label}: best {} deliveries/s with p99 < 50 ms (step {} msg/s/session); at 25 %: p50 {} p99 {} ms",
                s.best_deliveries_per_s,
                opt(s.best_step_rate_per_session),
                opt(q.map(|q| q.p50_ms)),
                opt(q.map(|q| q.p99_ms)),
            ));
        }
        let p = out.join(format!("idle-{label}.json"));
        if p.exists() {
            let s: Idle = load(&p)?;
            let cpu: Vec<String> = s
                .nodes
                .iter()
                .map(|n| py_float(n.cpu_percent_of_one_core))
                .collect();
            lines.push(format!(
                "idle {label}: {} B RSS per connection; CPU % of a core per node: {}",
                s.rss_per_connection_bytes
                    .map_or_else(|| "None".into(), |v| v.to_string()),
                cpu.join(", ")
            ));
        }
    }
    for (name, title) in [
        ("storm-10k.json", "connect storm"),
        ("broadcast-10k.json", "broadcast"),
    ] {
        let p = out.join(name);
        if p.exists() {
            let r: Report = load(&p)?;
            lines.push(format!(
                "{title}: delivered {}/{}, lost {}, latency p99 {} ms, connect+join p99 {} ms, all joined {:.2} s, errors {}",
                r.delivered,
                r.expected,
                r.lost,
                py_float(r.latency.p99_ms),
                py_float(r.connect_join.p99_ms),
                r.connect_phase_s,
                r.errors.values().sum::<u64>()
            ));
        }
    }
    let p = out.join("publish-path.json");
    if p.exists() {
        let s: serde_json::Value = load(&p)?;
        let n = |k: &str| match (s[k].as_i64(), s[k].as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) => py_float(f),
            _ => "None".into(),
        };
        lines.push(format!(
            "publish path: {}/s; redis-benchmark {}/s, pipelined {}/s; {} of the ceiling",
            n("gateway_store_publish_per_s"),
            n("redis_benchmark_per_s"),
            n("redis_benchmark_pipelined_16_per_s"),
            n("ratio_to_ceiling")
        ));
    }
    Ok(lines.join("\n"))
}

/// A fan-out step's verdict: 0 go on, 1 failed, 2 passed but the load generator could
/// not offer the rate (it shares the cores), so the search stops.
pub(crate) fn step(path: &Path, bound_ms: f64) -> Result<u8> {
    let r: Report = load(path)?;
    let ok = passes(&r, bound_ms);
    let saturated = offered_share(&r) < 0.8;
    let verdict = match (ok, saturated) {
        (true, true) => "pass, but the load generator sent under 80 % of the offered rate: stop",
        (true, false) => "pass",
        (false, _) => "FAIL",
    };
    eprintln!(
        "{verdict}: {}",
        serde_json::to_string(&row(&r, Some(path))).map_err(|e| e.to_string())?
    );
    Ok(match (ok, saturated) {
        (true, false) => 0,
        (true, true) => 2,
        (false, _) => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_and_print_as_the_python_tables_did() {
        // From the exact binary value, ties to even: 3.365 is a little above, 2.675 a
        // little below, 0.125 and 2.5 exact ties.
        assert_eq!(round_to(3.365, 2), 3.37);
        assert_eq!(round_to(2.675, 2), 2.67);
        assert_eq!(round_to(0.125, 2), 0.12);
        assert_eq!(
            (half_even(2.5), half_even(3.5), half_even(-2.5)),
            (2.0, 4.0, -2.0)
        );
        assert_eq!(
            (py_float(20.0), py_float(2.5), py_float(0.0)),
            ("20.0".into(), "2.5".into(), "0.0".into())
        );
        assert_eq!(
            (py_number(15.0), py_number(7.5)),
            ("15".into(), "7.5".into())
        );
    }

    /// A report of one step: `published` of 100 offered, p99 as given, nothing lost.
    fn write_step(dir: &Path, published: u64, p99_ms: f64) -> PathBuf {
        let r = Report {
            sessions: 10,
            rate_per_session: 1.0,
            publish_s: 10.0,
            published,
            delivered: 500,
            expected: 500,
            latency: roomcast_loadtest::report::Percentiles {
                p99_ms,
                ..Default::default()
            },
            ..Report::default()
        };
        let path = dir.join(format!("step-{published}-{p99_ms}.json"));
        std::fs::write(&path, serde_json::to_string(&r).expect("json")).expect("write");
        path
    }

    #[test]
    fn a_step_goes_on_fails_or_stops_at_saturation() {
        let dir = testkit::scratch_dir("report-step");
        assert_eq!(step(&write_step(&dir, 100, 10.0), 50.0), Ok(0));
        assert_eq!(
            step(&write_step(&dir, 100, 60.0), 50.0),
            Ok(1),
            "p99 over the bound"
        );
        assert_eq!(
            step(&write_step(&dir, 70, 10.0), 50.0),
            Ok(2),
            "70 % of the offered rate"
        );
        assert_eq!(
            step(&write_step(&dir, 70, 60.0), 50.0),
            Ok(1),
            "a failure is a failure"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_cpu_file_reads_back_as_written_and_committed_ones_read() {
        let committed = |name: &str| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../bench")
                .join(name)
        };
        let windowed = CpuFile::read(&committed("cost-d2.json")).expect("a cost run's");
        assert!(
            windowed.window_s > 0 && windowed.window_server_ticks > 0,
            "{windowed:?}"
        );
        let whole = CpuFile::read(&committed("broadcast-10k.json")).expect("the broadcast's");
        assert_eq!((whole.window_s, whole.window_server_ticks), (0, 0));
        let dir = testkit::scratch_dir("cpu-file");
        let report = dir.join("run.json");
        whole.write(&report).expect("write");
        let again = CpuFile::read(&report).expect("read back");
        assert_eq!(
            (
                again.server_ticks,
                again.redis_ticks,
                again.clk_tck,
                again.loadgen_cpu_s
            ),
            (
                whole.server_ticks,
                whole.redis_ticks,
                whole.clk_tck,
                whole.loadgen_cpu_s
            )
        );
        let text = std::fs::read_to_string(dir.join("run.json.cpu")).expect("the file");
        assert!(
            !text.contains("window"),
            "no window, no window fields: {text}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn idle_lines_make_the_idle_summary() {
        let s = idle(
            "roomcast",
            30.0,
            100.0,
            Some(73),
            "1 30000000 170000000 15000 91\n2 31000000 175000000 15000 95\n",
        )
        .expect("idle");
        // 9,333.3 and 9,600 B: their mean, 9,466.5, ties to even.
        assert_eq!(s.rss_per_connection_bytes, Some(9466));
        assert_eq!(s.nodes[0].cpu_percent_of_one_core, 3.03);
        assert_eq!(s.redis_cpu_percent_of_one_core, Some(2.43));
        assert!(idle("x", 30.0, 100.0, None, "1 2 3\n").is_err());
    }
}
