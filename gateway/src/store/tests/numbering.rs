//! Numberings against a private redis-server: each message names the one before it, a
//! rejoin whose `since_id` names another branch (a failover to a stale replica) is not
//! recovered, and `fork.lua` renames a numbering once.

use roomcast_shared::Role;

use super::{int, publish, store};
use crate::envelope::MemberInfo;
use crate::store::{JoinArgs, JoinReply, Store};
use crate::test_redis::Redis;
use crate::util::now_ms;

/// `join.lua` for a rejoin that names where it left off.
async fn rejoin(
    store: &Store,
    session: &str,
    since: u64,
    epoch: &str,
    since_id: &str,
) -> JoinReply {
    let now = now_ms();
    let info = MemberInfo {
        client_id: "tv".into(),
        user: "tv".into(),
        role: Role::Display,
        name: None,
        node: "n".into(),
        joined_at: now,
        active_at: now,
        info: None,
    }
    .encode();
    store
        .join(
            session,
            JoinArgs {
                client_id: "tv",
                info: &info,
                expiry_ms: now + 30_000,
                now_ms: now,
                since: Some(since),
                epoch: Some(epoch),
                since_id: Some(since_id),
                presence_list_max: 100,
                create: false,
                activity: false,
                owner: "tv",
            },
        )
        .await
        .unwrap()
}

/// The ids of the stored messages, oldest first.
async fn stored_ids(store: &Store, session: &str) -> Vec<(u64, String, String)> {
    let reply = store.history_since(session, 0).await.unwrap();
    let mut ids: Vec<_> = reply
        .entries
        .iter()
        .map(|b| crate::envelope::decode_entry(b).unwrap())
        .map(|e| (e.seq, e.id, e.prev))
        .collect();
    ids.reverse();
    ids
}

/// Each message names the one before it, and the meta's tip names the newest: the chain
/// every reader checks.
#[tokio::test]
async fn publishes_chain_each_message_to_the_one_before() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    for _ in 0..3 {
        publish(&store, "chain").await;
    }
    let ids = stored_ids(&store, "chain").await;
    assert_eq!(ids[0].2, "", "the first of a numbering follows nothing");
    assert_eq!(ids[1].2, ids[0].1);
    assert_eq!(ids[2].2, ids[1].1);
    assert!(ids.iter().all(|(_, id, _)| id.len() == 12));
    let reply = store.history_since("chain", 3).await.unwrap();
    assert_eq!((reply.seq, reply.tip.as_str()), (3, ids[2].1.as_str()));
    assert!(reply.entries.is_empty());
}

/// A failover to a replica that had 1..3 of 1..5: the epoch survives and the next two
/// publishes are numbered 4 and 5 again. A rejoin that names the message it saw at its
/// `since` is told when that is not the stored one there, and gets the whole window;
/// one that saw what is stored recovers as usual.
#[tokio::test]
async fn a_rejoin_whose_since_names_another_branch_is_not_recovered() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    for _ in 0..5 {
        publish(&store, "forked").await;
    }
    let before = stored_ids(&store, "forked").await;
    let epoch = store.history_since("forked", 0).await.unwrap().epoch;
    // What a stale replica holds: seq 3, the first three entries, the tip at 3.
    let k = store.keys().session("forked");
    redis.cmd(&["SET", &k.seq, "3"]).unwrap();
    redis.cmd(&["LTRIM", &k.hist, "2", "-1"]).unwrap();
    redis.cmd(&["HSET", &k.meta, "tip", &before[2].1]).unwrap();
    publish(&store, "forked").await;
    publish(&store, "forked").await;
    let after = stored_ids(&store, "forked").await;
    assert_eq!(after[3].2, before[2].1, "the fork continues from 3");
    assert_ne!(after[3].1, before[3].1);

    // Saw the old 5 (the top now) or the old 4 (in the window): another branch.
    for (since, id) in [(5, &before[4].1), (4, &before[3].1)] {
        let r = rejoin(&store, "forked", since, &epoch, id).await;
        assert!(!r.same_numbering, "since {since}");
        assert_eq!(r.epoch, epoch);
        assert_eq!(r.history.len(), 5, "the whole window");
    }
    // Saw what is stored: recovered as usual, from there on.
    for (since, id, missed) in [
        (5, &after[4].1, 0),
        (3, &after[2].1, 2),
        (2, &after[1].1, 3),
    ] {
        let r = rejoin(&store, "forked", since, &epoch, id).await;
        assert!(r.same_numbering, "since {since}");
        assert_eq!(r.history.len(), missed);
    }
    // The tip is where a member that joined at the top starts.
    assert_eq!(
        rejoin(&store, "forked", 5, &epoch, "").await.tip,
        after[4].1
    );
}

/// `fork.lua` renames the numbering once, and only while it is the one named.
#[tokio::test]
async fn a_fork_renames_the_numbering_only_while_it_is_the_one_named() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    publish(&store, "renamed").await;
    let epoch = store.history_since("renamed", 0).await.unwrap().epoch;
    let renamed = store.fork("renamed", &epoch).await.unwrap();
    assert!(!renamed.is_empty() && renamed != epoch);
    // A second reader that found the same fork names the old epoch: nothing changes.
    assert_eq!(store.fork("renamed", &epoch).await.unwrap(), renamed);
    assert_eq!(
        store.history_since("renamed", 0).await.unwrap().epoch,
        renamed
    );
    // No meta, nothing written.
    assert_eq!(store.fork("absent", "").await.unwrap(), "");
    let k = store.keys().session("absent");
    assert_eq!(int(redis.cmd(&["EXISTS", &k.meta])), 0);
}
