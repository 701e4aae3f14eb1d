//! The pump's numbering: where its stream of a session starts (`start_at`), and what it
//! does when what it delivered is no longer the session's history (`renumber`: a restart
//! or a fork, found by the checks in `pump.rs`), or when members fell behind a hole
//! history no longer covers (`resync_members`). Both end in 4010 for the members
//! concerned, never in a stream that skips or repeats.

use roomcast_shared::CloseCode;

use super::{Pump, CLOSED};
use crate::metrics as m;
use crate::session::{PumpStore, Subscriptions};

impl<S: PumpStore, B: Subscriptions> Pump<S, B> {
    /// The first baseline: where this instance's stream of the session starts.
    pub(super) fn start_at(&mut self, seq: u64, id: String, epoch: String) {
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
        let epoch = if epoch.is_empty() || epoch == self.epoch {
            match self.env.store.fork(&self.session, &self.epoch).await {
                Ok(now) => now,
                Err(e) => {
                    // The members resync all the same; a rejoin that names the message
                    // it saw (`since_id`) is still recognised by join.lua.
                    tracing::warn!(session = %self.session, error = %e, "renaming a forked numbering failed");
                    String::new()
                }
            }
        } else {
            epoch
        };
        self.start_at(seq, id, epoch);
        self.resync_members(|_| true);
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
