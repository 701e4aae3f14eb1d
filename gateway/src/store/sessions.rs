//! The session model's Redis side: creation, join codes, lifecycle transitions and the
//! sweep of one session, the REST reads of its history.
//!
//! Every state change of one session is one script on its slot (`session_create.lua`,
//! `session_transition.lua`, `session_sweep.lua`). The indexes that span sessions (the
//! due index, activity, per-user) are `indexes.rs`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::{HashesInterface, KeysInterface, ListInterface};
use fred::types::{Expiration, SetOptions, Value};

use super::{bytes_list, Store, StoreError, TOMBSTONE};
use roomcast_shared::SessionEvent;

/// A session's status, as stored in its meta and shown by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    Active,
    Inactive,
    Resolved,
    Ended,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Inactive => "inactive",
            SessionStatus::Resolved => "resolved",
            SessionStatus::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => SessionStatus::Active,
            "inactive" => SessionStatus::Inactive,
            "resolved" => SessionStatus::Resolved,
            "ended" => SessionStatus::Ended,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's meta hash (`rc:{s:ID}:meta`), parsed once. Fields the hash lacks (or
/// holds in a foreign form) take their defaults: a session without a status is active.
/// A status that is there but unknown (corrupt, or another program's) is an error, never
/// a default: it must not make a session writable.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMeta {
    pub status: SessionStatus,
    /// Join code (sessions created over REST only).
    pub code: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub last_activity: u64,
    pub metadata: serde_json::Value,
    pub state: serde_json::Value,
    pub notes: Option<String>,
    pub resolved_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// Why it ended: `max_lifetime`, or the `reason` of `DELETE /sessions/{id}` (default
    /// `ended`). An inactive session's status says why on its own.
    pub reason: Option<String>,
    /// The user whose implicit join created it (counted against their session cap).
    pub owner: Option<String>,
    /// `message.published` webhook events are recorded for this session (its own opt-in).
    pub message_webhooks: bool,
}

impl SessionMeta {
    pub fn parse(f: &HashMap<String, String>) -> Result<Self, StoreError> {
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        let json = |k: &str| {
            f.get(k)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let text = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
        let status = match f.get("status") {
            None => SessionStatus::Active,
            Some(s) => SessionStatus::parse(s).ok_or_else(|| {
                StoreError::Internal(format!("session status `{}` is unknown", s.escape_debug()))
            })?,
        };
        Ok(SessionMeta {
            status,
            code: text("code"),
            created_at: num("created_at").unwrap_or(0),
            expires_at: num("expires_at").unwrap_or(0),
            last_activity: num("last_activity").unwrap_or(0),
            metadata: json("metadata"),
            state: json("state"),
            notes: text("notes"),
            resolved_at: num("resolved_at"),
            ended_at: num("ended_at"),
            reason: text("reason"),
            owner: text("owner"),
            message_webhooks: f.get("hooks_messages").is_some_and(|v| v == "1"),
        })
    }
}

/// What a lifecycle transition found.
#[derive(Debug)]
pub enum Transition {
    /// Done; the session after the change.
    Done(Box<SessionMeta>),
    Missing,
    /// The current status does not allow the change.
    Conflict(SessionStatus),
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
    pub event: SessionEvent,
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
    #[allow(clippy::too_many_arguments)]
    pub async fn create_session(
        &self,
        session: &str,
        now_ms: u64,
        expires_at: u64,
        code: &str,
        owner: &str,
        metadata_json: &str,
        message_webhooks: bool,
    ) -> Result<bool, StoreError> {
        let k = self.keys.session(session);
        let ttl = self
            .ttl_ms
            .max(expires_at.saturating_sub(now_ms) + TOMBSTONE.as_millis() as u64);
        self.events_intent(session, &["session.created"]).await?;
        let reply = self
            .eval(
                "session_create",
                &self.scripts.session_create,
                vec![k.meta, k.events],
                vec![
                    (now_ms as i64).into(),
                    (expires_at as i64).into(),
                    (ttl as i64).into(),
                    code.into(),
                    owner.into(),
                    metadata_json.into(),
                    self.events_spec(),
                    if message_webhooks { "1" } else { "" }.into(),
                ],
            )
            .await?;
        // A create refused for an id collision (rare) tells the deliverer too: it finds nothing.
        self.events_recorded(session, &["session.created"]);
        Ok(reply.as_i64() == Some(1))
    }

    /// The session's meta; `None` when it does not exist.
    pub async fn session_meta(&self, session: &str) -> Result<Option<SessionMeta>, StoreError> {
        let fields: HashMap<String, String> = self
            .client()?
            .hgetall(self.keys.session(session).meta)
            .await?;
        (!fields.is_empty())
            .then(|| SessionMeta::parse(&fields))
            .transpose()
    }

