//! `lifecycle` (section 7 of BENCHMARKS.md): N idle sessions whose warnings and timeouts fall due evenly over 20 s,
//! three gateways running the lifecycle clock: how late each event came, and whether each
//! was announced exactly once. The sessions are created by the gateway's own store
//! (`Store::create_session`, `Store::touch_indexes`), so the benchmark files them under
//! whatever layout the gateway has: it cannot drift from it, as the Python copy did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, HashesInterface};
use futures_util::{stream, StreamExt, TryStreamExt};
use gateway::config::Config;
use gateway::store::{redis_builder, Store};
use serde::Serialize;

use super::{log, Bench};
use crate::kit::Result;

/// Lateness percentiles, milliseconds (the nearest rank at or above each quantile).
#[derive(Debug, Default, PartialEq, Serialize)]
struct Lateness {
    p50_ms: i64,
    p99_ms: i64,
    max_ms: i64,
    count: usize,
}

impl Lateness {
    fn of(mut values: Vec<i64>) -> Option<Lateness> {
        values.sort_unstable();
        let max_ms = *values.last()?;
        let pick = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
        Some(Lateness {
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            max_ms,
            count: values.len(),
        })
    }
}

/// `bench/lifecycle-<N>k.json`.
#[derive(Debug, Serialize)]
struct LifecycleReport {
    sessions: u64,
    warned: usize,
    inactive: usize,
    warning_lateness: Option<Lateness>,
    inactive_lateness: Option<Lateness>,
    /// Transitions the gateways counted, by kind, summed over the three.
    announced: BTreeMap<String, u64>,
}

