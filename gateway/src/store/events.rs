//! Webhook events in Redis (docs/WEBHOOKS.md, "How delivery works").
//!
//! Owns: the events spec the recording scripts take (`events.lua`), the delivery requests
//! ("kicks": a session id in one of [`INDEX_BUCKETS`] streams, read by one consumer group
//! that spans every instance), a session's events claimed per endpoint under a lease
//! (`events_claim.lua`, `events_advance.lua`), and the dead letters.

use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use fred::interfaces::{KeysInterface, StreamsInterface};
use fred::types::Value;

use super::{Store, StoreError};
use crate::keys::{bucket_of, INDEX_BUCKETS};
use crate::metrics as m;

/// The webhook events the lifecycle clock may record.
pub(super) const SWEEP_EVENTS: &[&str] = &["session.inactive", "session.ended"];

/// The consumer group every instance reads delivery requests in.
pub(super) const GROUP: &str = "roomcast";
/// Delivery requests kept per bucket stream (acknowledged ones are only history).
const KICKS_MAX: u64 = 100_000;
/// Dead letters kept (the oldest go first).
const DEAD_MAX: u64 = 100_000;

/// How this instance records events; absent when webhooks are off.
pub(crate) struct Recording {
    /// `,type,type,`: what the scripts record (the form of the spec they take).
    types: String,
    /// The same types, for the checks around each script.
    kinds: Vec<&'static str>,
    maxlen: u32,
    retention_ms: u64,
    /// When this instance last filed a delivery request per session: one per
    /// `settle / 2` covers every script it runs for the session meanwhile.
    kicked: DashMap<String, Instant>,
    settle: Duration,
    /// Sessions that just recorded events, for this instance's deliverer (best effort:
    /// when it is full, the delivery request covers them).
    recorded: tokio::sync::mpsc::Sender<String>,
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<String>>>,
}

impl Recording {
    /// Whether a script that may record `kinds` (empty: any) records anything.
    fn records_any(&self, kinds: &[&str]) -> bool {
        kinds.is_empty() || kinds.iter().any(|k| self.kinds.contains(k))
    }

    pub(crate) fn new(config: &crate::config::Config) -> Option<Self> {
        let w = &config.webhooks;
        if !w.enabled() {
            return None;
        }
        let types = w.event_types().ok()?;
        let (recorded, receiver) = tokio::sync::mpsc::channel(4096);
        Some(Recording {
            types: format!(",{},", types.join(",")),
            kinds: types,
            maxlen: w.stream_max,
            retention_ms: w.max_age.max(config.history_ttl).as_millis() as u64,
            kicked: DashMap::new(),
            settle: w.settle(config.redis_timeout),
            recorded,
            receiver: std::sync::Mutex::new(Some(receiver)),
        })
    }
}

/// One event as its session's stream holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The stream entry id: the event's place in its session's order.
    pub stream_id: String,
    pub fields: Vec<(String, Bytes)>,
}

impl StoredEvent {
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// What `events_claim.lua` found.
#[derive(Debug)]
pub enum Claim {
    /// Another owner delivers this session to this endpoint.
    Held,
    /// Ours: the events after the endpoint's cursor (none: nothing to do, lease free).
    Batch(Vec<StoredEvent>),
}

/// A dead letter: an event an endpoint never acknowledged.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The dead letter's own id (for replay).
    pub id: String,
    pub endpoint: String,
    pub event_id: String,
    pub session: String,
    pub attempts: u64,
    pub error: String,
    /// When it was dead-lettered (ms).
    pub failed_at: u64,
    /// The body that was sent (JSON text).
    pub body: String,
}

impl Store {
    /// The events spec for one recording script call: empty when webhooks are off.
    pub(crate) fn events_spec(&self) -> Value {
        match &self.events {
            None => "".into(),
            Some(r) => format!(
                "evt_{}_|{}|{}|{}",
                crate::util::random_id(16),
                r.maxlen,
                r.retention_ms,
                r.types
            )
            .into(),
        }
    }

    /// Whether events are recorded at all.
    pub fn events_on(&self) -> bool {
        self.events.is_some()
    }

