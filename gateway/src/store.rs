//! The Redis store: every command the gateway sends on its command pool.
//!
//! Owns the fred pool, the Lua scripts of `redis/` (loaded with `include_str!`, called by
//! EVALSHA, reloaded on NOSCRIPT) and the mapping of Redis failures to [`StoreError`].
//! Pub/sub subscriptions are not here but in `bus`; key names come from `keys`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Pool;
use fred::error::ErrorKind;
use fred::interfaces::{
    ClientLike, HashesInterface, KeysInterface, ListInterface, PubsubInterface, SortedSetsInterface,
};
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::{Builder, Value};
use fred::types::{Expiration, SetOptions};
use tracing::Instrument;

use crate::config::{Config, Rate};
use crate::keys::Keys;
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
    /// Redis answered something we did not expect (a bug or a foreign key).
    #[error("redis error: {0}")]
    Internal(String),
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
    publish: Script,
    join: Script,
    leave: Script,
    presence_refresh: Script,
    presence_set: Script,
    history: Script,
    session_create: Script,
    session_transition: Script,
    session_sweep: Script,
    due_claim: Script,
    due_reschedule: Script,
    owned_claim: Script,
    ratelimit: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            publish: Script::from_lua(include_str!("../../redis/publish.lua")),
            join: Script::from_lua(include_str!("../../redis/join.lua")),
            leave: Script::from_lua(include_str!("../../redis/leave.lua")),
            presence_refresh: Script::from_lua(include_str!("../../redis/presence_refresh.lua")),
            presence_set: Script::from_lua(include_str!("../../redis/presence_set.lua")),
            history: Script::from_lua(include_str!("../../redis/history.lua")),
            session_create: Script::from_lua(include_str!("../../redis/session_create.lua")),
            session_transition: Script::from_lua(include_str!(
                "../../redis/session_transition.lua"
            )),
            session_sweep: Script::from_lua(include_str!("../../redis/session_sweep.lua")),
            due_claim: Script::from_lua(include_str!("../../redis/due_claim.lua")),
            due_reschedule: Script::from_lua(include_str!("../../redis/due_reschedule.lua")),
            owned_claim: Script::from_lua(include_str!("../../redis/owned_claim.lua")),
            ratelimit: Script::from_lua(include_str!("../../redis/ratelimit.lua")),
        }
    }
}

/// How long a session's meta (and its join code) outlives the end of its lifetime: long
/// enough for the lifecycle clock to find it and announce the end, and for late joins and
/// writes to be told `session_ended` (410 for the code) instead of silently creating a new
/// session under the same id.
pub const TOMBSTONE: Duration = Duration::from_secs(3600);

/// What `publish.lua` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The session was inactive and this publish made it active again.
    pub reactivated: bool,
    /// The session did not exist and this publish created it.
    pub created: bool,
}

impl Published {
    /// When the lifecycle clock must look at the session next, if this publish put it
    /// (back) under the clock: a new one at its first warning, a reactivated one at once
    /// (the sweep then files its exact next due time from its meta).
    pub fn due(&self, config: &Config, now_ms: u64) -> Option<u64> {
        if self.created {
            let expires = now_ms + config.max_lifetime.as_millis() as u64;
            Some(crate::lifecycle::first_due(config, now_ms, expires))
        } else if self.reactivated {
            Some(now_ms)
        } else {
            None
        }
    }
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
}

/// Arguments of a join.
#[derive(Debug)]
pub struct JoinArgs<'a> {
    pub client_id: &'a str,
    pub info: &'a [u8],
    pub expiry_ms: u64,
    pub now_ms: u64,
    pub since: Option<u64>,
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
    /// What the last readiness PING found. While it is false every command fails at once
    /// with `Unavailable` instead of waiting out its timeout and retries: a client learns
    /// of an outage the gateway already knows about in microseconds, not seconds.
    reachable: AtomicBool,
}

