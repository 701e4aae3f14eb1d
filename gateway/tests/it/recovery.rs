//! Failure behaviour: Redis outages and partitions, restarts and forks of a session's
//! numbering, slow consumers, draining on SIGTERM; and the two promises mutation testing
//! found unguarded (a message lost between Redis and an instance whose subscriber stayed
//! connected is filled from history before the next one; readiness follows a Redis that
//! stops answering while the subscriber stays connected). While Redis is known to be
//! down, requests fail at once instead of waiting out the command timeout.

use std::time::{Duration, Instant};

use roomcast_shared::{close, ErrorCode, Role, ServerFrame};
use serde_json::{json, Value};
use testkit::*;

const BOTH: &[Role] = &[Role::Controller, Role::Display];

/// Gateways A and B reach Redis through a proxy that we cut; C reaches it directly and
/// keeps publishing. When the proxy comes back, A's and B's displays get everything that
/// was published meanwhile, in order, without a gap or a duplicate, before newer messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_instances_catch_up_from_history_without_gap_or_duplicate() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let a = Gateway::start(&proxy.url(), &[]);
    let b = Gateway::start(&proxy.url(), &[]);
    let c = Gateway::start(&redis.url(), &[]);
    for g in [&a, &b, &c] {
        g.wait_ready().await;
    }
    let mut ctl = c.connect(&token("ctl", BOTH)).await;
    let mut tv_a = a.connect(&token("tv-a", &[Role::Display])).await;
    let mut tv_b = b.connect(&token("tv-b", &[Role::Display])).await;
    for client in [&mut ctl, &mut tv_a, &mut tv_b] {
        client.join("blink", None).await;
    }
    for i in 1..=5 {
        ctl.publish("blink", json!(i)).await;
    }
    for tv in [&mut tv_a, &mut tv_b] {
        assert_eq!(tv.messages("blink", 5).await, vec![1, 2, 3, 4, 5]);
    }

    proxy.cut();
    let cut_at = Instant::now();
    for g in [&a, &b] {
        wait_for(
            Duration::from_secs(3),
            "readiness 503 during the outage",
            || async { g.get("/health/ready").await.0 == 503 },
        )
        .await;
        assert_eq!(
            g.get("/health/live").await.0,
            200,
            "liveness does not depend on Redis"
        );
    }
    assert!(cut_at.elapsed() < Duration::from_secs(3));
    // Published while A and B cannot hear pub/sub: stored, acked, not delivered (yet).
    for i in 6..=10 {
        ctl.publish("blink", json!(i)).await;
    }

    proxy.restore();
    for g in [&a, &b] {
        g.wait_ready().await;
    }
    for i in 11..=15 {
        ctl.publish("blink", json!(i)).await;
    }
    for tv in [&mut tv_a, &mut tv_b] {
        assert_eq!(tv.messages("blink", 10).await, (6..=15).collect::<Vec<_>>());
        let rest = tv.drain_until_pong().await;
        assert!(
            message_seqs(&rest).is_empty(),
            "duplicates after catch-up: {rest:?}"
        );
    }
    assert!(
        a.metric("roomcast_pubsub_reconnects_total", "").await >= 1.0,
        "reconnect counted"
    );
    assert!(
        a.metric("roomcast_recovered_messages_total", "").await >= 5.0,
        "the five missed messages counted"
    );
}

