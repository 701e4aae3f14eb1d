//! The local registry: which sessions have a pump on this instance, and which clients are
//! connected here.
//!
//! Owns the connected clients and their users (for direct messages), and the session
//! pumps' registry (`session::Pumps`), which pub/sub payloads are routed through. The
//! maps are `DashMap`s touched only briefly and never across an `.await`.

use bytes::Bytes;
use dashmap::DashMap;

use crate::client::ClientHandle;
use crate::metrics as m;
use crate::session::{Pumps, SessionHandle};

pub(crate) struct Hub {
    pumps: Pumps,
    clients: DashMap<String, ClientHandle>,
    /// user → that user's connections here, for direct messages.
    users: DashMap<String, Vec<ClientHandle>>,
}

impl Hub {
    pub(crate) fn new(pumps: Pumps) -> Self {
        Hub {
            pumps,
            clients: DashMap::new(),
            users: DashMap::new(),
        }
    }

    /// The session's pump, spawned if this instance has none.
    pub(crate) fn session(&self, id: &str) -> SessionHandle {
        self.pumps.session(id)
    }

    /// Hands a pub/sub payload to the session's pump, if there is one here.
    pub(crate) fn dispatch(&self, session: &str, payload: Bytes) {
        self.pumps.dispatch(session, payload);
    }

    /// Asks every pump to read history after its last delivered seq.
    pub(crate) fn catch_up_all(&self) {
        self.pumps.catch_up_all();
    }

    /// Asks one session's pump, if there is one here, to read history after its last
    /// delivered seq (its channel was resubscribed after a slot moved).
    pub(crate) fn catch_up(&self, session: &str) {
        self.pumps.catch_up(session);
    }

    pub(crate) fn session_count(&self) -> usize {
        self.pumps.count()
    }

    /// Registers a connection; true when it is its user's first one here.
    pub(crate) fn add_client(&self, client: ClientHandle) -> bool {
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
    pub(crate) fn user_connection_count(&self, user: &str) -> usize {
        self.users.get(user).map(|l| l.len()).unwrap_or(0)
    }

    /// Forgets a connection; true when it was its user's last one here.
    pub(crate) fn remove_client(&self, client: &ClientHandle) -> bool {
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
    pub(crate) fn dispatch_user(&self, user: &str, payload: &[u8]) {
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

    pub(crate) fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A snapshot of the connected clients (for draining).
    pub(crate) fn clients(&self) -> Vec<ClientHandle> {
        self.clients.iter().map(|e| e.value().clone()).collect()
    }
}
