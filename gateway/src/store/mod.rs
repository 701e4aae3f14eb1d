//! The Redis store: every command the gateway sends on its command pool.
//!
//! Owns the fred pool, the Lua scripts of `redis/` (loaded with `include_str!`, called by
//! EVALSHA, reloaded on NOSCRIPT), the mapping of Redis failures to [`StoreError`], and
//! whether Redis is known to be down (commands then fail at once). This file holds the
//! realtime path (publish, join, leave, presence, history) and the node registry;
//! `sessions` the session model, `indexes` the indexes that span sessions, `events` the
//! webhook events, `limits` the rate limits. Pub/sub
//! subscriptions are not here but in `bus`; key names come from `keys`.

mod events;
mod indexes;
mod limits;
mod presence;
mod sessions;
#[cfg(test)]
mod tests;
pub mod tls;

pub use events::{Claim, DeadLetter, StoredEvent};
pub use sessions::{LifecycleEvent, SessionMeta, SessionStatus, SweepOutcome, Swept, Transition};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Pool;
use fred::error::ErrorKind;
use fred::interfaces::{
    ClientLike, ClusterInterface, HashesInterface, LuaInterface, PubsubInterface, ServerInterface,
    SortedSetsInterface,
};
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::{Builder, Value};
use tracing::Instrument;

use crate::config::{Config, Rate};
use crate::envelope::EntryTail;
use crate::keys::{bucket_of, Keys, INDEX_BUCKETS};
use crate::metrics as m;
use crate::ratelimit::{Decision, Scope};

/// Why a Redis operation failed, as the rest of the gateway needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or did not answer in time: the client may retry.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The session was ended; nothing can be written to it.
    #[error("session ended")]
    SessionEnded,
    /// The session is resolved: readable, not writable until resumed.
    #[error("session resolved")]
    SessionResolved,
    /// The session does not exist (and the operation does not create it).
    #[error("no such session")]
    NoSuchSession,
    /// Durable mode: the write is on the primary, but fewer replicas than asked confirmed
    /// it in time. It may or may not survive a failover.
    #[error("stored, but only {confirmed} of {wanted} replicas confirmed it in time: it may be lost in a failover, and a retry may store it twice")]
    Unreplicated { confirmed: i64, wanted: i64 },
    /// Redis answered something we did not expect (a bug or a foreign key).
    #[error("redis error: {0}")]
    Internal(String),
}

/// What a client is told of a [`StoreError`], over REST and WebSocket alike: the code, a
/// message safe to show, and whether retrying later may work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub code: roomcast_shared::ErrorCode,
    pub message: String,
    pub retry: bool,
}

