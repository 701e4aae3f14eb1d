//! The session lifecycle clock: inactivity warnings, inactivity timeouts and the maximum
//! lifetime, for every session, from every instance, each event exactly once and on time.
//!
//! Owns no session. Sessions sit in a due index (`rc:sessions:due:{b<n>}`, split over
//! `INDEX_BUCKETS` keys so that on Redis Cluster it spreads over the shards) scored by
//! when the clock next needs to look at them; each tick visits every bucket. Every
//! instance runs the same loop: lease the sessions that are due (`due_claim.lua`, so
//! instances share the work instead of repeating it),
//! run `session_sweep.lua` on each, concurrently, and file each one's next due time
//! (`due_reschedule.lua`). The sweep script decides and announces atomically on the
//! session's slot, so even two instances sweeping the same session produce one event.
//! Activity does not touch the index: a session found still active is simply filed again
//! for its new due time, so a busy session costs the clock one look per warning period.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::keys::INDEX_BUCKETS;
use crate::metrics as m;
use crate::store::{StoreError, SweepOutcome};
use crate::util::now_ms;
use crate::App;

/// Sessions leased per claim.
const BATCH: usize = 256;
/// Sweep scripts in flight at once (they pipeline on the command pool).
const CONCURRENCY: usize = 64;
/// How long a claimed session is this instance's; an instance that dies mid-sweep gives
/// its claims back to the others after this.
const LEASE: Duration = Duration::from_secs(30);
/// Longest one tick keeps claiming before it lets the next tick start (and shutdown in).
const TICK_BUDGET: Duration = Duration::from_secs(5);

/// How often each instance looks for due sessions: a quarter of the warning threshold, at
/// most a second (the clock's lateness bound), at least 50 ms.
pub(crate) fn period(warning: Duration) -> Duration {
    (warning / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// When the clock first needs to look at a session that became active at `now`: its
/// inactivity warning, or its end of life if that comes first.
pub(crate) fn first_due(config: &crate::config::Config, now_ms: u64, expires_at: u64) -> u64 {
    (now_ms + config.inactivity_warning.as_millis() as u64).min(expires_at)
}

/// When the clock must look at a session next if a publish at `now` put it (back) under
/// the clock: a new one at its first warning, a reactivated one at once (the sweep then
/// files its exact next due time from its meta); `None` when nothing changed.
pub(crate) fn due_after_publish(
    config: &crate::config::Config,
    published: &crate::store::Published,
    now_ms: u64,
) -> Option<u64> {
    if published.created {
        let expires = now_ms + config.max_lifetime.as_millis() as u64;
        Some(first_due(config, now_ms, expires))
    } else if published.reactivated {
        Some(now_ms)
    } else {
        None
    }
}

/// Runs until shutdown.
pub(crate) async fn sweeper(app: Arc<App>) {
    let mut tick = tokio::time::interval(period(app.config.inactivity_warning));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = None::<std::time::Instant>;
    let mut round: u16 = 0;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The listing index needs pruning rarely; the clock runs every tick.
        let now = std::time::Instant::now();
        if prune_due(last_prune, now) {
            // Counted only when done: the first tick runs before the first readiness PING
            // (Redis counts as unreachable until then), and a failed prune must not wait a
            // whole period for its next try.
            match prune(&app).await {
                Ok(()) => last_prune = Some(now),
                Err(e) => tracing::debug!(error = %e, "session index prune failed"),
            }
        }
        match app.store.migrate_legacy_indexes().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "moved unbucketed index entries into buckets"),
            Err(e) => tracing::debug!(error = %e, "legacy index migration failed"),
        }
        let started = std::time::Instant::now();
        // Every bucket each tick, starting at a different one each time so that a tick
        // cut short by the budget does not always starve the same buckets.
        let first = round;
        round = next_round(round);
        for bucket in tick_buckets(first) {
            loop {
                match sweep_due(&app, bucket).await {
                    // A full batch means more may be due: keep going within the budget.
                    Ok(n) if more_this_tick(n, started.elapsed()) => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "lifecycle sweep failed");
                        break;
                    }
                }
            }
            if started.elapsed() >= TICK_BUDGET {
                break;
            }
        }
    }
}

/// How often the listing index is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Whether the listing index is due a prune: on the first tick, then every
/// [`PRUNE_EVERY`].
fn prune_due(last: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
}

/// The bucket the next tick starts at: each in turn.
fn next_round(round: u16) -> u16 {
    (round + 1) % INDEX_BUCKETS
}

/// Whether a bucket whose last claim leased `leased` sessions is claimed again in this
/// tick, `elapsed` into it: a full batch means more may be due, within the budget.
fn more_this_tick(leased: usize, elapsed: Duration) -> bool {
    leased == BATCH && elapsed < TICK_BUDGET
}

/// The buckets one tick visits: every one, once, from `first` on.
fn tick_buckets(first: u16) -> impl Iterator<Item = u16> {
    (0..INDEX_BUCKETS).map(move |offset| (first + offset) % INDEX_BUCKETS)
}

