//! The store's scripts against a private redis-server, where what they leave in Redis and
//! what they announce is the point: TTLs, the creation and reactivation a publish reports,
//! the leaves a join announces for members whose node died.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use roomcast_shared::{From, Role};

use super::{redis_builder, JoinArgs, Store};
use crate::config::Config;
use crate::envelope::{encode_entry_tail, Envelope, MemberInfo};
use crate::test_redis::Redis;
use crate::util::now_ms;

async fn store(redis: &Redis) -> (Store, Config) {
    let config = Config::from_pairs(&[("redis-url", &redis.url()), ("auth", "off")]).unwrap();
    let pool = redis_builder(&config, 32).unwrap().build_pool(1).unwrap();
    pool.init().await.unwrap();
    (Store::new(pool, &config), config)
}

async fn publish(store: &Store, session: &str) -> super::Published {
    let from = From {
        client_id: "writer".into(),
        user: "w".into(),
        role: Role::Controller,
        name: None,
    };
    let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("x")).unwrap();
    store.publish(session, tail, now_ms(), None).await.unwrap()
}

/// An integer reply (`:42\r\n`).
fn int(reply: Option<String>) -> i64 {
    let reply = reply.expect("redis answered");
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("not an integer reply: {reply:?}"))
}

/// An integer in a bulk string reply (`$3\r\n250\r\n`), as hash fields are.
fn bulk_int(reply: Option<String>) -> i64 {
    let reply = reply.expect("redis answered");
    reply
        .split("\r\n")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not an integer in a bulk reply: {reply:?}"))
}

#[tokio::test]
async fn a_publish_leaves_every_key_with_a_ttl_and_reports_creation_and_reactivation() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let k = store.keys().session("s1");

    let first = publish(&store, "s1").await;
    assert_eq!(
        (first.seq, first.created, first.reactivated),
        (1, true, false)
    );
    let ttl = config.history_ttl.as_millis() as i64;
    for key in [&k.seq, &k.hist, &k.meta] {
        let left = int(redis.cmd(&["PTTL", key]));
        assert!(
            left > 0 && left >= ttl - 60_000,
            "{key} must expire with the history TTL, has {left} ms"
        );
    }

    // A session its first publish creates gets a lifetime like any other: the lifecycle
    // clock ends it at created_at + max_lifetime.
    let created_at = bulk_int(redis.cmd(&["HGET", &k.meta, "created_at"]));
    let expires_at = bulk_int(redis.cmd(&["HGET", &k.meta, "expires_at"]));
    assert_eq!(
        expires_at - created_at,
        config.max_lifetime.as_millis() as i64
    );

    let second = publish(&store, "s1").await;
    assert_eq!(
        (second.seq, second.created, second.reactivated),
        (2, false, false)
    );
    // Later publishes leave the creation fields alone.
    assert_eq!(
        bulk_int(redis.cmd(&["HGET", &k.meta, "expires_at"])),
        expires_at
    );

    // An inactive session: the publish makes it active again and says so, so the caller
    // puts it back under the lifecycle clock.
    redis.cmd(&["HSET", &k.meta, "status", "inactive"]).unwrap();
    let third = publish(&store, "s1").await;
    assert_eq!(
        (third.seq, third.created, third.reactivated),
        (3, false, true)
    );
    assert_eq!(
        redis.cmd(&["HGET", &k.meta, "status"]).as_deref(),
        Some("$6\r\nactive\r\n")
    );
}

