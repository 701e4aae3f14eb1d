//! Abuse protection against real Redis and several gateways: exact distributed limits,
//! their HTTP and WebSocket answers, trusted proxies, floods, per-user caps, log hygiene.

use std::time::{Duration, Instant};

use roomcast_shared::{close, ErrorCode, Role, ServerFrame};
use serde_json::json;
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "abuse-api-key-0123456789";
const ADMIN: &str = "abuse-admin-token-0123456789";

/// Scores (Redis ms) of a sliding-window log.
fn log_scores(redis: &Redis, key: &str) -> Vec<u64> {
    let raw = redis
        .cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
        .unwrap_or_default();
    // RESP array of member, score pairs: take every second bulk string.
    let bulks: Vec<&str> = raw
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    bulks
        .chunks(2)
        .filter_map(|c| c.get(1)?.parse::<f64>().ok())
        .map(|s| s as u64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_on_three_instances_get_exactly_the_limit_and_resume_on_time() {
    let redis = Redis::start();
    let env = [("ROOMCAST_RATE_PUBLISH", "20/2s")];
    let gateways = [
        Gateway::start(&redis.url(), &env),
        Gateway::start(&redis.url(), &env),
        Gateway::start(&redis.url(), &env),
    ];
    for g in &gateways {
        g.wait_ready().await;
    }
    let t = token("hammer", &[Role::Controller]);
    let mut clients = Vec::new();
    for i in 0..50 {
        let mut c = gateways[i % 3].connect(&t).await;
        c.join("hot", None).await;
        clients.push(c);
    }
    // Everyone publishes at once.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for mut c in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.send_json(json!({"type": "publish", "session": "hot", "data": 1, "ref": "x"}))
                .await;
            let answer = c
                .expect("ack or refusal", |f| {
                    matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })
                })
                .await;
            (c, answer)
        }));
    }
    let mut admitted = 0;
    let mut refused = Vec::new();
    let mut clients = Vec::new();
    for task in tasks {
        let (c, answer) = task.await.unwrap();
        match answer {
            ServerFrame::Ack { seq: Some(_), .. } => admitted += 1,
            ServerFrame::Error {
                code,
                retry_after_ms,
                ..
            } => {
                assert_eq!(code, ErrorCode::RateLimited);
                refused.push(retry_after_ms.expect("retry_after_ms"));
            }
            other => panic!("{other:?}"),
        }
        clients.push(c);
    }
    assert_eq!(
        (admitted, refused.len()),
        (20, 30),
        "exactly the limit is admitted"
    );
    assert!(
        refused.iter().all(|ms| *ms > 0 && *ms <= 2000),
        "{refused:?}"
    );
    let log = log_scores(&redis, "rc:rl:{publish:hammer}");
    assert_eq!(log.len(), 20);
    let window_opens = log.iter().min().unwrap() + 2000;

    // Keep trying from one client: the first admission comes when the oldest leaves.
    let c = &mut clients[0];
    let first_again = loop {
        c.send_json(json!({"type": "publish", "session": "hot", "data": 2, "ref": "y"}))
            .await;
        match c
            .expect("answer", |f| {
                matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })
            })
            .await
        {
            ServerFrame::Ack { .. } => {
                break *log_scores(&redis, "rc:rl:{publish:hammer}")
                    .iter()
                    .max()
                    .unwrap()
            }
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            } => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        first_again >= window_opens,
        "admitted {} ms early",
        window_opens - first_again
    );
    assert!(
        first_again < window_opens + 500,
        "admitted {} ms late",
        first_again - window_opens
    );
    // The metric counted the refusals on the instances that refused.
    let mut counted = 0.0;
    for g in &gateways {
        counted += g
            .metric("roomcast_rate_limited_total", "scope=\"publish\"")
            .await;
    }
    assert!(counted >= 30.0, "{counted}");
}