/// A partition that outlasts the history window (chaos found it: 200 messages missed
/// with 100 kept): the cut-off gateway cannot fill the gap on the live connection, so
/// its display is closed 4010 instead of getting the rest with a hole in it. Its
/// rejoin with `since` and `epoch` is answered `recovered: false` with the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_longer_than_the_history_window_ends_in_a_resync_not_a_hole() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let a = Gateway::start(&proxy.url(), &[]);
    let c = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    c.wait_ready().await;
    let mut ctl = c.connect(&token("ctl", BOTH)).await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch, .. } = tv.join("long-cut", None).await else {
        panic!("not joined");
    };
    ctl.join("long-cut", None).await;
    for i in 1..=3 {
        ctl.publish("long-cut", json!(i)).await;
    }
    assert_eq!(tv.messages("long-cut", 3).await, vec![1, 2, 3]);

    proxy.cut();
    wait_for(DEADLINE, "readiness 503 during the cut", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    // 150 messages: the history keeps the last 100 (54..=153).
    for i in 4..=153 {
        ctl.publish("long-cut", json!(i)).await;
    }
    proxy.restore();
    a.wait_ready().await;
    match tv.closed(DEADLINE).await {
        Closed::Code(code) => assert_eq!(code, close::RESYNC, "told to resync"),
        other => panic!("expected 4010, got {other:?}"),
    }
    let mut back = a.connect(&token("tv", &[Role::Display])).await;
    let (same, recovered, history) = back.rejoin("long-cut", 3, Some(&epoch), None).await;
    assert_eq!(same, epoch, "the numbering went on");
    assert!(!recovered, "4..=53 are gone");
    assert_eq!(history, (54..=153).collect::<Vec<_>>());
    ctl.publish("long-cut", json!(154)).await;
    assert_eq!(back.messages("long-cut", 1).await, vec![154]);
}

/// A node that cannot reach Redis for longer than `ROOMCAST_REDIS_LOST_GRACE` closes its
/// clients with 1001, so they resume on a node that can while history still holds what
/// they missed: the display rejoins on C with `since` and gets everything, recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_past_the_grace_sends_its_clients_elsewhere() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    // Longer than it takes to notice the outage (a PING timeout, 1 s here), so a node
    // that sheds at the first failed PING is told apart from one that waits the grace.
    let a = Gateway::start(&proxy.url(), &[("ROOMCAST_REDIS_LOST_GRACE", "3s")]);
    let c = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    c.wait_ready().await;
    let mut ctl = c.connect(&token("ctl", BOTH)).await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch, .. } = tv.join("moving", None).await else {
        panic!("not joined");
    };
    ctl.join("moving", None).await;
    for i in 1..=3 {
        ctl.publish("moving", json!(i)).await;
    }
    assert_eq!(tv.messages("moving", 3).await, vec![1, 2, 3]);

    proxy.cut();
    let cut_at = Instant::now();
    // Published while A cannot hear anything.
    for i in 4..=8 {
        ctl.publish("moving", json!(i)).await;
    }
    match tv.closed(DEADLINE).await {
        Closed::Code(code) => assert_eq!(code, close::GOING_AWAY, "sent elsewhere"),
        other => panic!("expected 1001, got {other:?}"),
    }
    assert!(
        cut_at.elapsed() >= Duration::from_secs(3),
        "not before the grace: {:?}",
        cut_at.elapsed()
    );
    let mut back = c.connect(&token("tv", &[Role::Display])).await;
    let (same, recovered, history) = back.rejoin("moving", 3, Some(&epoch), None).await;
    assert_eq!(same, epoch);
    assert!(recovered, "nothing missed beyond the window");
    assert_eq!(history, vec![4, 5, 6, 7, 8]);
    // A is not ready while cut off, and refuses to keep clients it cannot serve.
    assert_eq!(a.get("/health/ready").await.0, 503);
}