impl StoreError {
    /// The one mapping of store failures to what clients see (each surface turns it into
    /// its own shape: a status, an `error` frame). Logs what the client is not shown.
    pub fn told(self) -> Told {
        use roomcast_shared::ErrorCode as C;
        let (code, message, retry) = match self {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "redis unavailable");
                (
                    C::Unavailable,
                    "storage unavailable, retry later".to_string(),
                    true,
                )
            }
            e @ StoreError::Unreplicated { .. } => (C::Unavailable, e.to_string(), true),
            StoreError::SessionEnded => (C::SessionEnded, "the session has ended".into(), false),
            StoreError::NoSuchSession => (C::NotFound, "no such session".into(), false),
            StoreError::SessionResolved => (
                C::Forbidden,
                "the session is resolved; resume it before writing".into(),
                false,
            ),
            StoreError::Internal(detail) => {
                tracing::error!(error = %detail, "redis error");
                (C::Internal, "internal error".into(), false)
            }
        };
        Told {
            code,
            message,
            retry,
        }
    }
}

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        match e.kind() {
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing => {
                StoreError::Unavailable(e.to_string())
            }
            ErrorKind::Cluster if e.details().contains("CLUSTERDOWN") => {
                StoreError::Unavailable(e.to_string())
            }
            _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// The Lua scripts, compiled into the binary.
struct Scripts {
    publish: Lua,
    /// `publish_limits.lua` in front of `publish.lua`: the limits and the publish as one.
    publish_limited: Lua,
    join: Lua,
    leave: Lua,
    presence_refresh: Lua,
    presence_set: Lua,
    history: Lua,
    fork: Lua,
    session_create: Lua,
    session_transition: Lua,
    session_sweep: Lua,
    due_claim: Lua,
    due_reschedule: Lua,
    owned_claim: Lua,
    node_prune: Lua,
    ratelimit: Lua,
    events_claim: Lua,
    events_advance: Lua,
}

/// A compiled script, and whether it records webhook events.
struct Lua {
    script: Script,
    /// `events.lua` is in front of it and its body is wrapped so that it answers
    /// `{events recorded, its own reply}`: [`Store::eval_built`] counts the first (the
    /// `roomcast_webhook_events_recorded_total` metric) and hands on the second.
    records: bool,
}

/// A script that records webhook events: `events.lua` in front of it, its body a
/// function whose reply goes out with the count `record_event` kept.
macro_rules! recording {
    ($($file:literal),+) => {
        Lua {
            script: Script::from_lua(concat!(
                include_str!("../../../redis/events.lua"),
                "local function recording_body()\n",
                $(include_str!($file),)+
                "\nend\nlocal reply = recording_body()\nreturn {events_recorded, reply}\n"
            )),
            records: true,
        }
    };
}

/// A script that records nothing.
macro_rules! plain {
    ($file:literal) => {
        Lua {
            script: Script::from_lua(include_str!($file)),
            records: false,
        }
    };
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            publish: recording!("../../../redis/publish.lua"),
            publish_limited: recording!(
                "../../../redis/publish_limits.lua",
                "../../../redis/publish.lua"
            ),
            join: recording!("../../../redis/join.lua"),
            leave: recording!("../../../redis/leave.lua"),
            presence_refresh: recording!("../../../redis/presence_refresh.lua"),
            presence_set: recording!("../../../redis/presence_set.lua"),
            history: plain!("../../../redis/history.lua"),
            fork: plain!("../../../redis/fork.lua"),
            session_create: recording!("../../../redis/session_create.lua"),
            session_transition: recording!("../../../redis/session_transition.lua"),
            session_sweep: recording!("../../../redis/session_sweep.lua"),
            due_claim: plain!("../../../redis/due_claim.lua"),
            due_reschedule: plain!("../../../redis/due_reschedule.lua"),
            owned_claim: plain!("../../../redis/owned_claim.lua"),
            node_prune: plain!("../../../redis/node_prune.lua"),
            ratelimit: plain!("../../../redis/ratelimit.lua"),
            events_claim: plain!("../../../redis/events_claim.lua"),
            events_advance: plain!("../../../redis/events_advance.lua"),
        }
    }
}

/// How long a session's meta (and its join code) outlives the end of its lifetime: long
/// enough for the lifecycle clock to find it and announce the end, and for late joins and
/// writes to be told `session_ended` (410 for the code) instead of silently creating a new
/// session under the same id.
pub const TOMBSTONE: Duration = Duration::from_secs(3600);

/// What `publish.lua` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The session was inactive and this publish made it active again.
    pub reactivated: bool,
    /// The session did not exist and this publish created it.
    pub created: bool,
    /// Its idempotency key was stored within the window: nothing was written and `seq` is
    /// the first one's.
    pub repeat: bool,
    /// The id of the message this one follows (the entry's `prev`; empty for the first of
    /// a numbering, and for a repeat): with it the publisher's instance knows the whole
    /// stored entry and can deliver it without waiting for pub/sub.
    pub prev: String,
}

/// One sliding-window limit a publish is counted against: `scope`'s log for `key`.
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    pub scope: Scope,
    pub key: &'a str,
    pub rate: Rate,
}

