//! Numbering restarts and holes history no longer covers: which members are told to
//! resync (4010) and which keep their stream.

use std::time::Duration;

use roomcast_shared::CloseCode;

use super::{memory, settle, Harness, Member, Memory, SESSION};

/// A pump with one member, "old", that has been given seqs 1 to `count`.
async fn member_given(count: usize) -> (Harness<Memory>, Member) {
    let h = memory();
    let old = Member::new("old");
    h.join(&old, None).await.unwrap();
    for n in 1..=count {
        h.publish(&format!("m{n}"));
    }
    assert_eq!(
        old.seqs(count).await,
        (1..=count as u64).collect::<Vec<_>>()
    );
    (h, old)
}

/// Seqs 2..=4 are published while this instance hears nothing, and trimmed away.
fn lose_two_to_four(h: &Harness<Memory>) {
    for text in ["two", "three", "four"] {
        h.store.store_message(text);
    }
    h.store.state().entries.retain(|e| e.seq > 4);
}

/// The close a member was told to resync with, if any (after its queued frames).
fn resync_close(member: &Member) -> Option<CloseCode> {
    member.drain().into_iter().find_map(|f| f.err())
}

#[tokio::test(start_paused = true)]
async fn a_join_that_finds_the_numbering_restarted_tells_the_old_members_to_resync() {
    let (h, first) = member_given(3).await;
    // The keys are lost; a second member joins at seq 0 of the new numbering.
    h.store.lose_keys();
    let second = Member::new("second");
    h.join(&second, None).await.unwrap();
    // The old member is told (4010) rather than handed seq 1 after its 3; the new one
    // follows the new numbering.
    assert_eq!(resync_close(&first), Some(CloseCode::Resync));
    h.publish("new one");
    assert_eq!(second.seqs(1).await, vec![1]);
    settle().await;
    assert!(first.drain().is_empty(), "nothing after the close");
}

#[tokio::test(start_paused = true)]
async fn a_catch_up_that_finds_the_numbering_restarted_tells_members_to_resync() {
    let (h, display) = member_given(3).await;
    h.store.lose_keys();
    // Pub/sub came back (a catch-up) before anything was published again.
    h.pumps.catch_up_all();
    settle().await;
    h.publish("new one");
    settle().await;
    let frames = display.drain();
    assert_eq!(
        frames,
        vec![Err(CloseCode::Resync)],
        "no seq 1 after 3, a 4010"
    );
}

/// A gap older than history (a partition longer than the window): the members behind it
/// are told to resync instead of getting the rest with a hole in it; a member that
/// joined after the gap is served as usual.
#[tokio::test(start_paused = true)]
async fn a_gap_gone_from_history_tells_the_members_behind_it_to_resync() {
    let (h, old) = member_given(1).await;
    lose_two_to_four(&h);
    h.publish("five");
    settle().await;
    assert_eq!(
        old.drain(),
        vec![Err(CloseCode::Resync)],
        "4010, never 5 right after 1"
    );
    // A member that joins now starts after the hole: it gets what follows.
    let late = Member::new("late");
    h.join(&late, None).await.unwrap();
    h.publish("six");
    assert_eq!(late.seqs(1).await, vec![6]);
    settle().await;
    assert!(old.drain().is_empty(), "nothing after the close");
}

/// A member that joined after the hole (its baseline past it) keeps its stream when the
/// gap is found: only the members behind the hole resync.
#[tokio::test(start_paused = true)]
async fn a_member_that_joined_past_a_lost_gap_keeps_its_stream() {
    let (h, old) = member_given(1).await;
    lose_two_to_four(&h);
    // Joins at 4 while this instance still thinks the session is at 1.
    let late = Member::new("late");
    h.join(&late, None).await.unwrap();
    late.drain();
    h.publish("five");
    assert_eq!(late.seqs(1).await, vec![5]);
    settle().await;
    assert_eq!(old.drain(), vec![Err(CloseCode::Resync)]);
    assert!(late.drain().is_empty(), "late is not closed");
}

/// The gap is the newest message alone, and history no longer holds it: nothing after
/// `last` is left to deliver, but the member missed one, so it is told to resync.
#[tokio::test(start_paused = true)]
async fn a_catch_up_that_finds_the_newest_message_gone_tells_the_members_to_resync() {
    let (h, old) = member_given(1).await;
    h.store.store_message("two");
    h.store.state().entries.retain(|e| e.seq != 2);
    h.pumps.catch_up_all();
    settle().await;
    assert_eq!(old.drain(), vec![Err(CloseCode::Resync)]);
}

// ---------------------------------------------------------------------------------------
// A numbering that restarts or forks and catches up with what this instance delivered:
// recognised from the messages (their ids and `prev`), never from comparing seqs alone.

/// Redis restarted empty while the member was joined; the new numbering's messages reach
/// the pump live, and one of them has the seq the pump delivered last (3 = 3).
#[tokio::test(start_paused = true)]
async fn a_restart_whose_numbering_reaches_the_last_seq_is_a_resync_not_a_duplicate() {
    let (h, display) = member_given(3).await;
    h.store.lose_keys();
    for text in ["new 1", "new 2", "new 3"] {
        h.publish(text);
    }
    settle().await;
    assert_eq!(
        display.drain(),
        vec![Err(CloseCode::Resync)],
        "never silently dropped as duplicates of 1..3"
    );
    // A restart named a new epoch already: nothing to rename.
    let s = h.store.state();
    assert_eq!(
        s.forks,
        vec![("e1".to_string(), "e1-restarted".to_string())]
    );
}