/// A gateway that starts before Redis (a pod scheduled first, Redis restarting) is
/// not-ready until Redis comes up, then serves: commands, scripts and pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_redis_serves_once_redis_is_up() {
    let mut redis = Redis::not_started();
    let a = Gateway::start(&redis.url(), &[]);
    wait_for(DEADLINE, "ready 503 without Redis", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    assert_eq!(a.get("/health/live").await.0, 200);

    redis.restart();
    a.wait_ready().await;
    let mut display = a.connect(&token("d", &[Role::Display])).await;
    display.join("late-redis", None).await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("late-redis", None).await;
    assert_eq!(ctl.publish("late-redis", json!("hello")).await, 1);
    match display
        .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
        .await
    {
        ServerFrame::Message { seq, data, .. } => {
            assert_eq!((seq, data), (1, json!("hello")));
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn redis_down_turns_ready_503_and_back() {
    let mut redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("down", None).await;

    redis.stop();
    let stopped = Instant::now();
    wait_for(Duration::from_secs(3), "ready 503", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(3));
    assert_eq!(a.get("/health/live").await.0, 200);
    wait_for(Duration::from_secs(3), "deep health unhealthy", || async {
        let (status, body) = a.get("/health").await;
        status == 503 && body.contains("\"unhealthy\"")
    })
    .await;

    // A publish while Redis is down is refused clearly and the connection lives.
    ctl.send_json(json!({"type": "publish", "session": "down", "data": 1, "ref": "x"}))
        .await;
    match ctl
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error {
            code,
            retry_after_ms,
            reference,
            ..
        } => {
            assert_eq!(code, roomcast_shared::ErrorCode::Unavailable);
            assert!(retry_after_ms.is_some());
            assert_eq!(reference.as_deref(), Some("x"));
        }
        _ => unreachable!(),
    }
    // A join while Redis is down: `unavailable`, then close 1013.
    let mut late = a.connect(&token("late", &[Role::Display])).await;
    late.send_json(json!({"type": "join", "session": "down"}))
        .await;
    match late
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, roomcast_shared::ErrorCode::Unavailable)
        }
        _ => unreachable!(),
    }
    assert_eq!(
        late.closed(DEADLINE).await,
        Closed::Code(close::TRY_AGAIN_LATER)
    );

    redis.restart();
    a.wait_ready().await;
    let (_, metrics) = a.get("/metrics").await;
    assert!(metrics.contains("roomcast_redis_up 1"), "{metrics}");
    // Redis came back empty (no persistence here); the session works again.
    let mut again = a.connect(&token("again", BOTH)).await;
    again.join("down2", None).await;
    assert_eq!(again.publish("down2", json!("back")).await, 1);
    // Each change of reachability is logged once, not at every check.
    let count = |message: &str| {
        let needle = format!("\"message\":\"{message}\"");
        a.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    };
    assert_eq!(count("redis unreachable"), 1);
    // Reachable at start (the first PING), unreachable, reachable again.
    assert_eq!(count("redis reachable"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_4008_and_others_keep_receiving() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_SEND_QUEUE", "16")]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    let mut good = a.connect(&token("good", &[Role::Display])).await;
    let mut slow =
        WsClient::connect_small_buffer(&a.ws_url(), &token("slow", &[Role::Display])).await;
    ctl.join("firehose", None).await;
    good.join("firehose", None).await;
    slow.join("firehose", None).await;
    // `slow` now reads nothing while 14 MiB go out: more than the socket buffers and the
    // 16-frame queue can hold.
    let blob = "x".repeat(48 * 1024);
    let total = 300;
    let reader = tokio::spawn(async move {
        let seqs = good.messages("firehose", total).await;
        (good, seqs)
    });
    let publisher = tokio::spawn(async move {
        for _ in 0..total {
            ctl.publish("firehose", json!(blob)).await;
        }
    });
    wait_for(DEADLINE, "the slow consumer to be cut off", || async {
        a.get("/metrics")
            .await
            .1
            .contains("roomcast_slow_consumer_disconnects_total 1")
    })
    .await;
    // When the slow client reads again, it finds the 4008 close after what was queued.
    assert_eq!(
        slow.closed(Duration::from_secs(15)).await,
        Closed::Code(close::SLOW_CONSUMER)
    );
    publisher.await.expect("publisher");
    let (_good, seqs) = reader.await.expect("reader");
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "the good display missed nothing"
    );
    // Recorded once the close handshake is over.
    wait_for(
        DEADLINE,
        "the slow-consumer disconnect to be counted",
        || async {
            a.get("/metrics")
                .await
                .1
                .contains("reason=\"slow_consumer\"")
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_turns_ready_503_then_closes_clients_1001_and_exits_in_grace() {
    let redis = Redis::start();
    // A long grace: the node must exit once its clients are gone, not when grace ends.
    let mut a = Gateway::start(&redis.url(), &[("ROOMCAST_SHUTDOWN_GRACE", "60s")]);
    a.wait_ready().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = a.connect(&token(&format!("u{i}"), &[Role::Display])).await;
        c.join("bye", None).await;
        clients.push(c);
    }
    // Watch readiness from before the signal.
    let addr = a.addr;
    let (watching, watching_rx) = tokio::sync::oneshot::channel();
    let poller = tokio::spawn(async move {
        let mut watching = Some(watching);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (status, _) = http_get(addr, "/health/ready").await;
            if status == 503 {
                return Some(Instant::now());
            }
            if status == 200 {
                watching.take().map(|w| w.send(()));
            }
        }
        None
    });
    watching_rx.await.expect("the poller saw the node ready");
    let signalled = Instant::now();
    a.terminate();
    let mut closed_at = Vec::new();
    for c in &mut clients {
        assert_eq!(c.closed(DEADLINE).await, Closed::Code(close::GOING_AWAY));
        closed_at.push(Instant::now());
    }
    let not_ready_at = poller
        .await
        .expect("poller")
        .expect("readiness never said 503");
    assert!(
        closed_at.iter().all(|t| *t >= not_ready_at),
        "a client was closed before readiness failed"
    );
    let code = tokio::task::spawn_blocking(move || a.wait_exit(Duration::from_secs(20)))
        .await
        .expect("wait");
    assert_eq!(code, Some(0), "clean exit");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exited once its clients were gone, long before its 60 s grace"
    );
    // Presence was cleaned on the way out: nobody is left in the session.
    let members = redis.cmd(&["ZCARD", "rc:{s:bye}:pres"]).unwrap_or_default();
    assert!(members.starts_with(":0"), "presence left behind: {members}");
}