#[tokio::test]
async fn rest_limits_answer_429_with_headers_before_credentials_and_admin_can_reset() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_API_KEY", API_KEY),
            ("ROOMCAST_ADMIN_TOKEN", ADMIN),
            ("ROOMCAST_RATE_API", "5/10s"),
            ("ROOMCAST_RATE_API_STRICT", "2/10s"),
            ("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    a.wait_ready().await;
    let from = |ip: &'static str| vec![("X-Forwarded-For", ip)];
    let get = |ip: &'static str, bearer: Option<&'static str>| {
        let mut h = from(ip);
        if let Some(b) = bearer {
            h.push(("Authorization", b));
        }
        async move { call_with(a.addr, "GET", "/api/v1/sessions/stats", &h, None).await }
    };
    let key = format!("Bearer {API_KEY}");
    let key: &'static str = Box::leak(key.into_boxed_str());
    for remaining in (0..5).rev() {
        let r = get("203.0.113.7", Some(key)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some("\"api\";q=5;w=10"));
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"api\";r={remaining};t=")),
            "{:?}",
            r.header("ratelimit")
        );
    }
    let refused = get("203.0.113.7", Some(key)).await;
    refused.assert_problem(429, "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit-policy"), Some("\"api\";q=5;w=10"));
    assert!(refused
        .header("ratelimit")
        .unwrap()
        .starts_with("\"api\";r=0;t="));
    // Checked before credentials: no key, still 429 (not 401).
    get("203.0.113.7", None)
        .await
        .assert_problem(429, "rate_limited");
    // Another client address (through the trusted proxy) has its own window.
    assert_eq!(get("198.51.100.1", Some(key)).await.status, 200);

    // The admin sees the key (from a third address) and resets it.
    let admin = format!("Bearer {ADMIN}");
    let admin_h = vec![
        ("X-Forwarded-For", "192.0.2.50"),
        ("Authorization", admin.as_str()),
    ];
    let shown = call_with(
        a.addr,
        "GET",
        "/api/v1/admin/rate-limits/api/203.0.113.7",
        &admin_h,
        None,
    )
    .await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    let shown = shown.json();
    assert_eq!(
        (
            shown["limit"].as_u64(),
            shown["remaining"].as_u64(),
            shown["window_ms"].as_u64()
        ),
        (Some(5), Some(0), Some(10_000))
    );
    assert!(shown["count"].as_u64().unwrap() >= 5);
    let reset = call_with(
        a.addr,
        "DELETE",
        "/api/v1/admin/rate-limits/api/203.0.113.7",
        &admin_h,
        None,
    )
    .await;
    assert_eq!(reset.json()["reset"], true);
    assert_eq!(get("203.0.113.7", Some(key)).await.status, 200);
    // Not for the server key; bad scopes and keys are 400.
    let key_h = vec![("X-Forwarded-For", "192.0.2.51"), ("Authorization", key)];
    call_with(
        a.addr,
        "GET",
        "/api/v1/admin/rate-limits/api/1.2.3.4",
        &key_h,
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    call_with(
        a.addr,
        "GET",
        "/api/v1/admin/rate-limits/nope/1.2.3.4",
        &admin_h,
        None,
    )
    .await
    .assert_problem(400, "bad_request");
    call_with(
        a.addr,
        "GET",
        "/api/v1/admin/rate-limits/api/..%2Fetc",
        &admin_h,
        None,
    )
    .await
    .assert_problem(400, "bad_request");

    // api_strict: creating sessions is limited harder than the rest.
    let strict_h = vec![("X-Forwarded-For", "192.0.2.99")];
    for _ in 0..2 {
        assert_eq!(
            call_with(a.addr, "POST", "/api/v1/sessions", &strict_h, None)
                .await
                .status,
            201
        );
    }
    let r = call_with(a.addr, "POST", "/api/v1/sessions", &strict_h, None).await;
    r.assert_problem(429, "rate_limited");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"api_strict\";q=2;w=10")
    );
    let (_, metrics) = a.get("/metrics").await;
    assert!(metrics.contains("roomcast_rate_limited_total{scope=\"api\"}"));
    assert!(metrics.contains("roomcast_rate_limited_total{scope=\"api_strict\"} 1"));
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_API_KEY", API_KEY),
            ("ROOMCAST_ADMIN_TOKEN", ADMIN),
            ("ROOMCAST_RATE_API", "3/10s"),
        ],
    );
    a.wait_ready().await;
    // Spoofed addresses do not buy new windows when the peer is not a trusted proxy.
    for spoof in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        assert_eq!(
            call_with(
                a.addr,
                "GET",
                "/api/v1/openapi.json",
                &[("X-Forwarded-For", spoof)],
                None
            )
            .await
            .status,
            200
        );
    }
    call_with(
        a.addr,
        "GET",
        "/api/v1/openapi.json",
        &[("X-Forwarded-For", "4.4.4.4")],
        None,
    )
    .await
    .assert_problem(429, "rate_limited");
}