impl Store {
    pub fn new(pool: Pool, config: &Config) -> Self {
        Store {
            pool,
            keys: Keys::new(&config.key_prefix),
            scripts: Scripts::new(),
            history_size: config.history_size,
            ttl_ms: config.history_ttl.as_millis() as u64,
            max_lifetime_ms: config.max_lifetime.as_millis() as u64,
            presence_events_max: i64::from(config.presence_events_max),
            reachable: AtomicBool::new(true),
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

    async fn eval(
        &self,
        name: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = script
            .evalsha_with_reload::<Value, _, _>(self.client()?, keys, args)
            .instrument(tracing::info_span!("redis", script = name))
            .await;
        m::redis_command(name, started.elapsed());
        Ok(result?)
    }

    /// Runs `publish.lua`: the message is stored and fanned out, or nothing happened.
    /// `traceparent` rides along in the pub/sub payload (not in history).
    pub async fn publish(
        &self,
        session: &str,
        tail: Vec<u8>,
        now_ms: u64,
        traceparent: Option<&str>,
    ) -> Result<Published, StoreError> {
        let trace = match traceparent {
            Some(tp) => rmp_serde::to_vec(tp).map_err(|e| StoreError::Internal(e.to_string()))?,
            None => Vec::new(),
        };
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "publish",
                &self.scripts.publish,
                vec![k.seq, k.hist, k.meta, k.channel],
                vec![
                    Value::Bytes(tail.into()),
                    self.history_size.into(),
                    (self.ttl_ms as i64).into(),
                    (now_ms as i64).into(),
                    Value::Bytes(trace.into()),
                    ((now_ms + self.max_lifetime_ms) as i64).into(),
                    (TOMBSTONE.as_millis() as i64).into(),
                ],
            )
            .await?;
        // {seq, reactivated, created} on success; a bare -1/-2 on refusal.
        let parts: Vec<i64> = match reply {
            Value::Array(values) => values.iter().filter_map(Value::as_i64).collect(),
            other => other.as_i64().into_iter().collect(),
        };
        match parts[..] {
            [-1] => Err(StoreError::SessionEnded),
            [-2] => Err(StoreError::SessionResolved),
            [seq, reactivated, created] if seq > 0 => Ok(Published {
                seq: seq as u64,
                reactivated: reactivated == 1,
                created: created == 1,
            }),
            _ => Err(StoreError::Internal(format!(
                "publish.lua answered {parts:?}"
            ))),
        }
    }

    /// Runs `join.lua`.
    pub async fn join(&self, session: &str, a: JoinArgs<'_>) -> Result<JoinReply, StoreError> {
        let k = self.keys.session(session);
        let since = a.since.map(|s| s as i64).unwrap_or(-1);
        let reply = self
            .eval(
                "join",
                &self.scripts.join,
                vec![k.pres, k.pinfo, k.seq, k.hist, k.meta, k.channel],
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
                ],
            )
            .await?;
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
            }),
            _ => Err(StoreError::Internal("join.lua answered no seq".into())),
        }
    }

    /// Runs `leave.lua`; true when the member was present.
    pub async fn leave(&self, session: &str, client_id: &str) -> Result<bool, StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "leave",
                &self.scripts.leave,
                vec![k.pres, k.pinfo, k.channel],
                vec![client_id.into(), self.presence_events_max.into()],
            )
            .await?;
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
        ];
        args.extend(client_ids.map(Value::from));
        let reply = self
            .eval(
                "presence_refresh",
                &self.scripts.presence_refresh,
                vec![k.pres, k.pinfo, k.channel, k.seq],
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
        let k = self.keys.session(session);
        self.eval(
            "presence_set",
            &self.scripts.presence_set,
            vec![k.pres, k.pinfo, k.channel, k.meta],
            vec![
                client_id.into(),
                (expiry_ms as i64).into(),
                Value::Bytes(Bytes::copy_from_slice(info)),
                i64::from(kind).into(),
                (self.ttl_ms as i64).into(),
                (now_ms as i64).into(),
                self.presence_events_max.into(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Runs `history.lua`: the current seq and the stored entries after `since`, newest
    /// first.
    pub async fn history_since(
        &self,
        session: &str,
        since: u64,
    ) -> Result<(u64, Vec<Bytes>), StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "history",
                &self.scripts.history,
                vec![k.seq, k.hist],
                vec![(since as i64).into(), self.history_size.into()],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let seq = parts
            .next()
            .and_then(|v| v.as_i64())
            .ok_or_else(|| StoreError::Internal("history.lua answered no seq".into()))?;
        Ok((seq.max(0) as u64, bytes_list(parts.next())))
    }

    /// Publishes an ephemeral payload on a session's channel.
    pub async fn publish_event(&self, session: &str, payload: Vec<u8>) -> Result<(), StoreError> {
        let started = Instant::now();
        let channel = self.keys.session_channel(session);
        let result: Result<i64, _> = self
            .client()?
            .publish(channel, Value::Bytes(payload.into()))
            .await;
        m::redis_command("publish_event", started.elapsed());
        result?;
        Ok(())
    }

    /// Records this node's heartbeat and forgets nodes silent for `forget_after`.
    pub async fn node_heartbeat(
        &self,
        node: &str,
        now_ms: u64,
        forget_after: Duration,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let key = self.keys.nodes();
        let client = self.client()?;
        let _: i64 = client
            .zadd(&key, None, None, false, false, (now_ms as f64, node))
            .await?;
        let horizon = now_ms.saturating_sub(forget_after.as_millis() as u64) as f64;
        let _: i64 = client
            .zremrangebyscore(&key, f64::NEG_INFINITY, horizon)
            .await?;
        m::redis_command("node_heartbeat", started.elapsed());
        Ok(())
    }

    /// Removes this node from the registry (clean shutdown).
    pub async fn node_remove(&self, node: &str) -> Result<(), StoreError> {
        let client = self.client()?;
        let _: i64 = client.zrem(self.keys.nodes(), node).await?;
        let _: i64 = client.hdel(self.keys.node_connections(), node).await?;
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

/// What a lifecycle transition found.
#[derive(Debug)]
pub enum Transition {
    /// Done; the session's fields after the change.
    Done(HashMap<String, String>),
    Missing,
    /// The current status does not allow the change.
    Conflict(String),
}

/// What the lifecycle clock did to one session (`session_sweep.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// `session/expiring` was sent.
    Warned,
    /// It went inactive (`session/updated`, reason `inactive`).
    Inactive,
    /// It reached its maximum lifetime (`session/ended`).
    Ended,
    /// Nothing was due yet.
    Active,
    /// Not active any more; nothing to do until its end of life.
    Unchanged,
    /// Its keys expired.
    Gone,
}

impl SweepOutcome {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "warned" => SweepOutcome::Warned,
            "inactive" => SweepOutcome::Inactive,
            "ended" => SweepOutcome::Ended,
            "active" => SweepOutcome::Active,
            "unchanged" => SweepOutcome::Unchanged,
            "gone" => SweepOutcome::Gone,
            _ => return None,
        })
    }

    /// The metric and log label of an outcome that changed something.
    pub fn transition(self) -> Option<&'static str> {
        match self {
            SweepOutcome::Warned => Some("expiring"),
            SweepOutcome::Inactive => Some("inactive"),
            SweepOutcome::Ended => Some("ended"),
            _ => None,
        }
    }
}

