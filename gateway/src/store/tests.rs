//! The store's scripts against a private redis-server, where what they leave in Redis and
//! what they announce is the point: TTLs, the creation and reactivation a publish reports,
//! the leaves a join announces for members whose node died.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use roomcast_shared::{From, Role};

use super::{redis_builder, JoinArgs, Store};
use crate::config::Config;
use crate::envelope::{encode_entry_tail, is_payload_of, EntryTail, Envelope, MemberInfo};
use crate::test_redis::Redis;
use crate::util::now_ms;

/// Webhook events: what the scripts record, and delivery's claims and cursors.
mod events;
/// The cross-session indexes and the node registry.
mod indexes;
/// Numberings: the chain of ids, rejoins that name another branch, the rename of a fork.
mod numbering;

async fn store(redis: &Redis) -> (Store, Config) {
    let config = Config::from_pairs(&[("redis-url", &redis.url()), ("auth", "off")]).unwrap();
    let pool = redis_builder(&config, 32).unwrap().build_pool(1).unwrap();
    pool.init().await.unwrap();
    (Store::new(pool, &config), config)
}

/// The client the store tests publish as.
fn writer(user: &str) -> From {
    From {
        client_id: "writer".into(),
        user: user.into(),
        role: Role::Controller,
        name: None,
    }
}

/// A pub/sub client of the store's deployment, subscribed to `channel`.
async fn subscribed(config: &Config, channel: &str) -> fred::clients::SubscriberClient {
    let subscriber = redis_builder(config, 32)
        .unwrap()
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    subscriber.ssubscribe(channel).await.unwrap();
    subscriber
}

async fn publish(store: &Store, session: &str) -> super::Published {
    let tail = encode_entry_tail(now_ms(), &writer("w"), &serde_json::json!("x")).unwrap();
    store.publish(session, &tail, now_ms(), None).await.unwrap()
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

/// Asserts that `key` expires in `want` ms, less the few seconds the test itself took.
fn assert_pttl(redis: &Redis, key: &str, want: i64) {
    let left = int(redis.cmd(&["PTTL", key]));
    assert!(
        want - 5_000 < left && left <= want,
        "{key}: PTTL {left} ms, want {want} ms"
    );
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
        info: None,
    };
    // The ghost's presence expired long ago: its node stopped refreshing it.
    let ghost = info("ghost").encode();
    redis.cmd(&["ZADD", &k.pres, "1", "ghost"]).unwrap();
    redis
        .cmd_bytes(&[b"HSET", k.pinfo.as_bytes(), b"ghost", &ghost])
        .unwrap();

    let subscriber = subscribed(&config, &k.channel).await;
    let mut rx = subscriber.message_rx();

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
                since_id: None,
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

/// A created session's meta lives as long as the longer of its history and its lifetime
/// plus the tombstone: here the history's 24 h, since the lifetime is 1 h.
#[tokio::test]
async fn a_created_session_meta_lives_as_long_as_its_history_or_lifetime_and_tombstone() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let now = now_ms();
    let hour = 3_600_000;
    assert!(store
        .create_session("made", now, now + hour, "CODE42", "owner", "{}", false)
        .await
        .unwrap());
    let meta = store.keys().session("made").meta;
    assert_pttl(&redis, &meta, config.history_ttl.as_millis() as i64);
    // A lifetime longer than the history: the lifetime plus the tombstone's hour.
    let long = 48 * hour;
    assert!(store
        .create_session("long", now, now + long, "CODE43", "owner", "{}", false)
        .await
        .unwrap());
    let meta = store.keys().session("long").meta;
    assert_pttl(&redis, &meta, (long + hour) as i64);
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
    let from = writer("ann");
    let attempt = |limits: Vec<Limit<'static>>| {
        let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("x")).unwrap();
        let store = &store;
        async move {
            store
                .publish_limited("room", &tail, now_ms(), None, None, &limits)
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
    let reply = store.history_since("room", 0).await.unwrap();
    assert_eq!(
        (reply.seq, reply.entries.len()),
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
    assert_eq!(store.history_since("room", 0).await.unwrap().seq, last);
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

/// A status none of ours (corrupt, or another program's) makes nothing writable: the
/// publish script refuses it, a transition refuses it even when any status would do, and
/// reading the meta says what is wrong instead of taking it for `active`.
#[tokio::test]
async fn an_unknown_status_is_never_taken_for_a_writable_session() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    publish(&store, "odd").await;
    let k = store.keys().session("odd");
    redis.cmd(&["HSET", &k.meta, "status", "open"]).unwrap();
    let from = writer("w");
    let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("x")).unwrap();
    assert!(matches!(
        store.publish("odd", &tail, now_ms(), None).await,
        Err(super::StoreError::Internal(_))
    ));
    assert_eq!(
        store.history_since("odd", 0).await.unwrap().seq,
        1,
        "nothing stored"
    );
    assert!(matches!(
        store.session_meta("odd").await,
        Err(super::StoreError::Internal(_))
    ));
    use super::sessions::SessionStatus as S;
    let transition = store
        .transition(
            "odd",
            now_ms(),
            &[S::Active, S::Inactive, S::Resolved, S::Ended],
            None,
            None,
            &[("state", "1".to_string())],
        )
        .await;
    assert!(transition.is_err(), "{transition:?}");
    assert_eq!(
        redis.cmd(&["HGET", &k.meta, "state"]).unwrap(),
        "$-1\r\n",
        "nothing written"
    );
}

