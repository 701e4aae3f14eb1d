//! The session pump: one task per session with local members, the single ordering point for
//! everything this instance delivers in that session.
//!
//! Owns the session's local membership (no lock: only this task touches it), the last seq
//! delivered on this instance, and the per-member baseline taken at join. Because joins,
//! leaves, pub/sub payloads and catch-ups are all handled in this one task, delivery is in
//! seq order without duplicates, and a gap (pub/sub dropped something, or the subscriber
//! reconnected) is filled from history before any newer message goes out. A numbering that
//! restarted or forked (Redis lost the session's keys, or failed over to a replica that
//! lacked the newest writes) is recognised from the messages themselves: each names the
//! one it follows (`Entry::prev`), so the pump never passes off another branch's message
//! as the next one, whatever its seq.
//! It must not block on a client: fan-out only `offer`s (see `client`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomcast_shared::{PresenceEvent, ServerFrame, SessionEvent};
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tracing::Instrument;

use super::{Command, JoinError, OwnMessage, PumpEnv, PumpStore, Subscriptions};
use crate::client::{ClientHandle, SharedFrame};
use crate::envelope::{decode_entry, ids_differ, is_payload_of, kind, Entry, Envelope, MemberInfo};
use crate::metrics as m;
use crate::store::{HistoryReply, StoreError};
use crate::util::now_ms;

/// Own messages whose pub/sub copy is awaited, at most. A copy that never comes (pub/sub
/// dropped it) is forgotten once this many newer ones are delivered.
const ECHOES: usize = 32;

/// Delay before a failed history read is tried again.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// Most joins a pump takes from its mailbox at once. A reconnect storm into one big
/// session queues thousands of joins behind one pump; run one at a time, each waits for
/// the round trip of the one before (10,000 displays joining one session: p99 2.9 s).
/// Bounded so a batch's replies (each with up to `presence_list_max` members) stay small.
pub(super) const JOIN_BATCH: usize = 64;

/// Signals, session events and presence to the local members; the presence refresh.
mod events;
/// Joins, in batches: the scripts, the baseline, the `joined` answer.
mod joins;
/// Where the pump's stream starts, and what it does when the session's numbering turns
/// out restarted or forked.
mod numbering;

/// Sleeps until `at`, or forever when there is nothing scheduled.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct LocalMember {
    client: ClientHandle,
    info: MemberInfo,
    /// The highest seq this member has been given; [`CLOSED`] once it was told to resync.
    last_seq: u64,
}

/// The `last_seq` of a member closed with 4010: above every seq, so it is given nothing.
const CLOSED: u64 = u64::MAX;

pub(super) struct Pump<S, B> {
    env: Arc<PumpEnv<S, B>>,
    session: String,
    generation: u64,
    rx: mpsc::Receiver<Command>,
    members: HashMap<String, LocalMember>,
    /// The highest seq delivered on this instance; `None` before the first join.
    last_seq: Option<u64>,
    /// The id of the message at `last_seq` (empty when unknown): the `prev` the next
    /// message must name.
    last_id: String,
    /// The numbering `last_seq` belongs to (empty before the first join).
    epoch: String,
    /// Set by the hub when it could not hand this pump a payload (or a catch-up):
    /// something may be missing, so history is read before going on.
    lagged: Arc<AtomicBool>,
    /// When a failed history read is tried again (until it works, nothing newer goes out).
    retry_at: Option<Instant>,
    /// Whether a join was handled; a pump retires when empty only after one.
    joined_once: bool,
    /// A fork found while Redis refused its rename; the pump lives until it is done.
    /// Boxed: rare, and every pump task is as large as this struct (`task_size`).
    owed_rename: Option<Box<numbering::OwedRename>>,
    /// The stored bytes of the own messages delivered from their script's reply
    /// ([`Pump::on_own`]) whose pub/sub copies have not come yet, oldest first.
    echoes: VecDeque<Vec<u8>>,
}

impl<S: PumpStore, B: Subscriptions> Pump<S, B> {
    pub(super) fn new(
        env: Arc<PumpEnv<S, B>>,
        session: String,
        generation: u64,
        rx: mpsc::Receiver<Command>,
        lagged: Arc<AtomicBool>,
    ) -> Self {
        Pump {
            env,
            session,
            generation,
            rx,
            members: HashMap::new(),
            last_seq: None,
            last_id: String::new(),
            epoch: String::new(),
            lagged,
            retry_at: None,
            joined_once: false,
            owed_rename: None,
            echoes: VecDeque::new(),
        }
    }

