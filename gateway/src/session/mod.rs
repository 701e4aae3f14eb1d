//! Sessions on this instance: one pump task per session with local members, the registry
//! that finds or spawns it, and the narrow interfaces it runs on.
//!
//! Owns the pump registry (session id → mailbox) and the only ways into a pump, the
//! [`SessionHandle`] methods. A pump sees the rest of the gateway through three narrow
//! interfaces and nothing else:
//! - [`PumpStore`]: the Redis scripts it runs (join, leave, presence, history, status);
//! - [`Subscriptions`]: its pub/sub channel, taken at start and given back at retirement;
//! - the registry it leaves when it retires (kept here, next to the map it edits).
//!
//! So the pump is built and tested alone: `tests.rs` drives it on tokio's paused clock
//! with an in-memory store for sequencing, and against a real Redis where the scripts
//! are the point.

mod pump;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use roomcast_shared::ServerFrame;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::client::ClientHandle;
use crate::config::Config;
use crate::envelope::{Entry, MemberInfo};
use crate::metrics as m;
use crate::store::{HistoryReply, JoinArgs, JoinReply, SessionStatus, Store, StoreError};
use crate::util::now_ms;

use pump::Pump;

/// Commands queued per session pump before pub/sub payloads are dropped.
const PUMP_QUEUE: usize = 4096;