    /// Runs `session_transition.lua`.
    pub async fn transition(
        &self,
        session: &str,
        now_ms: u64,
        allowed: &[SessionStatus],
        to: Option<SessionStatus>,
        event: Option<LifecycleEvent<'_>>,
        fields: &[(&str, String)],
    ) -> Result<Transition, StoreError> {
        let allowed = allowed
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let k = self.keys.session(session);
        let hook = super::events::transition_event(to, event.map_or("", |e| e.reason));
        let mut args: Vec<Value> = vec![
            (now_ms as i64).into(),
            allowed.into(),
            to.map(SessionStatus::as_str).unwrap_or("").into(),
            event.map(|e| e.event.as_str()).unwrap_or("").into(),
            event.map_or("", |e| e.reason).into(),
            (event.map(|e| e.at).unwrap_or(0) as i64).into(),
            hook.as_ref().map_or("", |(t, _)| t).into(),
            hook.as_ref()
                .map_or(String::new(), |(_, d)| d.to_string())
                .into(),
            self.events_spec(),
        ];
        for (field, value) in fields {
            args.push((*field).into());
            args.push(value.as_str().into());
        }
        if let Some((kind, _)) = &hook {
            self.events_intent(session, &[kind]).await?;
        }
        let reply = self
            .eval(
                "session_transition",
                &self.scripts.session_transition,
                vec![k.meta, k.channel, k.events],
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        match parts.next().and_then(|v| v.as_i64()) {
            Some(1) => {
                if let Some((kind, _)) = &hook {
                    self.events_recorded(session, &[kind]);
                }
                let flat: Vec<String> = parts.filter_map(|v| v.as_string()).collect();
                let fields: HashMap<String, String> = flat
                    .chunks(2)
                    .filter_map(|c| Some((c.first()?.clone(), c.get(1)?.clone())))
                    .collect();
                Ok(Transition::Done(Box::new(SessionMeta::parse(&fields)?)))
            }
            Some(-1) => Ok(Transition::Missing),
            Some(-2) => {
                let status = parts.next().and_then(|v| v.as_string()).unwrap_or_default();
                SessionStatus::parse(&status)
                    .map(Transition::Conflict)
                    .ok_or_else(|| {
                        StoreError::Internal(format!("session status `{status}` is unknown"))
                    })
            }
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
        self.events_intent(session, super::events::SWEEP_EVENTS)
            .await?;
        let reply = self
            .eval(
                "session_sweep",
                &self.scripts.session_sweep,
                vec![k.meta, k.channel, k.events],
                vec![
                    (now_ms as i64).into(),
                    (warning.as_millis() as i64).into(),
                    (timeout.as_millis() as i64).into(),
                    self.events_spec(),
                ],
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let outcome = parts.next().and_then(|v| v.as_string()).unwrap_or_default();
        let outcome = SweepOutcome::parse(&outcome).ok_or_else(|| {
            StoreError::Internal(format!("session_sweep.lua answered `{outcome}`"))
        })?;
        let next_due = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        if matches!(outcome, SweepOutcome::Inactive | SweepOutcome::Ended) {
            self.events_recorded(session, super::events::SWEEP_EVENTS);
        }
        Ok(Swept { outcome, next_due })
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
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{SessionMeta, SessionStatus, SweepOutcome};

    #[test]
    fn statuses_and_sweep_outcomes_parse_what_redis_holds() {
        use SessionStatus::*;
        for status in [Active, Inactive, Resolved, Ended] {
            assert_eq!(SessionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(SessionStatus::parse("Active"), None);
        for (text, outcome) in [
            ("warned", SweepOutcome::Warned),
            ("inactive", SweepOutcome::Inactive),
            ("ended", SweepOutcome::Ended),
            ("active", SweepOutcome::Active),
            ("unchanged", SweepOutcome::Unchanged),
            ("gone", SweepOutcome::Gone),
        ] {
            assert_eq!(SweepOutcome::parse(text), Some(outcome), "{text}");
        }
        assert_eq!(SweepOutcome::parse("resolved"), None);
    }

    #[test]
    fn the_outcomes_that_changed_something_have_a_metric_label() {
        let labels: Vec<_> = [
            SweepOutcome::Warned,
            SweepOutcome::Inactive,
            SweepOutcome::Ended,
            SweepOutcome::Active,
            SweepOutcome::Unchanged,
            SweepOutcome::Gone,
        ]
        .into_iter()
        .map(SweepOutcome::transition)
        .collect();
        assert_eq!(
            labels,
            [
                Some("expiring"),
                Some("inactive"),
                Some("ended"),
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn a_meta_field_stored_empty_reads_as_absent() {
        let f = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let meta = SessionMeta::parse(&f(&[("code", ""), ("status", "resolved")])).unwrap();
        assert_eq!(meta.code, None);
        assert_eq!(meta.status, SessionStatus::Resolved);
        let meta = SessionMeta::parse(&f(&[("code", "ABC123")])).unwrap();
        assert_eq!(meta.code.as_deref(), Some("ABC123"));
        assert_eq!(meta.status, SessionStatus::Active, "no status: active");
        // A status that is there but unknown is no default: it is an error.
        for bad in ["Active", "open", ""] {
            assert!(matches!(
                SessionMeta::parse(&f(&[("status", bad)])),
                Err(crate::store::StoreError::Internal(_))
            ));
        }
    }
}