/// The lifecycle scenario (see the module's documentation).
pub(crate) async fn lifecycle(b: &Bench, n: u64) -> Result<()> {
    const WARNING_MS: u64 = 20_000;
    const TIMEOUT_MS: u64 = 40_000;
    const SPREAD_MS: u64 = 20_000;
    let redis = b.redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let clock = [
        ("ROOMCAST_INACTIVITY_WARNING", "20s"),
        ("ROOMCAST_INACTIVITY_TIMEOUT", "40s"),
    ];
    let gateways = b.gateways(&redis, 3, &clock).await;
    let config = Config::from_pairs(&[
        ("redis-url", url.as_str()),
        ("auth", "off"),
        ("inactivity-warning", "20s"),
        ("inactivity-timeout", "40s"),
    ])
    .map_err(|e| e.to_string())?;
    let pool = redis_builder(&config, 32)
        .map_err(|e| e.to_string())?
        .build_pool(4)
        .map_err(|e| e.to_string())?;
    pool.init().await.map_err(|e| format!("redis: {e}"))?;
    let store = Store::new(pool, &config);

    log(&format!(
        "lifecycle: {n} sessions due over {} s, warning 20 s, timeout 40 s, 3 gateways",
        SPREAD_MS / 1000
    ));
    let ids: Vec<String> = (0..n).map(|i| format!("lc-{i:07}")).collect();
    let now = gateway::util::now_ms();
    let filing = Instant::now();
    // Last activity spread evenly over SPREAD_MS from now: warnings and timeouts then
    // fall due at a steady rate while the gateways run the clock.
    stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let store = &store;
            async move {
                let last = now + SPREAD_MS * i as u64 / (n - 1).max(1);
                store
                    .create_session(id, last, now + 24 * 3_600_000, "", "bench", "{}", false)
                    .await?;
                store
                    .touch_indexes(id, last, None, Some(last + WARNING_MS))
                    .await
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<()>>()
        .await
        .map_err(|e| format!("filing the sessions: {e}"))?;
    // Each session must be filed before its warning falls due, or the run would measure
    // the filing, not the clock.
    let took = filing.elapsed();
    eprintln!("filed {n} sessions in {:.1} s", took.as_secs_f64());
    if took >= Duration::from_millis(WARNING_MS) {
        return Err(format!(
            "lifecycle: filing took {took:?}, longer than the warning"
        ));
    }

    let deadline = Instant::now() + Duration::from_millis(SPREAD_MS + TIMEOUT_MS + 60_000);
    let mut waiting: Vec<String> = ids.clone();
    while !waiting.is_empty() {
        let rows = meta_fields(&store, &waiting, &["inactive_at"]).await?;
        waiting = waiting
            .into_iter()
            .zip(rows)
            .filter(|(_, row)| row[0].is_none())
            .map(|(id, _)| id)
            .collect();
        eprintln!("{}/{n} inactive", n as usize - waiting.len());
        if Instant::now() > deadline {
            return Err(format!(
                "lifecycle: {} sessions still active past the deadline",
                waiting.len()
            ));
        }
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    let rows = meta_fields(&store, &ids, &["last_activity", "warned_at", "inactive_at"]).await?;
    let late = |at: &Option<u64>, last: &Option<u64>, after: u64| {
        Some((*at)? as i64 - (*last)? as i64 - after as i64)
    };
    let warned: Vec<i64> = rows
        .iter()
        .filter_map(|r| late(&r[1], &r[0], WARNING_MS))
        .collect();
    let inactive: Vec<i64> = rows
        .iter()
        .filter_map(|r| late(&r[2], &r[0], TIMEOUT_MS))
        .collect();
    let mut announced = BTreeMap::new();
    for g in &gateways {
        for (kind, count) in transitions(&g.get("/metrics").await.1) {
            *announced.entry(kind).or_insert(0) += count;
        }
    }
    let report = LifecycleReport {
        sessions: n,
        warned: warned.len(),
        inactive: inactive.len(),
        warning_lateness: Lateness::of(warned),
        inactive_lateness: Lateness::of(inactive),
        announced,
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    b.write(&format!("lifecycle-{}k.json", n / 1000), &text)?;
    eprint!("{text}");
    drop(gateways);
    drop(redis);
    Ok(())
}

/// `fields` of each session's meta hash (named by the gateway's own key layout), in
/// pipelines of 5,000.
async fn meta_fields(
    store: &Store,
    ids: &[String],
    fields: &[&str],
) -> Result<Vec<Vec<Option<u64>>>> {
    let client = store.pool().next();
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(5000) {
        let pipe = client.pipeline();
        for id in chunk {
            let _: () = pipe
                .hmget(store.keys().session(id).meta, fields.to_vec())
                .await
                .map_err(|e| e.to_string())?;
        }
        let replies: Vec<Vec<Option<u64>>> = pipe.all().await.map_err(|e| e.to_string())?;
        rows.extend(replies);
    }
    Ok(rows)
}

/// `roomcast_lifecycle_transitions_total` by its first label's value.
fn transitions(scrape: &str) -> Vec<(String, u64)> {
    scrape
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("roomcast_lifecycle_transitions_total{")?;
            let kind = rest.split('"').nth(1)?;
            let count = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((kind.to_string(), count as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_picks_the_nearest_rank_at_each_quantile() {
        let l = Lateness::of((1..=100).rev().collect()).expect("values");
        assert_eq!(
            l,
            Lateness {
                p50_ms: 51,
                p99_ms: 100,
                max_ms: 100,
                count: 100
            }
        );
        assert_eq!(Lateness::of(Vec::new()), None);
    }

    #[test]
    fn transitions_are_counted_by_kind() {
        let scrape = "# HELP x\n\
            roomcast_lifecycle_transitions_total{kind=\"expiring\"} 7\n\
            roomcast_lifecycle_transitions_total{kind=\"inactive\"} 5\n\
            roomcast_lifecycle_other{kind=\"inactive\"} 9\n";
        assert_eq!(
            transitions(scrape),
            vec![("expiring".to_string(), 7), ("inactive".to_string(), 5)]
        );
    }
}