    pub(super) async fn run(mut self) {
        m::session_opened();
        let channel = self.env.store.channel(&self.session);
        // Subscribe before the first join reads its seq, so nothing falls between them.
        // The work below is boxed: its Redis futures are kilobytes, and inline they would
        // size every pump, idle most of its life, for its busiest moment.
        if let Err(e) = Box::pin(self.env.subscriptions.subscribe(channel.clone())).await {
            tracing::warn!(session = %self.session, error = %e, "subscribe failed");
            Box::pin(self.retire(Some(e))).await;
            m::session_closed();
            return;
        }
        let period = self.env.settings.refresh;
        let mut tick = interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    // Messages, the hot path, run inline (their rare gap fill is boxed);
                    // everything else is boxed.
                    Some(Command::Payload(bytes)) => self.on_payload(&bytes).await,
                    Some(Command::Own(own)) => self.on_own(*own),
                    Some(Command::Join(req)) => Box::pin(self.joins(*req)).await,
                    Some(cmd) => Box::pin(self.handle(cmd)).await,
                    None => break,
                },
                _ = tick.tick() => Box::pin(self.refresh_presence()).await,
                _ = sleep_until_opt(retry_at) => {
                    self.retry_at = None;
                    Box::pin(self.catch_up()).await;
                }
            }
            if self.lagged.swap(false, Ordering::AcqRel) {
                Box::pin(self.catch_up()).await;
            }
            // Retire only with an empty mailbox: joins queued behind a batch that found
            // no session (their creating retry, say) are served here, not bounced. A pump
            // without members drains its mailbox fast (payloads go to nobody), so this
            // delays retiring by a burst at most.
            if self.joined_once
                && self.members.is_empty()
                && self.rx.is_empty()
                && self.owed_rename.is_none()
            {
                break;
            }
        }
        Box::pin(self.retire(None)).await;
        self.env.subscriptions.unsubscribe(channel);
        m::session_closed();
    }

    fn presence_expiry(&self, now: u64) -> u64 {
        now + self.env.settings.presence_ttl_ms
    }

    /// Leaves the hub so new joins get a fresh pump, then answers what is still queued.
    async fn retire(&mut self, failure: Option<StoreError>) {
        self.env.deregister(&self.session, self.generation);
        self.rx.close();
        let mut failure = failure;
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                Command::Join(req) => {
                    let answer = match failure.take() {
                        Some(e) => Err(JoinError::Store(e)),
                        None => Err(JoinError::Retry),
                    };
                    let _ = req.reply.send(answer);
                }
                Command::Leave { client_id, done } => {
                    self.leave_member(&client_id).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                // Members left with the pump: nobody's state to update.
                Command::Activity { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                // Its pub/sub copy reaches nobody here now: only the ack is owed.
                Command::Own(own) => {
                    own.publisher.send(&own.ack);
                }
                Command::Payload(_) | Command::CatchUp => {}
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join(req) => self.join_batch(vec![*req]).await,
            Command::Leave { client_id, done } => {
                self.leave_member(&client_id).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Command::Activity { client_id, done } => {
                let _ = done.send(self.activity(&client_id).await);
            }
            Command::Payload(bytes) => self.on_payload(&bytes).await,
            Command::Own(own) => self.on_own(*own),
            Command::CatchUp => self.catch_up().await,
        }
    }

    /// The one way a member leaves: out of the local map, then its presence entry (and
    /// the `leave` announcement, decided by `leave.lua`). Idempotent.
    async fn leave_member(&mut self, client_id: &str) {
        self.members.remove(client_id);
        if let Err(e) = self.env.store.leave(&self.session, client_id).await {
            // The entry expires on its own within two heartbeats.
            tracing::debug!(error = %e, "leave script failed");
        }
    }

    /// A member's activity: its state here first (so a later re-add of a swept member
    /// writes the truth), then presence, announcing a member that was idle.
    async fn activity(&mut self, client_id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let idle_after = self.env.settings.idle_after_ms;
        let Some(member) = self.members.get_mut(client_id) else {
            // Left meanwhile: nothing to record.
            return Ok(());
        };
        let was_idle = now.saturating_sub(member.info.active_at) > idle_after;
        member.info.active_at = now;
        let info = member.info.encode();
        let announce = if was_idle { kind::UPDATE } else { kind::SILENT };
        // Expiry 0: update the entry only if it is still there. A member swept meanwhile
        // was announced as gone; the next refresh re-adds it, with this activity.
        self.env
            .store
            .presence_set(&self.session, client_id, 0, &info, announce, now)
            .await
    }

    async fn on_payload(&mut self, bytes: &[u8]) {
        if let Some(i) = self.echoes.iter().position(|e| is_payload_of(bytes, e)) {
            // The copy of an own message this instance already delivered; pub/sub brings
            // a session's messages in seq order, so older copies will not come any more.
            self.echoes.drain(..=i);
            return;
        }
        match Envelope::decode(bytes) {
            Ok(envelope) => self.on_envelope(envelope).await,
            Err(e) => {
                m::pubsub_dropped("bad_payload", 1);
                tracing::warn!(session = %self.session, error = %e, "dropping pub/sub payload");
            }
        }
    }

    /// Reads what pub/sub may have dropped: stored messages after the last delivered seq,
    /// and whether the session ended meanwhile (that event is not stored anywhere else).
    async fn catch_up(&mut self) {
        self.lagged.store(false, Ordering::Release);
        self.rename().await;
        if let Some(last) = self.last_seq {
            self.fill_from(last).await;
        }
        if self.members.is_empty() {
            return;
        }
        match self.env.store.ended(&self.session).await {
            Ok(Some((reason, at))) => self.on_session_event(SessionEvent::Ended, reason, at),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(session = %self.session, error = %e, "status read during catch-up failed");
                self.schedule_retry();
            }
        }
    }

    /// Tries the history read again shortly.
    fn schedule_retry(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + RETRY_DELAY);
        }
    }

    async fn on_envelope(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Message(entry, traceparent) => {
                let span = tracing::info_span!("deliver", seq = entry.seq);
                if let Some(tp) = &traceparent {
                    crate::telemetry::set_remote_parent(&span, tp);
                }
                self.on_entry(entry).instrument(span).await
            }
            Envelope::Event(event) => self.on_event(event),
            Envelope::Join(info) => self.presence(PresenceEvent::Join, info),
            Envelope::Leave(info) => self.presence(PresenceEvent::Leave, info),
            Envelope::Update(info) => self.presence(PresenceEvent::Update, info),
            Envelope::Session { event, reason, at } => self.on_session_event(event, reason, at),
        }
    }

    async fn on_entry(&mut self, entry: Entry) {
        let Some(last) = self.last_seq else {
            // No member has joined yet; the first join's baseline covers this message.
            return;
        };
        if entry.seq < last {
            // A duplicate (pub/sub after a gap fill), or an older branch's message that
            // the chain check below, or the next catch-up, recognises.
            return;
        }
        if entry.seq == last {
            if ids_differ(&entry.id, &self.last_id) {
                // Another message under our last seq: the numbering forked or restarted.
                Box::pin(self.renumber(entry.seq, entry.id, String::new())).await;
            }
            return;
        }
        if entry.seq == last + 1 && ids_differ(&entry.prev, &self.last_id) {
            // It follows a message we never delivered: another branch.
            Box::pin(self.renumber(entry.seq, entry.id, String::new())).await;
            return;
        }
        if entry.seq > last + 1 {
            // Pub/sub lost something: history has it, and it goes out first. If history
            // cannot be read now, this entry waits too (it is stored): the retry delivers
            // the gap and it in order.
            if !Box::pin(self.fill_from(last)).await {
                return;
            }
        }
        if entry.seq > self.last_seq.unwrap_or(0) {
            self.deliver(entry);
        }
    }

    /// A message this instance stored, from its publisher's connection. When it is the
    /// next one (the test `on_entry` puts its pub/sub copy to), it goes out now, the
    /// publisher's ack queued with the publisher's copy (one write), and its pub/sub copy
    /// will be dropped unread. Otherwise (a message before it has not come yet, or it is
    /// on another branch) only the ack goes, and the pub/sub copy takes the usual path:
    /// this is a shortcut, never a second way in.
    fn on_own(&mut self, own: OwnMessage) {
        let OwnMessage {
            entry,
            bytes,
            publisher,
            ack,
        } = own;
        let next = self.last_seq.and_then(|last| last.checked_add(1)) == Some(entry.seq)
            && !ids_differ(&entry.prev, &self.last_id);
        if !next {
            publisher.send(&ack);
            return;
        }
        if self.echoes.len() == ECHOES {
            self.echoes.pop_front();
        }
        self.echoes.push_back(bytes);
        self.deliver_with(entry, Some((&publisher, &ack)));
    }

    /// Delivers every stored message after `last`, oldest first. False when history could
    /// not be read (a retry is scheduled).
    async fn fill_from(&mut self, last: u64) -> bool {
        let reply = match self.env.store.history_since(&self.session, last).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(session = %self.session, error = %e, "history read for gap fill failed; retrying");
                self.schedule_retry();
                return false;
            }
        };
        let HistoryReply {
            seq: top,
            entries: stored,
            epoch,
            tip,
        } = reply;
        let mut entries: Vec<Entry> = stored.iter().filter_map(|b| decode_entry(b).ok()).collect();
        entries.reverse();
        entries.retain(|e| e.seq > last);
        // Whether what is stored continues what this instance delivered: the same epoch,
        // and at our last seq the message we delivered (named by the next one's `prev`,
        // or by the tip when nothing follows it).
        let continues = match entries.first() {
            _ if ids_differ(&epoch, &self.epoch) || top < last => false,
            Some(next) if next.seq == last + 1 => !ids_differ(&next.prev, &self.last_id),
            Some(_) => true,
            None => top > last || !ids_differ(&tip, &self.last_id),
        };
        if !continues {
            self.renumber(top, tip, epoch).await;
            return true;
        }
        // The oldest seq history could give; everything between `last` and it is gone.
        let oldest = entries.first().map_or(top + 1, |e| e.seq);
        if oldest > last + 1 {
            tracing::warn!(
                session = %self.session, from = last + 1, to = oldest - 1,
                "messages expired from history before they could be recovered"
            );
            self.resync_members(|member_last| member_last < oldest - 1);
        }
        m::recovered(entries.len() as u64);
        for entry in entries {
            self.deliver(entry);
        }
        true
    }

    fn deliver(&mut self, entry: Entry) {
        self.deliver_with(entry, None);
    }

    /// Delivers `entry` to every member not given it yet. With `ack`, the publisher's
    /// reply goes with the publisher's copy in one push (its writer then sends both in
    /// one write), or alone if the publisher is given nothing.
    fn deliver_with(&mut self, entry: Entry, ack: Option<(&ClientHandle, &ServerFrame)>) {
        let seq = entry.seq;
        let ts = entry.ts;
        self.last_id.clone_from(&entry.id);
        let frame = SharedFrame::new(ServerFrame::Message {
            session: self.session.clone(),
            seq,
            id: entry.id,
            ts,
            from: entry.from,
            data: entry.data,
        });
        let mut count = 0;
        if let Some((publisher, ack)) = ack {
            let member = self
                .members
                .get_mut(publisher.id())
                .filter(|m| seq > m.last_seq);
            let msg = member.and_then(|m| {
                m.last_seq = seq;
                frame.message(m.client.format())
            });
            match msg {
                Some(msg) => {
                    publisher.offer_with(msg, ack);
                    count += 1;
                }
                None => {
                    publisher.send(ack);
                }
            }
        }
        for member in self.members.values_mut() {
            if seq <= member.last_seq {
                continue;
            }
            member.last_seq = seq;
            if let Some(msg) = frame.message(member.client.format()) {
                member.client.offer(msg);
                count += 1;
            }
        }
        self.last_seq = Some(seq);
        m::delivered(count);
        m::delivery_latency(now_ms().saturating_sub(ts) as f64 / 1000.0);
    }
}

fn offer(frame: &SharedFrame, client: &ClientHandle) {
    if let Some(msg) = frame.message(client.format()) {
        client.offer(msg);
    }
}

#[cfg(test)]
mod task_size {
    use super::Pump;
    use crate::bus::Channels;
    use crate::store::Store;

    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every session with a member on this instance keeps a pump task alive, as large as
    /// its future's busiest state: the Redis work must stay boxed out of it.
    #[test]
    fn idle_pump_task_stays_small() {
        let pump = future_size(Pump::<Store, Channels>::run);
        eprintln!("pump task future {pump} B");
        assert!(pump <= 2048, "pump future is {pump} bytes");
    }
}