#[tokio::test]
async fn a_join_sweeps_members_whose_node_died_and_announces_each_leave() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let k = store.keys().session("s2");
    let info = |id: &str| MemberInfo {
        client_id: id.into(),
        user: id.into(),
        role: Role::Display,
        name: None,
        node: "n".into(),
        joined_at: 1,
        active_at: 1,
    };
    // The ghost's presence expired long ago: its node stopped refreshing it.
    let ghost = info("ghost").encode();
    redis.cmd(&["ZADD", &k.pres, "1", "ghost"]).unwrap();
    redis
        .cmd_bytes(&[b"HSET", k.pinfo.as_bytes(), b"ghost", &ghost])
        .unwrap();

    let subscriber = redis_builder(&config, 32)
        .unwrap()
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let mut rx = subscriber.message_rx();
    subscriber.ssubscribe(k.channel.clone()).await.unwrap();

    let now = now_ms();
    let newcomer = info("new").encode();
    store
        .join(
            "s2",
            JoinArgs {
                client_id: "new",
                info: &newcomer,
                expiry_ms: now + 30_000,
                now_ms: now,
                since: None,
                epoch: None,
                presence_list_max: 100,
                create: true,
                activity: true,
                owner: "new",
            },
        )
        .await
        .unwrap();

    let mut announced = Vec::new();
    while announced.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an announcement in time")
            .unwrap();
        let bytes = msg.value.as_bytes().expect("a binary payload").to_vec();
        announced.push(Envelope::decode(&bytes).unwrap());
    }
    assert_eq!(
        announced,
        vec![Envelope::Leave(info("ghost")), Envelope::Join(info("new"))],
        "the ghost leaves before the newcomer joins"
    );
    assert_eq!(int(redis.cmd(&["HEXISTS", &k.pinfo, "ghost"])), 0);
    let _ = subscriber.quit().await;
}

/// While anyone is connected, the heartbeat keeps the session's keys alive, the seq
/// among them: numbering restarting under live members would look like duplicates.
#[tokio::test]
async fn a_presence_refresh_keeps_the_seq_alive_while_members_are_there() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let k = store.keys().session("s3");
    publish(&store, "s3").await;
    let now = now_ms();
    redis.cmd(&["ZADD", &k.pres, &(now + 30_000).to_string(), "here"]);
    redis.cmd(&["HSET", &k.pinfo, "here", "info"]);
    for key in [&k.seq, &k.pres, &k.pinfo] {
        redis.cmd(&["PEXPIRE", key, "5000"]);
    }
    let (missing, swept) = store
        .refresh_presence("s3", now, now + 30_000, ["here".to_string()].into_iter())
        .await
        .unwrap();
    assert_eq!((missing.len(), swept), (0, 0));
    let ttl = config.history_ttl.as_millis() as i64;
    for key in [&k.seq, &k.pres, &k.pinfo] {
        let left = int(redis.cmd(&["PTTL", key]));
        assert!(left > ttl - 60_000, "{key} was not pushed: {left} ms left");
    }
}

/// A node with thousands of members in one session: the heartbeat pushes each present
/// member's expiry and reports each missing one without re-adding it, across more
/// members than one call can unpack at once (the script works in chunks).
#[tokio::test]
async fn a_presence_refresh_of_thousands_pushes_each_present_member_and_reports_each_missing_one() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let k = store.keys().session("big");
    let now = now_ms();
    let old = (now + 10_000).to_string();
    let ids: Vec<String> = (0..5_000).map(|i| format!("m{i}")).collect();
    // Every thousandth member was swept while its node stalled: the last of a chunk.
    let present: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 1000 != 999)
        .map(|(_, id)| id)
        .collect();
    let mut zadd = vec!["ZADD", k.pres.as_str()];
    for id in &present {
        zadd.push(&old);
        zadd.push(id);
    }
    assert_eq!(int(redis.cmd(&zadd)), present.len() as i64);
    let expiry = now + 30_000;
    let (missing, swept) = store
        .refresh_presence("big", now, expiry, ids.iter().cloned())
        .await
        .unwrap();
    assert_eq!(swept, 0);
    assert_eq!(missing, ["m999", "m1999", "m2999", "m3999", "m4999"]);
    let pushed = expiry.to_string();
    assert_eq!(
        int(redis.cmd(&["ZCOUNT", &k.pres, &pushed, &pushed])),
        present.len() as i64
    );
    assert_eq!(int(redis.cmd(&["ZCARD", &k.pres])), present.len() as i64);
}

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