#[tokio::test]
async fn connection_floods_are_refused_before_the_upgrade() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_CONNECT", "3/10s")]);
    a.wait_ready().await;
    let t = token("flood", &[Role::Display]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(a.connect(&t).await);
    }
    // The fourth is refused with 429 and never upgrades, even with a bad token.
    assert_eq!(
        WsClient::try_connect(&a.ws_url(), Some(&t), None)
            .await
            .err(),
        Some(429)
    );
    assert_eq!(
        WsClient::try_connect(&a.ws_url(), Some("garbage"), None)
            .await
            .err(),
        Some(429)
    );
    // Those already connected are unaffected.
    assert!(open[0].drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn per_user_connection_cap() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_MAX_CONNECTIONS_PER_USER", "2")]);
    a.wait_ready().await;
    let t = token("greedy", &[Role::Display]);
    let _one = a.connect(&t).await;
    let two = a.connect(&t).await;
    assert_eq!(
        WsClient::try_connect(&a.ws_url(), Some(&t), None)
            .await
            .err(),
        Some(429)
    );
    // Another user is fine; closing one frees a slot.
    let _other = a.connect(&token("modest", &[Role::Display])).await;
    two.close().await;
    wait_for(DEADLINE, "the slot to free", || async {
        WsClient::try_connect(&a.ws_url(), Some(&t), None)
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test]
async fn signal_floods_get_rate_limited_errors_and_frame_floods_are_closed_4029() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_RATE_SIGNAL", "5/1s"),
            ("ROOMCAST_RATE_FRAMES", "100/1s"),
        ],
    );
    a.wait_ready().await;
    let both = [Role::Controller, Role::Display];
    let mut remote = a.connect(&token("remote", &both)).await;
    let mut bystander = a.connect(&token("tv", &[Role::Display])).await;
    remote.join("flood", None).await;
    bystander.join("flood", None).await;
    for i in 0..20 {
        remote
            .send_json(
                json!({"type": "signal", "session": "flood", "data": i, "ref": format!("s{i}")}),
            )
            .await;
    }
    let mut acked = 0;
    let mut limited = 0;
    for _ in 0..20 {
        match remote
            .expect("answer", |f| {
                matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })
            })
            .await
        {
            ServerFrame::Ack { .. } => acked += 1,
            ServerFrame::Error {
                code,
                retry_after_ms,
                ..
            } => {
                assert_eq!(code, ErrorCode::RateLimited);
                assert!(retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
                limited += 1;
            }
            _ => unreachable!(),
        }
    }
    assert!(
        (5..=7).contains(&acked),
        "burst of 5 plus what refilled meanwhile: {acked}"
    );
    assert_eq!(acked + limited, 20);
    // The connection lives.
    assert!(remote
        .drain_until_pong()
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Error { .. })));

    // A ping flood: 500 control frames at once closes the sender with 4029.
    let mut flooder = a.connect(&token("flooder", &[Role::Display])).await;
    flooder.join("flood", None).await;
    for _ in 0..500 {
        flooder.send_raw(Message::Ping(Default::default())).await;
    }
    assert_eq!(
        flooder.closed(DEADLINE).await,
        Closed::Code(close::RATE_LIMITED)
    );
    // The bystander saw the allowed signals and nothing else went wrong.
    let frames = bystander.drain_until_pong().await;
    let signals = frames
        .iter()
        .filter(|f| matches!(f, ServerFrame::Signal { .. }))
        .count();
    assert_eq!(signals, acked);
    assert_eq!(a.get("/health/live").await.0, 200);
}

/// One frame of a fragmented text message: the first (`first`) or a continuation.
fn fragment(first: bool, fin: bool, text: &str) -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let opcode = OpCode::Data(if first { Data::Text } else { Data::Continue });
    Message::Frame(Frame::message(text.as_bytes().to_vec(), opcode, fin))
}

/// Sends `{"type":"ping","ref":"f"}` in `frames` frames: the first byte, empty
/// continuations, and the rest in the last.
async fn fragmented_ping(c: &mut WsClient, frames: usize) {
    let text = r#"{"type":"ping","ref":"f"}"#;
    c.send_raw(fragment(true, false, &text[..1])).await;
    for _ in 0..frames - 2 {
        c.send_raw(fragment(false, false, "")).await;
    }
    c.send_raw(fragment(false, true, &text[1..])).await;
}