    /// Files a delivery request for `session` before a script that may record its events:
    /// if this instance dies right after the script, another instance finds the request
    /// and delivers what the script recorded. One per session per `settle / 2`.
    /// `kinds` are the types the script may record: nothing is filed when none of them
    /// is (an empty list: any type, as a publish whose session may have opted in).
    pub(crate) async fn events_intent(
        &self,
        session: &str,
        kinds: &[&str],
    ) -> Result<(), StoreError> {
        let Some(r) = self.events.as_ref().filter(|r| r.records_any(kinds)) else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(at) = r.kicked.get(session) {
            if now.duration_since(*at) < r.settle / 2 {
                return Ok(());
            }
        }
        let started = Instant::now();
        let key = self.keys.event_kicks(bucket_of(session));
        let _: Value = self
            .client()?
            .xadd(
                key,
                false,
                ("MAXLEN", "~", KICKS_MAX as i64),
                "*",
                vec![("s", session)],
            )
            .await?;
        m::redis_command("event_kick", started.elapsed());
        r.kicked.insert(session.to_string(), now);
        Ok(())
    }

    /// Tells this instance's deliverer that `session` may have recorded events of
    /// `kinds` (empty: any).
    pub(crate) fn events_recorded(&self, session: &str, kinds: &[&str]) {
        if let Some(r) = self.events.as_ref().filter(|r| r.records_any(kinds)) {
            let _ = r.recorded.try_send(session.to_string());
        }
    }

    /// The deliverer's end of [`Store::events_recorded`] (once).
    pub fn take_recorded(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        let r = self.events.as_ref()?;
        r.receiver.lock().ok()?.take()
    }

    /// Forgets the intent marks older than `settle` (they no longer dedupe anything).
    pub fn events_forget_marks(&self) {
        if let Some(r) = &self.events {
            let now = Instant::now();
            r.kicked.retain(|_, at| now.duration_since(*at) < r.settle);
        }
    }

    /// How long after a delivery request its session may still record the events it
    /// announced.
    pub fn events_settle(&self) -> Duration {
        self.events.as_ref().map_or(Duration::ZERO, |r| r.settle)
    }

    /// Runs `events_claim.lua` for one endpoint.
    pub async fn events_claim(
        &self,
        session: &str,
        endpoint: &str,
        owner: &str,
        lease: Duration,
        batch: u32,
    ) -> Result<Claim, StoreError> {
        let k = self.keys.session(session);
        let reply = self
            .eval(
                "events_claim",
                &self.scripts.events_claim,
                vec![
                    k.events,
                    k.event_cursors,
                    self.keys.event_lease(session, endpoint),
                ],
                vec![
                    endpoint.into(),
                    owner.into(),
                    (lease.as_millis() as i64).into(),
                    i64::from(batch).into(),
                ],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        match parts.next().and_then(|v| v.as_i64()) {
            Some(0) => Ok(Claim::Held),
            Some(1) => {
                let _cursor = parts.next();
                Ok(Claim::Batch(entries(parts.next().unwrap_or(Value::Null))))
            }
            _ => Err(StoreError::Internal(
                "events_claim.lua answered nothing".into(),
            )),
        }
    }

    /// Runs `events_advance.lua`: `done` is the stream id the endpoint is done with (None
    /// renews the lease only), and up to `next` following events are read in the same
    /// call (none left: the lease is freed). `None` when the lease is no longer ours.
    #[allow(clippy::too_many_arguments)]
    pub async fn events_advance(
        &self,
        session: &str,
        endpoint: &str,
        owner: &str,
        lease: Duration,
        done: Option<&str>,
        next: u32,
        endpoints: &[String],
    ) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        let k = self.keys.session(session);
        let retention = self.events.as_ref().map_or(0, |r| r.retention_ms);
        let mut args: Vec<Value> = vec![
            endpoint.into(),
            owner.into(),
            (lease.as_millis() as i64).into(),
            done.unwrap_or("").into(),
            (retention as i64).into(),
            i64::from(next).into(),
        ];
        args.extend(endpoints.iter().map(|e| Value::from(e.as_str())));
        let reply = self
            .eval(
                "events_advance",
                &self.scripts.events_advance,
                vec![
                    k.events,
                    k.event_cursors,
                    self.keys.event_lease(session, endpoint),
                ],
                args,
            )
            .await?;
        if reply.as_i64() == Some(0) {
            return Ok(None);
        }
        let mut parts = reply.into_array().into_iter();
        match parts.next().and_then(|v| v.as_i64()) {
            Some(1) => Ok(Some(entries(parts.next().unwrap_or(Value::Null)))),
            _ => Err(StoreError::Internal(
                "events_advance.lua answered nothing".into(),
            )),
        }
    }