/// A session ended while A could not hear pub/sub: A's members still get `session/ended`
/// and close 4000 once the partition heals (catch-up reads the status, not just history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_missed_during_a_partition_is_delivered_after_it() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let a = Gateway::start(&proxy.url(), &[]);
    let c = Gateway::start(
        &redis.url(),
        &[("ROOMCAST_API_KEY", "partition-key-0123456789")],
    );
    a.wait_ready().await;
    c.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    tv.join("doomed", None).await;
    proxy.cut();
    wait_for(Duration::from_secs(3), "A not ready", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    let ended = call(
        c.addr,
        "DELETE",
        "/api/v1/sessions/doomed?reason=closing",
        Some("partition-key-0123456789"),
        None,
    )
    .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    proxy.restore();
    match tv
        .expect("session ended", |f| {
            matches!(
                f,
                ServerFrame::Session {
                    event: roomcast_shared::SessionEvent::Ended,
                    ..
                }
            )
        })
        .await
    {
        ServerFrame::Session { reason, .. } => assert_eq!(reason.as_deref(), Some("closing")),
        _ => unreachable!(),
    }
    assert_eq!(
        tv.closed(DEADLINE).await,
        Closed::Code(close::SESSION_ENDED)
    );
}

/// Redis restarts without persistence and the session starts over at seq 1 with a new
/// epoch. A display that saw 1..=3 of the old numbering comes back after the new one
/// passed 3: with its epoch it gets `recovered: false` and the new window, never 4..=5 of
/// the new numbering as if they followed its 3.
#[tokio::test]
async fn a_numbering_that_started_over_is_told_apart_by_its_epoch() {
    let mut redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch: old, .. } = tv.join("epoch-room", None).await else {
        panic!("not joined");
    };
    // Redis' clock in µs when the numbering started: seconds and six digits.
    assert!(
        old.len() == 16 && old.bytes().all(|b| b.is_ascii_digit()),
        "an epoch names the numbering: {old:?}"
    );
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("epoch-room", None).await;
    for n in 1..=3 {
        assert_eq!(ctl.publish("epoch-room", json!(n)).await, n);
    }
    assert_eq!(tv.messages("epoch-room", 3).await, vec![1, 2, 3]);
    drop(tv);
    drop(ctl);

    redis.restart();
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("epoch-room", None).await;
    for n in 1..=5 {
        assert_eq!(ctl.publish("epoch-room", json!(n)).await, n);
    }

    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let (new, recovered, history) = tv.rejoin("epoch-room", 3, Some(&old), None).await;
    assert_ne!(new, old, "a new numbering, a new epoch");
    assert!(!recovered);
    assert_eq!(history, vec![1, 2, 3, 4, 5], "the new window, whole");
    // Within the new numbering, since works as always.
    let mut again = a.connect(&token("tv2", &[Role::Display])).await;
    let (same, recovered, history) = again.rejoin("epoch-room", 3, Some(&new), None).await;
    assert_eq!(same, new);
    assert!(recovered);
    assert_eq!(history, vec![4, 5]);
}

