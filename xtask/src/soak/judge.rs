//! The soak's judge: growth after the warm-up, leftovers once every session ended, and
//! the base load's accounting, as `summary.json` and `summary.md`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Base, GatewaySample, Keys, RedisSample};
use crate::report::grouped;

/// Tasks a gateway may keep after a run beyond its idle count (pooled background work).
const TASK_SLACK: u64 = 10;

/// What the judge weighs besides the samples.
pub(crate) struct Judging {
    pub(crate) warmup: f64,
    pub(crate) max_growth: f64,
    pub(crate) waves: usize,
    pub(crate) failed_waves: usize,
}

/// One metric of one gateway over the run.
#[derive(Debug, Serialize)]
struct Trend {
    after_warmup: f64,
    end_of_load: f64,
    growth_pct: f64,
    slope_per_min: f64,
    peak: f64,
    after_sessions_ended: f64,
}

#[derive(Debug, Serialize)]
struct Idle {
    rss: u64,
    fds: u64,
    tasks: u64,
    pumps: u64,
}

#[derive(Debug, Serialize)]
struct GatewayRow {
    rss: Trend,
    fds: Trend,
    tasks: Trend,
    pumps: Trend,
    idle: Idle,
}

#[derive(Debug, Serialize)]
struct RedisRow {
    keys_after_warmup: f64,
    keys_end_of_load: f64,
    keys_after_sessions_ended: u64,
    memory_after_warmup: f64,
    memory_end_of_load: f64,
}

#[derive(Debug, Serialize)]
struct KeysRow {
    baseline_keys: usize,
    new_keys: usize,
    without_ttl_count: usize,
    max_ttl_s: f64,
}

/// The verdict of a soak (`summary.json`).
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    warmup_s: f64,
    duration_s: f64,
    waves: usize,
    base: Base,
    gateways: BTreeMap<String, GatewayRow>,
    redis: RedisRow,
    keys: KeysRow,
    pub(crate) passed: bool,
    pub(crate) problems: Vec<String>,
}