/// A created session's meta lives as long as the longer of its history and its lifetime
/// plus the tombstone: here the history's 24 h, since the lifetime is 1 h.
#[tokio::test]
async fn a_created_session_meta_lives_as_long_as_its_history_or_lifetime_and_tombstone() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let now = now_ms();
    let hour = 3_600_000;
    assert!(store
        .create_session("made", now, now + hour, "CODE42", "owner", "{}")
        .await
        .unwrap());
    let meta = store.keys().session("made").meta;
    let left = int(redis.cmd(&["PTTL", &meta]));
    let history = config.history_ttl.as_millis() as i64;
    assert!(
        history - 5_000 < left && left <= history,
        "meta PTTL {left} ms, history TTL {history} ms"
    );
    // A lifetime longer than the history: the lifetime plus the tombstone's hour.
    let long = 48 * hour;
    assert!(store
        .create_session("long", now, now + long, "CODE43", "owner", "{}")
        .await
        .unwrap());
    let meta = store.keys().session("long").meta;
    let left = int(redis.cmd(&["PTTL", &meta]));
    let want = (long + hour) as i64;
    assert!(
        want - 5_000 < left && left <= want,
        "meta PTTL {left} ms, want {want} ms"
    );
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
    let left = int(redis.cmd(&["PTTL", &key]));
    let want = config.max_lifetime.max(config.history_ttl).as_millis() as i64;
    assert!(
        want - 5_000 < left && left <= want,
        "PTTL {left}, want {want}"
    );
}

/// A listing entry older than any session can live (its lifetime, and the hour its meta
/// outlives it) is dropped at the user's next write: an active user's listing, whose TTL
/// every write pushes, does not grow for good. A younger entry stays.
#[tokio::test]
async fn a_users_listing_drops_entries_older_than_any_session_lives() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let now = now_ms();
    let lives = config.max_lifetime.max(config.history_ttl) + super::TOMBSTONE;
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

/// Presence lists the members whose expiry is still ahead: one that expires at this very
/// millisecond is gone.
#[tokio::test]
async fn presence_lists_only_members_whose_expiry_is_still_ahead() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    let now = now_ms();
    store
        .presence_set("room", "due", now, b"due-info", 0, now)
        .await
        .unwrap();
    store
        .presence_set("room", "alive", now + 1, b"alive-info", 0, now)
        .await
        .unwrap();
    let members = store.presence_members("room", now).await.unwrap();
    assert_eq!(members, [bytes::Bytes::from_static(b"alive-info")]);
}

/// A limited publish is stored only while every window has room; the first full window
/// refuses it with its decision and nothing is stored. Where the limits and the publish
/// are one script (not on a Cluster), a refusal counts in no window either.
#[tokio::test]
async fn a_limited_publish_is_stored_only_while_every_window_has_room() {
    limited_publish(false).await;
}

/// The same on a Cluster's path, where the windows are checked apart before the publish:
/// it runs on any Redis, so a standalone run (and `make mutants`) covers it too.
#[tokio::test]
async fn a_limited_publish_checked_apart_is_stored_only_while_every_window_has_room() {
    limited_publish(true).await;
}

