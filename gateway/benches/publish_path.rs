//! Publishes per second through the gateway's own publish path (`Store::publish`: fred's
//! pool, EVALSHA of publish.lua) against a running Redis, for scenario 5 of
//! `scripts/bench.sh`, which runs `redis-benchmark` with the same script next to it as the
//! ceiling.
//!
//! `cargo bench -p roomcast-gateway --bench publish_path -- REDIS_URL [SECONDS]
//! [CONCURRENCY] [SESSIONS] [WAIT_REPLICAS]`; prints one JSON line. `WAIT_REPLICAS` > 0
//! measures durable mode (`ROOMCAST_REDIS_WAIT_REPLICAS`: a WAIT after every publish);
//! scenario `durable` of `scripts/bench.sh` runs both against a primary with a replica. Without a URL (as under `cargo test
//! --all-targets`, which builds benches) it explains itself and exits 0.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use gateway::config::Config;
use gateway::envelope::encode_entry_tail;
use gateway::store::{redis_builder, Store};
use roomcast_shared::{From, Role};
use serde_json::json;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(url) = args
        .first()
        .filter(|u| u.starts_with("redis://") || u.starts_with("redis-cluster://"))
    else {
        eprintln!(
            "publish_path: give a redis:// or redis-cluster:// URL (see scripts/bench.sh publish-path)"
        );
        return;
    };
    let number = |i: usize, default: u64| {
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (seconds, concurrency, sessions) = (number(1, 10), number(2, 64), number(3, 100));
    let wait_replicas = number(4, 0);
    if let Err(e) = run(url, seconds, concurrency, sessions, wait_replicas).await {
        eprintln!("publish_path: {e}");
        std::process::exit(1);
    }
}

async fn run(
    url: &str,
    seconds: u64,
    concurrency: u64,
    sessions: u64,
    wait_replicas: u64,
) -> Result<(), String> {
    let wait = wait_replicas.to_string();
    let config = Config::from_pairs(&[
        ("redis-url", url),
        ("auth", "off"),
        ("redis-wait-replicas", &wait),
    ])
    .map_err(|e| e.to_string())?;
    let pool = redis_builder(&config, 32)
        .map_err(|e| e.to_string())?
        .build_pool(config.redis_pool)
        .map_err(|e| e.to_string())?;
    // Bounded: an unreachable Redis (or a cluster announcing no address) fails the run.
    tokio::time::timeout(Duration::from_secs(10), pool.init())
        .await
        .map_err(|_| format!("redis at {url} not reachable within 10 s"))?
        .map_err(|e| e.to_string())?;
    let store = Arc::new(Store::new(pool, &config));
    let from = From {
        client_id: "c0ffee0000000001".into(),
        user: "bench".into(),
        role: Role::Controller,
        name: None,
    };
    let tail =
        encode_entry_tail(1, &from, &json!({"pad": "x".repeat(64)})).map_err(|e| e.to_string())?;
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, tail, failed) = (store.clone(), tail.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            // Each acked publish's time to ack, in µs.
            let mut took: Vec<u32> = Vec::new();
            let mut i = t;
            while Instant::now() < end {
                let session = format!("pp-{}", i % sessions);
                i += concurrency;
                let sent = Instant::now();
                match store.publish(&session, &tail, now_ms(), None).await {
                    Ok(_) => took.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            took
        }));
    }
    let mut took: Vec<u32> = Vec::new();
    for task in tasks {
        took.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = took.len() as u64;
    took.sort_unstable();
    let quantile = |q: f64| -> f64 {
        if took.is_empty() {
            return 0.0;
        }
        let at = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        f64::from(took[at]) / 1e3
    };
    println!(
        "{}",
        json!({
            "publishes": ok,
            "failed": failed.load(Ordering::Relaxed),
            "seconds": elapsed,
            "publishes_per_s": ok as f64 / elapsed,
            // Little's law: with `concurrency` always in flight, the mean time per publish.
            "mean_ms": if ok > 0 { concurrency as f64 * elapsed * 1e3 / ok as f64 } else { 0.0 },
            "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99),
            "wait_replicas": wait_replicas,
            "concurrency": concurrency,
            "sessions": sessions,
            "redis_pool": config.redis_pool,
        })
    );
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