/// What `join.lua` answers.
#[derive(Debug)]
pub struct JoinReply {
    pub seq: u64,
    /// Stored entries after `since`, newest first.
    pub history: Vec<Bytes>,
    /// Member infos (msgpack), the joiner included.
    pub members: Vec<Bytes>,
    /// This join created the session (implicit creation).
    pub created: bool,
    /// The session's numbering (see `ServerFrame::Joined::epoch`).
    pub epoch: String,
    /// The join's `epoch` named the current numbering (or it named none), and its
    /// `since_id` the message stored at `since` (or it named none).
    pub same_numbering: bool,
    /// The id of the message at `seq` (empty when unknown): where the joiner's stream
    /// starts.
    pub tip: String,
}

/// What `history.lua` read: the current seq, the stored entries after the `since` asked
/// for (newest first), and the numbering they belong to.
#[derive(Debug, Clone, Default)]
pub struct HistoryReply {
    pub seq: u64,
    pub entries: Vec<Bytes>,
    pub epoch: String,
    /// The id of the message at `seq` (empty when unknown).
    pub tip: String,
}

/// Arguments of a join.
#[derive(Debug)]
pub struct JoinArgs<'a> {
    pub client_id: &'a str,
    pub info: &'a [u8],
    pub expiry_ms: u64,
    pub now_ms: u64,
    pub since: Option<u64>,
    /// The numbering `since` belongs to; `None` trusts `since` as it is.
    pub epoch: Option<&'a str>,
    /// The id of the message the joiner saw at `since`; `None` skips that check.
    pub since_id: Option<&'a str>,
    pub presence_list_max: u32,
    /// Create the session when it does not exist (otherwise `NoSuchSession`).
    pub create: bool,
    /// Whether the join is activity (a writer's) or a read (an observer's).
    pub activity: bool,
    /// The joining user, recorded as the owner of a session this join creates.
    pub owner: &'a str,
}

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

    /// Runs `lua` on a connection of the pool. The keys and arguments are cloned for each
    /// try (the retry after `NOSCRIPT` needs them again); the per-message path builds its
    /// own instead ([`Store::eval_built`]).
    async fn eval(
        &self,
        name: &'static str,
        lua: &Lua,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        self.eval_built(self.client()?, name, lua, || (keys.clone(), args.clone()))
            .await
    }

    /// Runs `lua` on `client` (a `WAIT` after it must use the same connection). `inputs`
    /// builds the keys and arguments, and builds them again only if Redis lost the script
    /// (`NOSCRIPT`, after a restart or a failover): a caller that can build them cheaply
    /// keeps no copy for that rare retry, where fred's `evalsha_with_reload` clones both,
    /// an allocation per key and argument (BENCHMARKS.md section 10).
    async fn eval_built(
        &self,
        client: &fred::clients::Client,
        name: &'static str,
        lua: &Lua,
        inputs: impl Fn() -> (Vec<String>, Vec<Value>),
    ) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = async {
            let (keys, args) = inputs();
            match client
                .evalsha::<Value, _, _, _>(lua.script.sha1().clone(), keys, args)
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    lua.script.load(client).await?;
                    let (keys, args) = inputs();
                    client
                        .evalsha::<Value, _, _, _>(lua.script.sha1().clone(), keys, args)
                        .await
                }
                result => result,
            }
        }
        .instrument(tracing::info_span!("redis", script = name))
        .await;
        m::redis_command(name, started.elapsed());
        Self::unwrap_recorded(name, lua, result?)
    }

    /// A recording script answers `{events recorded, its reply}` (see [`Lua`]): counts the
    /// events and hands on the reply. Other scripts' replies pass as they are.
    fn unwrap_recorded(name: &'static str, lua: &Lua, reply: Value) -> Result<Value, StoreError> {
        if !lua.records {
            return Ok(reply);
        }
        // {events recorded, reply}; a nil reply leaves the table one long.
        match reply {
            Value::Array(mut parts) if !parts.is_empty() => {
                let recorded = parts.first().and_then(Value::as_i64).unwrap_or(0);
                if recorded > 0 {
                    m::webhook_recorded(recorded as u64);
                }
                Ok(if parts.len() > 1 {
                    parts.swap_remove(1)
                } else {
                    Value::Null
                })
            }
            other => Err(StoreError::Internal(format!(
                "{name} answered {other:?}, not {{events recorded, reply}}"
            ))),
        }
    }

    /// Runs `publish.lua`: the message is stored and fanned out, or nothing happened.
    /// `traceparent` rides along in the pub/sub payload (not in history).
    pub async fn publish(
        &self,
        session: &str,
        tail: &EntryTail,
        now_ms: u64,
        traceparent: Option<&str>,
    ) -> Result<Published, StoreError> {
        match self
            .publish_limited(session, tail, now_ms, traceparent, None, &[])
            .await?
        {
            Ok(published) => Ok(published),
            Err(_) => Err(StoreError::Internal(
                "a publish without limits was refused by one".into(),
            )),
        }
    }

    /// [`Store::publish`] counted against sliding-window `limits` first: `Ok(Err(d))` when
    /// `d` refused it (then nothing was stored). Where every key is on one node the limits
    /// and the publish are one script (`publish_limits.lua` + `publish.lua`), and a refusal
    /// counts in no log; on a Cluster the logs are checked first, concurrently, with
    /// `ratelimit.lua`, and a log that admitted has counted the attempt even when another
    /// refused it. A publish with an idempotency `key` stored within
    /// `ROOMCAST_IDEMPOTENCY_WINDOW` is a repeat: nothing is written, the first one's seq
    /// is answered (and where the limits run in the same script, nothing is counted).
    pub async fn publish_limited(
        &self,
        session: &str,
        tail: &EntryTail,
        now_ms: u64,
        traceparent: Option<&str>,
        key: Option<&str>,
        limits: &[Limit<'_>],
    ) -> Result<Result<Published, Decision>, StoreError> {
        let trace = match traceparent {
            Some(tp) => rmp_serde::to_vec(tp).map_err(|e| StoreError::Internal(e.to_string()))?,
            None => Vec::new(),
        };
        let folded = if self.clustered { &[][..] } else { limits };
        if self.clustered && !limits.is_empty() {
            let checks = limits
                .iter()
                .map(|l| self.rate_check(l.scope, l.key, l.rate));
            for decision in futures_util::future::join_all(checks).await {
                let decision = decision?;
                if !decision.admitted {
                    return Ok(Err(decision));
                }
            }
        }
        self.events_intent(session, &[]).await?;
        let spec = self.events_spec();
        let inputs = || {
            let mut keys = self.keys.publish(session, key, folded.len());
            let mut args: Vec<Value> = Vec::with_capacity(10 + 3 * folded.len());
            args.extend([
                Value::Bytes(tail.bytes.clone()),
                self.history_size.into(),
                (self.ttl_ms as i64).into(),
                (now_ms as i64).into(),
                Value::Bytes(Bytes::copy_from_slice(&trace)),
                ((now_ms + self.max_lifetime_ms) as i64).into(),
                (TOMBSTONE.as_millis() as i64).into(),
                tail.id.as_str().into(),
                spec.clone(),
                key.map_or(Value::from(""), |_| (self.idempotency_ms as i64).into()),
            ]);
            for l in folded {
                keys.push(self.keys.rate_limit(l.scope.name(), l.key));
                args.push((l.rate.window.as_millis() as i64).into());
                args.push(i64::from(l.rate.count).into());
                args.push(crate::util::random_id(12).into());
            }
            (keys, args)
        };
        let (name, script) = if folded.is_empty() {
            ("publish", &self.scripts.publish)
        } else {
            ("publish_limited", &self.scripts.publish_limited)
        };
        let client = self.client()?;
        let reply = self.eval_built(client, name, script, inputs).await?;
        // {seq, reactivated, created, events recorded, repeat, prev} on success (a repeat
        // has no prev); a bare -1/-2 when the session is ended or resolved;
        // {-3, log, count, oldest, now} when a limit refused it.
        let (parts, prev): (Vec<i64>, String) = match reply {
            Value::Array(mut values) => {
                let prev = match values.get(5) {
                    Some(_) => values.swap_remove(5).into_string().unwrap_or_default(),
                    None => String::new(),
                };
                (values.iter().filter_map(Value::as_i64).collect(), prev)
            }
            other => (other.as_i64().into_iter().collect(), String::new()),
        };
        match parts[..] {
            [-1] => Err(StoreError::SessionEnded),
            [-2] => Err(StoreError::SessionResolved),
            [-4] => Err(StoreError::Internal(
                "the session's status is unknown: refused".into(),
            )),
            [-3, which, count, oldest, now] => {
                let limit = usize::try_from(which - 1)
                    .ok()
                    .and_then(|i| folded.get(i))
                    .ok_or_else(|| {
                        StoreError::Internal(format!("publish_limits.lua named log {which}"))
                    })?;
                Ok(Err(Decision::from_log(
                    limit.scope,
                    limit.rate,
                    false,
                    count.max(0) as u64,
                    oldest.max(0) as u64,
                    now.max(0) as u64,
                )))
            }
            [seq, reactivated, created, recorded, repeat] if seq > 0 => {
                if recorded > 0 {
                    self.events_recorded(session, &[]);
                }
                self.confirm_replicated(client, session).await?;
                Ok(Ok(Published {
                    seq: seq as u64,
                    reactivated: reactivated == 1,
                    created: created == 1,
                    repeat: repeat == 1,
                    prev,
                }))
            }
            _ => Err(StoreError::Internal(format!(
                "publish.lua answered {parts:?}"
            ))),
        }
    }

    /// Durable mode: `WAIT` on the connection that wrote, so the ack means the write is
    /// on `wait_replicas` replicas too. WAIT covers every earlier write of the connection,
    /// ours included. On a cluster the client holds a connection per primary: WAIT goes to
    /// the one that owns the session's slot, where the script ran.
    async fn confirm_replicated(
        &self,
        client: &fred::clients::Client,
        session: &str,
    ) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let owner = client.cached_cluster_state().and_then(|state| {
            let channel = self.keys.session_channel(session);
            state
                .get_server(fred::util::redis_keyslot(channel.as_bytes()))
                .cloned()
        });
        let confirmed: i64 = match owner {
            Some(server) => {
                client
                    .with_cluster_node(server)
                    .wait(self.wait_replicas, self.wait_timeout_ms)
                    .await?
            }
            None => {
                client
                    .wait(self.wait_replicas, self.wait_timeout_ms)
                    .await?
            }
        };
        m::redis_command("wait", started.elapsed());
        if confirmed < self.wait_replicas {
            m::publish_unreplicated();
            return Err(StoreError::Unreplicated {
                confirmed,
                wanted: self.wait_replicas,
            });
        }
        Ok(())
    }

    /// Runs `join.lua`.
    pub async fn join(&self, session: &str, a: JoinArgs<'_>) -> Result<JoinReply, StoreError> {
        let k = self.keys.session(session);
        let since = a.since.map(|s| s as i64).unwrap_or(-1);
        self.events_intent(
            session,
            &["session.created", "member.joined", "member.left"],
        )
        .await?;
        let reply = self
            .eval(
                "join",
                &self.scripts.join,
                vec![k.pres, k.pinfo, k.seq, k.hist, k.meta, k.channel, k.events],
                vec![
                    a.client_id.into(),
                    (a.expiry_ms as i64).into(),
                    Value::Bytes(Bytes::copy_from_slice(a.info)),
                    (a.now_ms as i64).into(),
                    since.into(),
                    self.history_size.into(),
                    (self.ttl_ms as i64).into(),
                    a.presence_list_max.into(),
                    ((a.now_ms + self.max_lifetime_ms) as i64).into(),
                    self.presence_events_max.into(),
                    (TOMBSTONE.as_millis() as i64).into(),
                    flag(a.create),
                    flag(a.activity),
                    a.owner.into(),
                    a.epoch.unwrap_or("").into(),
                    a.since_id.unwrap_or("").into(),
                    self.events_spec(),
                ],
            )
            .await?;
        self.events_recorded(
            session,
            &["session.created", "member.joined", "member.left"],
        );
        let mut parts = reply.into_array().into_iter();
        let seq = parts.next().and_then(|v| v.as_i64());
        match seq {
            Some(-1) => Err(StoreError::SessionEnded),
            Some(-2) => Err(StoreError::NoSuchSession),
            Some(seq) if seq >= 0 => Ok(JoinReply {
                seq: seq as u64,
                history: bytes_list(parts.next()),
                members: bytes_list(parts.next()),
                created: parts.next().and_then(|v| v.as_i64()) == Some(1),
                epoch: parts.next().and_then(|v| v.as_string()).unwrap_or_default(),
                same_numbering: parts.next().and_then(|v| v.as_i64()) != Some(0),
                tip: parts.next().and_then(|v| v.as_string()).unwrap_or_default(),
            }),
            _ => Err(StoreError::Internal("join.lua answered no seq".into())),
        }
    }

    /// Runs `leave.lua`; true when the member was present.
    pub async fn leave(&self, session: &str, client_id: &str) -> Result<bool, StoreError> {
        let k = self.keys.session(session);
        self.events_intent(session, &["member.left"]).await?;
        let reply = self
            .eval(
                "leave",
                &self.scripts.leave,
                vec![k.pres, k.pinfo, k.channel, k.rest, k.events],
                vec![
                    client_id.into(),
                    self.presence_events_max.into(),
                    (crate::util::now_ms() as i64).into(),
                    self.events_spec(),
                ],
            )
            .await?;
        if reply.as_i64() == Some(1) {
            self.events_recorded(session, &["member.left"]);
        }
        Ok(reply.as_i64() == Some(1))
    }

    /// Runs `presence_refresh.lua`; answers the listed ids that were no longer present and
    /// how many expired entries were swept.
    pub async fn refresh_presence(
        &self,
        session: &str,
        now_ms: u64,
        expiry_ms: u64,
        client_ids: impl Iterator<Item = String>,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let k = self.keys.session(session);
        let mut args: Vec<Value> = vec![
            (now_ms as i64).into(),
            (expiry_ms as i64).into(),
            (self.ttl_ms as i64).into(),
            self.presence_events_max.into(),
            self.events_spec(),
        ];
        args.extend(client_ids.map(Value::from));
        self.events_intent(session, &["member.left"]).await?;
        let reply = self
            .eval(
                "presence_refresh",
                &self.scripts.presence_refresh,
                vec![k.pres, k.pinfo, k.channel, k.seq, k.events],
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let missing = parts
            .next()
            .map(Value::into_array)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(|s| s.to_string()))
            .collect();
        let swept = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        if swept > 0 {
            self.events_recorded(session, &["member.left"]);
        }
        Ok((missing, swept))
    }

    /// Runs `presence_set.lua`: writes a member's info and announces it with `kind`
    /// (0: silently).
    pub async fn presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.presence_write(session, client_id, expiry_ms, info, kind, now_ms, None)
            .await
            .map(drop)
    }

    /// `presence_set.lua` for a REST member (join, activity): counted against `max` REST
    /// members per session. `Ok(Err(at))` when a new member is refused: `at` is when the
    /// soonest REST member expires (ms).
    #[allow(clippy::too_many_arguments)]
    pub async fn rest_presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
        max: u32,
    ) -> Result<Result<(), u64>, StoreError> {
        self.presence_write(session, client_id, expiry_ms, info, kind, now_ms, Some(max))
            .await
    }

    /// `presence_set.lua`, counting the member as a REST one when `rest_max` is given.
    #[allow(clippy::too_many_arguments)]
    async fn presence_write(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        kind: u8,
        now_ms: u64,
        rest_max: Option<u32>,
    ) -> Result<Result<(), u64>, StoreError> {
        let k = self.keys.session(session);
        let mut keys = vec![k.pres, k.pinfo, k.channel, k.meta, k.events];
        let args: Vec<Value> = vec![
            client_id.into(),
            (expiry_ms as i64).into(),
            Value::Bytes(Bytes::copy_from_slice(info)),
            i64::from(kind).into(),
            (self.ttl_ms as i64).into(),
            (now_ms as i64).into(),
            self.presence_events_max.into(),
            i64::from(rest_max.unwrap_or(0)).into(),
            self.events_spec(),
        ];
        if rest_max.is_some() {
            keys.push(k.rest);
        }
        if kind == 4 {
            self.events_intent(session, &["member.joined"]).await?;
        }
        let reply = self
            .eval("presence_set", &self.scripts.presence_set, keys, args)
            .await?;
        if kind == 4 {
            self.events_recorded(session, &["member.joined"]);
        }
        match reply {
            Value::Array(parts) => Ok(Err(parts
                .get(1)
                .and_then(Value::as_i64)
                .map_or(now_ms, |at| at.max(0) as u64))),
            _ => Ok(Ok(())),
        }
    }

    /// Runs `history.lua`: the current seq and the stored entries after `since`, newest
    /// first, with the numbering's epoch and tip.
    pub async fn history_since(
        &self,
        session: &str,
        since: u64,
    ) -> Result<HistoryReply, StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "history",
                &self.scripts.history,
                vec![k.seq, k.hist, k.meta],
                vec![(since as i64).into(), self.history_size.into()],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let seq = parts
            .next()
            .and_then(|v| v.as_i64())
            .ok_or_else(|| StoreError::Internal("history.lua answered no seq".into()))?;
        Ok(HistoryReply {
            seq: seq.max(0) as u64,
            entries: bytes_list(parts.next()),
            epoch: parts.next().and_then(|v| v.as_string()).unwrap_or_default(),
            tip: parts.next().and_then(|v| v.as_string()).unwrap_or_default(),
        })
    }

    /// Runs `fork.lua`: names a new numbering when the session's is still `epoch`, which a
    /// reader found forked. Answers the session's epoch afterwards.
    pub async fn fork(&self, session: &str, epoch: &str) -> Result<String, StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval("fork", &self.scripts.fork, vec![k.meta], vec![epoch.into()])
            .await?;
        Ok(reply.as_string().unwrap_or_default())
    }

    /// Publishes an ephemeral payload on a session's channel.
    pub async fn publish_event(&self, session: &str, payload: Vec<u8>) -> Result<(), StoreError> {
        let started = Instant::now();
        let channel = self.keys.session_channel(session);
        let result: Result<i64, _> = self
            .client()?
            .spublish(channel, Value::Bytes(payload.into()))
            .await;
        m::redis_command("publish_event", started.elapsed());
        result?;
        Ok(())
    }

    /// Records this node's heartbeat (in its bucket of the registry), then forgets nodes
    /// silent for `forget_after` and the connection counts of unregistered nodes, in every
    /// bucket (`node_prune.lua`; a bucket whose nodes all died has nobody else to clean it).
    pub async fn node_heartbeat(
        &self,
        node: &str,
        now_ms: u64,
        forget_after: Duration,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let _: i64 = self
            .client()?
            .zadd(
                self.keys.nodes(bucket_of(node)),
                None,
                None,
                false,
                false,
                (now_ms as f64, node),
            )
            .await?;
        let horizon = now_ms.saturating_sub(forget_after.as_millis() as u64) as i64;
        let prunes = (0..INDEX_BUCKETS).map(|bucket| {
            self.eval(
                "node_prune",
                &self.scripts.node_prune,
                vec![self.keys.nodes(bucket), self.keys.node_connections(bucket)],
                vec![horizon.into()],
            )
        });
        for pruned in futures_util::future::join_all(prunes).await {
            pruned?;
        }
        m::redis_command("node_heartbeat", started.elapsed());
        Ok(())
    }

    /// Removes this node from the registry (clean shutdown).
    pub async fn node_remove(&self, node: &str) -> Result<(), StoreError> {
        let client = self.client()?;
        let bucket = bucket_of(node);
        let _: i64 = client.zrem(self.keys.nodes(bucket), node).await?;
        let _: i64 = client
            .hdel(self.keys.node_connections(bucket), node)
            .await?;
        Ok(())
    }

    /// PING with a deadline: the readiness signal.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let started = Instant::now();
        let client = self.pool.next_connected();
        let result = tokio::time::timeout(timeout, client.ping::<String>(None)).await;
        m::redis_command("ping", started.elapsed());
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Unavailable("PING timed out".into())),
        }
    }

    /// Records this node's connection count for cluster stats.
    pub async fn node_connections(&self, node: &str, count: usize) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .hset(
                self.keys.node_connections(bucket_of(node)),
                (node, count as i64),
            )
            .await?;
        Ok(())
    }

    /// Live nodes (heartbeat within `within`) and their total connections, over every
    /// bucket of the registry.
    pub async fn cluster(&self, now_ms: u64, within: Duration) -> Result<(u64, u64), StoreError> {
        let since = now_ms.saturating_sub(within.as_millis() as u64) as f64;
        let pipe = self.client()?.pipeline();
        for bucket in 0..INDEX_BUCKETS {
            let _: () = pipe
                .zrangebyscore(self.keys.nodes(bucket), since, f64::INFINITY, false, None)
                .await?;
            let _: () = pipe.hgetall(self.keys.node_connections(bucket)).await?;
        }
        let replies: Vec<Value> = pipe.all().await?;
        let mut nodes = 0u64;
        let mut total = 0u64;
        for pair in replies.chunks(2) {
            let [live, counts] = pair else { continue };
            let live: Vec<String> = live.clone().convert()?;
            let counts: HashMap<String, i64> = counts.clone().convert()?;
            nodes += live.len() as u64;
            total += live
                .iter()
                .filter_map(|n| counts.get(n))
                .map(|c| (*c).max(0) as u64)
                .sum::<u64>();
        }
        Ok((nodes, total))
    }

    /// Publishes a payload on a user's channel; answers how many instances received it.
    pub async fn publish_user(&self, user: &str, payload: Vec<u8>) -> Result<u64, StoreError> {
        let started = Instant::now();
        let receivers: i64 = self
            .client()?
            .spublish(self.keys.user_channel(user), Value::Bytes(payload.into()))
            .await?;
        m::redis_command("publish_user", started.elapsed());
        Ok(receivers.max(0) as u64)
    }
}

/// A boolean script argument.
fn flag(on: bool) -> Value {
    if on { "1" } else { "0" }.into()
}

/// A Lua array of bulk strings (nil entries skipped) as byte buffers.
fn bytes_list(value: Option<Value>) -> Vec<Bytes> {
    value
        .map(Value::into_array)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !v.is_null())
        .filter_map(|v| match v {
            Value::Bytes(b) => Some(b),
            Value::String(s) => Some(s.into_inner()),
            _ => None,
        })
        .collect()
}