async fn limited_publish(apart: bool) {
    use super::Limit;
    use crate::config::Rate;
    use crate::ratelimit::Scope;

    let redis = Redis::start();
    let (mut store, _) = store(&redis).await;
    store.clustered |= apart;
    let minute = Duration::from_secs(60);
    let user = Limit {
        scope: Scope::Publish,
        key: "ann",
        rate: Rate {
            count: 3,
            window: minute,
        },
    };
    let ip = Limit {
        scope: Scope::PublishIp,
        key: "10.0.0.1",
        rate: Rate {
            count: 2,
            window: minute,
        },
    };
    let from = From {
        client_id: "writer".into(),
        user: "ann".into(),
        role: Role::Controller,
        name: None,
    };
    let attempt = |limits: Vec<Limit<'static>>| {
        let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("x")).unwrap();
        let store = &store;
        async move {
            store
                .publish_limited("room", tail, now_ms(), None, &limits)
                .await
                .unwrap()
        }
    };
    for seq in 1..=2 {
        assert_eq!(attempt(vec![user, ip]).await.unwrap().seq, seq);
    }
    let refused = attempt(vec![user, ip]).await.unwrap_err();
    assert_eq!(refused.scope, Scope::PublishIp);
    assert!(!refused.admitted);
    assert_eq!((refused.limit, refused.remaining), (2, 0));
    assert!(
        Duration::ZERO < refused.reset && refused.reset <= minute,
        "{refused:?}"
    );
    let (seq, stored) = store.history_since("room", 0).await.unwrap();
    assert_eq!(
        (seq, stored.len()),
        (2, 2),
        "the refused publish stored nothing"
    );
    let count =
        |l: &Limit| int(redis.cmd(&["ZCARD", &store.keys().rate_limit(l.scope.name(), l.key)]));
    assert_eq!(count(&ip), 2);
    let user_counted = if store.clustered { 3 } else { 2 };
    assert_eq!(count(&user), user_counted);

    // The user's own window then refuses, naming its scope.
    let mut last = 2;
    if user_counted == 2 {
        last = attempt(vec![user]).await.unwrap().seq;
        assert_eq!(last, 3);
    }
    let refused = attempt(vec![user]).await.unwrap_err();
    assert_eq!((refused.scope, refused.limit), (Scope::Publish, 3));
    assert_eq!(store.history_since("room", 0).await.unwrap().0, last);
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

/// What a client may retry (`Unavailable`: the connection, a cluster that is down, a
/// Redis loading its data or busy with a script) and what it may not (`Internal`).
#[test]
fn redis_errors_are_classed_retryable_or_not() {
    use fred::error::{Error, ErrorKind};

    use super::StoreError;

    let class = |kind: ErrorKind, details: &str| match StoreError::from(Error::new(
        kind,
        details.to_string(),
    )) {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Internal(_) => "internal",
        other => panic!("{other:?}"),
    };
    for kind in [
        ErrorKind::IO,
        ErrorKind::Timeout,
        ErrorKind::Canceled,
        ErrorKind::Routing,
    ] {
        assert_eq!(
            class(kind.clone(), "connection reset"),
            "unavailable",
            "{kind:?}"
        );
    }
    assert_eq!(
        class(ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
        "unavailable"
    );
    assert_eq!(
        class(ErrorKind::Cluster, "CROSSSLOT Keys in request"),
        "internal"
    );
    for busy in [
        "LOADING Redis is loading",
        "BUSY Redis is busy running a script",
    ] {
        assert_eq!(class(ErrorKind::Unknown, busy), "unavailable", "{busy}");
    }
    assert_eq!(
        class(ErrorKind::Unknown, "ERR user_script:1: oops"),
        "internal"
    );
    assert_eq!(class(ErrorKind::Parse, "not a number"), "internal");
}

/// A Redis that stops answering is given up after twice the command timeout, checked
/// every half of it (never more often than every 50 ms), so it is reconnected well
/// before clients wait out their own retries.
#[test]
fn an_unresponsive_redis_is_dropped_after_twice_the_command_timeout() {
    let config = Config::from_pairs(&[
        ("redis-url", "redis://127.0.0.1:1"),
        ("auth", "off"),
        ("redis-timeout", "1s"),
    ])
    .unwrap();
    let builder = redis_builder(&config, 32).unwrap();
    let unresponsive = &builder.get_connection_config().unresponsive;
    assert_eq!(unresponsive.max_timeout, Some(Duration::from_secs(2)));
    assert_eq!(unresponsive.interval, Duration::from_millis(500));
}