/// One session's sweep: what happened, and when it is next due (0: never).
#[derive(Debug, Clone, Copy)]
pub struct Swept {
    pub outcome: SweepOutcome,
    pub next_due: u64,
}

/// A lifecycle event to announce with a transition.
#[derive(Debug, Clone, Copy)]
pub struct LifecycleEvent<'a> {
    pub event: &'a str,
    pub reason: &'a str,
    pub at: u64,
}

/// Sessions, codes, indexes and the REST reads.
impl Store {
    /// Claims a join code for a session; false when the code is taken.
    pub async fn claim_code(
        &self,
        code: &str,
        session: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .client()?
            .set(
                self.keys.code(code),
                session,
                Some(Expiration::PX(ttl_ms.max(1) as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(set.is_some())
    }

    pub async fn code_session(&self, code: &str) -> Result<Option<String>, StoreError> {
        Ok(self.client()?.get(self.keys.code(code)).await?)
    }

    /// How long a join code must live for a session of `lifetime`: as long as the
    /// session's meta can (its lifetime, then the longer of the tombstone and the history
    /// TTL that a last write just before the end starts), so an ended session's code
    /// answers 410 until its keys are gone.
    pub fn code_ttl(&self, lifetime: Duration) -> Duration {
        lifetime + TOMBSTONE.max(Duration::from_millis(self.ttl_ms))
    }

    /// Runs `session_create.lua`; false when the id exists.
    pub async fn create_session(
        &self,
        session: &str,
        now_ms: u64,
        expires_at: u64,
        code: &str,
        owner: &str,
        metadata_json: &str,
    ) -> Result<bool, StoreError> {
        let k = self.keys.session(session);
        let ttl = self
            .ttl_ms
            .max(expires_at.saturating_sub(now_ms) + TOMBSTONE.as_millis() as u64);
        let reply = self
            .eval(
                "session_create",
                &self.scripts.session_create,
                vec![k.meta],
                vec![
                    (now_ms as i64).into(),
                    (expires_at as i64).into(),
                    (ttl as i64).into(),
                    code.into(),
                    owner.into(),
                    metadata_json.into(),
                ],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// The session's meta fields; `None` when it does not exist.
    pub async fn session_fields(
        &self,
        session: &str,
    ) -> Result<Option<HashMap<String, String>>, StoreError> {
        let fields: HashMap<String, String> = self
            .client()?
            .hgetall(self.keys.session(session).meta)
            .await?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// Runs `session_transition.lua`.
    pub async fn transition(
        &self,
        session: &str,
        now_ms: u64,
        allowed: &str,
        to: Option<&str>,
        event: Option<LifecycleEvent<'_>>,
        fields: &[(&str, String)],
    ) -> Result<Transition, StoreError> {
        let k = self.keys.session(session);
        let mut args: Vec<Value> = vec![
            (now_ms as i64).into(),
            allowed.into(),
            to.unwrap_or("").into(),
            event.map(|e| e.event).unwrap_or("").into(),
            event.map(|e| e.reason).unwrap_or("").into(),
            (event.map(|e| e.at).unwrap_or(0) as i64).into(),
        ];
        for (field, value) in fields {
            args.push((*field).into());
            args.push(value.as_str().into());
        }
        let reply = self
            .eval(
                "session_transition",
                &self.scripts.session_transition,
                vec![k.meta, k.channel],
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        match parts.next().and_then(|v| v.as_i64()) {
            Some(1) => {
                let flat: Vec<String> = parts.filter_map(|v| v.as_string()).collect();
                Ok(Transition::Done(
                    flat.chunks(2)
                        .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
                        .collect(),
                ))
            }
            Some(-1) => Ok(Transition::Missing),
            Some(-2) => Ok(Transition::Conflict(
                parts.next().and_then(|v| v.as_string()).unwrap_or_default(),
            )),
            _ => Err(StoreError::Internal(
                "session_transition.lua answered nothing".into(),
            )),
        }
    }

    /// Runs `session_sweep.lua` on one session.
    pub async fn sweep(
        &self,
        session: &str,
        now_ms: u64,
        warning: Duration,
        timeout: Duration,
    ) -> Result<Swept, StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "session_sweep",
                &self.scripts.session_sweep,
                vec![k.meta, k.channel],
                vec![
                    (now_ms as i64).into(),
                    (warning.as_millis() as i64).into(),
                    (timeout.as_millis() as i64).into(),
                ],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let outcome = parts.next().and_then(|v| v.as_string()).unwrap_or_default();
        let outcome = SweepOutcome::parse(&outcome).ok_or_else(|| {
            StoreError::Internal(format!("session_sweep.lua answered `{outcome}`"))
        })?;
        let _last = parts.next();
        let _status = parts.next();
        let next_due = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(Swept { outcome, next_due })
    }

    /// Takes up to `limit` sessions whose lifecycle check is due, leased for `lease` so
    /// other instances take others. Answers the lease score and (id, due time) pairs.
    pub async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease: Duration,
    ) -> Result<(u64, Vec<(String, u64)>), StoreError> {
        let reply = self
            .eval(
                "due_claim",
                &self.scripts.due_claim,
                vec![self.keys.sessions_due()],
                vec![
                    (now_ms as i64).into(),
                    (limit as i64).into(),
                    (lease.as_millis() as i64).into(),
                ],
            )
            .await?;
        let flat = reply.into_array();
        let due = flat
            .chunks(2)
            .filter_map(|pair| {
                let id = pair.first()?.as_string()?;
                let at = pair.get(1)?.as_f64()?;
                Some((id, at.max(0.0) as u64))
            })
            .collect();
        Ok((now_ms + lease.as_millis() as u64, due))
    }

    /// Files the next due time of sessions leased by [`Store::claim_due`] (0: drop them).
    pub async fn reschedule_due(
        &self,
        lease_score: u64,
        next: &[(String, u64)],
    ) -> Result<(), StoreError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Value> = Vec::with_capacity(1 + 2 * next.len());
        args.push((lease_score as i64).into());
        for (id, at) in next {
            args.push(id.as_str().into());
            args.push((*at as i64).into());
        }
        self.eval(
            "due_reschedule",
            &self.scripts.due_reschedule,
            vec![self.keys.sessions_due()],
            args,
        )
        .await?;
        Ok(())
    }

    /// Puts a session under the lifecycle clock at `due_ms`, unless it is already due
    /// sooner (a new or reactivated session).
    pub async fn schedule(&self, session: &str, due_ms: u64) -> Result<(), StoreError> {
        let _: Value = self
            .client()?
            .zadd(
                self.keys.sessions_due(),
                None,
                Some(fred::types::sorted_sets::Ordering::LessThan),
                false,
                false,
                (due_ms as f64, session),
            )
            .await?;
        Ok(())
    }

    /// Takes a session out from under the lifecycle clock (it has ended).
    pub async fn unschedule(&self, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .zrem(self.keys.sessions_due(), session)
            .await?;
        Ok(())
    }

    /// Records activity in the session index, and the user's when given; files the
    /// session under the lifecycle clock at `due` when given. Cross-slot, so not atomic
    /// with the scripts; every step is idempotent.
    pub async fn touch_indexes(
        &self,
        session: &str,
        now_ms: u64,
        user: Option<&str>,
        due: Option<u64>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let pipe = self.client()?.pipeline();
        let now = now_ms as f64;
        let _: () = pipe
            .zadd(
                self.keys.sessions(),
                None,
                None,
                false,
                false,
                (now, session),
            )
            .await?;
        if let Some(due) = due {
            let _: () = pipe
                .zadd(
                    self.keys.sessions_due(),
                    None,
                    Some(fred::types::sorted_sets::Ordering::LessThan),
                    false,
                    false,
                    (due as f64, session),
                )
                .await?;
        }
        if let Some(user) = user {
            let key = self.keys.user_sessions(user);
            let _: () = pipe
                .zadd(&key, None, None, false, false, (now, session))
                .await?;
            let _: () = pipe
                .pexpire(&key, self.max_lifetime_ms.max(self.ttl_ms) as i64, None)
                .await?;
        }
        let _: Vec<Value> = pipe.all().await?;
        m::redis_command("touch_indexes", started.elapsed());
        Ok(())
    }

    /// Records that `user` is in `session` (their sessions listing) without counting it
    /// as the session's activity (an observer).
    pub async fn remember_user_session(
        &self,
        user: &str,
        session: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = self.keys.user_sessions(user);
        let client = self.client()?;
        let _: i64 = client
            .zadd(&key, None, None, false, false, (now_ms as f64, session))
            .await?;
        let _: i64 = client
            .pexpire(&key, self.max_lifetime_ms.max(self.ttl_ms) as i64, None)
            .await?;
        Ok(())
    }

    /// Counts a session against the cap of sessions its creator may hold (`owned_claim.lua`);
    /// false when the user is at the cap.
    pub async fn claim_owned(
        &self,
        user: &str,
        session: &str,
        now_ms: u64,
        expires_at: u64,
        cap: u32,
    ) -> Result<bool, StoreError> {
        let reply = self
            .eval(
                "owned_claim",
                &self.scripts.owned_claim,
                vec![self.keys.user_owned(user)],
                vec![
                    (now_ms as i64).into(),
                    session.into(),
                    (expires_at as i64).into(),
                    i64::from(cap).into(),
                ],
            )
            .await?;
        Ok(reply.as_i64() == Some(1))
    }

    /// Stops counting an ended session against its creator's cap.
    pub async fn disown(&self, user: &str, session: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .zrem(self.keys.user_owned(user), session)
            .await?;
        Ok(())
    }

    /// Every stored history entry, newest first.
    pub async fn history_all(&self, session: &str) -> Result<Vec<Bytes>, StoreError> {
        let values: Vec<Value> = self
            .client()?
            .lrange(self.keys.session(session).hist, 0, -1)
            .await?;
        Ok(bytes_list(Some(Value::Array(values))))
    }

    /// Deletes the stored history (seq numbering continues).
    pub async fn history_clear(&self, session: &str) -> Result<u64, StoreError> {
        let removed: i64 = self.client()?.del(self.keys.session(session).hist).await?;
        Ok(removed.max(0) as u64)
    }

    /// Member infos of everyone present (entries not expired).
    pub async fn presence_members(
        &self,
        session: &str,
        now_ms: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let k = self.keys.session(session);
        let client = self.client()?;
        let ids: Vec<String> = client
            .zrangebyscore(&k.pres, (now_ms + 1) as f64, f64::INFINITY, false, None)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let infos: Vec<Value> = client.hmget(&k.pinfo, ids).await?;
        Ok(bytes_list(Some(Value::Array(infos))))
    }

    /// One member's stored info.
    pub async fn presence_info(
        &self,
        session: &str,
        client_id: &str,
    ) -> Result<Option<Bytes>, StoreError> {
        let value: Value = self
            .client()?
            .hget(self.keys.session(session).pinfo, client_id)
            .await?;
        Ok(bytes_list(Some(Value::Array(vec![value]))).pop())
    }

    /// A user's most recently active sessions.
    pub async fn user_session_ids(
        &self,
        user: &str,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()?
            .zrevrange(self.keys.user_sessions(user), 0, limit - 1, false)
            .await?)
    }

    /// Every indexed session id.
    pub async fn all_session_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client()?
            .zrange(self.keys.sessions(), 0, -1, None, false, None, false)
            .await?)
    }

    /// The status of each session (None when its meta expired), pipelined.
    pub async fn statuses(&self, ids: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let pipe = self.client()?.pipeline();
            for id in chunk {
                let _: () = pipe.hget(self.keys.session(id).meta, "status").await?;
            }
            let values: Vec<Value> = pipe.all().await?;
            out.extend(values.into_iter().map(|v| v.as_string()));
        }
        Ok(out)
    }

