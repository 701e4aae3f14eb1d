//! Unit tests of the session pump, built alone from its narrow interfaces.
//!
//! Sequencing (gap fill, dedupe, lagged catch-up, join batching, retirement) runs on
//! tokio's paused clock against `Memory`, an in-memory stand-in for the scripts' effects.
//! Where the scripts are the point (a join's baseline and recovery, a gap filled from
//! `history.lua`) the pump runs on the real `Store` and a private redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roomcast_shared::{decode_server, CloseCode, Format, Role, ServerFrame, SessionEvent};
use tokio_util::task::TaskTracker;

use super::pump::JOIN_BATCH;
use super::*;
use crate::client::{ClientHandle, Outbound, Outbox};
use crate::envelope::{kind, Entry, Envelope};
use memory::{Counted, Memory};

const SESSION: &str = "room";

// ---------------------------------------------------------------------------------------
// Harness.

const SETTINGS: PumpSettings = PumpSettings {
    refresh: Duration::from_secs(10),
    presence_ttl_ms: 30_000,
    idle_after_ms: 60_000,
    presence_list_max: 100,
};

struct Harness<S: PumpStore> {
    pumps: Pumps<S, Counted>,
    store: Arc<S>,
    subscriptions: Counted,
}

impl<S: PumpStore> Harness<S> {
    fn new(store: S) -> Self {
        let store = Arc::new(store);
        let subscriptions = Counted::default();
        let env = PumpEnv::new(store.clone(), subscriptions.clone(), SETTINGS);
        Harness {
            pumps: Pumps::new(env, TaskTracker::new()),
            store,
            subscriptions,
        }
    }

    async fn join(&self, member: &Member, since: Option<u64>) -> Result<bool, JoinError> {
        self.pumps.session(SESSION).join(member.join(since)).await
    }
}

impl Harness<Memory> {
    /// Stores a message and brings its payload to the pump, as pub/sub would.
    fn publish(&self, text: &str) {
        let payload = self.store.store_message(text);
        self.pumps.dispatch(SESSION, payload);
    }
}

impl Harness<Memory> {
    /// Hands a stored message (its pub/sub payload) to the pump as its publisher's
    /// connection does after the script answered: with the entry, its stored bytes and
    /// the publisher's ack.
    fn own(&self, publisher: &Member, payload: &Bytes, entry: Option<Entry>) {
        let Ok(Envelope::Message(stored, _)) = Envelope::decode(payload) else {
            panic!("not a message payload");
        };
        let entry = entry.unwrap_or(stored);
        let ack = ServerFrame::Ack {
            reference: Some(format!("r{}", entry.seq)),
            seq: Some(entry.seq),
        };
        let own = OwnMessage {
            entry,
            bytes: payload[2..].to_vec(),
            publisher: publisher.client.clone(),
            ack,
        };
        self.pumps.session(SESSION).deliver_own(own);
    }
}

fn memory() -> Harness<Memory> {
    let store = Memory::default();
    store.state().epoch = "e1".into();
    Harness::new(store)
}

/// A connected client as the pump sees it, and the outbox its writer would drain.
struct Member {
    client: ClientHandle,
    outbox: Option<Outbox>,
}

impl Member {
    fn new(id: &str) -> Member {
        let (client, outbox) =
            ClientHandle::new(id.into(), format!("user-{id}"), Format::Json, 256);
        Member {
            client,
            outbox: Some(outbox),
        }
    }

    fn info(&self) -> MemberInfo {
        MemberInfo {
            client_id: self.client.id().to_string(),
            user: self.client.user().to_string(),
            role: Role::Display,
            name: None,
            node: "test".into(),
            joined_at: now_ms(),
            active_at: now_ms(),
            info: None,
        }
    }

    fn join(&self, since: Option<u64>) -> Join {
        Join {
            client: self.client.clone(),
            info: self.info(),
            since: since.map(|seq| Since {
                seq,
                epoch: None,
                id: None,
            }),
            reference: None,
            create: false,
        }
    }

    /// Everything queued for this client so far; a close is the frame `Err(code)`.
    fn drain(&self) -> Vec<Result<ServerFrame, CloseCode>> {
        let outbox = self.outbox.as_ref().expect("outbox");
        std::iter::from_fn(|| outbox.try_recv())
            .map(|item| match item {
                Outbound::Frame(msg) => Ok(decode_server(Format::Json, &msg.into_data()).unwrap()),
                Outbound::Close(code) => Err(code),
            })
            .collect()
    }

