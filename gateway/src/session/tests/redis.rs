//! The pump on the real `Store` and a private redis-server: where the scripts are the
//! point (a join's baseline and recovery, a gap filled from `history.lua`).

use bytes::Bytes;
use roomcast_shared::{Role, ServerFrame};

use super::*;
use crate::envelope::kind;

async fn redis_store(redis: &crate::test_redis::Redis) -> Store {
    let config =
        crate::config::Config::from_pairs(&[("redis-url", &redis.url()), ("auth", "off")]).unwrap();
    let pool = crate::store::redis_builder(&config, 32)
        .unwrap()
        .build_pool(2)
        .unwrap();
    let _connection = fred::interfaces::ClientLike::init(&pool).await.unwrap();
    Store::new(pool, &config)
}

/// The pub/sub payload of stored message `seq`, as `publish.lua` published it.
async fn stored_payload(store: &Store, seq: u64) -> Bytes {
    let reply = store.history_since(SESSION, seq - 1).await.unwrap();
    let entry = reply.entries.last().expect("stored");
    let mut p = vec![0x92, kind::MESSAGE];
    p.extend_from_slice(entry);
    Bytes::from(p)
}

async fn publish(store: &Store, text: &str) -> u64 {
    let from = roomcast_shared::From {
        client_id: "writer".into(),
        user: "w".into(),
        role: Role::Controller,
        name: None,
    };
    let tail =
        crate::envelope::encode_entry_tail(now_ms(), &from, &serde_json::json!(text)).unwrap();
    store
        .publish(SESSION, &tail, now_ms(), None)
        .await
        .unwrap()
        .seq
}

#[tokio::test]
async fn real_redis_join_recovers_since_and_a_live_gap_is_filled() {
    let redis = crate::test_redis::Redis::start();
    let h = Harness::new(redis_store(&redis).await);
    let first = Member::new("first");
    let created = h
        .pumps
        .session(SESSION)
        .join(Join {
            create: true,
            ..first.join(None)
        })
        .await
        .unwrap();
    assert!(created, "join.lua created the session");
    for text in ["a", "b", "c", "d", "e"] {
        publish(&h.store, text).await;
    }
    // A member coming back with since=2 gets 3..=5 from join.lua, recovered.
    let back = Member::new("back");
    h.join(&back, Some(2)).await.unwrap();
    let ServerFrame::Joined {
        seq,
        history,
        recovered,
        presence,
        ..
    } = back.joined()
    else {
        unreachable!()
    };
    assert_eq!(seq, 5);
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(recovered);
    assert_eq!(presence.len(), 2);
    // 6 and 7 are published but only 7's payload arrives: history.lua fills 6 first.
    publish(&h.store, "f").await;
    let seven = publish(&h.store, "g").await;
    h.pumps
        .dispatch(SESSION, stored_payload(&h.store, seven).await);
    assert_eq!(back.seqs(2).await, vec![6, 7]);
    // `first` never had the payloads of 1..=5 either: its baseline was 0.
    assert_eq!(first.seqs(7).await, vec![1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn real_redis_join_of_a_missing_session_is_refused_without_create() {
    let redis = crate::test_redis::Redis::start();
    let h = Harness::new(redis_store(&redis).await);
    let display = Member::new("d");
    let answer = h.join(&display, None).await;
    assert!(
        matches!(answer, Err(JoinError::Store(StoreError::NoSuchSession))),
        "{answer:?}"
    );
    settle().await;
    assert!(display.drain().is_empty(), "no joined frame");
}