/// A Redis that lost its scripts (a restart, a failover to a replica that never loaded
/// them) answers `NOSCRIPT`: the publish loads the script and runs again with its keys
/// and arguments built anew, with and without the limits folded into it; so do the
/// other scripts (history.lua here).
#[tokio::test]
async fn a_publish_after_redis_lost_its_scripts_loads_them_and_is_stored_once() {
    use super::Limit;
    use crate::config::Rate;
    use crate::ratelimit::Scope;
    let redis = Redis::start();
    let (store, _config) = store(&redis).await;
    assert_eq!(publish(&store, "room").await.seq, 1);
    let user = Limit {
        scope: Scope::Publish,
        key: "ann",
        rate: Rate {
            count: 10,
            window: Duration::from_secs(60),
        },
    };
    for expected in [2, 3] {
        // Every server of the deployment forgets every script.
        for server in redis.servers() {
            crate::test_redis::cmd_at(server.addr(), &[b"SCRIPT", b"FLUSH"]).expect("SCRIPT FLUSH");
        }
        let limits = if expected == 2 { vec![] } else { vec![user] };
        let from = writer("ann");
        let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!(expected)).unwrap();
        let published = store
            .publish_limited(
                "room",
                &tail,
                now_ms(),
                None,
                Some(&format!("k{expected}")),
                &limits,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((published.seq, published.repeat), (expected, false));
    }
    // The other scripts take the same path: history.lua after another flush.
    for server in redis.servers() {
        crate::test_redis::cmd_at(server.addr(), &[b"SCRIPT", b"FLUSH"]).expect("SCRIPT FLUSH");
    }
    let reply = store.history_since("room", 0).await.unwrap();
    assert_eq!((reply.seq, reply.entries.len()), (3, 3), "each stored once");
}

/// A publish answers the `prev` its entry names, so the publishing instance rebuilds the
/// stored entry byte for byte (`EntryTail::stored`) and recognises the pub/sub copy of its
/// own message by those bytes; a repeat stored nothing and names none.
#[tokio::test]
async fn a_publish_answers_its_prev_so_the_publisher_knows_the_stored_entry_and_its_copy() {
    let redis = Redis::start();
    let (store, config) = store(&redis).await;
    let k = store.keys().session("s1");
    let subscriber = subscribed(&config, &k.channel).await;
    let mut rx = subscriber.message_rx();

    let from = From {
        name: Some("W".into()),
        ..writer("w")
    };
    let mut stored = Vec::new();
    for n in 0..3 {
        let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!({"n": n})).unwrap();
        let published = store
            .publish_limited("s1", &tail, now_ms(), None, Some(&format!("k{n}")), &[])
            .await
            .unwrap()
            .unwrap();
        let prev = stored
            .last()
            .map_or(String::new(), |(t, _): &(EntryTail, _)| t.id.clone());
        assert_eq!(published.prev, prev, "publish {n} names the one before it");
        let bytes = tail.stored(published.seq, &published.prev);
        let copy = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the pub/sub copy in time")
            .unwrap();
        let copy = copy.value.as_bytes().expect("a binary payload").to_vec();
        assert!(
            is_payload_of(&copy, &bytes),
            "publish {n}: the copy is the entry"
        );
        stored.push((tail, bytes));
    }
    let history = store.history_since("s1", 0).await.unwrap();
    let newest_first: Vec<_> = stored.iter().rev().map(|(_, b)| b.clone()).collect();
    assert_eq!(
        history.entries, newest_first,
        "history holds the same bytes"
    );

    let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("again")).unwrap();
    let repeat = store
        .publish_limited("s1", &tail, now_ms(), None, Some("k1"), &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (repeat.seq, repeat.repeat, repeat.prev.as_str()),
        (2, true, "")
    );
    let _ = subscriber.quit().await;
}

/// Only `NOSCRIPT` makes a script call run again. Any other error may come from a script
/// stopped midway, whose writes Redis does not undo: a second run would write them twice.
#[tokio::test]
async fn a_script_that_fails_is_not_run_again() {
    let redis = Redis::start();
    let (store, _) = store(&redis).await;
    // Redis knows the script (a first call would answer NOSCRIPT, which is retried).
    publish(&store, "warm").await;
    let k = store.keys().session("s1");
    // publish.lua counts the seq, then fails on LPUSH: the history is not a list.
    redis.cmd(&["SET", &k.hist, "not a list"]).unwrap();
    let from = writer("w");
    let tail = encode_entry_tail(now_ms(), &from, &serde_json::json!("x")).unwrap();
    let result = store.publish("s1", &tail, now_ms(), None).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(
        bulk_int(redis.cmd(&["GET", &k.seq])),
        1,
        "the script ran once"
    );
}
