//! What each client frame does: join (with the implicit-creation rules), leave, publish
//! (limits, the store's script, the ack), signal, typing, activity, ping; and the
//! per-member activity bookkeeping and index updates that follow writes.

use std::time::Duration;

use roomcast_shared::{ClientFrame, CloseCode, ErrorCode, From, Role, ServerFrame};
use tracing::Instrument;

use crate::envelope::{Event, MemberInfo};
use crate::ids::{valid_id, SessionId};
use crate::metrics as m;
use crate::publish::{publish_message, touch_indexes_later, PublishError};
use crate::ratelimit as limits;
use crate::ratelimit::{Decision, Scope};
use crate::session::{Join, JoinError, OwnMessage, Since};
use crate::store::{Limit, StoreError};
use crate::util::now_ms;
use crate::webhooks::hook::{JoinHook, JoinQuestion};

use super::{Connection, Failure, Joined, MAX_SESSIONS_PER_CONNECTION};

impl Connection {
    pub(super) async fn apply(&mut self, frame: ClientFrame) -> Result<(), Failure> {
        match frame {
            ClientFrame::Join {
                session,
                role,
                name,
                since,
                epoch,
                since_id,
                reference,
            } => {
                let span = tracing::info_span!("join", session = %session);
                let since = since.map(|seq| Since {
                    seq,
                    epoch,
                    id: since_id,
                });
                self.join(session, role, name, since, reference)
                    .instrument(span)
                    .await
            }
            ClientFrame::Leave { session, reference } => {
                let joined = self
                    .sessions
                    .remove(session.as_str())
                    .ok_or_else(|| not_joined(&session))?;
                joined.handle.leave(self.client.id()).await;
                self.ack(reference, None);
                Ok(())
            }
            ClientFrame::Publish {
                session,
                data,
                idempotency_key,
                reference,
            } => {
                let started = std::time::Instant::now();
                let from = self.writer_in(&session)?;
                if let Some(problem) = idempotency_key
                    .as_deref()
                    .and_then(crate::ids::idempotency_key_problem)
                {
                    return Err(Failure::new(
                        ErrorCode::BadRequest,
                        format!("`idempotency_key` {problem}"),
                    ));
                }
                let limits = self.publish_limits();
                let key = idempotency_key.as_deref();
                let stored = publish_message(&self.app, &session, &from, &data, key, &limits)
                    .await
                    .map_err(|e| match e {
                        PublishError::Data(e) => Failure::new(
                            ErrorCode::BadRequest,
                            format!("data cannot be stored: {e}"),
                        ),
                        PublishError::Limited(d) => {
                            m::rate_limited(d.scope.name());
                            publish_refusal(&d)
                        }
                        PublishError::Store(e) => {
                            if matches!(e, StoreError::Unavailable(_)) {
                                // Fails closed: when Redis cannot count, it cannot store.
                                for l in &limits {
                                    m::rate_limit_unavailable(l.scope.name());
                                }
                            }
                            Failure::from_store(e)
                        }
                    })?;
                m::publish_duration(started.elapsed());
                let ack = ServerFrame::Ack {
                    reference,
                    seq: Some(stored.published.seq),
                };
                // This instance delivers the message from the script's reply (the pump
                // keeps the order and drops the pub/sub copy), so the publisher's ack and
                // its own message leave in one write. A repeat stored nothing: its ack
                // goes alone.
                let joined = self.sessions.get(session.as_str());
                match (stored.entry(from, data), joined) {
                    (Some((entry, bytes)), Some(joined)) => joined.handle.deliver_own(OwnMessage {
                        entry,
                        bytes,
                        publisher: self.client.clone(),
                        ack,
                    }),
                    _ => {
                        self.client.send(&ack);
                    }
                }
                self.note_activity(&session).await;
                Ok(())
            }
            ClientFrame::Signal {
                session,
                data,
                to,
                reference,
            } => {
                let from = self.writer_in(&session)?;
                self.signal_allowed()?;
                if let Some(to) = &to {
                    if !valid_id(to) {
                        return Err(Failure::new(
                            ErrorCode::BadRequest,
                            "`to` is not a client id",
                        ));
                    }
                    // A signal is never echoed to its sender, not even when it asks.
                    if to == self.client.id() {
                        return Err(Failure::new(
                            ErrorCode::BadRequest,
                            "`to` is your own client id: a signal never goes back to its sender",
                        ));
                    }
                }
                let payload = Event::Signal { from, data, to }.encode();
                self.publish_ephemeral(&session, payload, reference).await
            }
            ClientFrame::Typing {
                session,
                active,
                reference,
            } => {
                let from = self.writer_in(&session)?;
                self.signal_allowed()?;
                let payload = Event::Typing { from, active }.encode();
                self.publish_ephemeral(&session, payload, reference).await
            }
            ClientFrame::Activity { session, reference } => {
                // Activity keeps a session alive: a write, refused to observers.
                self.writer_in(&session)?;
                self.touch(&session).await?;
                self.ack(reference, None);
                Ok(())
            }
            ClientFrame::Ping { reference } => {
                self.client.send(&ServerFrame::Pong { reference });
                Ok(())
            }
            ClientFrame::Refresh { token, reference } => self.refresh(&token, reference),
        }
    }