    /// Creates the consumer group on every bucket stream (idempotent).
    pub async fn kicks_prepare(&self) -> Result<(), StoreError> {
        for bucket in 0..INDEX_BUCKETS {
            let created: Result<Value, fred::error::Error> = self
                .client()?
                .xgroup_create(self.keys.event_kicks(bucket), GROUP, "0", true)
                .await;
            if let Err(e) = created {
                if !e.details().contains("BUSYGROUP") {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// New delivery requests of one bucket for `consumer`: (request id, session).
    pub async fn kicks_read(
        &self,
        bucket: u16,
        consumer: &str,
        count: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let started = Instant::now();
        let key = self.keys.event_kicks(bucket);
        let reply: Result<Value, fred::error::Error> = self
            .client()?
            .xreadgroup(GROUP, consumer, Some(count), None, false, key, ">")
            .await;
        m::redis_command("event_kicks_read", started.elapsed());
        let reply = match reply {
            Err(e) if e.details().contains("NOGROUP") => {
                self.kicks_prepare().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        // [[key, entries]] or nil.
        let mut out = Vec::new();
        for stream in reply.into_array() {
            let mut parts = stream.into_array().into_iter();
            let _key = parts.next();
            out.extend(kick_sessions(parts.next().unwrap_or(Value::Null)));
        }
        Ok(out)
    }

    /// Delivery requests of one bucket left pending by a consumer for `min_idle` (its
    /// instance died, or it is slow), now `consumer`'s.
    pub async fn kicks_autoclaim(
        &self,
        bucket: u16,
        consumer: &str,
        min_idle: Duration,
        count: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let started = Instant::now();
        let reply: Result<Value, fred::error::Error> = self
            .client()?
            .xautoclaim(
                self.keys.event_kicks(bucket),
                GROUP,
                consumer,
                min_idle.as_millis() as u64,
                "0-0",
                Some(count),
                false,
            )
            .await;
        m::redis_command("event_kicks_autoclaim", started.elapsed());
        let reply = match reply {
            Err(e) if e.details().contains("NOGROUP") => {
                self.kicks_prepare().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        // [next, entries, deleted ids]
        let mut parts = reply.into_array().into_iter();
        let _next = parts.next();
        Ok(kick_sessions(parts.next().unwrap_or(Value::Null)))
    }

    /// Acknowledges delivery requests: their sessions were found with nothing left.
    pub async fn kicks_ack(&self, bucket: u16, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Value = self
            .client()?
            .xack(self.keys.event_kicks(bucket), GROUP, ids)
            .await?;
        Ok(())
    }

    /// Files a dead letter.
    pub async fn dead_add(&self, d: &DeadLetter) -> Result<(), StoreError> {
        let attempts = d.attempts.to_string();
        let failed_at = d.failed_at.to_string();
        let fields: Vec<(&str, &str)> = vec![
            ("endpoint", &d.endpoint),
            ("event_id", &d.event_id),
            ("session", &d.session),
            ("attempts", &attempts),
            ("error", &d.error),
            ("failed_at", &failed_at),
            ("body", &d.body),
        ];
        let _: Value = self
            .client()?
            .xadd(
                self.keys.dead_letters(),
                false,
                ("MAXLEN", "~", DEAD_MAX as i64),
                "*",
                fields,
            )
            .await?;
        Ok(())
    }

    /// Dead letters, oldest first, after `after` (a dead letter id), at most `limit`.
    pub async fn dead_list(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let start = after.map_or("-".to_string(), |a| format!("({a}"));
        let reply: Value = self
            .client()?
            .xrange(self.keys.dead_letters(), start, "+", Some(limit))
            .await?;
        Ok(entries(reply).into_iter().filter_map(dead_letter).collect())
    }

    /// One dead letter by id.
    pub async fn dead_get(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let reply: Value = self
            .client()?
            .xrange(self.keys.dead_letters(), id, id, Some(1))
            .await?;
        Ok(entries(reply).into_iter().find_map(dead_letter))
    }

    /// Removes a dead letter (it was replayed); false when there was none.
    pub async fn dead_remove(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 = self.client()?.xdel(self.keys.dead_letters(), id).await?;
        Ok(n > 0)
    }

    /// How many dead letters there are.
    pub async fn dead_count(&self) -> Result<u64, StoreError> {
        let n: u64 = self.client()?.xlen(self.keys.dead_letters()).await?;
        Ok(n)
    }

    /// Deletes a session's event keys (tests).
    pub async fn events_forget(&self, session: &str) -> Result<(), StoreError> {
        let k = self.keys.session(session);
        let _: i64 = self.client()?.del(vec![k.events, k.event_cursors]).await?;
        Ok(())
    }
}

/// The webhook event a REST status change makes (a PATCH, which keeps the status,
/// makes none): its type and data.
pub(super) fn transition_event(
    to: Option<super::SessionStatus>,
    reason: &str,
) -> Option<(&'static str, serde_json::Value)> {
    use super::SessionStatus as S;
    use serde_json::json;
    Some(match to? {
        S::Ended => (
            "session.ended",
            json!({"status": "ended", "reason": "api", "message": reason}),
        ),
        S::Resolved => (
            "session.resolved",
            json!({"status": "resolved", "reason": "api"}),
        ),
        S::Active => (
            "session.resumed",
            json!({"status": "active", "reason": "api"}),
        ),
        S::Inactive => (
            "session.inactive",
            json!({"status": "inactive", "reason": "api"}),
        ),
    })
}

/// XRANGE-form entries: [[id, [field, value, ...]], ...].
fn entries(reply: Value) -> Vec<StoredEvent> {
    reply
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let stream_id = parts.next()?.as_string()?;
            let flat = parts.next()?.into_array();
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let value = match v {
                    Value::Bytes(b) => b,
                    Value::String(s) => s.into_inner(),
                    other => Bytes::from(other.as_string().unwrap_or_default()),
                };
                fields.push((k.as_string().unwrap_or_default(), value));
            }
            Some(StoredEvent { stream_id, fields })
        })
        .collect()
}

fn kick_sessions(reply: Value) -> Vec<(String, String)> {
    entries(reply)
        .into_iter()
        .filter_map(|e| Some((e.stream_id.clone(), e.text("s")?.to_string())))
        .collect()
}

fn dead_letter(e: StoredEvent) -> Option<DeadLetter> {
    Some(DeadLetter {
        endpoint: e.text("endpoint")?.to_string(),
        event_id: e.text("event_id")?.to_string(),
        session: e.text("session")?.to_string(),
        attempts: e.text("attempts")?.parse().ok()?,
        error: e.text("error").unwrap_or("").to_string(),
        failed_at: e.text("failed_at")?.parse().ok()?,
        body: e.text("body")?.to_string(),
        id: e.stream_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_the_xrange_form() {
        let reply = Value::Array(vec![Value::Array(vec![
            "1-2".into(),
            Value::Array(vec![
                "type".into(),
                "member.left".into(),
                "m".into(),
                Value::Bytes(Bytes::from_static(b"\x92\x01")),
            ]),
        ])]);
        let parsed = entries(reply);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].stream_id, "1-2");
        assert_eq!(parsed[0].text("type"), Some("member.left"));
        assert_eq!(parsed[0].field("m").map(|b| &b[..]), Some(&b"\x92\x01"[..]));
        assert!(entries(Value::Null).is_empty());
    }
}
