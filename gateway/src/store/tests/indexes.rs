//! The indexes that span sessions or nodes, against a private redis-server: the node
//! registry, the bucketed session and lifecycle indexes (and the move of an earlier
//! version's unbucketed ones), and a user's session listing.

use std::time::Duration;

use super::{assert_pttl, int, store};
use crate::test_redis::Redis;
use crate::util::now_ms;

/// The node registry behind `/api/v1/sessions/stats`: a node counts while its heartbeat
/// is fresh, with the connections it reported, and is gone once it removes itself.
#[tokio::test]
async fn the_node_registry_counts_live_nodes_and_forgets_a_removed_one() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let now = now_ms();
    let minute = Duration::from_secs(60);
    for (node, connections) in [("gw-a", 3), ("gw-b", 4)] {
        store.node_heartbeat(node, now, minute).await.unwrap();
        store.node_connections(node, connections).await.unwrap();
    }
    assert_eq!(store.cluster(now, minute).await.unwrap(), (2, 7));
    store.node_connections("gw-b", 10).await.unwrap();
    assert_eq!(store.cluster(now, minute).await.unwrap(), (2, 13));
    store.node_remove("gw-a").await.unwrap();
    assert_eq!(store.cluster(now, minute).await.unwrap(), (1, 10));
    let k = store
        .keys()
        .node_connections(crate::keys::bucket_of("gw-a"));
    assert_eq!(
        int(redis.cmd(&["HEXISTS", &k, "gw-a"])),
        0,
        "its count went too"
    );
}

/// A node that dies without a clean shutdown leaves its heartbeat and its connection
/// count behind: the next heartbeat of any live node forgets both, and the orphan counts
/// an earlier version left, while a live node's count stays.
#[tokio::test]
async fn a_heartbeat_forgets_dead_nodes_and_their_connection_counts() {
    use crate::keys::bucket_of;
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let minute = Duration::from_secs(60);
    let now = now_ms();
    // Many dead nodes, so that every bucket holds some and a live node prunes them all.
    let dead: Vec<String> = (0..40).map(|i| format!("gw-dead-{i}")).collect();
    for node in &dead {
        store
            .node_heartbeat(node, now - 120_000, minute)
            .await
            .unwrap();
        store.node_connections(node, 5).await.unwrap();
    }
    let k = store.keys();
    let orphan = "gw-orphan";
    redis.cmd(&["HSET", &k.node_connections(bucket_of(orphan)), orphan, "9"]);
    store.node_heartbeat("gw-live", now, minute).await.unwrap();
    store.node_connections("gw-live", 3).await.unwrap();
    // A second pass finds nothing more to forget and keeps the live node.
    store.node_heartbeat("gw-live", now, minute).await.unwrap();
    assert_eq!(store.cluster(now, minute).await.unwrap(), (1, 3));
    for node in dead.iter().map(String::as_str).chain([orphan]) {
        let bucket = bucket_of(node);
        assert_eq!(
            redis.cmd(&["ZSCORE", &k.nodes(bucket), node]).as_deref(),
            Some("$-1\r\n"),
            "{node} stayed registered"
        );
        assert_eq!(
            int(redis.cmd(&["HEXISTS", &k.node_connections(bucket), node])),
            0,
            "{node}'s count stayed"
        );
    }
    let live = k.node_connections(bucket_of("gw-live"));
    assert_eq!(int(redis.cmd(&["HEXISTS", &live, "gw-live"])), 1);
}

