//! Multi-instance realtime behaviour against real Redis and real `roomcast` processes:
//! fan-out, ordering, recovery, presence, signals, both subprotocols.

use std::time::{Duration, Instant};

use roomcast_shared::{PresenceEvent, Role, ServerFrame};
use serde_json::json;
use testkit::*;

const BOTH: &[Role] = &[Role::Controller, Role::Display];

#[tokio::test]
async fn publish_on_a_reaches_displays_on_a_and_b_in_order_once() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;

    let mut controller = a.connect(&token("ctl", BOTH)).await;
    let mut display_a = a.connect(&token("tv-a", &[Role::Display])).await;
    let mut display_b = b.connect(&token("tv-b", &[Role::Display])).await;
    for c in [&mut controller, &mut display_a, &mut display_b] {
        assert!(matches!(
            c.join("room-1", None).await,
            ServerFrame::Joined { seq: 0, .. }
        ));
    }

    let mut acked = Vec::new();
    for i in 0..25 {
        acked.push(controller.publish("room-1", json!({"i": i})).await);
    }
    assert_eq!(
        acked,
        (1..=25).collect::<Vec<_>>(),
        "acks carry consecutive seqs"
    );

    for display in [&mut display_a, &mut display_b] {
        assert_eq!(
            display.messages("room-1", 25).await,
            (1..=25).collect::<Vec<_>>()
        );
        // Nothing else (no duplicate) was queued behind them.
        let rest = display.drain_until_pong().await;
        assert!(message_seqs(&rest).is_empty(), "duplicates: {rest:?}");
    }
    // The publisher is a member too and sees its own messages once.
    assert_eq!(
        controller.messages("room-1", 25).await,
        (1..=25).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn message_frames_carry_sender_and_data() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("alice", BOTH)).await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    ctl.join("s", None).await;
    tv.join("s", None).await;
    let before = gateway::util::now_ms();
    ctl.publish("s", json!({"slide": 3, "text": "héllo"})).await;
    match tv
        .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
        .await
    {
        ServerFrame::Message {
            session,
            seq,
            id,
            ts,
            from,
            data,
        } => {
            assert_eq!(session, "s");
            assert_eq!(seq, 1);
            assert_eq!(id.len(), 12, "every stored message has an id: {id:?}");
            assert!(ts >= before);
            assert_eq!(from.user, "alice");
            assert_eq!(from.role, Role::Controller);
            assert_eq!(from.client_id, ctl.client_id);
            assert_eq!(data, json!({"slide": 3, "text": "héllo"}));
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn rejoin_with_since_recovers_exactly_the_missed_messages() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("rec", None).await;
    let mut tv = b.connect(&token("tv", &[Role::Display])).await;
    tv.join("rec", None).await;
    for i in 0..3 {
        ctl.publish("rec", json!(i)).await;
    }
    assert_eq!(tv.messages("rec", 3).await, vec![1, 2, 3]);
    tv.close().await;

    for i in 3..8 {
        ctl.publish("rec", json!(i)).await;
    }
    // Reconnect to the other instance, as after a node drain.
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    match tv.join("rec", Some(3)).await {
        ServerFrame::Joined {
            seq,
            recovered,
            history,
            ..
        } => {
            assert_eq!(seq, 8);
            assert!(recovered);
            assert_eq!(
                history.iter().map(|m| m.seq).collect::<Vec<_>>(),
                vec![4, 5, 6, 7, 8]
            );
            assert_eq!(history[0].data, json!(3));
        }
        other => panic!("{other:?}"),
    }
    // Live messages continue after the recovered ones.
    ctl.publish("rec", json!(8)).await;
    assert_eq!(tv.messages("rec", 1).await, vec![9]);

    // since = top: nothing missed. since absent: no history.
    let mut other = b.connect(&token("tv2", &[Role::Display])).await;
    match other.join("rec", Some(9)).await {
        ServerFrame::Joined {
            recovered, history, ..
        } => assert!(recovered && history.is_empty()),
        f => panic!("{f:?}"),
    }
    let mut fresh = b.connect(&token("tv3", &[Role::Display])).await;
    match fresh.join("rec", None).await {
        ServerFrame::Joined {
            seq,
            recovered,
            history,
            ..
        } => {
            assert_eq!(seq, 9);
            assert!(recovered && history.is_empty());
        }
        f => panic!("{f:?}"),
    }
    let mut everything = b.connect(&token("tv4", &[Role::Display])).await;
    match everything.join("rec", Some(0)).await {
        ServerFrame::Joined {
            recovered, history, ..
        } => {
            assert!(recovered);
            assert_eq!(history.len(), 9);
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn a_gap_larger_than_history_is_not_recovered() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_HISTORY_SIZE", "10")]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("big", None).await;
    for i in 0..30 {
        ctl.publish("big", json!(i)).await;
    }
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    match tv.join("big", Some(5)).await {
        ServerFrame::Joined {
            seq,
            recovered,
            history,
            ..
        } => {
            assert_eq!(seq, 30);
            assert!(!recovered, "24 missed, 10 stored");
            assert_eq!(
                history.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (21..=30).collect::<Vec<_>>()
            );
        }
        f => panic!("{f:?}"),
    }
    // A since beyond the top means the session was reset: not recovered, whole window.
    let mut tv2 = a.connect(&token("tv2", &[Role::Display])).await;
    match tv2.join("big", Some(500)).await {
        ServerFrame::Joined {
            recovered, history, ..
        } => {
            assert!(!recovered);
            assert_eq!(history.len(), 10);
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn presence_events_cross_instances_and_dead_nodes_leave_no_ghost() {
    let redis = Redis::start();
    let hb = ("ROOMCAST_HEARTBEAT", "1s");
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_NODE_ID", "node-a"), hb]);
    let b = Gateway::start(&redis.url(), &[("ROOMCAST_NODE_ID", "node-b"), hb]);
    let mut c = Gateway::start(&redis.url(), &[("ROOMCAST_NODE_ID", "node-c"), hb]);
    for g in [&a, &b, &c] {
        g.wait_ready().await;
    }
    open_session(&a, "pres").await;
    let mut watcher = a.connect(&token("watcher", &[Role::Observer])).await;
    watcher.join("pres", None).await;

    let mut tv = b.connect(&token("tv", &[Role::Display])).await;
    match tv.join("pres", None).await {
        ServerFrame::Joined { presence, .. } => {
            let users: Vec<_> = presence.iter().map(|m| m.user.as_str()).collect();
            assert!(
                users.contains(&"watcher") && users.contains(&"tv"),
                "{users:?}"
            );
        }
        f => panic!("{f:?}"),
    }
    match watcher
        .expect("presence join", |f| {
            matches!(f, ServerFrame::Presence { .. })
        })
        .await
    {
        ServerFrame::Presence { event, member, .. } => {
            assert_eq!(event, PresenceEvent::Join);
            assert_eq!(member.user, "tv");
            assert_eq!(member.node, "node-b");
            assert_eq!(member.role, Role::Display);
            assert!(!member.idle);
        }
        _ => unreachable!(),
    }
    tv.send_json(json!({"type": "leave", "session": "pres", "ref": "l"}))
        .await;
    tv.expect("leave ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await;
    match watcher
        .expect("presence leave", |f| {
            matches!(f, ServerFrame::Presence { .. })
        })
        .await
    {
        ServerFrame::Presence { event, member, .. } => {
            assert_eq!(event, PresenceEvent::Leave);
            assert_eq!(member.user, "tv");
        }
        _ => unreachable!(),
    }

    // A member on node C, then C dies without a word.
    let mut ghost = c.connect(&token("ghost", &[Role::Display])).await;
    ghost.join("pres", None).await;
    watcher
        .expect("ghost join", |f| {
            matches!(
                f,
                ServerFrame::Presence {
                    event: PresenceEvent::Join,
                    ..
                }
            )
        })
        .await;
    let killed = Instant::now();
    c.kill();
    match watcher
        .expect("ghost leave", |f| {
            matches!(
                f,
                ServerFrame::Presence {
                    event: PresenceEvent::Leave,
                    ..
                }
            )
        })
        .await
    {
        ServerFrame::Presence { member, .. } => assert_eq!(member.user, "ghost"),
        _ => unreachable!(),
    }
    let heartbeat = Duration::from_secs(1);
    assert!(
        killed.elapsed() <= heartbeat * 2 + Duration::from_millis(300),
        "ghost swept after {:?}",
        killed.elapsed()
    );
    // And it is gone from what a new member sees.
    let mut late = b.connect(&token("late", &[Role::Display])).await;
    match late.join("pres", None).await {
        ServerFrame::Joined { presence, .. } => {
            assert!(
                presence.iter().all(|m| m.user != "ghost" && m.user != "tv"),
                "{presence:?}"
            );
        }
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn signals_and_typing_are_ephemeral_and_can_be_direct() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut remote = a.connect(&token("remote", BOTH)).await;
    let mut screen1 = b.connect(&token("screen1", &[Role::Display])).await;
    let mut screen2 = b.connect(&token("screen2", &[Role::Display])).await;
    for c in [&mut remote, &mut screen1, &mut screen2] {
        c.join("sig", None).await;
    }
    remote
        .send_json(json!({"type": "signal", "session": "sig", "data": {"x": 1}, "ref": "s1"}))
        .await;
    remote
        .expect("signal ack", |f| {
            matches!(f, ServerFrame::Ack { seq: None, .. })
        })
        .await;
    for s in [&mut screen1, &mut screen2] {
        match s
            .expect("signal", |f| matches!(f, ServerFrame::Signal { .. }))
            .await
        {
            ServerFrame::Signal { data, from, .. } => {
                assert_eq!(data, json!({"x": 1}));
                assert_eq!(from.user, "remote");
            }
            _ => unreachable!(),
        }
    }
    // Direct: only screen2.
    remote
        .send_json(
            json!({"type": "signal", "session": "sig", "data": "only-2", "to": screen2.client_id}),
        )
        .await;
    remote
        .send_json(json!({"type": "typing", "session": "sig", "active": true}))
        .await;
    match screen2
        .expect("direct signal", |f| matches!(f, ServerFrame::Signal { .. }))
        .await
    {
        ServerFrame::Signal { data, .. } => assert_eq!(data, json!("only-2")),
        _ => unreachable!(),
    }
    match screen1
        .expect("typing", |f| {
            matches!(f, ServerFrame::Typing { .. } | ServerFrame::Signal { .. })
        })
        .await
    {
        ServerFrame::Typing { active, from, .. } => {
            assert!(active);
            assert_eq!(from.user, "remote");
        }
        other => panic!("screen1 got a direct signal meant for screen2: {other:?}"),
    }
    // Signals are not stored: history stays empty.
    let mut late = a.connect(&token("late", &[Role::Display])).await;
    match late.join("sig", Some(0)).await {
        ServerFrame::Joined { seq, history, .. } => assert!(seq == 0 && history.is_empty()),
        f => panic!("{f:?}"),
    }
    // The sender does not get its own signal back.
    let rest = remote.drain_until_pong().await;
    assert!(
        rest.iter()
            .all(|f| !matches!(f, ServerFrame::Signal { .. })),
        "{rest:?}"
    );
}

#[tokio::test]
async fn msgpack_and_json_clients_share_a_session() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let t = token("mp", BOTH);
    let mut packed = WsClient::connect(&a.ws_url(), Some(&t), Some("roomcast.v1.msgpack")).await;
    assert_eq!(packed.format, roomcast_shared::Format::Msgpack);
    let mut text = WsClient::connect(&a.ws_url(), Some(&t), Some("roomcast.v1.json")).await;
    assert_eq!(text.format, roomcast_shared::Format::Json);
    packed.join("mix", None).await;
    text.join("mix", None).await;
    assert_eq!(packed.publish("mix", json!({"k": [1, 2, 3]})).await, 1);
    assert_eq!(text.publish("mix", json!("from json")).await, 2);
    assert_eq!(packed.messages("mix", 2).await, vec![1, 2]);
    assert_eq!(text.messages("mix", 2).await, vec![1, 2]);
    // An unsupported subprotocol is refused before the upgrade.
    let refused = WsClient::try_connect(&a.ws_url(), Some(&t), Some("graphql-ws")).await;
    assert_eq!(refused.err(), Some(400));
}

#[tokio::test]
async fn roles_and_session_claims_are_enforced() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    open_session(&a, "r").await;
    let mut observer = a.connect(&token("obs", &[Role::Observer])).await;
    observer.join("r", None).await;
    observer
        .send_json(json!({"type": "publish", "session": "r", "data": 1, "ref": "p"}))
        .await;
    match observer
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error {
            code, reference, ..
        } => {
            assert_eq!(code, roomcast_shared::ErrorCode::Forbidden);
            assert_eq!(reference.as_deref(), Some("p"));
        }
        _ => unreachable!(),
    }
    let mut limited = a
        .connect(&token_with(
            "lim",
            &[Role::Display],
            &["allowed"],
            Duration::from_secs(60),
        ))
        .await;
    assert!(matches!(
        limited.join("allowed", None).await,
        ServerFrame::Joined { .. }
    ));
    match limited.join("other", None).await {
        ServerFrame::Error { code, .. } => assert_eq!(code, roomcast_shared::ErrorCode::Forbidden),
        f => panic!("{f:?}"),
    }
    match limited.join_as("allowed2", "controller").await {
        ServerFrame::Error { code, .. } => assert_eq!(code, roomcast_shared::ErrorCode::Forbidden),
        f => panic!("{f:?}"),
    }
    // Writing to a session one has not joined.
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.send_json(json!({"type": "publish", "session": "nope", "data": 1}))
        .await;
    match ctl
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, roomcast_shared::ErrorCode::NotJoined),
        _ => unreachable!(),
    }
}

/// Presence events go to every member, so sessions above ROOMCAST_PRESENCE_EVENTS_MAX
/// members get none (joining N members would cost N²/2 frames); they resume below it.
#[tokio::test]
async fn presence_events_stop_above_the_cap_and_resume_below_it() {
    let redis = Redis::start();
    let caps = [("ROOMCAST_PRESENCE_EVENTS_MAX", "2")];
    let a = Gateway::start(&redis.url(), &caps);
    let b = Gateway::start(&redis.url(), &caps);
    a.wait_ready().await;
    b.wait_ready().await;
    open_session(&a, "big").await;
    let mut watcher = a.connect(&token("watcher", &[Role::Observer])).await;
    watcher.join("big", None).await;
    let mut ctl = b.connect(&token("ctl", BOTH)).await;
    ctl.join("big", None).await;
    match watcher.next_frame().await {
        ServerFrame::Presence { event, member, .. } => {
            assert_eq!((event, member.user.as_str()), (PresenceEvent::Join, "ctl"));
        }
        f => panic!("the second member is announced: {f:?}"),
    }
    // A third member makes the session larger than the cap: no join event. Pub/sub keeps
    // one channel's order, so a message published after the join arrives after the event
    // the join would have sent: the next frame must be that message.
    let mut tv = b.connect(&token("tv", &[Role::Display])).await;
    tv.join("big", None).await;
    let seq = ctl.publish("big", json!({"after": "tv joined"})).await;
    match watcher.next_frame().await {
        ServerFrame::Message { seq: got, .. } => assert_eq!(got, seq),
        f => panic!("no presence event above the cap, got {f:?}"),
    }
    // Leaving a 3-member session is not announced either; the next leave (2 -> 1) is.
    tv.send_json(json!({"type": "leave", "session": "big"}))
        .await;
    let seq = ctl.publish("big", json!({"after": "tv left"})).await;
    match watcher.next_frame().await {
        ServerFrame::Message { seq: got, .. } => assert_eq!(got, seq),
        f => panic!("no leave event from a session above the cap, got {f:?}"),
    }
    ctl.send_json(json!({"type": "leave", "session": "big"}))
        .await;
    match watcher.next_frame().await {
        ServerFrame::Presence { event, member, .. } => {
            assert_eq!((event, member.user.as_str()), (PresenceEvent::Leave, "ctl"));
        }
        f => panic!("below the cap leaves are announced again: {f:?}"),
    }
}

/// Many displays join one session at once while its controller keeps publishing (a
/// reconnect storm into a big room): each display gets exactly the messages after the seq
/// its `joined` reported, in order, once; with `since: 0`, history and live messages
/// together are every message, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displays_joining_together_during_publishes_each_get_every_later_message_once() {
    const DISPLAYS: usize = 60;
    const MESSAGES: u64 = 200;
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    ctl.join("crowd", None).await;
    let mut displays = Vec::new();
    for i in 0..DISPLAYS {
        displays.push(a.connect(&token(&format!("tv{i}"), &[Role::Display])).await);
    }
    let publisher = tokio::spawn(async move {
        for i in 0..MESSAGES {
            ctl.publish("crowd", json!(i)).await;
        }
        ctl
    });
    // Every join frame goes out before any answer is read, so they queue together.
    for (i, d) in displays.iter_mut().enumerate() {
        let mut join = json!({"type": "join", "session": "crowd"});
        if i % 2 == 1 {
            join["since"] = 0.into();
        }
        d.send_json(join).await;
    }
    let _ctl = publisher.await.expect("publisher");
    for (i, d) in displays.iter_mut().enumerate() {
        let (seq, history) = match d
            .expect("joined", |f| matches!(f, ServerFrame::Joined { .. }))
            .await
        {
            ServerFrame::Joined {
                seq,
                history,
                recovered,
                ..
            } => {
                assert!(recovered, "display {i}");
                (seq, history.iter().map(|m| m.seq).collect::<Vec<_>>())
            }
            _ => unreachable!(),
        };
        let live = d.messages("crowd", (MESSAGES - seq) as usize).await;
        assert_eq!(
            live,
            (seq + 1..=MESSAGES).collect::<Vec<_>>(),
            "display {i} joined at {seq}"
        );
        if i % 2 == 1 {
            assert_eq!(history, (1..=seq).collect::<Vec<_>>(), "display {i}");
        } else {
            assert!(history.is_empty());
        }
        let rest = d.drain_until_pong().await;
        assert!(message_seqs(&rest).is_empty(), "display {i}: {rest:?}");
    }
    // The joins queued up behind each other and were run in batches: the path above was
    // the batched one.
    let logs = a.logs.lock().expect("logs").join("\n");
    assert!(logs.contains("join batch"), "no join was batched");
}

#[tokio::test]
async fn a_swept_member_put_back_by_its_pump_keeps_its_latest_activity() {
    let redis = Redis::start();
    const KEY: &str = "test-api-key-0123456789";
    // Presence is refreshed every 2.5 s; a member is idle after 5 s without activity.
    let a = Gateway::start(
        &redis.url(),
        &[("ROOMCAST_IDLE_AFTER", "5s"), ("ROOMCAST_API_KEY", KEY)],
    );
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    ctl.join("idle-room", None).await;
    let summary = || async {
        call(
            a.addr,
            "GET",
            "/api/v1/sessions/idle-room/presence",
            Some(KEY),
            None,
        )
        .await
        .json()
    };
    wait_for(DEADLINE, "the member idle", || async {
        summary().await["idle"] == 1
    })
    .await;
    ctl.send_json(json!({"type": "activity", "session": "idle-room", "ref": "a"}))
        .await;
    ctl.expect("ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await;
    assert_eq!(summary().await["idle"], 0);
    // Swept, as when this node stalled past the entry's expiry: its pump puts it back at
    // the next refresh, with what it knows about the member.
    let id = ctl.client_id.clone();
    // (Checked on the replies, not through the API: the pump's refresh, every 2.5 s, may
    // put it back before a read could see it gone.)
    assert_eq!(
        redis.cmd(&["ZREM", "rc:{s:idle-room}:pres", &id]).unwrap(),
        ":1\r\n"
    );
    assert_eq!(
        redis.cmd(&["HDEL", "rc:{s:idle-room}:pinfo", &id]).unwrap(),
        ":1\r\n"
    );
    wait_for(DEADLINE, "the member back", || async {
        summary().await["total"] == 1
    })
    .await;
    // Back within 2.5 s of its activity, so not idle: the pump knew of the activity.
    assert_eq!(
        summary().await["idle"],
        0,
        "re-added with a stale activity time"
    );
}

/// `refresh` moves a connection's expiry in band: a connection whose token lived 2 s is
/// refreshed and outlives it, with no reconnect, so a member on another instance sees
/// neither a leave nor a join. A refresh the gateway refuses (another user's token, a
/// token it cannot verify) is an `unauthorized` error and the old expiry stands: 4001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_the_connection_past_its_old_expiry() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let started = Instant::now();
    let short = token_with("kiosk", &[Role::Display], &[], Duration::from_secs(2));
    let mut kiosk = a.connect(&short).await;
    kiosk.join("lasting", None).await;
    let mut watcher = b.connect(&token("watcher", &[Role::Display])).await;
    watcher.join("lasting", None).await;

    let refresh = |token: String, reference: &str| json!({"type": "refresh", "token": token, "ref": reference});
    kiosk
        .send_json(refresh(token("someone-else", &[Role::Display]), "r0"))
        .await;
    let refused = kiosk
        .expect("an error", |f| matches!(f, ServerFrame::Error { .. }))
        .await;
    assert!(
        matches!(&refused, ServerFrame::Error { code: roomcast_shared::ErrorCode::Unauthorized, reference: Some(r), .. } if r == "r0"),
        "{refused:?}"
    );
    let long = token_with("kiosk", &[Role::Display], &[], Duration::from_secs(3600));
    kiosk.send_json(refresh(long, "r1")).await;
    match kiosk
        .expect("refreshed", |f| matches!(f, ServerFrame::Refreshed { .. }))
        .await
    {
        ServerFrame::Refreshed { reference, exp } => {
            assert_eq!(reference.as_deref(), Some("r1"));
            assert!(exp * 1000 > gateway::util::now_ms() + 3_000_000, "{exp}");
        }
        _ => unreachable!(),
    }
    // Time itself is what is tested: wait until the old token is well past its expiry.
    tokio::time::sleep_until((started + Duration::from_millis(3500)).into()).await;
    assert!(kiosk
        .drain_until_pong()
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Error { .. })));
    let seen = watcher.drain_until_pong().await;
    assert!(
        seen.iter()
            .all(|f| !matches!(f, ServerFrame::Presence { .. })),
        "no presence flicker: {seen:?}"
    );

    // Refused: the connection keeps its 2 s token and is closed when it expires.
    let brief_token = token_with("brief", &[Role::Display], &[], Duration::from_secs(2));
    let mut brief = a.connect(&brief_token).await;
    brief.send_json(refresh("not.a.token".into(), "r2")).await;
    let refused = brief
        .expect("an error", |f| matches!(f, ServerFrame::Error { .. }))
        .await;
    assert!(
        matches!(
            refused,
            ServerFrame::Error {
                code: roomcast_shared::ErrorCode::Unauthorized,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(
        brief.closed(DEADLINE).await,
        Closed::Code(roomcast_shared::close::TOKEN_EXPIRED)
    );
}

/// The `session` query parameter is a routing hint for a session-affine ingress
/// (k8s/overlays/affinity): the gateway takes the upgrade with it, beside `token`, and
/// the connection may still join any session it is allowed, as without it.
#[tokio::test]
async fn a_session_routing_hint_in_the_url_changes_nothing_but_the_route() {
    let redis = Redis::start();
    let g = Gateway::start(&redis.url(), &[]);
    g.wait_ready().await;
    let hinted = format!(
        "{}?session=living-room&token={}",
        g.ws_url(),
        token("phone", BOTH)
    );
    let mut phone = WsClient::connect(&hinted, None, None).await;
    let mut tv = g.connect(&token("tv", &[Role::Display])).await;
    for (c, session) in [(&mut phone, "living-room"), (&mut tv, "living-room")] {
        assert!(matches!(
            c.join(session, None).await,
            ServerFrame::Joined { .. }
        ));
    }
    // Another session than the hint's is joined like any.
    assert!(matches!(
        phone.join("kitchen", None).await,
        ServerFrame::Joined { .. }
    ));
    let seq = phone.publish("living-room", json!({"slide": 2})).await;
    assert_eq!(tv.messages("living-room", 1).await, [seq]);
}
