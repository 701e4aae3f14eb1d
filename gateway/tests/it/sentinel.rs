//! Redis behind Sentinel (`redis-sentinel://`): a primary, a replica and three sentinels (quorum
//! two) the test starts. The primary is killed once the replica has everything; the gateways turn
//! not-ready, follow the promotion by themselves, are ready again, and every acked message
//! is delivered once, in order, with the publishes after the failover.

use std::time::Duration;

use roomcast_shared::{close, Role, ServerFrame};
use serde_json::json;
use testkit::*;

/// Publishes, retrying while a failover refuses it `unavailable` (as clients do); answers
/// the acked seq.
async fn publish_retrying(client: &mut WsClient, session: &str, data: serde_json::Value) -> u64 {
    let retry_until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reference = gateway::util::random_id(8);
        client
            .send_json(
                json!({"type": "publish", "session": session, "data": data, "ref": reference}),
            )
            .await;
        let answer = client
            .expect("the publish's answer", |f| {
                matches!(f, ServerFrame::Ack { reference: Some(r), .. }
                    | ServerFrame::Error { reference: Some(r), .. } if *r == reference)
            })
            .await;
        match answer {
            ServerFrame::Ack { seq: Some(seq), .. } => return seq,
            other => {
                assert!(
                    std::time::Instant::now() < retry_until,
                    "publishes still refused after the failover: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_sentinel_failover_and_delivers_every_acked_message() {
    let mut d = SentinelDeployment::start().await;
    let env = [("ROOMCAST_REDIS_TIMEOUT", "1s")];
    let a = Gateway::start(&d.url, &env);
    let b = Gateway::start(&d.url, &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    tv.join("failover", None).await;
    let mut remote = b.connect(&token("ann", &[Role::Controller])).await;
    remote.join("failover", None).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(remote.publish("failover", json!({"before": i})).await);
    }

    // The acked messages reached the replica (its offset caught up with the primary's):
    // the ones a failover must keep. (Durable mode would make each ack wait for that, but
    // the promoted replica has no replica of its own to confirm later publishes.)
    d.replica_caught_up().await;
    d.primary.kill();
    let killed = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        "readiness 503 without a primary",
        || async { a.get("/health/ready").await.0 == 503 },
    )
    .await;
    // Sentinel promotes the replica (down after 1 s, then the election); both gateways
    // find it by themselves.
    wait_for(Duration::from_secs(30), "the replica promoted", || async {
        d.replica
            .cmd(&["ROLE"])
            .is_some_and(|r| r.contains("master"))
    })
    .await;
    wait_for(Duration::from_secs(30), "A ready again", || async {
        a.get("/health/ready").await.0 == 200
    })
    .await;
    wait_for(Duration::from_secs(30), "B ready again", || async {
        b.get("/health/ready").await.0 == 200
    })
    .await;
    eprintln!(
        "sentinel failover: both gateways ready {:.1} s after the primary died",
        killed.elapsed().as_secs_f64()
    );

    // The controller's connection survived on B; publishing goes to the new primary. A
    // publish caught by the switch may be refused `unavailable`: retry it, as clients do.
    for i in 0..5 {
        acked.push(publish_retrying(&mut remote, "failover", json!({"after": i})).await);
    }
    // The display's numbering never went back: everything acked arrives once, in order.
    let seen = tv.messages("failover", acked.len()).await;
    assert_eq!(seen, acked, "every acked message, once, in order");
    assert_eq!(acked, (1..=10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_sentinel_password_comes_from_the_url() {
    let primary = RedisNode::data(None);
    wait_for(DEADLINE, "the primary", || async {
        primary
            .cmd(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    })
    .await;
    let sentinel = RedisNode::sentinel_with(primary.port, 1, "requirepass sentinel-secret-42\n");
    let base = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=rc",
        sentinel.port
    );
    let with = Gateway::start(&format!("{base}&sentinelPassword=sentinel-secret-42"), &[]);
    let without = Gateway::start(&base, &[]);
    with.wait_ready().await;
    // Without it the sentinel refuses to say where the primary is, and the log says why.
    without.wait_redis_refusal(&[]).await;
}

const KEY: &str = "sentinel-server-key-0123456789";

/// A failover that loses acked writes: five messages reach the replica, then the replica
/// is cut off (paused, its link killed) and five more are acked and delivered (6..10).
/// The primary dies and Sentinel promotes the stale replica, whose numbering is at 5
/// under the same epoch; the next publishes are acked 6..13 of that fork. Losing 6..10 is
/// what asynchronous replication does (README). What must not happen: the display taking
/// the fork's 11..13 for what follows its 10, or its rejoin being told nothing was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_stale_replica_is_never_passed_off_as_continuous() {
    let mut d = SentinelDeployment::start().await;
    // A grace longer than the failover: the display stays connected through it, so its
    // gateway, not its reconnect, has to notice the fork.
    let env = [
        ("ROOMCAST_REDIS_TIMEOUT", "1s"),
        ("ROOMCAST_REDIS_LOST_GRACE", "60s"),
        ("ROOMCAST_API_KEY", KEY),
    ];
    let a = Gateway::start(&d.url, &env);
    let b = Gateway::start(&d.url, &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch, .. } = tv.join("fork", None).await else {
        panic!("not joined");
    };
    // The server API publishes through B: a controller's own connection would be told
    // to resync (4010) by B's gateway, as the display is by A's.
    for n in 1..=5 {
        assert_eq!(b.server_publish(KEY, "fork", json!({"kept": n})).await, n);
    }
    d.replica_caught_up().await;
    d.replica.signal("-STOP");
    assert!(d
        .primary
        .cmd(&["CLIENT", "KILL", "TYPE", "replica"])
        .is_some_and(|r| r.starts_with(':')));
    for n in 6..=10 {
        assert_eq!(b.server_publish(KEY, "fork", json!({"lost": n})).await, n);
    }
    let seen = tv.message_ids("fork", 10).await;
    assert_eq!(
        seen.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let (ten, ten_id) = seen[9].clone();

    d.primary.kill();
    d.replica.signal("-CONT");
    wait_for(
        Duration::from_secs(30),
        "the stale replica promoted",
        || async {
            d.replica
                .cmd(&["ROLE"])
                .is_some_and(|r| r.contains("master"))
        },
    )
    .await;
    let mut acked = Vec::new();
    for n in 0..8 {
        acked.push(b.server_publish(KEY, "fork", json!({"fork": n})).await);
    }
    assert_eq!(
        acked,
        (6..=13).collect::<Vec<u64>>(),
        "the fork reuses 6..10"
    );

    // The display's stream ends with 4010 before any message of the fork.
    let (after, closed) = tv.seqs_until_closed(Duration::from_secs(30)).await;
    assert_eq!((after, closed), (vec![], Closed::Code(close::RESYNC)));
    // Its rejoin names what it saw at 10: not the fork's 10, so not recovered, with the
    // whole window the session now has (the fork's 6..13 included).
    // (A gateway still settling may refuse it `unavailable`: it is joined again.)
    let (_back, (now, recovered, history)) = WsClient::rejoin_retrying(
        &a,
        &token("tv", &[Role::Display]),
        "fork",
        ten,
        Some(&epoch),
        Some(&ten_id),
    )
    .await;
    assert!(!recovered);
    assert_eq!(history, (1..=13).collect::<Vec<u64>>());
    // The gateways renamed the forked numbering, so a client that names only the epoch
    // (an older SDK) is told too.
    assert_ne!(now, epoch);
    let (_old_client, (_, recovered, _)) = WsClient::rejoin_retrying(
        &b,
        &token("old", &[Role::Display]),
        "fork",
        ten,
        Some(&epoch),
        None,
    )
    .await;
    assert!(!recovered, "the old epoch names a numbering that forked");
}
