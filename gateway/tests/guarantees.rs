//! The two promises mutation testing found unguarded (issue 16): a message lost between
//! Redis and an instance whose subscriber stayed connected is filled from history before
//! the next one, and readiness follows a Redis that stops answering even while the
//! subscriber connection stays up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use roomcast_shared::Role;
use serde_json::json;

#[tokio::test]
async fn a_message_pubsub_dropped_is_delivered_before_the_next_one() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    tv.join("gap", None).await;
    ctl.join("gap", None).await;
    assert_eq!(ctl.publish("gap", json!("one")).await, 1);
    assert_eq!(tv.messages("gap", 1).await, vec![1]);
    // Message 2 is stored exactly as a publish stores it, but its pub/sub payload goes to
    // a channel nobody listens on: the instance's subscriber stays connected and never
    // sees it, as if Redis or the network had dropped it.
    let reply = publish_with_script(&redis, "gap", "rc:{s:gap}:nowhere", &json!("two"));
    assert!(
        reply.starts_with(b"*3\r\n:2\r\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // The next message reveals the gap: the display gets 2 (from history) before 3.
    assert_eq!(ctl.publish("gap", json!("three")).await, 3);
    assert_eq!(tv.messages("gap", 2).await, vec![2, 3]);
    let recovered = a.metric("roomcast_recovered_messages_total", "").await;
    assert!(recovered >= 1.0, "{recovered}");
}

#[tokio::test]
async fn readiness_follows_a_redis_that_stops_answering_with_the_subscriber_connected() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TIMEOUT", "500ms")]);
    a.wait_ready().await;
    // Every command blocks for 3 s, PING included, on every node; connections, the
    // subscriber's among them, stay open.
    assert!(redis
        .cmd_all(&["CLIENT", "PAUSE", "3000", "ALL"])
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.starts_with("+OK"))));
    wait_for(DEADLINE, "not ready because of Redis", || async {
        let (status, body) = a.get("/health/ready").await;
        status == 503 && body.contains("redis unreachable")
    })
    .await;
    // And ready again once Redis answers.
    a.wait_ready().await;
}
