//! The Lua scripts compiled into the binary, how the store runs them (EVALSHA, loaded
//! again on NOSCRIPT; the webhook events prelude in front of the scripts that record),
//! and the helpers that build their arguments and read their replies.

use std::time::Instant;

use bytes::Bytes;
use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::Value;
use tracing::Instrument;

use super::{Store, StoreError};
use crate::metrics as m;

/// The Lua scripts, compiled into the binary.
pub(super) struct Scripts {
    pub(super) publish: Lua,
    /// `publish_limits.lua` in front of `publish.lua`: the limits and the publish as one.
    pub(super) publish_limited: Lua,
    pub(super) join: Lua,
    pub(super) leave: Lua,
    pub(super) presence_refresh: Lua,
    pub(super) presence_set: Lua,
    pub(super) history: Lua,
    pub(super) fork: Lua,
    pub(super) session_create: Lua,
    pub(super) session_transition: Lua,
    pub(super) session_sweep: Lua,
    pub(super) due_claim: Lua,
    pub(super) due_reschedule: Lua,
    pub(super) owned_claim: Lua,
    pub(super) node_prune: Lua,
    pub(super) ratelimit: Lua,
    pub(super) events_claim: Lua,
    pub(super) events_advance: Lua,
}

/// A compiled script, and whether it records webhook events.
pub(super) struct Lua {
    pub(super) script: Script,
    /// `events.lua` is in front of it and its body is wrapped so that it answers
    /// `{events recorded, its own reply}`: [`Store::eval_built`] counts the first (the
    /// `roomcast_webhook_events_recorded_total` metric) and hands on the second.
    pub(super) records: bool,
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
    pub(super) fn new() -> Self {
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

impl Store {
    /// Runs `lua` on a connection of the pool. The keys and arguments are cloned for each
    /// try (the retry after `NOSCRIPT` needs them again); the per-message path builds its
    /// own instead ([`Store::eval_built`]).
    pub(super) async fn eval(
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
    pub(super) async fn eval_built(
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
    pub(super) fn unwrap_recorded(
        name: &'static str,
        lua: &Lua,
        reply: Value,
    ) -> Result<Value, StoreError> {
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
}

/// A boolean script argument.
pub(super) fn flag(on: bool) -> Value {
    if on { "1" } else { "0" }.into()
}

/// A Lua array of bulk strings (nil entries skipped) as byte buffers.
pub(super) fn bytes_list(value: Option<Value>) -> Vec<Bytes> {
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
