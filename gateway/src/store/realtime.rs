//! The realtime path's scripts: publish (with its limits and idempotency, and the
//! durable mode's WAIT), join, leave, history, fork, and the ephemeral publishes on a
//! session's and a user's channel.

use std::time::Instant;

use bytes::Bytes;
use fred::interfaces::{ClusterInterface, PubsubInterface, ServerInterface};
use fred::types::Value;

use super::{bytes_list, flag, Store, StoreError, TOMBSTONE};
use crate::config::Rate;
use crate::envelope::EntryTail;
use crate::metrics as m;
use crate::ratelimit::{Decision, Scope};

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

impl Store {
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
    pub(super) async fn confirm_replicated(
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