/// The frames tungstenite handles by itself, empty continuations included, count against
/// the frame budget like whole messages: a message begun and then fed nothing but empty
/// continuation frames is closed 4029 within the budget, not read forever. A message may
/// come in at most 128 frames; more closes the connection with 1008. Others are served
/// throughout.
#[tokio::test]
async fn every_frame_counts_and_a_message_has_at_most_128_fragments() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_FRAMES", "100/1s")]);
    a.wait_ready().await;
    let mut bystander = a.connect(&token("tv", &[Role::Display])).await;
    bystander.join("fragments", None).await;
    let mut flooder = a.connect(&token("flooder", &[Role::Display])).await;
    flooder.send_raw(fragment(true, false, "{")).await;
    for _ in 0..500 {
        flooder.send_raw(fragment(false, false, "")).await;
    }
    assert_eq!(
        flooder.closed(DEADLINE).await,
        Closed::Code(close::RATE_LIMITED)
    );
    // The bystander's connection was never touched: a ping round trip still works.
    bystander.drain_until_pong().await;

    let b = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_FRAMES", "10000/1s")]);
    b.wait_ready().await;
    let mut whole = b.connect(&token("ok", &[Role::Display])).await;
    fragmented_ping(&mut whole, 128).await;
    assert!(matches!(
        whole.expect("pong", |f| matches!(f, ServerFrame::Pong { .. })).await,
        ServerFrame::Pong { reference: Some(r) } if r == "f"
    ));
    let mut over = b.connect(&token("over", &[Role::Display])).await;
    fragmented_ping(&mut over, 129).await;
    assert_eq!(over.closed(DEADLINE).await, Closed::Code(close::POLICY));
    assert_eq!(b.get("/health/live").await.0, 200);
}

#[tokio::test]
async fn with_redis_down_publishes_fail_closed_and_connects_fail_open() {
    let mut redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_RATE_PUBLISH", "10/60s"),
            ("ROOMCAST_RATE_CONNECT", "30/60s"),
        ],
    );
    a.wait_ready().await;
    let t = token("u", &[Role::Controller]);
    let mut c = a.connect(&t).await;
    c.join("s", None).await;
    redis.stop();
    wait_for(Duration::from_secs(3), "not ready", || async {
        a.get("/health/ready").await.0 == 503
    })
    .await;
    c.send_json(json!({"type": "publish", "session": "s", "data": 1, "ref": "p"}))
        .await;
    match c
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Unavailable),
        _ => unreachable!(),
    }
    // The connect limit cannot be checked, and does not lock people out.
    let started = Instant::now();
    let _late = a.connect(&t).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metrics.contains("roomcast_rate_limit_unavailable_total{scope=\"connect\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn logs_never_contain_tokens_keys_or_secrets() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_API_KEY", API_KEY),
            ("ROOMCAST_ADMIN_TOKEN", ADMIN),
            ("ROOMCAST_LOG", "trace"),
        ],
    );
    a.wait_ready().await;
    let good = token("alice", &[Role::Controller]);
    let query_token = token("bob", &[Role::Display]);
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldmUifQ.c2lnbmF0dXJlLXRoYXQtaXMtd3Jvbmc";
    // Header token, query token, a forged token, REST with the key and the admin token.
    let mut c = a.connect(&good).await;
    c.join("secret-room", None).await;
    c.publish("secret-room", json!("hello")).await;
    let _q = WsClient::try_connect(&format!("{}?token={query_token}", a.ws_url()), None, None)
        .await
        .unwrap();
    let _ = WsClient::try_connect(&a.ws_url(), Some(forged), None).await;
    let _ = call(a.addr, "GET", "/api/v1/sessions/stats", Some(API_KEY), None).await;
    let _ = call(
        a.addr,
        "GET",
        "/api/v1/admin/rate-limits/api/127.0.0.1",
        Some(ADMIN),
        None,
    )
    .await;
    let _ = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/stats?token={query_token}"),
        Some("wrong-key-value-123"),
        None,
    )
    .await;
    c.close().await;
    // Wait until the connection's end is logged, so the whole run is captured.
    wait_for(DEADLINE, "the disconnect log line", || async {
        a.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("disconnected"))
    })
    .await;
    let logs = a.logs.lock().unwrap().join("\n");
    assert!(logs.len() > 1000, "trace logging produced output");
    for secret in [
        good.as_str(),
        query_token.as_str(),
        forged,
        API_KEY,
        ADMIN,
        SECRET,
        "wrong-key-value-123",
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {}…",
            &secret[..12]
        );
        // Not even the signature part of a token.
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!logs.contains(sig), "a token signature reached the logs");
        }
    }
}

#[tokio::test]
async fn slow_handshakes_are_dropped_and_oversized_heads_refused() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_HEADER_TIMEOUT", "500ms")]);
    a.wait_ready().await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Slowloris: half a request head, then silence.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(a.addr).await.unwrap();
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Others are served meanwhile.
    assert_eq!(a.get("/health/live").await.0, 200);
    // And the slow ones are closed by the server.
    for mut s in slow {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    // A 100 KiB header is refused with 431, and the process lives.
    let big = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = call_raw(a.addr, big.as_bytes()).await;
    assert!(r.status == 431 || r.status == 0, "{}", r.status);
    assert_eq!(a.get("/health/live").await.0, 200);
}