    /// Drops sessions idle since before `horizon` from the session index.
    pub async fn prune_sessions(&self, horizon_ms: u64) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .zremrangebyscore(self.keys.sessions(), f64::NEG_INFINITY, horizon_ms as f64)
            .await?;
        Ok(())
    }

    /// Forgets index entries of sessions whose keys expired.
    pub async fn forget_sessions(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.client()?;
        let _: i64 = client.zrem(self.keys.sessions(), ids.to_vec()).await?;
        let _: i64 = client.zrem(self.keys.sessions_due(), ids.to_vec()).await?;
        Ok(())
    }

    /// Records this node's connection count for cluster stats.
    pub async fn node_connections(&self, node: &str, count: usize) -> Result<(), StoreError> {
        let _: i64 = self
            .client()?
            .hset(self.keys.node_connections(), (node, count as i64))
            .await?;
        Ok(())
    }

    /// Live nodes (heartbeat within `within`) and their total connections.
    pub async fn cluster(&self, now_ms: u64, within: Duration) -> Result<(u64, u64), StoreError> {
        let client = self.client()?;
        let since = now_ms.saturating_sub(within.as_millis() as u64) as f64;
        let nodes: Vec<String> = client
            .zrangebyscore(self.keys.nodes(), since, f64::INFINITY, false, None)
            .await?;
        let counts: HashMap<String, i64> = client.hgetall(self.keys.node_connections()).await?;
        let total = nodes
            .iter()
            .filter_map(|n| counts.get(n))
            .map(|c| (*c).max(0) as u64)
            .sum();
        Ok((nodes.len() as u64, total))
    }

    /// Publishes a payload on a user's channel; answers how many instances received it.
    pub async fn publish_user(&self, user: &str, payload: Vec<u8>) -> Result<u64, StoreError> {
        let started = Instant::now();
        let receivers: i64 = self
            .client()?
            .publish(self.keys.user_channel(user), Value::Bytes(payload.into()))
            .await?;
        m::redis_command("publish_user", started.elapsed());
        Ok(receivers.max(0) as u64)
    }
}