/// The new numbering is past the old last seq before the pump hears of it (its messages
/// went to a Redis this instance was not subscribed to): the catch-up after the
/// resubscription sees another epoch and a chain that does not continue.
#[tokio::test(start_paused = true)]
async fn a_catch_up_that_finds_a_restarted_numbering_past_the_last_seq_resyncs() {
    let (h, display) = member_given(1).await;
    h.store.lose_keys();
    for text in ["new 1", "new 2", "new 3"] {
        h.store.store_message(text);
    }
    h.pumps.catch_up_all();
    settle().await;
    assert_eq!(
        display.drain(),
        vec![Err(CloseCode::Resync)],
        "not new 2 and 3 as if they followed 1"
    );
    // Later messages of the new numbering reach members that join it, not the old one.
    let late = Member::new("late");
    h.join(&late, None).await.unwrap();
    h.publish("new 4");
    assert_eq!(late.seqs(1).await, vec![4]);
    settle().await;
    assert!(display.drain().is_empty());
}

/// A failover to a replica that had 1..5 of 1..10: the epoch stays and the next publishes
/// reuse 6..10. Their pub/sub payloads arrive in order; the one at the last delivered seq
/// (10) is another message, so the pump renames the numbering and closes its members.
#[tokio::test(start_paused = true)]
async fn a_lossy_failover_that_reuses_delivered_seqs_is_found_and_renamed() {
    let (h, display) = member_given(10).await;
    h.store.fork_at(5);
    for n in 6..=13 {
        h.publish(&format!("fork {n}"));
    }
    settle().await;
    assert_eq!(
        display.drain(),
        vec![Err(CloseCode::Resync)],
        "no fork message handed over as 11..13"
    );
    let s = h.store.state();
    assert_eq!(s.forks, vec![("e1".to_string(), "e1-forked".to_string())]);
    assert_eq!(
        s.epoch, "e1-forked",
        "rejoins naming e1 now get recovered:false"
    );
}

/// The rename of a fork fails while Redis settles after the failover: the members are
/// given nothing of the fork and told only once it is renamed, so that no rejoin naming
/// the old epoch alone can come before the rename and be taken for a continuation.
#[tokio::test(start_paused = true)]
async fn the_members_of_a_fork_whose_rename_fails_are_told_once_it_is_renamed() {
    let (h, display) = member_given(10).await;
    h.store.fork_at(5);
    h.store.state().failing_forks = 2;
    for n in 6..=13 {
        h.publish(&format!("fork {n}"));
    }
    settle().await;
    assert!(
        display.drain().is_empty(),
        "held: nothing, and no close yet"
    );
    assert_eq!(h.store.state().epoch, "e1");
    // The retries (every 250 ms) rename it, then the member is told.
    tokio::time::sleep(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(display.drain(), vec![Err(CloseCode::Resync)]);
    let s = h.store.state();
    assert_eq!(s.epoch, "e1-forked");
    assert_eq!(
        s.forks,
        vec![("e1".to_string(), "e1-forked".to_string())],
        "renamed once, from the epoch the member followed"
    );
}

/// The fork's message at the last delivered seq never arrived (pub/sub dropped it during
/// the failover); the next one, at last + 1, names a `prev` this instance never gave.
#[tokio::test(start_paused = true)]
async fn a_message_that_follows_another_branch_is_never_delivered() {
    let (h, display) = member_given(3).await;
    h.store.fork_at(1);
    h.store.store_message("fork 2");
    h.store.store_message("fork 3");
    h.publish("fork 4");
    settle().await;
    assert_eq!(
        display.drain(),
        vec![Err(CloseCode::Resync)],
        "not 4 after 3"
    );
    assert_eq!(h.store.state().epoch, "e1-forked");
}

/// After a failover the fork has exactly as many messages as this instance delivered:
/// nothing follows the last seq, and the catch-up compares the tip.
#[tokio::test(start_paused = true)]
async fn a_catch_up_that_finds_another_message_at_the_last_seq_resyncs() {
    let (h, display) = member_given(3).await;
    h.store.fork_at(2);
    h.store.store_message("fork 3");
    h.pumps.catch_up_all();
    settle().await;
    assert_eq!(display.drain(), vec![Err(CloseCode::Resync)]);
    assert_eq!(h.store.state().epoch, "e1-forked");
}

/// A join whose reply shows another epoch (the numbering restarted and is past this
/// instance's last seq already) closes the members that followed the old one.
#[tokio::test(start_paused = true)]
async fn a_join_that_finds_another_epoch_past_the_last_seq_resyncs_the_old_members() {
    let (h, old) = member_given(2).await;
    h.store.lose_keys();
    for text in ["new 1", "new 2", "new 3", "new 4"] {
        h.store.store_message(text);
    }
    let new = Member::new("new");
    h.join(&new, None).await.unwrap();
    assert_eq!(resync_close(&old), Some(CloseCode::Resync));
    h.publish("new 5");
    assert_eq!(new.seqs(1).await, vec![5]);
}

/// What does continue is delivered as before: duplicates, a gap fill and a catch-up of
/// the same branch never count as a fork.
#[tokio::test(start_paused = true)]
async fn the_same_branch_never_counts_as_a_fork() {
    let (h, display) = member_given(2).await;
    let three = h.store.store_message("three");
    h.store.store_message("four");
    let five = h.store.store_message("five");
    h.pumps.dispatch(SESSION, five.clone());
    h.pumps.dispatch(SESSION, three);
    h.pumps.catch_up_all();
    h.pumps.dispatch(SESSION, five);
    assert_eq!(display.seqs(3).await, vec![3, 4, 5]);
    settle().await;
    assert!(display.drain().is_empty(), "no close, no repeat");
    assert!(h.store.state().forks.is_empty());
}
