//! The pump's numbering: where its stream of a session starts (`start_at`), and what it
//! does when what it delivered is no longer the session's history (`renumber`: a restart
//! or a fork, found by the checks in `pump.rs`), or when members fell behind a hole
//! history no longer covers (`resync_members`). Both end in 4010 for the members
//! concerned, never in a stream that skips or repeats.

use roomcast_shared::CloseCode;

use super::{Pump, CLOSED};

/// A fork whose rename Redis refused: the epoch to rename, and the members to tell
/// (4010) once it is renamed.
pub(super) struct OwedRename {
    forked: String,
    held: Vec<String>,
}
use crate::metrics as m;
use crate::session::{PumpStore, Subscriptions};

impl<S: PumpStore, B: Subscriptions> Pump<S, B> {
    /// The first baseline: where this instance's stream of the session starts.
    pub(super) fn start_at(&mut self, seq: u64, id: String, epoch: String) {
        // Copies awaited from the stream before this one are not to be taken for ours.
        self.echoes.clear();
        self.last_seq = Some(seq);
        self.last_id = id;
        self.epoch = epoch;
    }

    /// What this instance delivered is not the session's history any more: its keys
    /// expired or Redis lost them (a new numbering), or a failover lost writes and the
    /// same seqs now name other messages (a fork of the same epoch). No member may take
    /// the new messages for a continuation of the old ones: every member is told to
    /// resync (4010). A fork gets a new epoch first (`fork.lua`, only while the session
    /// still has ours), so every rejoin that names ours, here or on any instance, is
    /// answered `recovered: false`, as after a restart. `epoch` is the session's when the
    /// caller read it (empty when it did not).
    pub(super) async fn renumber(&mut self, seq: u64, id: String, epoch: String) {
        tracing::info!(
            session = %self.session, seq, last = self.last_seq,
            "session numbering restarted or forked; members resync"
        );
        m::numbering_reset();
        if !epoch.is_empty() && epoch != self.epoch {
            // A new numbering already has a name of its own (and a fork still to rename
            // is gone with the old one).
            if let Some(owed) = self.owed_rename.take() {
                self.tell(owed.held);
            }
            self.start_at(seq, id, epoch);
            self.resync_members(|_| true);
            return;
        }
        // The members are given nothing more from here, and told once the fork is
        // renamed: a rejoin before that, naming only the old epoch (as older SDKs do),
        // would be taken for a continuation. Until then this instance's numbering is
        // unnamed (empty matches any). Found again before the rename went through: it is still the first one's.
        let (forked, mut held) = match self.owed_rename.take().map(|owed| *owed) {
            Some(owed) => (owed.forked, owed.held),
            None => (std::mem::take(&mut self.epoch), Vec::new()),
        };
        self.start_at(seq, id, String::new());
        for (client_id, member) in &mut self.members {
            if member.last_seq != CLOSED {
                member.last_seq = CLOSED;
                held.push(client_id.clone());
            }
        }
        self.owed_rename = Some(Box::new(OwedRename { forked, held }));
        self.rename().await;
    }

    /// Runs the rename a fork owes (see [`Pump::renumber`]), then tells the members
    /// held for it to resync. While Redis refuses it, the retry tries again, and the
    /// pump does not retire.
    pub(super) async fn rename(&mut self) {
        let Some(owed) = &self.owed_rename else {
            return;
        };
        match self.env.store.fork(&self.session, &owed.forked).await {
            Ok(now) => {
                if self.epoch.is_empty() {
                    self.epoch = now;
                }
                let held = self.owed_rename.take().map(|o| o.held).unwrap_or_default();
                self.tell(held);
            }
            Err(e) => {
                tracing::warn!(session = %self.session, error = %e, "renaming a forked numbering failed; retrying");
                self.schedule_retry();
            }
        }
    }

    /// Tells members held for a rename to resync (those still here).
    fn tell(&self, held: Vec<String>) {
        for client_id in held {
            if let Some(member) = self.members.get(&client_id) {
                member.client.close_after_queue(CloseCode::Resync);
            }
        }
    }

    /// Closes the members `behind` picks (by the last seq each was given) with 4010:
    /// this connection cannot give them a continuous stream any more. What is queued
    /// for them goes out first; their reconnect's `join` with `since` and `epoch` gets
    /// `recovered: false` and the window. Until their connection leaves, nothing more is
    /// delivered to them.
    pub(super) fn resync_members(&mut self, behind: impl Fn(u64) -> bool) {
        for member in self.members.values_mut() {
            if member.last_seq != CLOSED && behind(member.last_seq) {
                member.client.close_after_queue(CloseCode::Resync);
                member.last_seq = CLOSED;
            }
        }
    }
}
