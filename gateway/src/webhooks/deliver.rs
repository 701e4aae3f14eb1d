//! One session's events to one endpoint, in order: claim them under the lease, POST each
//! until it is answered 2xx or given up on (dead letter), move the cursor, repeat until
//! nothing is left. Retries back off exponentially with jitter; each endpoint has a
//! concurrency limit and a circuit breaker on this instance.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::event::render;
use super::{WebhookConfig, Webhooks, BATCH};
use crate::metrics as m;
use crate::store::{Claim, DeadLetter, StoreError, StoredEvent};
use crate::util::now_ms;

/// How a (session, endpoint) delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing is left; the lease is free.
    Empty,
    /// Another owner holds the lease (or took it over): it goes on from the cursor.
    Held,
    /// This instance is shutting down.
    Stopped,
}

/// What became of one event.
enum Sent {
    Done,
    LeaseLost,
    Stopped,
}

/// A configured receiver.
pub(crate) struct Endpoint {
    pub(crate) id: String,
    url: hyper::Uri,
    shown: String,
    limit: Semaphore,
    breaker: Mutex<Breaker>,
    failures_to_open: u32,
    cooldown: Duration,
    pending: AtomicI64,
}

/// An endpoint as the admin route shows it (this instance's view).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct EndpointState {
    pub id: String,
    /// The URL without its query (which may carry a token).
    pub url: String,
    /// `closed` (delivering), `open` (waiting for a probe) or `half_open` (probing).
    pub breaker: &'static str,
    pub consecutive_failures: u32,
    /// Sessions this instance is delivering to it.
    pub pending_sessions: i64,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    /// `Ok` to send now; `Err(t)` to wait until `t`.
    fn admit(&mut self, now: Instant) -> Result<(), Instant> {
        match self.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until),
            Some(_) if self.probing => Err(now + Duration::from_millis(100)),
            Some(_) => {
                self.probing = true;
                Ok(())
            }
        }
    }

    fn success(&mut self) -> bool {
        let was_open = self.open_until.is_some();
        *self = Breaker::default();
        was_open
    }

    /// True when this failure opened it.
    fn failure(&mut self, now: Instant, threshold: u32, cooldown: Duration) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.probing || (self.open_until.is_none() && self.failures >= threshold) {
            let opened = self.open_until.is_none();
            self.open_until = Some(now + cooldown);
            self.probing = false;
            return opened;
        }
        false
    }

    fn name(&self, now: Instant) -> &'static str {
        match self.open_until {
            None => "closed",
            Some(_) if self.probing => "half_open",
            Some(until) if now < until => "open",
            Some(_) => "half_open",
        }
    }
}

impl Endpoint {
    pub(crate) fn new(url: &str, config: &WebhookConfig) -> Result<Self, String> {
        let url = url.trim();
        let parsed: hyper::Uri = url
            .parse()
            .map_err(|e| format!("ROOMCAST_WEBHOOK_URLS: {url}: {e}"))?;
        let shown = format!(
            "{}://{}{}",
            parsed.scheme_str().unwrap_or("http"),
            parsed.authority().map(|a| a.as_str()).unwrap_or(""),
            parsed.path()
        );
        Ok(Endpoint {
            id: super::endpoint_id(url),
            url: parsed,
            shown,
            limit: Semaphore::new(config.concurrency),
            breaker: Mutex::new(Breaker::default()),
            failures_to_open: config.breaker_failures,
            cooldown: config.breaker_cooldown,
            pending: AtomicI64::new(0),
        })
    }

    pub(crate) fn pending(&self, delta: i64) {
        let now = self.pending.fetch_add(delta, Ordering::AcqRel) + delta;
        m::webhook_pending(&self.id, now.max(0) as usize);
    }

    pub(crate) fn state(&self) -> EndpointState {
        let (breaker, failures) = match self.breaker.lock() {
            Ok(b) => (b.name(Instant::now()), b.failures),
            Err(_) => ("closed", 0),
        };
        EndpointState {
            id: self.id.clone(),
            url: self.shown.clone(),
            breaker,
            consecutive_failures: failures,
            pending_sessions: self.pending.load(Ordering::Acquire).max(0),
        }
    }

    fn admit(&self) -> Result<(), Instant> {
        match self.breaker.lock() {
            Ok(mut b) => b.admit(Instant::now()),
            Err(_) => Ok(()),
        }
    }

    fn record(&self, ok: bool) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        if ok {
            if b.success() {
                m::webhook_breaker(&self.id, false);
                tracing::info!(endpoint = %self.shown, "webhook endpoint answers again: breaker closed");
            }
        } else if b.failure(Instant::now(), self.failures_to_open, self.cooldown) {
            m::webhook_breaker(&self.id, true);
            tracing::warn!(endpoint = %self.shown, cooldown = ?self.cooldown, "webhook endpoint keeps failing: breaker open");
        }
    }
}