/// The cross-session indexes live in buckets: every session is listed from whichever
/// bucket holds it, the lifecycle clock finds it in its own bucket, and entries an
/// earlier version left in the unbucketed keys move into the buckets.
#[tokio::test]
async fn session_indexes_are_bucketed_and_legacy_entries_move_in() {
    use crate::keys::{bucket_of, INDEX_BUCKETS};
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let now = now_ms();
    let ids: Vec<String> = (0..40).map(|i| format!("bucketed-{i}")).collect();
    for id in &ids {
        store
            .touch_indexes(id, now, None, Some(now - 1))
            .await
            .unwrap();
    }
    let k = store.keys();
    let used = (0..INDEX_BUCKETS)
        .filter(|b| int(redis.cmd(&["ZCARD", &k.sessions(*b)])) > 0)
        .count();
    assert!(used > 8, "40 sessions in {used} buckets");
    let mut listed = store.all_session_ids().await.unwrap();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // The clock claims each session from its own bucket.
    let bucket = bucket_of(&ids[0]);
    let (_, due) = store
        .claim_due(bucket, now, 1000, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(due.iter().any(|(id, _)| id == &ids[0]));
    assert!(due.iter().all(|(id, _)| bucket_of(id) == bucket));

    // An older instance's entries, in the unbucketed keys.
    let (legacy, legacy_due) = k.legacy_session_indexes();
    redis.cmd(&["ZADD", &legacy, "5", "old-one"]).unwrap();
    redis.cmd(&["ZADD", &legacy_due, "7", "old-one"]).unwrap();
    // One already in the buckets: the later activity and the earlier due time win.
    let both = &ids[1];
    redis.cmd(&["ZADD", &legacy, "5", both]).unwrap();
    redis.cmd(&["ZADD", &legacy_due, "7", both]).unwrap();
    assert_eq!(store.migrate_legacy_indexes().await.unwrap(), 4);
    let b1 = bucket_of(both);
    assert_eq!(
        redis.cmd(&["ZSCORE", &k.sessions(b1), both]).unwrap(),
        format!("${}\r\n{now}\r\n", now.to_string().len()),
        "the later activity stays"
    );
    assert_eq!(
        redis.cmd(&["ZSCORE", &k.sessions_due(b1), both]).unwrap(),
        "$1\r\n7\r\n",
        "the earlier due time wins"
    );
    let b = bucket_of("old-one");
    assert_eq!(
        redis
            .cmd(&["ZSCORE", &k.sessions_due(b), "old-one"])
            .unwrap(),
        "$1\r\n7\r\n"
    );
    assert_eq!(int(redis.cmd(&["EXISTS", &legacy])), 0);
    assert_eq!(int(redis.cmd(&["EXISTS", &legacy_due])), 0);
    assert!(store
        .all_session_ids()
        .await
        .unwrap()
        .contains(&"old-one".to_string()));
    assert_eq!(store.migrate_legacy_indexes().await.unwrap(), 0);
}

/// The lifecycle clock's lease: `claim_due` answers the score it leased sessions at, and
/// `reschedule_due` files each one's next due time only where that score is still the
/// lease, so a later time replaces the lease exactly and 0 drops the session.
#[tokio::test]
async fn a_leased_session_is_refiled_at_its_next_due_time_or_dropped() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let now = now_ms();
    for id in ["later", "done"] {
        store
            .touch_indexes(id, now, None, Some(now - 1_000))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(30);
    let mut leased = Vec::new();
    let mut lease_score = 0;
    for bucket in 0..crate::keys::INDEX_BUCKETS {
        let (score, due) = store.claim_due(bucket, now, 64, lease).await.unwrap();
        if !due.is_empty() {
            lease_score = score;
            leased.extend(due.into_iter().map(|(id, _)| id));
        }
    }
    leased.sort();
    assert_eq!(leased, ["done", "later"]);
    assert_eq!(lease_score, now + 30_000, "leased for 30 s from now");
    let next = now + 3_600_000;
    store
        .reschedule_due(lease_score, &[("later".into(), next), ("done".into(), 0)])
        .await
        .unwrap();
    // ZSCORE's bulk reply (`$13\r\n1764740000000\r\n`, or `$-1` when absent).
    let score = |id: &str| -> Option<f64> {
        let key = store.keys().sessions_due(crate::keys::bucket_of(id));
        let reply = redis.cmd(&["ZSCORE", &key, id]).expect("redis answered");
        reply.lines().nth(1).and_then(|l| l.trim().parse().ok())
    };
    assert_eq!(score("later"), Some(next as f64), "filed at its next time");
    assert_eq!(score("done"), None, "dropped");
    // Ending a session over REST takes it out from under the clock at once.
    store.unschedule("later").await.unwrap();
    assert_eq!(score("later"), None);
}

/// An observer's join files the session in the user's listing (without counting as the
/// session's activity), and the listing expires with the longest a session can live.
#[tokio::test]
async fn an_observed_session_is_listed_for_its_user_with_a_ttl() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    store
        .remember_user_session("watcher", "watched", now_ms())
        .await
        .unwrap();
    assert_eq!(
        store.user_session_ids("watcher", 10).await.unwrap(),
        ["watched"]
    );
    let key = store.keys().user_sessions("watcher");
    let want = config.max_lifetime.max(config.history_ttl).as_millis() as i64;
    assert_pttl(&redis, &key, want);
}

/// A listing entry older than any session can live (its lifetime, and the hour its meta
/// outlives it) is dropped at the user's next write: an active user's listing, whose TTL
/// every write pushes, does not grow for good. A younger entry stays.
#[tokio::test]
async fn a_users_listing_drops_entries_older_than_any_session_lives() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let now = now_ms();
    let lives = config.max_lifetime.max(config.history_ttl) + crate::store::TOMBSTONE;
    let gone = now - lives.as_millis() as u64 - 1_000;
    let kept = now - lives.as_millis() as u64 + 60_000;
    store
        .remember_user_session("u", "gone", gone)
        .await
        .unwrap();
    store
        .remember_user_session("u", "kept", kept)
        .await
        .unwrap();
    store
        .touch_indexes("new", now, Some("u"), None)
        .await
        .unwrap();
    assert_eq!(
        store.user_session_ids("u", 10).await.unwrap(),
        ["new", "kept"]
    );
}

/// A user's listing holds exactly `limit` sessions, the most recent first.
#[tokio::test]
async fn a_users_session_listing_holds_at_most_the_limit_newest_first() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let now = now_ms();
    for (i, session) in ["s1", "s2", "s3", "s4", "s5"].iter().enumerate() {
        store
            .remember_user_session("u", session, now + i as u64)
            .await
            .unwrap();
    }
    assert_eq!(
        store.user_session_ids("u", 3).await.unwrap(),
        ["s5", "s4", "s3"]
    );
    assert_eq!(store.user_session_ids("u", 1).await.unwrap(), ["s5"]);
}

/// Sessions whose keys expired leave both indexes (listing and lifecycle); others stay.
#[tokio::test]
async fn forgotten_sessions_leave_both_indexes() {
    use crate::keys::bucket_of;

    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let keys = store.keys();
    for id in ["gone-a", "gone-b", "kept"] {
        let bucket = bucket_of(id);
        redis.cmd(&["ZADD", &keys.sessions(bucket), "5", id]);
        redis.cmd(&["ZADD", &keys.sessions_due(bucket), "5", id]);
    }
    store
        .forget_sessions(&["gone-a".into(), "gone-b".into()])
        .await
        .unwrap();
    for id in ["gone-a", "gone-b", "kept"] {
        let bucket = bucket_of(id);
        for index in [keys.sessions(bucket), keys.sessions_due(bucket)] {
            let score = redis.cmd(&["ZSCORE", &index, id]);
            let present = score.as_deref() != Some("$-1\r\n");
            assert_eq!(present, id == "kept", "{id} in {index}: {score:?}");
        }
    }
}