    async fn join(
        &mut self,
        session: String,
        role: Option<Role>,
        name: Option<String>,
        since: Option<Since>,
        reference: Option<String>,
    ) -> Result<(), Failure> {
        let session = SessionId::parse(session, "session")
            .map_err(|e| Failure::new(ErrorCode::BadRequest, e.to_string()))?;
        if self.sessions.contains_key(&session) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                "already joined to this session",
            ));
        }
        if self.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection"),
            ));
        }
        if !self.identity.may_join(&session) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                "the token does not allow this session",
            ));
        }
        let role = match role.or(self.identity.default_role()) {
            Some(role) if self.identity.roles.contains(&role) => role,
            Some(role) => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    format!("the token does not allow the role {}", role.as_str()),
                ))
            }
            None => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    "the token allows no role",
                ))
            }
        };
        // The token's name was checked at the upgrade; a name in the frame is checked here.
        if let Some(problem) = name.as_deref().and_then(crate::util::name_problem) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("`name` {problem}"),
            ));
        }
        let name = name.or_else(|| self.identity.name.clone());
        // The application's backend decides last: everything the token decides was
        // checked first, so a refused token never reaches it. Its answer may name the
        // member and attach info that presence shows.
        let question = JoinQuestion {
            user: self.identity.user.as_str(),
            client_id: self.client.id(),
            session: session.as_str(),
            role,
            name: name.as_deref(),
        };
        let (name, extra) = JoinHook::decide(self.app.join_hook.as_ref(), &question, name.clone())
            .await
            .map_err(|reason| Failure::new(ErrorCode::Forbidden, reason))?;
        let now = now_ms();
        let info = MemberInfo {
            client_id: self.client.id().to_string(),
            user: self.identity.user.to_string(),
            role,
            name,
            node: self.app.node_id.clone(),
            joined_at: now,
            active_at: now,
            info: extra,
        };
        // A pump that is retiring answers Retry; the next lookup spawns a fresh one. A
        // join first assumes the session exists; only when it does not are the creation
        // rules checked and the join sent again, allowed to create it.
        let mut create = false;
        // Retries are cheap (a fresh pump) and a creation costs one extra round.
        for _ in 0..8 {
            let handle = self.app.hub.session(&session);
            let join = Join {
                client: self.client.clone(),
                info: info.clone(),
                since: since.clone(),
                reference: reference.clone(),
                create,
            };
            // Bounded: a pump stuck behind a Redis outage must not hold this connection's
            // reader (heartbeats, kills, token expiry) hostage.
            let deadline = self.app.config.pump_reply_timeout();
            let Ok(answer) = tokio::time::timeout(deadline, handle.join(join)).await else {
                return Err(Failure::unavailable("join timed out, reconnect later")
                    .closing(CloseCode::TryAgainLater));
            };
            match answer {
                Ok(created) => {
                    // A new session goes under the lifecycle clock; an observer's join is a
                    // read and records no activity.
                    let now = now_ms();
                    let expires = now + self.app.config.max_lifetime.as_millis() as u64;
                    let due = created
                        .then(|| crate::lifecycle::first_due(&self.app.config, now, expires));
                    touch_indexes_later(
                        &self.app,
                        &session,
                        Some(self.identity.user.to_string()),
                        due,
                        role.can_write(),
                    );
                    let from = From {
                        client_id: info.client_id,
                        user: info.user,
                        role: info.role,
                        name: info.name,
                    };
                    self.sessions.insert(
                        session,
                        Joined {
                            handle,
                            from,
                            touched_at: now,
                        },
                    );
                    return Ok(());
                }
                Err(JoinError::Store(StoreError::NoSuchSession)) if !create => {
                    self.may_create(&session, role).await?;
                    create = true;
                }
                Err(JoinError::Retry) => continue,
                Err(JoinError::Store(StoreError::Unavailable(detail))) => {
                    tracing::warn!(error = %detail, "join failed: redis unavailable");
                    return Err(Failure::unavailable("storage unavailable, reconnect later")
                        .closing(CloseCode::TryAgainLater));
                }
                Err(JoinError::Store(e)) => return Err(Failure::from_store(e)),
            }
        }
        Err(Failure::new(ErrorCode::Internal, "could not join, retry"))
    }

    /// Whether this connection may create `session` by joining it: implicit creation is
    /// on, the role can write (observers never create), the creation limits admit it
    /// (per address, shared with `POST /sessions`, and per user), and the user is under
    /// the cap of sessions it holds.
    async fn may_create(&self, session: &str, role: Role) -> Result<(), Failure> {
        let config = &self.app.config;
        let missing =
            |why: &str| Failure::new(ErrorCode::NotFound, format!("no such session; {why}"));
        if !config.implicit_sessions {
            return Err(missing("create it with POST /api/v1/sessions"));
        }
        if !role.can_write() {
            return Err(missing("observers cannot create sessions"));
        }
        let (ip, user) = tokio::join!(
            limits::check(&self.app, Scope::ApiStrict, &self.ip),
            limits::check(&self.app, Scope::Create, &self.identity.user),
        );
        for decision in [ip, user].into_iter().flatten() {
            if !decision.admitted {
                return Err(Failure {
                    retry_after_ms: Some(decision.retry_after().as_millis() as u64),
                    ..Failure::new(
                        ErrorCode::RateLimited,
                        format!(
                            "at most {} sessions created per {}s ({})",
                            decision.limit,
                            decision.window.as_secs().max(1),
                            decision.scope.name()
                        ),
                    )
                });
            }
        }
        let cap = config.max_sessions_per_user;
        if cap > 0 {
            let now = now_ms();
            let expires = now + config.max_lifetime.as_millis() as u64;
            let counted = self
                .app
                .store
                .claim_owned(&self.identity.user, session, now, expires, cap)
                .await
                .map_err(Failure::from_store)?;
            if !counted {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    format!("this user already holds {cap} sessions it created (ROOMCAST_MAX_SESSIONS_PER_USER)"),
                ));
            }
        }
        Ok(())
    }

    /// The windows a publish is counted against: the user's and the address's, those
    /// that are on. They are checked with the publish itself (`Store::publish_limited`)
    /// and fail closed: when Redis cannot answer, the publish could not be stored either.
    fn publish_limits(&self) -> Vec<Limit<'_>> {
        let config = &self.app.config;
        [
            (Scope::Publish, self.identity.user.as_str()),
            (Scope::PublishIp, self.ip.as_str()),
        ]
        .into_iter()
        .map(|(scope, key)| Limit {
            scope,
            key,
            rate: scope.rate(config),
        })
        .filter(|l| !l.rate.is_disabled())
        .collect()
    }

    /// Takes a token for a `signal` or `typing` frame.
    fn signal_allowed(&mut self) -> Result<(), Failure> {
        let Some(bucket) = &mut self.signals else {
            return Ok(());
        };
        bucket.take(std::time::Instant::now()).map_err(|wait| {
            m::rate_limited("signal");
            Failure {
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                ..Failure::new(ErrorCode::RateLimited, "too many signals and typing frames")
            }
        })
    }

    /// The `from` of a write in `session`, if this connection may write there.
    fn writer_in(&self, session: &str) -> Result<From, Failure> {
        let joined = self
            .sessions
            .get(session)
            .ok_or_else(|| not_joined(session))?;
        if !joined.from.role.can_write() {
            return Err(Failure::new(ErrorCode::Forbidden, "observers cannot write"));
        }
        Ok(joined.from.clone())
    }

    /// Fans out an ephemeral event (`signal`, `typing`): not stored, no seq; acked when
    /// it carried a `ref`, and activity like any write.
    async fn publish_ephemeral(
        &mut self,
        session: &str,
        payload: Vec<u8>,
        reference: Option<String>,
    ) -> Result<(), Failure> {
        self.app
            .store
            .publish_event(session, payload)
            .await
            .map_err(Failure::from_store)?;
        self.ack(reference, None);
        self.note_activity(session).await;
        Ok(())
    }

    fn ack(&self, reference: Option<String>, seq: Option<u64>) {
        // Commands other than publish are acknowledged only when the client asked (ref).
        if reference.is_some() || seq.is_some() {
            self.client.send(&ServerFrame::Ack { reference, seq });
        }
    }

    /// Records activity in presence after a write, at most every so often; a member that
    /// was idle is announced active again.
    async fn note_activity(&mut self, session: &str) {
        let Some(joined) = self.sessions.get(session) else {
            return;
        };
        let config = &self.app.config;
        // Often enough that neither `idle` nor the inactivity warning fires on a member
        // that keeps writing; rarely enough to cost little.
        let stale_after = (config.idle_after / 2)
            .min(config.inactivity_warning / 4)
            .min(Duration::from_secs(60))
            .as_millis() as u64;
        if now_ms().saturating_sub(joined.touched_at) > stale_after {
            if let Err(f) = self.touch(session).await {
                tracing::debug!(error = %f.message, "activity update failed");
            }
            touch_indexes_later(&self.app, session, None, None, true);
        }
    }

    /// Records this member's activity: the pump owns the member's state, so it updates
    /// it, writes presence, and announces a member that was idle.
    async fn touch(&mut self, session: &str) -> Result<(), Failure> {
        let now = now_ms();
        let Some(joined) = self.sessions.get_mut(session) else {
            return Err(not_joined(session));
        };
        joined.touched_at = now;
        // Bounded like a join: a pump stuck behind an outage must not hold the reader.
        let deadline = self.app.config.pump_reply_timeout();
        match tokio::time::timeout(deadline, joined.handle.activity(self.client.id())).await {
            Ok(result) => result.map_err(Failure::from_store),
            Err(_) => Err(Failure::unavailable("storage unavailable, retry later")),
        }
    }

    /// Leaves every joined session; the pumps remove the presence entries.
    pub(super) fn leave_all(&mut self) {
        for (session, joined) in self.sessions.drain() {
            if !joined.handle.leave_soon(self.client.id()) {
                // A saturated pump drops members whose connection has ended at its next
                // presence refresh (half a heartbeat); a gone pump had no members left.
                tracing::debug!(session = %session, "leave not queued; the pump will notice");
            }
        }
    }
}