/// The delay before try `attempt + 1`: `base · 2^(attempt-1)` capped at `max`, then a
/// random point in its upper half (jitter keeps many sessions from retrying in step).
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
}

impl Webhooks {
    /// Delivers one session to one endpoint until nothing is left or it is not ours. One
    /// Redis call per event: the advance after a batch's last event reads the next batch
    /// (and, finding none, frees the lease).
    pub(crate) async fn drain(&self, session: &str, ep: &Endpoint) -> Result<Drained, StoreError> {
        let claim = self
            .store
            .events_claim(session, &ep.id, &self.owner, self.lease, BATCH)
            .await?;
        let mut events = match claim {
            Claim::Held => return Ok(Drained::Held),
            Claim::Batch(events) => events,
        };
        while !events.is_empty() {
            let last = events.len() - 1;
            let mut next = Vec::new();
            for (i, event) in events.iter().enumerate() {
                match self.send(session, ep, event).await? {
                    Sent::Done => {}
                    Sent::LeaseLost => return Ok(Drained::Held),
                    Sent::Stopped => return Ok(Drained::Stopped),
                }
                let read = if i == last { BATCH } else { 0 };
                let advanced = self
                    .advance(session, ep, Some(&event.stream_id), read)
                    .await?;
                match advanced {
                    None => return Ok(Drained::Held),
                    Some(batch) if i == last => next = batch,
                    Some(_) => {}
                }
            }
            events = next;
        }
        Ok(Drained::Empty)
    }

    /// `events_advance.lua` for this owner: `done` the event the endpoint is done with
    /// (None: the lease is only renewed), `read` how many next events to take along.
    async fn advance(
        &self,
        session: &str,
        ep: &Endpoint,
        done: Option<&str>,
        read: u32,
    ) -> Result<Option<Vec<StoredEvent>>, StoreError> {
        self.store
            .events_advance(
                session,
                &ep.id,
                &self.owner,
                self.lease,
                done,
                read,
                &self.endpoint_ids,
            )
            .await
    }