/// Rate limits.
impl Store {
    /// Runs `ratelimit.lua`: counts this attempt if the window has room.
    pub async fn rate_check(
        &self,
        scope: Scope,
        key: &str,
        rate: Rate,
    ) -> Result<Decision, StoreError> {
        let member = crate::util::random_id(12);
        let reply = self
            .eval(
                "ratelimit",
                &self.scripts.ratelimit,
                vec![self.keys.rate_limit(scope.name(), key)],
                vec![
                    (rate.window.as_millis() as i64).into(),
                    i64::from(rate.count).into(),
                    member.into(),
                ],
            )
            .await?;
        let v: Vec<u64> = reply
            .into_array()
            .into_iter()
            .map(|v| v.as_u64().unwrap_or(0))
            .collect();
        let [admitted, count, oldest, now] = v[..] else {
            return Err(StoreError::Internal(
                "ratelimit.lua answered something else".into(),
            ));
        };
        Ok(Decision::from_log(
            scope,
            rate,
            admitted == 1,
            count,
            oldest,
            now,
        ))
    }

    /// The current state of a key without counting an attempt (admin).
    pub async fn rate_peek(
        &self,
        scope: Scope,
        key: &str,
        rate: Rate,
        now_ms: u64,
    ) -> Result<Decision, StoreError> {
        let log = self.keys.rate_limit(scope.name(), key);
        let client = self.client()?;
        let since = now_ms.saturating_sub(rate.window.as_millis() as u64);
        let count: u64 = client
            .zcount(&log, (since + 1) as f64, f64::INFINITY)
            .await?;
        let first: Vec<(String, f64)> = client
            .zrangebyscore(&log, (since + 1) as f64, f64::INFINITY, true, Some((0, 1)))
            .await?;
        let oldest = first.first().map(|(_, score)| *score as u64).unwrap_or(0);
        Ok(Decision::from_log(
            scope,
            rate,
            count < u64::from(rate.count),
            count,
            oldest,
            now_ms,
        ))
    }

    /// Forgets a key's log (admin reset); true when there was one.
    pub async fn rate_reset(&self, scope: Scope, key: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .client()?
            .del(self.keys.rate_limit(scope.name(), key))
            .await?;
        Ok(removed > 0)
    }
}