fn not_joined(session: &str) -> Failure {
    let shown: String = session.chars().take(64).collect();
    Failure::new(
        ErrorCode::NotJoined,
        format!("not joined to session `{shown}`"),
    )
}

/// The `rate_limited` error for a publish a window refused.
fn publish_refusal(d: &Decision) -> Failure {
    Failure {
        retry_after_ms: Some(d.retry_after().as_millis() as u64),
        ..Failure::new(
            ErrorCode::RateLimited,
            format!(
                "at most {} publishes per {}s ({})",
                d.limit,
                d.window.as_secs().max(1),
                d.scope.name()
            ),
        )
    }
}

impl Connection {
    /// `refresh`: a new token for the same user moves the connection's expiry to its
    /// `exp`, verified like a token at the upgrade (key, algorithm, claims). Only the
    /// expiry changes: roles and sessions were checked at the upgrade and stay as they
    /// were. A refused refresh leaves the old expiry standing.
    fn refresh(&mut self, token: &str, reference: Option<String>) -> Result<(), Failure> {
        if self.app.auth.is_off() {
            // No tokens, no expiry: nothing to move.
            self.client
                .send(&ServerFrame::Refreshed { reference, exp: 0 });
            return Ok(());
        }
        let fresh =
            self.app.auth.verify(token).map_err(|e| {
                Failure::new(ErrorCode::Unauthorized, format!("refresh refused: {e}"))
            })?;
        if fresh.user != self.identity.user {
            return Err(Failure::new(
                ErrorCode::Unauthorized,
                "refresh refused: the token is for another user",
            ));
        }
        let exp_ms = fresh.expires_at_ms.unwrap_or(0);
        self.identity.expires_at_ms = Some(exp_ms);
        self.client.send(&ServerFrame::Refreshed {
            reference,
            exp: exp_ms / 1000,
        });
        Ok(())
    }
}