/// What a pump needs from Redis. [`Store`] is the implementation; tests may stand in an
/// in-memory one for pure sequencing logic.
pub(crate) trait PumpStore: Send + Sync + 'static {
    /// The pub/sub channel the session's payloads are published on.
    fn channel(&self, session: &str) -> String;
    /// Runs `join.lua`: adds the member and reads its baseline (seq, history, presence).
    fn join(
        &self,
        session: &str,
        args: JoinArgs<'_>,
    ) -> impl Future<Output = Result<JoinReply, StoreError>> + Send;
    /// Runs `leave.lua`: removes the member's presence entry, announcing it.
    fn leave(
        &self,
        session: &str,
        client_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Runs `presence_set.lua` (expiry 0: only if the entry is still there).
    fn presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        announce: u8,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Runs `history.lua`: the current seq, the stored entries after `since` (newest
    /// first), the epoch and the tip.
    fn history_since(
        &self,
        session: &str,
        since: u64,
    ) -> impl Future<Output = Result<HistoryReply, StoreError>> + Send;
    /// Runs `fork.lua`: a new epoch if the session's is still `epoch`; answers the
    /// session's epoch afterwards.
    fn fork(
        &self,
        session: &str,
        epoch: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
    /// Refreshes the listed members' presence; answers those that were not there.
    fn refresh_presence(
        &self,
        session: &str,
        now_ms: u64,
        expiry_ms: u64,
        client_ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// `Some((reason, at))` when the session has ended.
    fn ended(
        &self,
        session: &str,
    ) -> impl Future<Output = Result<Option<(Option<String>, u64)>, StoreError>> + Send;
}

impl PumpStore for Store {
    fn channel(&self, session: &str) -> String {
        self.keys().session_channel(session)
    }

    async fn join(&self, session: &str, args: JoinArgs<'_>) -> Result<JoinReply, StoreError> {
        Store::join(self, session, args).await
    }

    async fn leave(&self, session: &str, client_id: &str) -> Result<(), StoreError> {
        Store::leave(self, session, client_id).await.map(drop)
    }

    async fn presence_set(
        &self,
        session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        announce: u8,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        Store::presence_set(self, session, client_id, expiry_ms, info, announce, now_ms).await
    }

    async fn history_since(&self, session: &str, since: u64) -> Result<HistoryReply, StoreError> {
        Store::history_since(self, session, since).await
    }

    async fn fork(&self, session: &str, epoch: &str) -> Result<String, StoreError> {
        Store::fork(self, session, epoch).await
    }

    async fn refresh_presence(
        &self,
        session: &str,
        now_ms: u64,
        expiry_ms: u64,
        client_ids: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        Store::refresh_presence(self, session, now_ms, expiry_ms, client_ids.into_iter())
            .await
            .map(|(missing, _swept)| missing)
    }

    async fn ended(&self, session: &str) -> Result<Option<(Option<String>, u64)>, StoreError> {
        match self.session_meta(session).await {
            Ok(meta) => Ok(meta
                .filter(|meta| meta.status == SessionStatus::Ended)
                .map(|meta| (meta.reason, meta.ended_at.unwrap_or_else(now_ms)))),
            // A status none of ours (`SessionMeta::parse`) is not `ended`: the session is
            // refused every write, and retrying the read would not change it.
            Err(StoreError::Internal(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// This instance's pub/sub subscriptions, reference-counted per channel (see `bus`).
pub(crate) trait Subscriptions: Send + Sync + 'static {
    /// Subscribes to `channel`, or takes one more reference on it.
    fn subscribe(&self, channel: String) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Gives a reference back; the last one unsubscribes.
    fn unsubscribe(&self, channel: String);
}

/// The configuration a pump reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpSettings {
    /// How often presence is refreshed: half a heartbeat.
    pub(crate) refresh: Duration,
    /// How long a presence entry lives past a refresh: 1.5 heartbeats, so a dead node's
    /// members are swept within two heartbeats.
    pub(crate) presence_ttl_ms: u64,
    pub(crate) idle_after_ms: u64,
    pub(crate) presence_list_max: u32,
}

impl PumpSettings {
    pub(crate) fn from_config(config: &Config) -> Self {
        PumpSettings {
            refresh: config.heartbeat / 2,
            presence_ttl_ms: config.heartbeat.as_millis() as u64 * 3 / 2,
            idle_after_ms: config.idle_after.as_millis() as u64,
            presence_list_max: config.presence_list_max,
        }
    }
}

/// What every pump of this instance shares, behind one `Arc`.
pub(crate) struct PumpEnv<S, B> {
    pub(crate) store: Arc<S>,
    pub(crate) subscriptions: B,
    pub(crate) settings: PumpSettings,
    registry: DashMap<String, SessionHandle>,
    generation: AtomicU64,
}

impl<S, B> PumpEnv<S, B> {
    pub(crate) fn new(store: Arc<S>, subscriptions: B, settings: PumpSettings) -> Self {
        PumpEnv {
            store,
            subscriptions,
            settings,
            registry: DashMap::new(),
            generation: AtomicU64::new(0),
        }
    }

    /// Forgets a pump, unless a newer one already took its place.
    fn deregister(&self, id: &str, generation: u64) {
        self.registry
            .remove_if(id, |_, h| h.generation == generation);
    }
}

/// The pump registry: finds a session's pump, spawning it on first use. The map is a
/// `DashMap` touched only briefly and never across an `.await`.
pub(crate) struct Pumps<S = Store, B = crate::bus::Channels> {
    env: Arc<PumpEnv<S, B>>,
    tracker: TaskTracker,
}

impl<S: PumpStore, B: Subscriptions> Pumps<S, B> {
    pub(crate) fn new(env: PumpEnv<S, B>, tracker: TaskTracker) -> Self {
        Pumps {
            env: Arc::new(env),
            tracker,
        }
    }

    /// The session's pump, spawned if this instance has none.
    pub(crate) fn session(&self, id: &str) -> SessionHandle {
        if let Some(handle) = self.env.registry.get(id) {
            return handle.clone();
        }
        self.env
            .registry
            .entry(id.to_string())
            .or_insert_with(|| {
                let generation = self.env.generation.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(PUMP_QUEUE);
                let lagged = Arc::new(AtomicBool::new(false));
                let pump = Pump::new(
                    self.env.clone(),
                    id.to_string(),
                    generation,
                    rx,
                    lagged.clone(),
                );
                let span = tracing::info_span!("session", session = %id);
                self.tracker
                    .spawn(tracing::Instrument::instrument(pump.run(), span));
                SessionHandle {
                    tx,
                    generation,
                    lagged,
                }
            })
            .clone()
    }

    /// Hands a pub/sub payload to the session's pump, if there is one here.
    pub(crate) fn dispatch(&self, session: &str, payload: Bytes) {
        // try_send never waits, so the map's read guard is held only for an instant.
        // No pump: a message in flight while the last member left.
        if let Some(handle) = self.env.registry.get(session) {
            handle.dispatch(payload);
        }
    }

    /// Asks every pump to read history after its last delivered seq.
    pub(crate) fn catch_up_all(&self) {
        let handles: Vec<_> = self
            .env
            .registry
            .iter()
            .map(|e| e.value().clone())
            .collect();
        for handle in handles {
            handle.catch_up();
        }
    }

    /// Asks one session's pump to catch up, if it runs here.
    pub(crate) fn catch_up(&self, session: &str) {
        let handle = self.env.registry.get(session).map(|e| e.value().clone());
        if let Some(handle) = handle {
            handle.catch_up();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.env.registry.len()
    }
}

/// Commands a session pump accepts; built only by [`SessionHandle`].
#[derive(Debug)]
enum Command {
    Join(Box<JoinRequest>),
    Leave {
        client_id: String,
        done: Option<oneshot::Sender<()>>,
    },
    /// The member reported activity: the pump updates its state, writes presence, and
    /// announces it if it was idle.
    Activity {
        client_id: String,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A raw pub/sub payload for this session.
    Payload(Bytes),
    /// A message this instance just stored, with its publisher's ack.
    Own(Box<OwnMessage>),
    /// Pub/sub may have lost messages: read history after the last delivered seq.
    CatchUp,
}

/// A message a connection of this instance just stored, handed to the session's pump
/// with the publisher's ack ([`SessionHandle::deliver_own`]): the pump delivers it
/// without waiting for its pub/sub copy when it is the next one, and then drops that copy
/// unread (recognised by `bytes`).
#[derive(Debug)]
pub(crate) struct OwnMessage {
    pub(crate) entry: Entry,
    /// The entry as `publish.lua` stored it, byte for byte (`EntryTail::stored`).
    pub(crate) bytes: Vec<u8>,
    pub(crate) publisher: ClientHandle,
    /// The publisher's `ack`, queued together with its own copy of the message.
    pub(crate) ack: ServerFrame,
}

/// Where a rejoining member left off: the last seq it saw, in the numbering named by
/// `epoch` (absent from clients that predate epochs, or that never saw one), and the id
/// of the message it saw there (absent from clients that predate ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Since {
    pub(crate) seq: u64,
    pub(crate) epoch: Option<String>,
    pub(crate) id: Option<String>,
}

/// A member joining through a pump.
#[derive(Debug)]
pub(crate) struct Join {
    pub(crate) client: ClientHandle,
    pub(crate) info: MemberInfo,
    pub(crate) since: Option<Since>,
    pub(crate) reference: Option<String>,
    /// Create the session if it does not exist (the connection checked the creation
    /// limits); otherwise a missing session answers `NoSuchSession`.
    pub(crate) create: bool,
}

#[derive(Debug)]
struct JoinRequest {
    join: Join,
    /// Whether the join created the session, or why it failed.
    reply: oneshot::Sender<Result<bool, JoinError>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    /// The pump was retiring; ask the registry for a fresh one.
    #[error("session pump retired")]
    Retry,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The way into one session's pump.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    tx: mpsc::Sender<Command>,
    generation: u64,
    /// Raised when a payload or catch-up could not be queued; the pump then reads history.
    lagged: Arc<AtomicBool>,
}

impl SessionHandle {
    /// Joins through the pump; true when the join created the session. `Retry` when the
    /// pump retired meanwhile: the registry hands out a fresh one.
    pub(crate) async fn join(&self, join: Join) -> Result<bool, JoinError> {
        let (reply, answer) = oneshot::channel();
        let request = Box::new(JoinRequest { join, reply });
        if self.tx.send(Command::Join(request)).await.is_err() {
            return Err(JoinError::Retry);
        }
        answer.await.unwrap_or(Err(JoinError::Retry))
    }

    /// Leaves, waiting until the presence entry is gone (or the pump is).
    pub(crate) async fn leave(&self, client_id: &str) {
        let (done, wait) = oneshot::channel();
        let leave = Command::Leave {
            client_id: client_id.to_string(),
            done: Some(done),
        };
        if self.tx.send(leave).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Queues a leave without waiting; false when the mailbox is full (the pump drops
    /// members whose connection ended at its next presence refresh).
    pub(crate) fn leave_soon(&self, client_id: &str) -> bool {
        let leave = Command::Leave {
            client_id: client_id.to_string(),
            done: None,
        };
        self.tx.try_send(leave).is_ok()
    }

    /// Records a member's activity through the pump, which owns the member's state.
    pub(crate) async fn activity(&self, client_id: &str) -> Result<(), StoreError> {
        let gone = || StoreError::Unavailable("session pump gone".into());
        let (done, answer) = oneshot::channel();
        let command = Command::Activity {
            client_id: client_id.to_string(),
            done,
        };
        self.tx.send(command).await.map_err(|_| gone())?;
        answer.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Hands a message this instance stored to the pump, which delivers it (to the
    /// publisher too) and sends the ack. Never waits: with the mailbox full the ack goes
    /// alone at once, and pub/sub delivers the message as ever.
    pub(crate) fn deliver_own(&self, own: OwnMessage) {
        match self.tx.try_reserve() {
            Ok(permit) => permit.send(Command::Own(Box::new(own))),
            Err(_) => {
                own.publisher.send(&own.ack);
            }
        }
    }

    /// Hands over a pub/sub payload without waiting. A full mailbox drops it; stored
    /// messages are then recovered from history, and the flag makes sure the pump reads
    /// it even if nothing newer arrives.
    fn dispatch(&self, payload: Bytes) {
        if self.tx.try_send(Command::Payload(payload)).is_err() {
            self.lagged.store(true, Ordering::Release);
            m::pubsub_dropped("session_queue_full", 1);
        }
    }

    /// Asks the pump to read history after its last delivered seq. A full mailbox means
    /// a busy pump: it sees the flag after its current command.
    fn catch_up(&self) {
        if self.tx.try_send(Command::CatchUp).is_err() {
            self.lagged.store(true, Ordering::Release);
        }
    }
}