    /// Sends one event until it is answered 2xx or dead-lettered.
    async fn send(
        &self,
        session: &str,
        ep: &Endpoint,
        event: &StoredEvent,
    ) -> Result<Sent, StoreError> {
        let body = match render(session, event) {
            Ok(body) => body,
            Err(why) => {
                let id = event.text("id").unwrap_or(&event.stream_id).to_string();
                self.dead_letter(
                    session,
                    ep,
                    &id,
                    0,
                    &format!("malformed event: {why}"),
                    String::new(),
                )
                .await?;
                return Ok(Sent::Done);
            }
        };
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Err(StoreError::Internal(e.to_string())),
        };
        m::webhook_sent(&ep.id, &body.kind);
        let mut attempt: u32 = 0;
        let mut renewed = Instant::now();
        loop {
            // An open breaker: wait for the probe's turn, keeping the lease. An event
            // held there ages like one that is retried: past the maximum age it is
            // dead-lettered, not delivered days late when the receiver is back.
            loop {
                match ep.admit() {
                    Ok(()) => break,
                    Err(at) => {
                        let age = Duration::from_millis(now_ms().saturating_sub(body.timestamp));
                        let Some(left) = self
                            .config
                            .max_age
                            .checked_sub(age)
                            .filter(|l| !l.is_zero())
                        else {
                            tracing::warn!(endpoint = %ep.shown, event = %body.id, attempts = attempt, "webhook event dead-lettered behind an open breaker");
                            let text = String::from_utf8_lossy(&bytes).into_owned();
                            let why = "the endpoint's breaker stayed open past the maximum age";
                            self.dead_letter(session, ep, &body.id, attempt, why, text)
                                .await?;
                            return Ok(Sent::Done);
                        };
                        let until = at.min(Instant::now() + left);
                        if !self.wait_until(session, ep, until, &mut renewed).await? {
                            return Ok(if self.shutdown.is_cancelled() {
                                Sent::Stopped
                            } else {
                                Sent::LeaseLost
                            });
                        }
                    }
                }
            }
            attempt += 1;
            let result = {
                let _permit = ep
                    .limit
                    .acquire()
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?;
                self.post(&ep.url, &body.id, bytes.clone()).await
            };
            ep.record(result.is_ok());
            match result {
                Ok(()) => {
                    let lag = now_ms().saturating_sub(body.timestamp) as f64 / 1e3;
                    m::webhook_delivered(&ep.id, lag);
                    return Ok(Sent::Done);
                }
                Err(why) => {
                    let age = Duration::from_millis(now_ms().saturating_sub(body.timestamp));
                    if attempt >= self.config.max_attempts || age >= self.config.max_age {
                        tracing::warn!(endpoint = %ep.shown, event = %body.id, attempts = attempt, error = %why, "webhook event dead-lettered");
                        let text = String::from_utf8_lossy(&bytes).into_owned();
                        self.dead_letter(session, ep, &body.id, attempt, &why, text)
                            .await?;
                        return Ok(Sent::Done);
                    }
                    m::webhook_retry(&ep.id);
                    tracing::debug!(endpoint = %ep.shown, event = %body.id, attempt, error = %why, "webhook delivery failed; retrying");
                    let at = Instant::now()
                        + backoff(attempt, self.config.retry_base, self.config.retry_max);
                    if !self.wait_until(session, ep, at, &mut renewed).await? {
                        return Ok(if self.shutdown.is_cancelled() {
                            Sent::Stopped
                        } else {
                            Sent::LeaseLost
                        });
                    }
                }
            }
        }
    }

    /// Sleeps until `at`, renewing the lease every third of it; false when the lease was
    /// lost or the instance is stopping.
    async fn wait_until(
        &self,
        session: &str,
        ep: &Endpoint,
        at: Instant,
        renewed: &mut Instant,
    ) -> Result<bool, StoreError> {
        loop {
            let renew_at = *renewed + self.lease / 3;
            let wake = at.min(renew_at);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.shutdown.cancelled() => return Ok(false),
            }
            if Instant::now() >= renew_at {
                let ours = self.advance(session, ep, None, 0).await?;
                *renewed = Instant::now();
                if ours.is_none() {
                    return Ok(false);
                }
            }
            if Instant::now() >= at {
                return Ok(true);
            }
        }
    }

    async fn dead_letter(
        &self,
        session: &str,
        ep: &Endpoint,
        event_id: &str,
        attempts: u32,
        error: &str,
        body: String,
    ) -> Result<(), StoreError> {
        m::webhook_dead(&ep.id);
        self.store
            .dead_add(&DeadLetter {
                id: String::new(),
                endpoint: ep.id.clone(),
                event_id: event_id.to_string(),
                session: session.to_string(),
                attempts: u64::from(attempts),
                error: error.chars().take(500).collect(),
                failed_at: now_ms(),
                body,
            })
            .await
    }

    /// One signed POST; `Err` says why it does not count as delivered.
    pub(crate) async fn post(&self, url: &hyper::Uri, id: &str, body: Bytes) -> Result<(), String> {
        let status = super::hook::signed_post(
            &self.client,
            &self.signer,
            url,
            id,
            body,
            self.config.timeout,
        )
        .await
        .map(|(status, _)| status)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }

    /// Replays one dead letter once (admin): a signed POST with its original id; the
    /// dead letter is removed when it is answered 2xx.
    pub(crate) async fn replay(&self, dead: &DeadLetter) -> Result<(), String> {
        let ep = self
            .endpoints
            .iter()
            .find(|e| e.id == dead.endpoint)
            .ok_or_else(|| format!("endpoint {} is no longer configured", dead.endpoint))?;
        if dead.body.is_empty() {
            return Err("the event was malformed; there is nothing to send".into());
        }
        self.post(
            &ep.url,
            &dead.event_id,
            Bytes::from(dead.body.clone().into_bytes()),
        )
        .await?;
        m::webhook_delivered(&ep.id, now_ms().saturating_sub(dead.failed_at) as f64 / 1e3);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            let first = backoff(1, base, max);
            assert!(first >= base / 2 && first <= base, "{first:?}");
            let third = backoff(3, base, max);
            assert!(third >= base * 2 && third <= base * 4, "{third:?}");
            let late = backoff(30, base, max);
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }

    #[test]
    fn the_breaker_opens_after_the_threshold_and_lets_one_probe_through() {
        let now = Instant::now();
        let cooldown = Duration::from_secs(10);
        let mut b = Breaker::default();
        assert!(!b.failure(now, 3, cooldown));
        assert!(!b.failure(now, 3, cooldown));
        assert!(b.failure(now, 3, cooldown), "the third failure opens it");
        assert_eq!(b.admit(now), Err(now + cooldown));
        assert_eq!(b.name(now), "open");
        let later = now + cooldown;
        assert_eq!(b.admit(later), Ok(()), "one probe after the cooldown");
        assert!(b.admit(later).is_err(), "only one");
        assert_eq!(b.name(later), "half_open");
        // A failed probe opens it again at once, for another cooldown.
        b.failure(later, 3, cooldown);
        assert_eq!(b.admit(later), Err(later + cooldown));
        let end = later + cooldown;
        assert_eq!(b.admit(end), Ok(()));
        assert!(b.success(), "a good probe closes it");
        assert_eq!(b.admit(end), Ok(()));
        assert_eq!(b.name(end), "closed");
    }
}