const SERVER_KEY: &str = "resilience-server-key-0123456789";

/// Redis restarts empty while a display stays connected (within the lost-Redis grace, so
/// nobody is shed), and the new numbering reaches `new` messages before its gateway
/// looks again: as many as the display saw (3 = 3) or more. (The gateway is paused
/// meanwhile and the messages are stored by `publish.lua` itself, so its catch-up
/// always finds them; unpaused, it may look before they exist and see the seq go back.)
/// The display is never handed the new messages as continuing the old ones, nor left
/// without them: its connection is closed with 4010 after exactly the old messages, and
/// its rejoin, naming what it saw, gets `recovered: false` and the new window.
async fn restart_reaching(new: u64) {
    let mut redis = Redis::standalone();
    let env = [
        ("ROOMCAST_API_KEY", SERVER_KEY),
        ("ROOMCAST_REDIS_LOST_GRACE", "60s"),
    ];
    let a = Gateway::start(&redis.url(), &env);
    a.wait_ready().await;
    let session = format!("restart-{new}");
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch: old, .. } = tv.join(&session, None).await else {
        panic!("not joined");
    };
    for n in 1..=3 {
        assert_eq!(a.server_publish(SERVER_KEY, &session, json!(n)).await, n);
    }
    let seen = tv.message_ids(&session, 3).await;
    let last_id = seen[2].1.clone();

    a.signal("-STOP");
    redis.restart();
    let channel = format!("rc:{{s:{session}}}:ch");
    for n in 1..=new {
        let reply = publish_with_script(&redis, &session, &channel, &json!(format!("new {n}")));
        assert!(
            reply.starts_with(format!("*6\r\n:{n}\r\n").as_bytes()),
            "a new numbering: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    a.signal("-CONT");
    let (after, closed) = tv.seqs_until_closed(DEADLINE).await;
    assert_eq!(
        (after, closed),
        (vec![], Closed::Code(close::RESYNC)),
        "nothing of the new numbering on the old stream, then 4010"
    );
    let mut back = a.connect(&token("tv", &[Role::Display])).await;
    let (epoch, recovered, history) = back.rejoin(&session, 3, Some(&old), Some(&last_id)).await;
    assert_ne!(epoch, old);
    assert!(!recovered);
    assert_eq!(
        history,
        (1..=new).collect::<Vec<_>>(),
        "the new window, whole"
    );
}

#[tokio::test]
async fn a_restart_whose_new_numbering_reaches_the_last_seq_seen_is_never_silent() {
    restart_reaching(3).await;
}

#[tokio::test]
async fn a_restart_whose_new_numbering_passes_the_last_seq_seen_is_never_silent() {
    restart_reaching(6).await;
}

/// Two gateways; the display's is paused (SIGSTOP) while Redis restarts empty and three
/// messages are published through the other: they are acked 1, 2, 3 of a new numbering,
/// and the paused gateway's subscription never saw them. Resumed, it must not pass 2
/// and 3 off as following the 1 it delivered before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_that_misses_a_restart_never_continues_into_the_new_numbering() {
    let mut redis = Redis::standalone();
    let env = [
        ("ROOMCAST_API_KEY", SERVER_KEY),
        ("ROOMCAST_REDIS_LOST_GRACE", "60s"),
    ];
    let a = Gateway::start(&redis.url(), &env);
    let b = Gateway::start(&redis.url(), &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch: old, .. } = tv.join("paused", None).await else {
        panic!("not joined");
    };
    assert_eq!(
        b.server_publish(SERVER_KEY, "paused", json!("old 1")).await,
        1
    );
    let seen = tv.message_ids("paused", 1).await;

    a.signal("-STOP");
    redis.restart();
    for n in 1..=3 {
        assert_eq!(
            b.server_publish(SERVER_KEY, "paused", json!(format!("new {n}")))
                .await,
            n
        );
    }
    a.signal("-CONT");
    let (after, closed) = tv.seqs_until_closed(DEADLINE).await;
    assert_eq!(
        (after, closed),
        (vec![], Closed::Code(close::RESYNC)),
        "no 2 and 3 of the new numbering after the old 1"
    );
    let mut back = a.connect(&token("tv", &[Role::Display])).await;
    let (_, recovered, history) = back.rejoin("paused", 1, Some(&old), Some(&seen[0].1)).await;
    assert!(!recovered);
    assert_eq!(history, vec![1, 2, 3]);
}

