//! Numbering restarts and holes history no longer covers: which members are told to
//! resync (4010) and which keep their stream.

use roomcast_shared::CloseCode;

use super::{memory, settle, Harness, Member, Memory};

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
