//! The in-memory stand-ins the pump's sequencing tests run on: `Memory`, the scripts'
//! effects (a seq, the stored entries chained by id, presence, an epoch and tip, forks
//! and restarts on demand), and `Counted`, subscriptions that only count references.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use roomcast_shared::Role;

use super::super::*;
use crate::envelope::{kind, Entry};
use crate::store::JoinReply;

/// The scripts' effects, in memory: a seq, the stored entries, presence entries.
#[derive(Default)]
pub(super) struct Memory {
    pub(super) state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) seq: u64,
    /// Oldest first.
    pub(super) entries: Vec<Entry>,
    /// The numbering's name and the id of its newest message, as the meta holds them.
    pub(super) epoch: String,
    pub(super) tip: String,
    /// Ids given so far (each message's is unique, as `publish.lua`'s are).
    pub(super) ids: u64,
    /// `fork` calls: (the epoch named, the epoch after).
    pub(super) forks: Vec<(String, String)>,
    /// The next this many `fork` calls fail.
    pub(super) failing_forks: u32,
    pub(super) presence: BTreeMap<String, Vec<u8>>,
    /// The next this many history reads fail.
    pub(super) failing_history_reads: u32,
    pub(super) history_reads: usize,
    pub(super) joins_in_flight: usize,
    pub(super) most_joins_in_flight: usize,
    pub(super) leaves: Vec<String>,
    /// (client, expiry, announce, info) of every `presence_set`.
    pub(super) sets: Vec<(String, u64, u8, MemberInfo)>,
    pub(super) ended: Option<(Option<String>, u64)>,
}

impl Memory {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Stores a message, as `publish.lua` would, and returns its pub/sub payload.
    pub(super) fn store_message(&self, text: &str) -> Bytes {
        self.store_message_aged(text, 0)
    }

    /// A message published `age_ms` ago.
    pub(super) fn store_message_aged(&self, text: &str, age_ms: u64) -> Bytes {
        let mut s = self.state();
        s.seq += 1;
        s.ids += 1;
        let id = format!("id{}", s.ids);
        let entry = Entry {
            seq: s.seq,
            ts: now_ms() - age_ms,
            from: roomcast_shared::From {
                client_id: "writer".into(),
                user: "w".into(),
                role: Role::Controller,
                name: None,
            },
            data: serde_json::json!(text),
            prev: std::mem::replace(&mut s.tip, id.clone()),
            id,
        };
        s.entries.push(entry.clone());
        payload(&entry)
    }

    /// The session's keys are lost (a Redis restart without persistence): numbering
    /// starts over, under a new epoch.
    pub(super) fn lose_keys(&self) {
        let mut s = self.state();
        s.seq = 0;
        s.entries.clear();
        s.tip.clear();
        s.epoch = format!("{}-restarted", s.epoch);
    }

    /// A failover to a replica that had the messages up to `seq` only: the epoch stays,
    /// the later ones are gone, and the next publish reuses their seqs.
    pub(super) fn fork_at(&self, seq: u64) {
        let mut s = self.state();
        s.entries.retain(|e| e.seq <= seq);
        s.seq = seq;
        s.tip = s.entries.last().map(|e| e.id.clone()).unwrap_or_default();
    }

    pub(super) fn encoded_after(s: &State, since: u64) -> Vec<Bytes> {
        s.entries
            .iter()
            .rev()
            .filter(|e| e.seq > since)
            .map(|e| Bytes::from(rmp_serde::to_vec(e).unwrap()))
            .collect()
    }
}

/// The pub/sub payload `[1, entry]` of a stored message.
pub(super) fn payload(entry: &Entry) -> Bytes {
    let mut p = vec![0x92, kind::MESSAGE];
    p.extend(rmp_serde::to_vec(entry).unwrap());
    Bytes::from(p)
}

impl PumpStore for Memory {
    fn channel(&self, session: &str) -> String {
        format!("ch:{session}")
    }

    async fn join(&self, _session: &str, a: JoinArgs<'_>) -> Result<JoinReply, StoreError> {
        {
            let mut s = self.state();
            s.joins_in_flight += 1;
            s.most_joins_in_flight = s.most_joins_in_flight.max(s.joins_in_flight);
        }
        // Joins of one batch are in flight together; one at a time never overlaps.
        tokio::task::yield_now().await;
        let mut s = self.state();
        s.joins_in_flight -= 1;
        s.presence.insert(a.client_id.to_string(), a.info.to_vec());
        Ok(JoinReply {
            seq: s.seq,
            history: Memory::encoded_after(&s, a.since.unwrap_or(s.seq)),
            members: s.presence.values().cloned().map(Bytes::from).collect(),
            created: false,
            epoch: s.epoch.clone(),
            same_numbering: a.epoch.is_none_or(|e| e == s.epoch),
            tip: s.tip.clone(),
        })
    }

    async fn leave(&self, _session: &str, client_id: &str) -> Result<(), StoreError> {
        let mut s = self.state();
        s.presence.remove(client_id);
        s.leaves.push(client_id.to_string());
        Ok(())
    }

    async fn presence_set(
        &self,
        _session: &str,
        client_id: &str,
        expiry_ms: u64,
        info: &[u8],
        announce: u8,
        _now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut s = self.state();
        let decoded = MemberInfo::decode(info).unwrap();
        s.sets
            .push((client_id.to_string(), expiry_ms, announce, decoded));
        if expiry_ms > 0 || s.presence.contains_key(client_id) {
            s.presence.insert(client_id.to_string(), info.to_vec());
        }
        Ok(())
    }

    async fn history_since(&self, _session: &str, since: u64) -> Result<HistoryReply, StoreError> {
        let mut s = self.state();
        s.history_reads += 1;
        if s.failing_history_reads > 0 {
            s.failing_history_reads -= 1;
            return Err(StoreError::Unavailable("history read failed (test)".into()));
        }
        Ok(HistoryReply {
            seq: s.seq,
            entries: Memory::encoded_after(&s, since),
            epoch: s.epoch.clone(),
            tip: s.tip.clone(),
        })
    }

    async fn fork(&self, _session: &str, epoch: &str) -> Result<String, StoreError> {
        let mut s = self.state();
        if s.failing_forks > 0 {
            s.failing_forks -= 1;
            return Err(StoreError::Unavailable("fork failed (test)".into()));
        }
        if s.epoch == epoch {
            s.epoch = format!("{epoch}-forked");
        }
        let after = s.epoch.clone();
        s.forks.push((epoch.to_string(), after.clone()));
        Ok(after)
    }

    async fn refresh_presence(
        &self,
        _session: &str,
        _now_ms: u64,
        _expiry_ms: u64,
        client_ids: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let s = self.state();
        Ok(client_ids
            .into_iter()
            .filter(|id| !s.presence.contains_key(id))
            .collect())
    }

    async fn ended(&self, _session: &str) -> Result<Option<(Option<String>, u64)>, StoreError> {
        Ok(self.state().ended.clone())
    }
}

/// Subscriptions that only count references (or fail when told to).
#[derive(Default, Clone)]
pub(super) struct Counted {
    pub(super) refs: Arc<AtomicUsize>,
    pub(super) fail: Arc<AtomicBool>,
}

impl Subscriptions for Counted {
    async fn subscribe(&self, _channel: String) -> Result<(), StoreError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("subscribe failed (test)".into()));
        }
        self.refs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn unsubscribe(&self, _channel: String) {
        self.refs.fetch_sub(1, Ordering::Relaxed);
    }
}
