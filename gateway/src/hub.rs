//! The local registry: which sessions have a pump on this instance, and which clients are
//! connected here.
//!
//! Owns the map from session id to its pump's mailbox and spawns pumps on first use. The
//! map is a `DashMap` touched only briefly and never across an `.await`. Pub/sub payloads
//! are handed to pumps with `try_send`: a full mailbox drops the payload, which the pump's
//! gap detection later recovers from history for stored messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::client::ClientHandle;
use crate::metrics as m;
use crate::session::{Command, Pump};
use crate::App;

/// Commands queued per session pump before pub/sub payloads are dropped.
const PUMP_QUEUE: usize = 4096;

#[derive(Clone)]
pub struct SessionHandle {
    pub tx: mpsc::Sender<Command>,
    generation: u64,
    /// Raised when a payload or catch-up could not be queued; the pump then reads history.
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct Hub {
    sessions: DashMap<String, SessionHandle>,
    clients: DashMap<String, ClientHandle>,
    /// user → that user's connections here, for direct messages.
    users: DashMap<String, Vec<ClientHandle>>,
    generation: AtomicU64,
}

impl Hub {
    /// The session's pump, spawned if this instance has none.
    pub fn session(&self, app: &Arc<App>, id: &str) -> SessionHandle {
        if let Some(handle) = self.sessions.get(id) {
            return handle.clone();
        }
        self.sessions
            .entry(id.to_string())
            .or_insert_with(|| {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(PUMP_QUEUE);
                let lagged = Arc::new(AtomicBool::new(false));
                let pump = Pump::new(app.clone(), id.to_string(), generation, rx, lagged.clone());
                let span = tracing::info_span!("session", session = %id);
                app.tracker
                    .spawn(tracing::Instrument::instrument(pump.run(), span));
                SessionHandle {
                    tx,
                    generation,
                    lagged,
                }
            })
            .clone()
    }

    /// Forgets a pump, unless a newer one already took its place.
    pub(crate) fn remove(&self, id: &str, generation: u64) {
        self.sessions
            .remove_if(id, |_, h| h.generation == generation);
    }

    /// Hands a pub/sub payload to the session's pump, if there is one here.
    pub fn dispatch(&self, session: &str, payload: Bytes) {
        // try_send never waits, so the map's read guard is held only for an instant.
        let Some(handle) = self.sessions.get(session) else {
            // A message in flight while the last member left.
            return;
        };
        if handle.tx.try_send(Command::Payload(payload)).is_err() {
            // Stored messages are recovered from history once the pump catches up; the
            // flag makes sure it does even if nothing newer arrives.
            handle.lagged.store(true, Ordering::Release);
            m::pubsub_dropped("session_queue_full", 1);
        }
    }

    /// Asks every pump to read history after its last delivered seq.
    pub fn catch_up_all(&self) {
        let handles: Vec<_> = self.sessions.iter().map(|e| e.value().clone()).collect();
        for handle in handles {
            // A full mailbox means a busy pump: it sees the flag after its current command.
            if handle.tx.try_send(Command::CatchUp).is_err() {
                handle.lagged.store(true, Ordering::Release);
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Registers a connection; true when it is its user's first one here.
    pub fn add_client(&self, client: ClientHandle) -> bool {
        let mut first = false;
        self.users
            .entry(client.user().to_string())
            .or_insert_with(|| {
                first = true;
                Vec::new()
            })
            .push(client.clone());
        self.clients.insert(client.id().to_string(), client);
        first
    }

    /// How many connections `user` holds on this instance.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users.get(user).map(|l| l.len()).unwrap_or(0)
    }

    /// Forgets a connection; true when it was its user's last one here.
    pub fn remove_client(&self, client: &ClientHandle) -> bool {
        self.clients.remove(client.id());
        if let Some(mut list) = self.users.get_mut(client.user()) {
            list.retain(|c| c.id() != client.id());
        }
        // Decided under the entry lock: a connection of the same user arriving meanwhile
        // keeps the entry (and the subscription).
        self.users
            .remove_if(client.user(), |_, list| list.is_empty())
            .is_some()
    }

    /// Delivers a user-channel payload to that user's connections here.
    pub fn dispatch_user(&self, user: &str, payload: &[u8]) {
        let Ok(crate::envelope::Envelope::Event(crate::envelope::Event::Direct { data, ts })) =
            crate::envelope::Envelope::decode(payload)
        else {
            m::pubsub_dropped("bad_payload", 1);
            return;
        };
        let clients = self.users.get(user).map(|l| l.clone()).unwrap_or_default();
        let frame =
            crate::client::SharedFrame::new(roomcast_shared::ServerFrame::Direct { data, ts });
        for client in &clients {
            if let Some(msg) = frame.message(client.format()) {
                client.offer(msg);
            }
        }
        m::delivered(clients.len() as u64);
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A snapshot of the connected clients (for draining).
    pub fn clients(&self) -> Vec<ClientHandle> {
        self.clients.iter().map(|e| e.value().clone()).collect()
    }
}
