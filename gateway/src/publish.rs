//! The one publish path, for every surface (a WebSocket `publish`, REST
//! `POST /sessions/{id}/messages`): encode the entry, run `publish.lua` (store, number,
//! fan out, atomically; behind the caller's sliding-window limits in the same script
//! where Redis allows), and put a session the publish created or reactivated under the
//! lifecycle clock. Callers own what differs: which limits, their reply, their activity
//! bookkeeping.
//!
//! Also owns the cross-slot index writes that follow writes (`touch_indexes_later`): off
//! the caller's path, retried when they carry a due time, because that is what puts a
//! session under the lifecycle clock.

use std::sync::Arc;
use std::time::Duration;

use roomcast_shared::From;
use serde_json::Value;
use tracing::Instrument;

use crate::envelope::{encode_entry_tail, Entry, EntryTail};
use crate::ratelimit::Decision;
use crate::store::{Limit, Published, StoreError};
use crate::util::now_ms;
use crate::App;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// `data` has no stored form (a bug in the caller's validation, in practice).
    #[error("data cannot be stored: {0}")]
    Data(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One of the caller's limits refused it: nothing was stored or counted.
    #[error("rate limited ({})", .0.scope.name())]
    Limited(Decision),
}

/// A stored message as the instance that published it knows it: enough to build the
/// entry history holds (see [`Stored::entry`]) without reading it back.
pub(crate) struct Stored {
    pub(crate) published: Published,
    /// The entry's `ts`: when it was published.
    pub(crate) ts: u64,
    pub(crate) tail: EntryTail,
}

impl Stored {
    /// The stored entry, for delivering it on this instance (`data` and `from` are the
    /// caller's, moved in: the tail holds them only encoded), and the entry's bytes, by
    /// which its pub/sub copy is recognised. `None` for a repeat, which stored nothing.
    pub(crate) fn entry(self, from: From, data: Value) -> Option<(Entry, Vec<u8>)> {
        if self.published.repeat {
            return None;
        }
        let bytes = self.tail.stored(self.published.seq, &self.published.prev);
        let entry = Entry {
            seq: self.published.seq,
            ts: self.ts,
            from,
            data,
            id: self.tail.id,
            prev: self.published.prev,
        };
        Some((entry, bytes))
    }
}

/// Stores and fans out one message in `session` if every one of `limits` admits it. The
/// message is in history if and only if this returns `Ok`, and then its seq is final. A
/// `key` seen within `ROOMCAST_IDEMPOTENCY_WINDOW` makes it a repeat: nothing is stored,
/// and the answer is the first one's seq (`Published::repeat`).
pub(crate) async fn publish_message(
    app: &Arc<App>,
    session: &str,
    from: &From,
    data: &Value,
    key: Option<&str>,
    limits: &[Limit<'_>],
) -> Result<Stored, PublishError> {
    let now = now_ms();
    let tail = encode_entry_tail(now, from, data).map_err(|e| PublishError::Data(e.to_string()))?;
    let span = tracing::info_span!("publish", session = %session);
    let published = async {
        let traceparent = crate::telemetry::current_traceparent();
        app.store
            .publish_limited(session, &tail, now, traceparent.as_deref(), key, limits)
            .await
    }
    .instrument(span)
    .await?
    .map_err(PublishError::Limited)?;
    if let Some(due) = crate::lifecycle::due_after_publish(&app.config, &published, now) {
        touch_indexes_later(app, session, None, Some(due), true);
    }
    Ok(Stored {
        published,
        ts: now,
        tail,
    })
}

/// Records activity (when `activity`) in the cross-slot session index, and the user's
/// membership and the lifecycle due time when given, off the caller's path.
pub(crate) fn touch_indexes_later(
    app: &Arc<App>,
    session: &str,
    user: Option<String>,
    due: Option<u64>,
    activity: bool,
) {
    let task_app = app.clone();
    let session = session.to_string();
    app.tracker.spawn(async move {
        let app = task_app;
        // A due time is what puts a new or reactivated session under the lifecycle clock:
        // worth a few tries. Activity alone is refreshed by the next write.
        let attempts: u64 = if due.is_some() { 3 } else { 1 };
        for attempt in 1..=attempts {
            let now = now_ms();
            let result = if activity {
                app.store
                    .touch_indexes(&session, now, user.as_deref(), due)
                    .await
            } else if let Some(user) = &user {
                app.store.remember_user_session(user, &session, now).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => return,
                Err(e) if attempt == attempts && due.is_some() => {
                    tracing::warn!(session = %session, error = %e, "filing a session under the lifecycle clock failed");
                }
                Err(e) if attempt == attempts => {
                    tracing::debug!(error = %e, "index touch failed");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500 * attempt)).await,
            }
        }
    });
}
