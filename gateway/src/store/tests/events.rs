//! Webhook events on a real Redis: each script records the events of its change in the
//! session's stream, in order, with nothing recorded when webhooks are off; claims take a
//! lease only when there is work, and release it atomically with finding none.

use std::time::Duration;

use super::super::{Claim, JoinArgs, SessionStatus, Store};
use super::{publish, redis_builder};
use crate::config::Config;
use crate::envelope::MemberInfo;
use crate::test_redis::Redis;
use crate::util::now_ms;
use fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};
use roomcast_shared::Role;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn store_with(redis: &Redis, events: &str) -> Store {
    let config = Config::from_pairs(&[
        ("redis-url", &redis.url()),
        ("auth", "off"),
        ("webhook-urls", "http://127.0.0.1:9/hook"),
        ("webhook-secrets", SECRET),
        ("webhook-events", events),
    ])
    .unwrap();
    let pool = redis_builder(&config, 32).unwrap().build_pool(1).unwrap();
    pool.init().await.unwrap();
    Store::new(pool, &config)
}

fn member(id: &str) -> MemberInfo {
    MemberInfo {
        client_id: id.into(),
        user: format!("u-{id}"),
        role: Role::Display,
        name: None,
        node: "n1".into(),
        joined_at: 1,
        active_at: 1,
        info: None,
    }
}

async fn join(store: &Store, session: &str, id: &str) {
    let info = member(id).encode();
    store
        .join(
            session,
            JoinArgs {
                client_id: id,
                info: &info,
                expiry_ms: now_ms() + 60_000,
                now_ms: now_ms(),
                since: None,
                epoch: None,
                since_id: None,
                presence_list_max: 10,
                create: true,
                activity: true,
                owner: "u",
            },
        )
        .await
        .unwrap();
}

/// Every event of a session, oldest first: (type, id).
async fn recorded(store: &Store, session: &str) -> Vec<(String, String)> {
    match store
        .events_claim(session, "probe", "test", Duration::from_secs(5), 1000)
        .await
        .unwrap()
    {
        Claim::Batch(events) => events
            .iter()
            .map(|e| {
                (
                    e.text("type").unwrap().to_string(),
                    e.text("id").unwrap().to_string(),
                )
            })
            .collect(),
        Claim::Held => panic!("held"),
    }
}

#[tokio::test]
async fn each_change_records_its_events_in_order_with_unique_ids() {
    let redis = Redis::start();
    let store = store_with(&redis, "session.*,member.*").await;
    join(&store, "s1", "a").await;
    join(&store, "s1", "b").await;
    assert!(store.leave("s1", "b").await.unwrap());
    // A leave of someone absent records nothing.
    assert!(!store.leave("s1", "b").await.unwrap());
    publish(&store, "s1").await;
    store
        .transition(
            "s1",
            now_ms(),
            &[SessionStatus::Active],
            Some(SessionStatus::Ended),
            None,
            &[],
        )
        .await
        .unwrap();
    let events = recorded(&store, "s1").await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session.created",
            "member.joined",
            "member.joined",
            "member.left",
            "session.ended"
        ],
        "publish records no message.published unless asked"
    );
    let ids: std::collections::HashSet<&str> = events.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
}

/// The event and the change are one script: a change refused records nothing, and the
/// change that happens records exactly its event.
#[tokio::test]
async fn a_refused_change_records_nothing() {
    let redis = Redis::start();
    let store = store_with(&redis, "session.*").await;
    let now = now_ms();
    assert!(store
        .create_session("r", now, now + 60_000, "C0DE78", "", "{}", false)
        .await
        .unwrap());
    // Not allowed from active: nothing happens, nothing is recorded.
    let refused = store
        .transition(
            "r",
            now,
            &[SessionStatus::Resolved],
            Some(SessionStatus::Active),
            None,
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(refused, crate::store::Transition::Conflict(_)));
    // Missing session: nothing either.
    store
        .transition(
            "nobody",
            now,
            &[SessionStatus::Active],
            Some(SessionStatus::Ended),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(recorded(&store, "nobody").await, vec![]);
    store
        .transition(
            "r",
            now,
            &[SessionStatus::Active],
            Some(SessionStatus::Resolved),
            None,
            &[],
        )
        .await
        .unwrap();
    let kinds: Vec<String> = recorded(&store, "r")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["session.created", "session.resolved"]);
}