    /// Waits (on the test's clock) until `want` message seqs have arrived, and answers
    /// every message seq received meanwhile, in order.
    async fn seqs(&self, want: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..500 {
            seqs.extend(self.drain().into_iter().filter_map(|f| match f {
                Ok(ServerFrame::Message { seq, .. }) => Some(seq),
                _ => None,
            }));
            if seqs.len() >= want {
                return seqs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("got messages {seqs:?}, waited for {want}");
    }

    /// The messages and acks queued so far, in order: `("message" | "ack", seq)`.
    fn messages_and_acks(&self) -> Vec<(&'static str, u64)> {
        self.drain()
            .into_iter()
            .filter_map(|f| match f {
                Ok(ServerFrame::Message { seq, .. }) => Some(("message", seq)),
                Ok(ServerFrame::Ack { seq: Some(seq), .. }) => Some(("ack", seq)),
                _ => None,
            })
            .collect()
    }

    /// The `joined` frame (and whatever else is queued).
    fn joined(&self) -> ServerFrame {
        self.drain()
            .into_iter()
            .flatten()
            .find(|f| matches!(f, ServerFrame::Joined { .. }))
            .expect("a joined frame")
    }
}

/// Lets the spawned pump run until it has nothing left to do.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Sequencing, on the paused clock.

#[tokio::test(start_paused = true)]
async fn live_gap_is_filled_from_history_in_order() {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    // 1 and 2 are stored but their payloads never arrive; 3's does.
    h.store.store_message("one");
    h.store.store_message("two");
    let third = h.store.store_message("three");
    h.pumps.dispatch(SESSION, third);
    assert_eq!(display.seqs(3).await, vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn duplicates_and_old_seqs_are_dropped() {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    let one = h.store.store_message("one");
    let two = h.store.store_message("two");
    for p in [&one, &one, &two, &one, &two] {
        h.pumps.dispatch(SESSION, p.clone());
    }
    settle().await;
    assert_eq!(display.seqs(2).await, vec![1, 2]);
    settle().await;
    assert!(display.drain().is_empty(), "nothing after the duplicates");
    assert_eq!(h.store.state().history_reads, 0, "no gap was seen");
}

#[tokio::test(start_paused = true)]
async fn failed_gap_fill_holds_newer_messages_until_a_retry_works() {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    h.store.store_message("one");
    let two = h.store.store_message("two");
    h.store.state().failing_history_reads = 2;
    display.joined();
    h.pumps.dispatch(SESSION, two);
    settle().await;
    // 2 must not overtake the missing 1 while history is unreadable.
    assert!(
        display.drain().is_empty(),
        "nothing before the gap is filled"
    );
    // Two failures, then the retry (every 250 ms) reads 1 and 2.
    assert_eq!(display.seqs(2).await, vec![1, 2]);
    assert_eq!(h.store.state().history_reads, 3);
    let three = h.store.store_message("three");
    h.pumps.dispatch(SESSION, three);
    assert_eq!(display.seqs(1).await, vec![3]);
}

#[tokio::test(start_paused = true)]
async fn a_payload_dropped_at_a_full_mailbox_is_recovered() {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    // Fill the mailbox while the pump cannot run (same thread), then offer one more.
    for _ in 0..PUMP_QUEUE {
        h.pumps
            .dispatch(SESSION, Bytes::from_static(b"\x92\x07\x00"));
    }
    let one = h.store.store_message("one");
    h.pumps.dispatch(SESSION, one);
    // No newer message arrives to reveal the gap: the lagged flag alone must.
    assert_eq!(display.seqs(1).await, vec![1]);
}

/// A pump with one member, "d", and two messages stored that pub/sub never brought it.
async fn display_that_missed_two() -> (Harness<Memory>, Member) {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    display.drain();
    h.store.store_message("one");
    h.store.store_message("two");
    (h, display)
}

#[tokio::test(start_paused = true)]
async fn catch_up_delivers_what_pubsub_lost_and_an_ended_session() {
    let (h, display) = display_that_missed_two().await;
    h.store.state().ended = Some((Some("done".into()), 42));
    h.pumps.catch_up_all();
    settle().await;
    let frames = display.drain();
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Ok(ServerFrame::Message { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert!(
        frames.iter().any(|f| matches!(
            f,
            Ok(ServerFrame::Session { event: SessionEvent::Ended, at: 42, reason: Some(r), .. }) if r == "done"
        )),
        "{frames:?}"
    );
    assert_eq!(frames.last(), Some(&Err(CloseCode::SessionEnded)));
}

/// After a Cluster slot moved, only the sessions on it catch up (`Pumps::catch_up`).
#[tokio::test(start_paused = true)]
async fn catch_up_of_one_session_delivers_what_pubsub_lost_there() {
    let (h, display) = display_that_missed_two().await;
    h.pumps.catch_up("elsewhere");
    settle().await;
    assert!(display.drain().is_empty(), "another session's catch-up");
    h.pumps.catch_up(SESSION);
    assert_eq!(display.seqs(2).await, vec![1, 2]);
}

#[tokio::test(start_paused = true)]
async fn joins_queued_together_run_as_one_batch() {
    let h = memory();
    h.store.store_message("before");
    let members: Vec<Member> = (0..10).map(|i| Member::new(&format!("m{i}"))).collect();
    let handle = h.pumps.session(SESSION);
    // All ten are queued before the pump first runs.
    let answers =
        futures_util::future::join_all(members.iter().map(|m| handle.join(m.join(Some(0))))).await;
    assert!(
        answers.iter().all(|a| matches!(a, Ok(false))),
        "{answers:?}"
    );
    assert_eq!(h.store.state().most_joins_in_flight, 10, "one batch");
    for m in &members {
        let ServerFrame::Joined {
            seq,
            history,
            recovered,
            ..
        } = m.joined()
        else {
            unreachable!()
        };
        assert_eq!((seq, history.len(), recovered), (1, 1, true));
    }
    // Every member of the batch gets the next message once.
    let two = h.store.store_message("two");
    h.pumps.dispatch(SESSION, two);
    for m in &members {
        assert_eq!(m.seqs(1).await, vec![2]);
    }
}

#[tokio::test(start_paused = true)]
async fn more_joins_than_a_batch_are_all_served() {
    let h = memory();
    let members: Vec<Member> = (0..JOIN_BATCH + 5)
        .map(|i| Member::new(&format!("m{i}")))
        .collect();
    let handle = h.pumps.session(SESSION);
    let answers =
        futures_util::future::join_all(members.iter().map(|m| handle.join(m.join(None)))).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(h.store.state().most_joins_in_flight, JOIN_BATCH);
}

#[tokio::test(start_paused = true)]
async fn the_pump_retires_with_its_last_member_and_a_new_one_takes_over() {
    let h = memory();
    let display = Member::new("d");
    h.join(&display, None).await.unwrap();
    assert_eq!(
        (
            h.pumps.count(),
            h.subscriptions.refs.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    h.pumps.session(SESSION).leave("d").await;
    settle().await;
    assert_eq!(h.pumps.count(), 0, "deregistered");
    assert_eq!(
        h.subscriptions.refs.load(Ordering::Relaxed),
        0,
        "unsubscribed"
    );
    assert_eq!(h.store.state().leaves, vec!["d".to_string()]);
    // A join after retirement gets a fresh pump and its messages.
    let again = Member::new("e");
    h.join(&again, None).await.unwrap();
    assert_eq!(h.pumps.count(), 1);
    let one = h.store.store_message("one");
    h.pumps.dispatch(SESSION, one);
    assert_eq!(again.seqs(1).await, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_subscribe_fails_the_join_and_retires() {
    let h = memory();
    h.subscriptions.fail.store(true, Ordering::Relaxed);
    let display = Member::new("d");
    let answer = h.join(&display, None).await;
    assert!(
        matches!(answer, Err(JoinError::Store(StoreError::Unavailable(_)))),
        "{answer:?}"
    );
    settle().await;
    assert_eq!(h.pumps.count(), 0);
    assert!(h.store.state().presence.is_empty(), "no member written");
}

#[tokio::test(start_paused = true)]
async fn a_member_whose_connection_ended_is_dropped_at_the_next_refresh() {
    let h = memory();
    let mut display = Member::new("d");
    let keeper = Member::new("k");
    h.join(&display, None).await.unwrap();
    h.join(&keeper, None).await.unwrap();
    // The writer ends without a leave reaching the pump.
    display.outbox = None;
    tokio::time::sleep(SETTINGS.refresh + Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(h.store.state().leaves, vec!["d".to_string()]);
    assert!(!h.store.state().presence.contains_key("d"));
}

#[tokio::test(start_paused = true)]
async fn a_swept_member_is_put_back_with_its_latest_activity() {
    let h = memory();
    let display = Member::new("d");
    // Joined two minutes ago and idle since.
    let mut join = display.join(None);
    join.info.active_at = now_ms() - 120_000;
    h.pumps.session(SESSION).join(join).await.unwrap();
    let handle = h.pumps.session(SESSION);
    // Activity goes through the pump, which records it in its own copy and announces the
    // member active again (update-if-present: expiry 0).
    let before = now_ms();
    handle.activity("d").await.unwrap();
    {
        let state = h.store.state();
        let (id, expiry, announce, info) = &state.sets[0];
        assert_eq!((id.as_str(), *expiry, *announce), ("d", 0, kind::UPDATE));
        assert!(info.active_at >= before);
    }
    // The entry is swept (this node stalled); the next refresh re-adds it.
    h.store.state().presence.remove("d");
    tokio::time::sleep(SETTINGS.refresh + Duration::from_millis(10)).await;
    settle().await;
    let state = h.store.state();
    let (_, expiry, announce, info) = state.sets.last().expect("a re-add").clone();
    assert_eq!(announce, kind::JOIN);
    assert!(expiry > 0);
    assert!(
        info.active_at >= before,
        "re-added with the activity it had"
    );
    assert!(state.presence.contains_key("d"));
}

#[tokio::test(start_paused = true)]
async fn activity_of_a_member_that_left_records_nothing() {
    let h = memory();
    let display = Member::new("d");
    let keeper = Member::new("k");
    h.join(&display, None).await.unwrap();
    h.join(&keeper, None).await.unwrap();
    let handle = h.pumps.session(SESSION);
    handle.leave("d").await;
    handle.activity("d").await.unwrap();
    assert!(h.store.state().sets.is_empty());
}

#[tokio::test(start_paused = true)]
async fn deliveries_are_counted_and_their_latency_recorded_in_seconds() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Current-thread runtime: the pump is polled on this thread, under this recorder.
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let h = memory();
    let (a, b) = (Member::new("a"), Member::new("b"));
    h.join(&a, None).await.unwrap();
    h.join(&b, None).await.unwrap();
    for text in ["1", "2", "3"] {
        // Published 1.5 s ago: the latency is 1.5 s, whatever the test's own speed.
        let p = h.store.store_message_aged(text, 1500);
        h.pumps.dispatch(SESSION, p);
    }
    assert_eq!(a.seqs(3).await, vec![1, 2, 3]);
    assert_eq!(b.seqs(3).await, vec![1, 2, 3]);
    // An own message (delivered from its publish's reply) counts like the others.
    let own = h.store.store_message_aged("4", 1500);
    h.own(&a, &own, None);
    assert_eq!(a.seqs(1).await, vec![4]);
    assert_eq!(b.seqs(1).await, vec![4]);
    // A presence event goes to every member but its subject.
    let mut join = vec![0x92, kind::JOIN];
    join.extend(Member::new("z").info().encode());
    h.pumps.dispatch(SESSION, Bytes::from(join));
    settle().await;
    let mut delivered = None;
    let mut latencies = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        match (key.key().name(), value) {
            (crate::metrics::MESSAGES_DELIVERED_TOTAL, DebugValue::Counter(n)) => {
                delivered = Some(n)
            }
            (crate::metrics::DELIVERY_LATENCY, DebugValue::Histogram(values)) => {
                latencies = values.into_iter().map(|v| v.into_inner()).collect()
            }
            _ => {}
        }
    }
    // 4 messages × 2 members, then the presence event to 2 members.
    assert_eq!(delivered, Some(10));
    assert_eq!(
        latencies.len(),
        4,
        "one latency per message, not per member"
    );
    for l in latencies {
        assert!((1.5..1.6).contains(&l), "latency {l} s");
    }
}

#[test]
fn presence_is_refreshed_every_half_heartbeat_and_lives_one_and_a_half() {
    let config = crate::config::Config::from_pairs(&[
        ("auth", "off"),
        ("heartbeat", "20s"),
        ("idle-after", "90s"),
        ("presence-list-max", "7"),
    ])
    .unwrap();
    let s = PumpSettings::from_config(&config);
    assert_eq!(s.refresh, Duration::from_secs(10));
    assert_eq!(
        s.presence_ttl_ms, 30_000,
        "a dead node's members go within two heartbeats"
    );
    assert_eq!((s.idle_after_ms, s.presence_list_max), (90_000, 7));
}

mod memory;
mod redis;
mod resync;

// ---------------------------------------------------------------------------------------
// Own messages: delivered from the publish script's reply.

/// The publisher's instance delivers its own message when the connection hands it over,
/// the ack right behind the publisher's copy, and drops the pub/sub copy when it comes.
#[tokio::test(start_paused = true)]
async fn an_own_message_goes_out_with_its_ack_and_its_pubsub_copy_is_dropped() {
    let h = memory();
    let (publisher, display) = (Member::new("p"), Member::new("d"));
    h.join(&publisher, None).await.unwrap();
    h.join(&display, None).await.unwrap();
    let mine = h.store.store_message("mine");
    h.own(&publisher, &mine, None);
    settle().await;
    assert_eq!(
        publisher.messages_and_acks(),
        [("message", 1), ("ack", 1)],
        "the copy, then the ack, queued together"
    );
    assert_eq!(display.seqs(1).await, vec![1]);
    // Something else published before the copy arrives first: it is not the copy.
    let typing = crate::envelope::Event::Typing {
        from: roomcast_shared::From {
            client_id: "someone".into(),
            user: "s".into(),
            role: Role::Controller,
            name: None,
        },
        active: true,
    };
    h.pumps.dispatch(SESSION, Bytes::from(typing.encode()));
    // The pub/sub copy comes, then a message of someone else's.
    h.pumps.dispatch(SESSION, mine);
    h.publish("theirs");
    assert_eq!(display.seqs(1).await, vec![2]);
    let frames = publisher.drain();
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Ok(ServerFrame::Typing { active: true, .. }))),
        "the event before the copy went out: {frames:?}"
    );
    let seqs: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Ok(ServerFrame::Message { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [2], "the copy was not delivered again");
    assert_eq!(h.store.state().history_reads, 0, "no gap was seen");
}

/// An own message that is not the next one (a message stored before it is still on its
/// way through pub/sub) is not delivered ahead of it: the ack goes alone, and pub/sub
/// brings both in order, without a history read.
#[tokio::test(start_paused = true)]
async fn an_own_message_behind_a_missing_one_waits_for_pubsub() {
    let h = memory();
    let (publisher, display) = (Member::new("p"), Member::new("d"));
    h.join(&publisher, None).await.unwrap();
    h.join(&display, None).await.unwrap();
    let theirs = h.store.store_message("theirs");
    let mine = h.store.store_message("mine");
    h.own(&publisher, &mine, None);
    settle().await;
    assert_eq!(publisher.messages_and_acks(), [("ack", 2)]);
    assert!(display.seqs(0).await.is_empty());
    h.pumps.dispatch(SESSION, theirs);
    h.pumps.dispatch(SESSION, mine);
    assert_eq!(display.seqs(2).await, vec![1, 2]);
    assert_eq!(
        publisher.messages_and_acks(),
        [("message", 1), ("message", 2)]
    );
    assert_eq!(h.store.state().history_reads, 0, "no gap was seen");
}

/// An own message whose `prev` is not the message this instance delivered last (another
/// branch of the numbering) is never delivered from the reply: only the ack goes, and
/// the pub/sub copy, when it comes, takes the checks of any message.
#[tokio::test(start_paused = true)]
async fn an_own_message_of_another_branch_is_left_to_pubsub() {
    let h = memory();
    let (publisher, display) = (Member::new("p"), Member::new("d"));
    h.join(&publisher, None).await.unwrap();
    h.join(&display, None).await.unwrap();
    h.publish("one");
    assert_eq!(display.seqs(1).await, vec![1]);
    let mine = h.store.store_message("two");
    let Ok(Envelope::Message(mut forked, _)) = Envelope::decode(&mine) else {
        panic!("a message");
    };
    forked.prev = "another-branch".into();
    h.own(&publisher, &mine, Some(forked));
    settle().await;
    assert_eq!(publisher.messages_and_acks(), [("message", 1), ("ack", 2)]);
    assert!(display.seqs(0).await.is_empty(), "nothing from the reply");
}
