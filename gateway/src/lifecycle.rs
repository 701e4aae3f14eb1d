//! The session lifecycle clock: inactivity warnings, inactivity timeouts and the maximum
//! lifetime, for every session, from every instance, each event exactly once.
//!
//! Owns no session. Every instance runs the same loop: pick candidates from the shared
//! indexes (`rc:sessions:live` by last activity, `rc:sessions:expiry` by end of life) and
//! run `session_sweep.lua` on each; the script decides and announces atomically on the
//! session's slot, so three instances sweeping the same session produce one event.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics as m;
use crate::util::now_ms;
use crate::App;

/// Sessions checked per tick.
const BATCH: i64 = 500;

/// How often to sweep: a quarter of the warning threshold, between 50 ms and 5 s.
pub fn period(warning: Duration) -> Duration {
    (warning / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// Runs until shutdown.
pub async fn sweeper(app: Arc<App>) {
    let mut tick = tokio::time::interval(period(app.config.inactivity_warning));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep_once(&app).await {
            tracing::debug!(error = %e, "lifecycle sweep failed");
        }
    }
}

async fn sweep_once(app: &App) -> Result<(), crate::store::StoreError> {
    let config = &app.config;
    let now = now_ms();
    // Sessions idle past both their history and their lifetime have no keys left.
    let horizon =
        now.saturating_sub(config.history_ttl.max(config.max_lifetime).as_millis() as u64);
    app.store.prune_sessions(horizon).await?;
    let candidates = app
        .store
        .sweep_candidates(now, config.inactivity_warning, BATCH)
        .await?;
    for id in candidates {
        let (outcome, last, status) = app
            .store
            .sweep(
                &id,
                now,
                config.inactivity_warning,
                config.inactivity_timeout,
            )
            .await?;
        match outcome.as_str() {
            "warned" => {
                m::lifecycle_transition("expiring");
                tracing::info!(session = %id, "session expiring: warning sent");
            }
            "inactive" => {
                m::lifecycle_transition("inactive");
                tracing::info!(session = %id, "session inactive");
                app.store.untrack(&id, true, false).await?;
            }
            "ended" => {
                m::lifecycle_transition("ended");
                tracing::info!(session = %id, "session reached its maximum lifetime");
                app.store.untrack(&id, true, true).await?;
            }
            "gone" => app.store.untrack(&id, true, true).await?,
            // Another instance (or a REST call) changed it first.
            "unchanged" => app.store.untrack(&id, true, status == "ended").await?,
            // Still active: the index lagged behind the session's real last activity.
            _ => {
                let expires = now + config.max_lifetime.as_millis() as u64;
                app.store.touch_indexes(&id, last, expires, None).await?;
            }
        }
    }
    Ok(())
}