#[tokio::test]
async fn messages_are_recorded_when_the_spec_or_the_session_asks() {
    let redis = Redis::start();
    let store = store_with(&redis, "message.published").await;
    publish(&store, "everyone").await;
    assert_eq!(recorded(&store, "everyone").await[0].0, "message.published");
    // Sessions only: one session opts in through its meta.
    let store = store_with(&redis, "session.*").await;
    let now = now_ms();
    assert!(store
        .create_session("opted", now, now + 60_000, "C0DE77", "", "{}", true)
        .await
        .unwrap());
    publish(&store, "opted").await;
    publish(&store, "quiet").await;
    let kinds: Vec<String> = recorded(&store, "opted")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["session.created", "message.published"]);
    let kinds: Vec<String> = recorded(&store, "quiet")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["session.created"]);
}

#[tokio::test]
async fn nothing_is_recorded_when_webhooks_are_off() {
    let redis = Redis::start();
    let (store, _) = super::store(&redis).await;
    join(&store, "s", "a").await;
    publish(&store, "s").await;
    let exists: i64 = store
        .pool()
        .next()
        .exists(store.keys().session("s").events)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn a_claim_leases_only_work_and_an_advance_trims_what_every_endpoint_is_done_with() {
    let redis = Redis::start();
    let store = store_with(&redis, "member.*").await;
    let lease = Duration::from_secs(30);
    let all = ["e1".to_string(), "e2".to_string()];
    // Nothing to do: no lease taken.
    match store.events_claim("s", "e1", "A", lease, 10).await.unwrap() {
        Claim::Batch(b) => assert!(b.is_empty()),
        Claim::Held => panic!(),
    }
    join(&store, "s", "a").await;
    join(&store, "s", "b").await;
    let batch = match store.events_claim("s", "e1", "A", lease, 10).await.unwrap() {
        Claim::Batch(b) => b,
        Claim::Held => panic!(),
    };
    assert_eq!(batch.len(), 2);
    // Another owner is kept out of e1, not out of e2.
    assert!(matches!(
        store.events_claim("s", "e1", "B", lease, 10).await.unwrap(),
        Claim::Held
    ));
    assert!(
        matches!(store.events_claim("s", "e2", "B", lease, 10).await.unwrap(), Claim::Batch(b) if b.len() == 2)
    );
    // e1 is done with both; e2 with none yet: nothing is trimmed.
    // The advance past the first reads what follows; past the second, nothing is left
    // and the lease goes in the same call.
    let after_first = store
        .events_advance("s", "e1", "A", lease, Some(&batch[0].stream_id), 5, &all)
        .await
        .unwrap()
        .expect("ours");
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].stream_id, batch[1].stream_id);
    let after_second = store
        .events_advance("s", "e1", "A", lease, Some(&batch[1].stream_id), 5, &all)
        .await
        .unwrap()
        .expect("ours");
    assert!(after_second.is_empty());
    assert!(
        store
            .events_advance("s", "e1", "A", lease, None, 0, &all)
            .await
            .unwrap()
            .is_none(),
        "the lease went with finding nothing"
    );
    // A cursor never moves back (B may take the free lease; nothing is re-read).
    match store.events_claim("s", "e1", "B", lease, 10).await.unwrap() {
        Claim::Batch(b) => assert!(b.is_empty()),
        Claim::Held => panic!("the lease was freed"),
    }
    let len = |store: &Store| {
        let key = store.keys().session("s").events;
        let client = store.pool().next().clone();
        async move { client.xlen::<u64, _>(key).await.unwrap() }
    };
    assert_eq!(len(&store).await, 2);
    // e2 catches up on the first: it is trimmed; the second stays for e2.
    assert!(store
        .events_advance("s", "e2", "B", lease, Some(&batch[0].stream_id), 0, &all)
        .await
        .unwrap()
        .is_some());
    assert_eq!(len(&store).await, 1);
}