fn mean(xs: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = xs.into_iter().fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Least-squares slope of `(t, y)` points, per minute.
fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let mx = mean(points.iter().map(|p| p.0));
    let my = mean(points.iter().map(|p| p.1));
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if points.len() < 2 || den == 0.0 {
        return 0.0;
    }
    60.0 * points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / den
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Judges a soak. Growth is the mean of the last three samples under load against the
/// mean of the first three after the warm-up (the first sample is the idle point, the
/// last is after every session ended). It fails when RSS or fds grew more than
/// `max_growth` percent; when a key the run created has no TTL; when the base load lost,
/// duplicated or reordered anything, or a wave failed; when, after every session ended,
/// a gateway still has session pumps or more than 10 tasks above its idle count.
pub(crate) fn judge(
    gateways: &[GatewaySample],
    redis: &[RedisSample],
    keys: &Keys,
    base: Base,
    j: Judging,
) -> Summary {
    let mut problems = Vec::new();
    let mut rows = BTreeMap::new();
    let nodes: BTreeSet<&str> = gateways.iter().map(|s| s.node.as_str()).collect();
    for node in nodes {
        let series: Vec<&GatewaySample> = gateways.iter().filter(|s| s.node == node).collect();
        let (Some(idle), Some(after)) = (series.first(), series.last()) else {
            continue;
        };
        let loaded: Vec<&GatewaySample> = series[1..series.len().saturating_sub(1).max(1)]
            .iter()
            .filter(|s| s.t >= j.warmup)
            .copied()
            .collect();
        let mut trend = |metric: &str, pick: fn(&GatewaySample) -> f64| {
            let pts: Vec<(f64, f64)> = loaded.iter().map(|s| (s.t, pick(s))).collect();
            let first = mean(pts.iter().take(3).map(|p| p.1));
            let last = mean(pts.iter().rev().take(3).map(|p| p.1));
            let growth = if first != 0.0 {
                100.0 * (last - first) / first
            } else {
                0.0
            };
            if matches!(metric, "rss" | "fds") && growth > j.max_growth {
                problems.push(format!(
                    "{node} {metric} grew {growth:.1} % after the warm-up"
                ));
            }
            Trend {
                after_warmup: first,
                end_of_load: last,
                growth_pct: round2(growth),
                slope_per_min: round2(slope_per_min(&pts)),
                peak: series.iter().map(|s| pick(s)).fold(0.0, f64::max),
                after_sessions_ended: pick(after),
            }
        };
        let row = GatewayRow {
            rss: trend("rss", |s| s.rss as f64),
            fds: trend("fds", |s| s.fds as f64),
            tasks: trend("tasks", |s| s.tasks as f64),
            pumps: trend("pumps", |s| s.pumps as f64),
            idle: Idle {
                rss: idle.rss,
                fds: idle.fds,
                tasks: idle.tasks,
                pumps: idle.pumps,
            },
        };
        // Once every session ended and every client left, what the load created is gone.
        if after.pumps != 0 {
            problems.push(format!(
                "{node}: {} session pumps alive after every session ended",
                after.pumps
            ));
        }
        if after.tasks > idle.tasks + TASK_SLACK {
            problems.push(format!(
                "{node}: {} tasks after the run, {} idle",
                after.tasks, idle.tasks
            ));
        }
        rows.insert(node.to_string(), row);
    }
    let loaded: Vec<&RedisSample> = redis[..redis.len().saturating_sub(1)]
        .iter()
        .filter(|s| s.t >= j.warmup)
        .collect();
    let redis_row = RedisRow {
        keys_after_warmup: mean(loaded.iter().take(3).map(|s| s.keys as f64)),
        keys_end_of_load: mean(loaded.iter().rev().take(3).map(|s| s.keys as f64)),
        keys_after_sessions_ended: redis.last().map_or(0, |s| s.keys),
        memory_after_warmup: mean(loaded.iter().take(3).map(|s| s.used_memory as f64)),
        memory_end_of_load: mean(loaded.iter().rev().take(3).map(|s| s.used_memory as f64)),
    };
    if keys.without_ttl_count > 0 {
        let some: Vec<&str> = keys
            .without_ttl
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        problems.push(format!(
            "{} keys without a TTL: {some:?}",
            keys.without_ttl_count
        ));
    }
    for (field, n) in [
        ("lost", base.lost),
        ("duplicated", base.duplicated),
        ("out_of_order", base.out_of_order),
        ("unexplained", base.unexplained),
    ] {
        if n > 0 {
            problems.push(format!("base load {field} {n}"));
        }
    }
    if j.failed_waves > 0 {
        problems.push(format!("{} of {} waves failed", j.failed_waves, j.waves));
    }
    Summary {
        warmup_s: j.warmup,
        duration_s: gateways
            .iter()
            .map(|s| s.t)
            .chain(redis.iter().map(|s| s.t))
            .fold(0.0, f64::max),
        waves: j.waves,
        base,
        gateways: rows,
        redis: redis_row,
        keys: KeysRow {
            baseline_keys: keys.baseline_keys,
            new_keys: keys.new_keys,
            without_ttl_count: keys.without_ttl_count,
            max_ttl_s: keys.max_ttl_s,
        },
        passed: problems.is_empty(),
        problems,
    }
}

impl Summary {
    /// `summary.md`: the table BENCHMARKS.md quotes, and the verdict.
    pub(crate) fn markdown(&self) -> String {
        let b = &self.base;
        let mut lines = vec![
            format!(
                "Soak: {:.0} s, {} waves, base load {} deliveries/s, {} reconnects, lost {}, duplicated {}.",
                self.duration_s, self.waves, grouped(b.deliveries_per_s, 0), b.reconnects, b.lost, b.duplicated
            ),
            String::new(),
            "| gateway | RSS after warm-up → end (growth, slope/min) | fds | tokio tasks | pumps | after sessions ended: RSS / fds / tasks / pumps |".into(),
            "|---|---|---|---|---|---|".into(),
        ];
        let cell = |t: &Trend, scale: f64, unit: &str| {
            format!(
                "{}{unit} → {}{unit} ({:+.1} %, {:+.2}{unit}/min)",
                grouped(t.after_warmup / scale, 1),
                grouped(t.end_of_load / scale, 1),
                t.growth_pct,
                t.slope_per_min / scale
            )
        };
        for (node, row) in &self.gateways {
            lines.push(format!(
                "| {node} | {} | {} | {} | {} | {:.1} MB / {} / {} / {} |",
                cell(&row.rss, 1e6, " MB"),
                cell(&row.fds, 1.0, ""),
                cell(&row.tasks, 1.0, ""),
                cell(&row.pumps, 1.0, ""),
                row.rss.after_sessions_ended / 1e6,
                row.fds.after_sessions_ended,
                row.tasks.after_sessions_ended,
                row.pumps.after_sessions_ended,
            ));
        }
        let r = &self.redis;
        lines.push(String::new());
        lines.push(format!(
            "Redis: keys {} after warm-up, {} at the end of the load, {} once every session ended; memory {:.1} → {:.1} MB. Keys the run created without a TTL: {}; the longest TTL left: {:.1} h.",
            grouped(r.keys_after_warmup, 0),
            grouped(r.keys_end_of_load, 0),
            r.keys_after_sessions_ended,
            r.memory_after_warmup / 1e6,
            r.memory_end_of_load / 1e6,
            self.keys.without_ttl_count,
            self.keys.max_ttl_s / 3600.0
        ));
        lines.push(String::new());
        lines.push(if self.passed {
            "Verdict: pass".into()
        } else {
            format!("Verdict: FAIL: {}", self.problems.join("; "))
        });
        lines.join("\n") + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::{GatewaySample, Keys, RedisSample};

    /// A gateway's samples: idle, then under load every 10 s (`rss` from `rss_at`), then
    /// after the sessions ended.
    fn series(node: &str, rss_at: impl Fn(f64) -> f64, after_pumps: u64) -> Vec<GatewaySample> {
        let s = |t: f64, rss: f64, pumps: u64, tasks: u64| GatewaySample {
            t,
            node: node.into(),
            rss: rss as u64,
            fds: 100,
            tasks,
            pumps,
            connections: 0,
        };
        let mut v = vec![s(-10.0, 20e6, 0, 30)];
        v.extend((0..30).map(|k| s(k as f64 * 10.0, rss_at(k as f64 * 10.0), 50, 500)));
        v.push(s(320.0, 40e6, after_pumps, 32));
        v
    }

    fn redis() -> Vec<RedisSample> {
        (0..32)
            .map(|k| RedisSample {
                t: k as f64 * 10.0 - 10.0,
                node: "redis",
                keys: 500,
                used_memory: 2_000_000,
            })
            .collect()
    }

    fn judging() -> Judging {
        Judging {
            warmup: 120.0,
            max_growth: 5.0,
            waves: 10,
            failed_waves: 0,
        }
    }

    #[test]
    fn a_steady_run_passes_and_a_growing_one_fails_on_its_growth() {
        let steady = judge(
            &series("1", |_| 50e6, 0),
            &redis(),
            &Keys::default(),
            Base::default(),
            judging(),
        );
        assert!(steady.passed, "{:?}", steady.problems);
        assert_eq!(steady.gateways["1"].rss.growth_pct, 0.0);
        // 50 MB growing 1 MB per 10 s: 150 → 170 s is +20 %.
        let growing = judge(
            &series("1", |t| 50e6 + t * 1e5, 0),
            &redis(),
            &Keys::default(),
            Base::default(),
            judging(),
        );
        assert!(!growing.passed);
        assert!(
            growing.problems[0].starts_with("1 rss grew"),
            "{:?}",
            growing.problems
        );
        assert!((growing.gateways["1"].rss.slope_per_min - 6e6).abs() < 1.0);
        // The warm-up is not judged: growth before 120 s alone passes.
        let early = judge(
            &series("1", |t| if t < 120.0 { t * 1e6 } else { 200e6 }, 0),
            &redis(),
            &Keys::default(),
            Base::default(),
            judging(),
        );
        assert!(early.passed, "{:?}", early.problems);
    }

    #[test]
    fn leftovers_fail_the_run_each_with_its_reason() {
        let keys = Keys {
            without_ttl: vec!["rc:s:x:seq".into()],
            without_ttl_count: 1,
            ..Keys::default()
        };
        let base = Base {
            lost: 2,
            ..Base::default()
        };
        let j = Judging {
            failed_waves: 1,
            ..judging()
        };
        let s = judge(&series("1", |_| 50e6, 3), &redis(), &keys, base, j);
        let all = s.problems.join("\n");
        for reason in [
            "3 session pumps alive",
            "1 keys without a TTL",
            "base load lost 2",
            "1 of 10 waves failed",
        ] {
            assert!(all.contains(reason), "{reason} missing from {all}");
        }
        assert!(s.markdown().contains("Verdict: FAIL"));
    }

    #[test]
    fn tasks_left_beyond_the_slack_fail_the_run() {
        let mut samples = series("1", |_| 50e6, 0);
        if let Some(last) = samples.last_mut() {
            last.tasks = 41;
        }
        let s = judge(
            &samples,
            &redis(),
            &Keys::default(),
            Base::default(),
            judging(),
        );
        assert_eq!(
            s.problems,
            vec!["1: 41 tasks after the run, 30 idle".to_string()]
        );
    }
}