// ---------------------------------------------------------------------------------------
// Found by mutation testing (issue 16).

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
        reply.starts_with(b"*6\r\n:2\r\n"),
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

const IDEM_KEY: &str = "test-api-key-0123456789";

/// The messages of `session` as history holds them: (seq, data).
async fn stored(g: &Gateway, session: &str) -> Vec<(u64, serde_json::Value)> {
    let r = call(
        g.addr,
        "GET",
        &format!("/api/v1/sessions/{session}/history?limit=100"),
        Some(IDEM_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone()))
        .collect()
}

/// A publish whose ack was lost goes again with its idempotency key: it is stored once and
/// acked with the first one's seq. Across a dropped connection (the publish reached the
/// gateway, the ack never reached the client) and across a Redis blink (the gateway
/// answered `unavailable` while Redis was paused; whether the script ran is unknown), and
/// the REST server publish takes the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_publish_is_stored_once_across_a_dropped_connection_and_a_redis_blink() {
    let redis = Redis::standalone();
    let g = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", IDEM_KEY)]);
    g.wait_ready().await;
    let mut tv = g.connect(&token("tv", &[Role::Display])).await;
    tv.join("idem", None).await;

    // 1. The connection drops right after the publish went out.
    let mut phone = g.connect(&token("phone", BOTH)).await;
    phone.join("idem", None).await;
    phone
        .send_json(json!({"type": "publish", "session": "idem", "data": "one",
                          "idempotency_key": "k-1", "ref": "a"}))
        .await;
    drop(phone);
    wait_for(DEADLINE, "the first publish stored", || async {
        stored(&g, "idem").await.len() == 1
    })
    .await;
    let mut phone = g.connect(&token("phone", BOTH)).await;
    phone.join("idem", None).await;
    phone
        .send_json(json!({"type": "publish", "session": "idem", "data": "one",
                          "idempotency_key": "k-1", "ref": "b"}))
        .await;
    let ack = phone
        .expect(
            "ack",
            |f| matches!(f, ServerFrame::Ack { reference: Some(r), .. } if r == "b"),
        )
        .await;
    assert!(
        matches!(ack, ServerFrame::Ack { seq: Some(1), .. }),
        "{ack:?}"
    );

    // 2. Redis pauses while the publish is on its way: the gateway gives up on it
    // (`unavailable`); whether Redis ran it once resumed is unknown to the client, which
    // sends it again with the same key until it is acked.
    let pid = redis.servers()[0].pid().expect("redis pid").to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
    };
    kill("-STOP");
    phone
        .send_json(json!({"type": "publish", "session": "idem", "data": "two",
                          "idempotency_key": "k-2", "ref": "c"}))
        .await;
    // An error, or the connection shed (1013, 1001): either way the outcome is unknown.
    let mut seq = None;
    loop {
        match phone.next_event(DEADLINE).await {
            Ok(ServerFrame::Ack {
                reference: Some(r),
                seq: s,
            }) if r == "c" => {
                seq = s;
                break;
            }
            Ok(ServerFrame::Error {
                reference: Some(r), ..
            }) if r == "c" => break,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    kill("-CONT");
    // Redis ran the publish it had buffered, after the gateway had given up on it: stored,
    // never acked. (Unless the ack made it: then there is nothing to retry.)
    if seq.is_none() {
        wait_for(DEADLINE, "the unacked publish stored", || async {
            stored(&g, "idem").await.iter().any(|(_, d)| d == "two")
        })
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while seq.is_none() {
        assert!(Instant::now() < deadline, "never acked");
        // The pause may have closed this connection (1013); a client reconnects.
        let mut again = g.connect(&token("phone", BOTH)).await;
        if !matches!(again.join("idem", None).await, ServerFrame::Joined { .. }) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        match again.try_publish_keyed("idem", json!("two"), "k-2").await {
            Ok(s) => seq = Some(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let history = stored(&g, "idem").await;
    let twos: Vec<u64> = history
        .iter()
        .filter(|(_, d)| d == "two")
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        twos,
        vec![seq.unwrap()],
        "stored once, acked with its seq: {history:?}"
    );

    // 3. REST: the same key twice is one message; the repeat says so.
    let body = json!({"data": "three", "idempotency_key": "k-3"});
    let path = "/api/v1/sessions/idem/messages";
    let first = call(g.addr, "POST", path, Some(IDEM_KEY), Some(&body)).await;
    let second = call(g.addr, "POST", path, Some(IDEM_KEY), Some(&body)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["repeat"], false);
    assert_eq!(second.json()["repeat"], true);
    assert_eq!(first.json()["seq"], second.json()["seq"]);
    let bad = json!({"data": 1, "idempotency_key": "has space"});
    call(g.addr, "POST", path, Some(IDEM_KEY), Some(&bad))
        .await
        .assert_problem(400, "bad_request");
    let history = stored(&g, "idem").await;
    assert_eq!(history.iter().filter(|(_, d)| d == "three").count(), 1);

    // The display saw each message once, in order.
    let mut seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(tv.messages("idem", seqs.len()).await, seqs);
}

/// Sends `frame` and answers the code and message of the `error` frame it gets.
async fn error_for(client: &mut WsClient, frame: Value) -> (ErrorCode, String) {
    client.send_json(frame).await;
    match client
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, message, .. } => (code, message),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn requests_fail_fast_while_redis_is_known_to_be_down() {
    let mut redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TIMEOUT", "2s")]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    ctl.join("fast", None).await;
    redis.stop();
    // Readiness may first fail for the lost subscriber; wait until the PING has failed.
    wait_for(DEADLINE, "readiness 503 for redis", || async {
        let (status, body) = a.get("/health/ready").await;
        status == 503 && body.contains("redis unreachable")
    })
    .await;
    // With a 2 s command timeout, waiting on Redis would take seconds; the gateway
    // already knows, so it answers at once.
    let started = Instant::now();
    let r = call(a.addr, "POST", "/api/v1/sessions", None, None).await;
    let took = started.elapsed();
    r.assert_problem(503, "unavailable");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    let started = Instant::now();
    let (code, _) = error_for(
        &mut ctl,
        json!({"type": "publish", "session": "fast", "data": 1, "ref": "p"}),
    )
    .await;
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(1000));
}

// ---------------------------------------------------------------------------------------
// Round two (issue 26): request bodies and the HTTP versions served.

/// The moment Redis dies, the gateway knows: its connections report the loss (the
/// subscriber turns readiness 503 at once). A write issued right then must fail at once
/// too, not wait out the command timeout (5 s here) until the readiness PING agrees.
#[tokio::test]
async fn a_lost_connection_fails_requests_at_once() {
    let mut redis = Redis::standalone();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TIMEOUT", "5s")]);
    a.wait_ready().await;
    redis.stop();
    wait_for(DEADLINE, "readiness 503", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    let started = Instant::now();
    let r = call(a.addr, "POST", "/api/v1/sessions", None, None).await;
    r.assert_problem(503, "unavailable");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?} for a Redis known lost"
    );
    // Once Redis is back, so is the gateway.
    redis.restart();
    a.wait_ready().await;
    assert_eq!(
        call(a.addr, "POST", "/api/v1/sessions", None, None)
            .await
            .status,
        201
    );
}