/// Drops sessions idle past both their history and their lifetime (their keys are gone)
/// from the listing index.
async fn prune(app: &App) -> Result<(), StoreError> {
    let config = &app.config;
    let horizon = now_ms().saturating_sub(
        (config.history_ttl.max(config.max_lifetime) + crate::store::TOMBSTONE).as_millis() as u64,
    );
    app.store.prune_sessions(horizon).await
}

/// Leases one batch of due sessions, sweeps them, files their next due times. Answers
/// how many it leased.
async fn sweep_due(app: &App, bucket: u16) -> Result<usize, StoreError> {
    let config = &app.config;
    let now = now_ms();
    let (lease, due) = app.store.claim_due(bucket, now, BATCH, LEASE).await?;
    let leased = due.len();
    if leased == 0 {
        return Ok(0);
    }
    let next: Vec<(String, u64)> = futures_util::stream::iter(due)
        .map(|(id, due_at)| async move {
            let swept = app
                .store
                .sweep(
                    &id,
                    now_ms(),
                    config.inactivity_warning,
                    config.inactivity_timeout,
                )
                .await;
            match swept {
                Ok(swept) => {
                    if let Some(label) = swept.outcome.transition() {
                        m::lifecycle_transition(label);
                        // How late the clock acted on what was due (the index score).
                        m::lifecycle_lag(now_ms().saturating_sub(due_at));
                        tracing::info!(session = %id, event = label, "session lifecycle");
                    }
                    if swept.outcome == SweepOutcome::Gone {
                        tracing::debug!(session = %id, "session keys expired");
                    }
                    (id, swept.next_due)
                }
                Err(e) => {
                    // Filed back at the time it was due: the next tick tries again.
                    tracing::debug!(session = %id, error = %e, "session sweep failed");
                    (id, due_at)
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    app.store.reschedule_due(lease, &next).await?;
    Ok(leased)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::{
        due_after_publish, first_due, more_this_tick, next_round, period, prune_due, tick_buckets,
        BATCH, PRUNE_EVERY, TICK_BUDGET,
    };
    use crate::config::Config;
    use crate::keys::INDEX_BUCKETS;
    use crate::store::Published;

    #[test]
    fn the_clock_ticks_at_a_quarter_of_the_warning_between_50_ms_and_a_second() {
        assert_eq!(period(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(
            period(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
        assert_eq!(period(Duration::from_secs(600)), Duration::from_secs(1));
    }

    #[test]
    fn a_session_is_first_due_at_its_warning_or_its_end_of_life_whichever_comes_first() {
        let config = Config::from_pairs(&[
            ("redis-url", "redis://127.0.0.1:1"),
            ("auth", "off"),
            ("inactivity-warning", "10m"),
            ("inactivity-timeout", "15m"),
            ("max-lifetime", "24h"),
        ])
        .unwrap();
        let now = 1_000_000;
        let warning = 600_000;
        assert_eq!(first_due(&config, now, u64::MAX), now + warning);
        assert_eq!(first_due(&config, now, now + 5_000), now + 5_000);

        let published = |created, reactivated| Published {
            seq: 1,
            created,
            reactivated,
            repeat: false,
            prev: String::new(),
        };
        assert_eq!(
            due_after_publish(&config, &published(true, false), now),
            Some(now + warning)
        );
        assert_eq!(
            due_after_publish(&config, &published(false, true), now),
            Some(now)
        );
        assert_eq!(
            due_after_publish(&config, &published(false, false), now),
            None
        );
    }

    #[test]
    fn the_index_is_pruned_on_the_first_tick_then_once_a_minute() {
        let start = std::time::Instant::now();
        assert!(prune_due(None, start));
        assert!(!prune_due(Some(start), start));
        assert!(!prune_due(
            Some(start),
            start + PRUNE_EVERY - Duration::from_millis(1)
        ));
        assert!(prune_due(Some(start), start + PRUNE_EVERY));
    }

    #[test]
    fn each_tick_starts_at_the_next_bucket_and_wraps() {
        let order: Vec<u16> = std::iter::successors(Some(0), |&r| Some(next_round(r)))
            .take(usize::from(INDEX_BUCKETS) + 1)
            .collect();
        let want: Vec<u16> = (0..INDEX_BUCKETS).chain([0]).collect();
        assert_eq!(order, want);
    }

    #[test]
    fn a_full_batch_is_followed_by_another_claim_within_the_budget() {
        let early = Duration::from_millis(10);
        assert!(more_this_tick(BATCH, early));
        assert!(!more_this_tick(BATCH - 1, early));
        assert!(!more_this_tick(0, early));
        assert!(!more_this_tick(BATCH, TICK_BUDGET));
        assert!(more_this_tick(
            BATCH,
            TICK_BUDGET - Duration::from_millis(1)
        ));
    }

    #[test]
    fn a_tick_visits_every_bucket_once_from_its_first() {
        for first in [0, 1, 2, INDEX_BUCKETS - 1] {
            let visited: Vec<u16> = tick_buckets(first).collect();
            assert_eq!(visited[0], first);
            let mut sorted = visited.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..INDEX_BUCKETS).collect::<Vec<_>>(),
                "from {first}"
            );
        }
    }
}
