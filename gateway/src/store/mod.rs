//! The Redis store: every command the gateway sends on its command pool.
//!
//! Owns the fred pool, the Lua scripts of `redis/` (loaded with `include_str!`, called by
//! EVALSHA, reloaded on NOSCRIPT), the mapping of Redis failures to [`StoreError`], and
//! whether Redis is known to be down (commands then fail at once). This file sets the
//! store up (`redis_builder`, [`Store`]); `realtime` holds the realtime path (publish,
//! join, leave, history), `presence` presence, `nodes` the node registry, `scripts` how
//! scripts run, `error` the failures, `sessions` the session model, `indexes` the
//! indexes that span sessions, `events` the webhook events, `limits` the rate limits.
//! Pub/sub subscriptions are not here but in `bus`; key names come from `keys`.

mod error;
mod events;
mod indexes;
mod limits;
mod nodes;
mod presence;
mod realtime;
mod scripts;
mod sessions;
#[cfg(test)]
mod tests;
pub mod tls;

pub use error::{StoreError, Told};
pub use events::{Claim, DeadLetter, StoredEvent};
pub use realtime::{HistoryReply, JoinArgs, JoinReply, Limit, Published};
use scripts::{bytes_list, flag, Scripts};
pub use sessions::{LifecycleEvent, SessionMeta, SessionStatus, SweepOutcome, Swept, Transition};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::Builder;

use crate::config::Config;
use crate::keys::Keys;

/// How long a session's meta (and its join code) outlives the end of its lifetime: long
/// enough for the lifecycle clock to find it and announce the end, and for late joins and
/// writes to be told `session_ended` (410 for the code) instead of silently creating a new
/// session under the same id.
pub const TOMBSTONE: Duration = Duration::from_secs(3600);

/// Builds the fred client configuration for the pool and the subscriber.
/// `broadcast_capacity` sizes fred's event channels, which are allocated up front per
/// client: large for the subscriber (its message stream), small for the command pool.
pub fn redis_builder(config: &Config, broadcast_capacity: usize) -> Result<Builder, StoreError> {
    let mut redis_config = RedisConfig::from_url(&config.redis_url)
        .map_err(|e| StoreError::Internal(format!("ROOMCAST_REDIS_URL: {e}")))?;
    // fred's reconnect policy covers only connections that were up once; without this a
    // gateway started before Redis (a pod scheduled first, Redis restarting) never
    // connects and stays not-ready for good.
    redis_config.fail_fast = false;
    // `rediss://`: our TLS settings (CA, client certificate, server name) replace fred's
    // default; a plaintext URL carries none (checked by `Config::validate`).
    if let Some(tls) = tls::client_config(config).map_err(StoreError::Internal)? {
        if let Some(name) = &config.redis_tls_server_name {
            tls::set_server_name(&mut redis_config.server, name);
        }
        redis_config.tls = Some(tls);
    }
    let timeout = config.redis_timeout;
    let mut builder = Builder::from_config(redis_config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            // A lagging pub/sub reader loses messages here; the bus counts and repairs it.
            p.broadcast_channel_capacity = broadcast_capacity;
        })
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
            c.internal_command_timeout = timeout;
            c.max_command_attempts = 2;
            // A Redis that stops answering (paused, partitioned) is dropped and reconnected.
            c.unresponsive.max_timeout = Some(timeout * 2);
            c.unresponsive.interval = (timeout / 2).max(Duration::from_millis(50));
        })
        // Retry forever, 50 ms doubling to 1 s: a blink of Redis costs at most a second.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
    Ok(builder)
}

/// The command side of Redis.
pub struct Store {
    pool: Pool,
    keys: Keys,
    scripts: Scripts,
    history_size: u32,
    ttl_ms: u64,
    max_lifetime_ms: u64,
    /// Sessions with more members get no presence events (see join.lua).
    presence_events_max: i64,
    /// How long a publish's idempotency key is remembered.
    idempotency_ms: u64,
    /// Durable mode: replicas that must confirm a publish (0: off), and for how long.
    wait_replicas: i64,
    wait_timeout_ms: i64,
    /// What the last readiness PING found. While it is false every command fails at once
    /// with `Unavailable` instead of waiting out its timeout and retries: a client learns
    /// of an outage the gateway already knows about in microseconds, not seconds.
    reachable: AtomicBool,
    /// Wakes the readiness monitor to PING now, after a pool connection was lost.
    recheck: tokio::sync::Notify,
    /// Redis Cluster: keys of different slots cannot meet in one script. (Tests set it on a
    /// standalone Redis to run the Cluster path there.)
    clustered: bool,
    /// Webhook events: recorded by the scripts when configured (`events`).
    events: Option<events::Recording>,
}

impl Store {
    pub fn new(pool: Pool, config: &Config) -> Self {
        Store {
            keys: Keys::new(&config.key_prefix),
            scripts: Scripts::new(),
            history_size: config.history_size,
            ttl_ms: config.history_ttl.as_millis() as u64,
            max_lifetime_ms: config.max_lifetime.as_millis() as u64,
            presence_events_max: i64::from(config.presence_events_max),
            idempotency_ms: config.idempotency_window.as_millis() as u64,
            wait_replicas: i64::from(config.redis_wait_replicas),
            wait_timeout_ms: config.redis_wait_timeout.as_millis() as i64,
            reachable: AtomicBool::new(true),
            recheck: tokio::sync::Notify::new(),
            clustered: pool.next().is_clustered(),
            events: events::Recording::new(config),
            pool,
        }
    }

    /// Records what the readiness PING found; answers the previous value.
    pub fn set_reachable(&self, ok: bool) -> bool {
        self.reachable.swap(ok, Ordering::AcqRel)
    }

    /// Whether the last readiness PING was answered.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// A pool connection reported an error (it was lost): until the PING it asks for
    /// says otherwise, commands fail at once instead of waiting out their timeout. Not on
    /// a Cluster, where one node's lost connection says nothing about the others.
    pub fn connection_lost(&self) {
        if self.clustered {
            return;
        }
        if self.set_reachable(false) {
            // The same line the monitor logs for a failed PING: one per change.
            tracing::warn!(
                cause = "a connection reported an error",
                "redis unreachable"
            );
        }
        self.recheck.notify_one();
    }

    /// Resolves when a lost connection asks for a PING now.
    pub async fn recheck_requested(&self) {
        self.recheck.notified().await
    }

    /// A pool connection for one command, or `Unavailable` at once when Redis is known to
    /// be down (see `reachable`).
    fn client(&self) -> Result<&fred::clients::Client, StoreError> {
        if self.is_reachable() {
            Ok(self.pool.next())
        } else {
            Err(StoreError::Unavailable(
                "redis is unreachable (the readiness check is failing)".into(),
            ))
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
