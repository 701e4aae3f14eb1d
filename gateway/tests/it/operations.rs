//! Operational surface: health endpoints, metrics (checked by promtool), HTTP conventions,
//! the `token` command, and a public-key deployment that cannot sign refusing to create
//! sessions.

use roomcast_shared::{Role, ServerFrame};
use serde_json::{json, Value};
use testkit::*;

const BOTH: &[Role] = &[Role::Controller, Role::Display];

#[tokio::test]
async fn metrics_move_with_events_and_pass_promtool() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    let b = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    let mut tv = b.connect(&token("tv", &[Role::Display])).await;
    ctl.join("m", None).await;
    tv.join("m", None).await;
    for i in 0..3 {
        ctl.publish("m", json!(i)).await;
    }
    tv.messages("m", 3).await;
    ctl.send_json(json!({"type": "nope"})).await;
    ctl.expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await;

    let (status, text) = a.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "roomcast_messages_received_total",
            "type=\"publish\""
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "roomcast_publish_duration_seconds_count", ""),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "roomcast_errors_total", "code=\"unknown_type\""),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "roomcast_connections", "role=\"controller\""),
        Some(1.0)
    );
    assert_eq!(sample(&text, "roomcast_sessions_local", ""), Some(1.0));
    // One session channel and the controller's user channel.
    assert_eq!(sample(&text, "roomcast_subscriptions", ""), Some(2.0));
    assert_eq!(sample(&text, "roomcast_redis_up", ""), Some(1.0));
    assert!(sample(
        &text,
        "roomcast_redis_command_duration_seconds_count",
        "command=\"publish\""
    )
    .is_some());
    assert!(sample(
        &text,
        "roomcast_http_requests_total",
        "route=\"/health/ready\""
    )
    .is_some());
    let (_, text_b) = b.get("/metrics").await;
    // B delivered the three messages to its display (and the controller's presence event).
    assert!(sample(&text_b, "roomcast_messages_delivered_total", "").is_some_and(|v| v >= 3.0));
    assert_eq!(
        sample(&text_b, "roomcast_delivery_latency_seconds_count", ""),
        Some(3.0)
    );
    // No label carries a session, user, client id or client address. (The Redis shards'
    // addresses are infrastructure, few and stable: `shard` may name them.)
    let without_shards: String = text
        .lines()
        .map(|l| match l.find("shard=\"") {
            Some(at) => {
                let end = l[at + 7..].find('"').map_or(l.len(), |e| at + 8 + e);
                format!("{}{}", &l[..at], &l[end..])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("roomcast_pubsub_shard_up{shard="));
    for forbidden in ["ctl", "\"tv\"", "session=", "client_id", "127.0.0.1"] {
        assert!(
            !without_shards.contains(forbidden),
            "metrics leak {forbidden}"
        );
    }

    // promtool validates the exposition format and the help texts.
    let checked = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("promtool must be installed (make test installs it)");
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn health_endpoints_and_http_conventions() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[("ROOMCAST_NODE_ID", "ops-node"), ("ROOMCAST_LOG", "debug")],
    );
    a.wait_ready().await;
    assert_eq!(
        a.get("/health/live").await,
        (200, r#"{"status":"ok"}"#.to_string())
    );
    assert_eq!(a.get("/ping").await, (200, "pong".to_string()));
    // Counters exist at zero before their first event, so rates and alerts see a series.
    let (_, metrics) = a.get("/metrics").await;
    for zero in [
        "roomcast_slow_consumer_disconnects_total 0",
        "roomcast_pubsub_reconnects_total 0",
    ] {
        assert!(metrics.contains(zero), "{zero}: {metrics}");
    }
    let (status, body) = a.get("/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["node"], "ops-node");
    assert_eq!(health["checks"]["redis"]["status"], "ok");
    assert_eq!(health["checks"]["pubsub"]["status"], "ok");
    // A gateway's resident set is megabytes, whatever the page size.
    assert!(health["checks"]["memory"]["rss_bytes"]
        .as_u64()
        .is_some_and(|r| r > 1 << 20));
    // The runtime's live tasks: at least the listener and the background monitor.
    assert!(health["checks"]["runtime"]["tasks"]
        .as_u64()
        .is_some_and(|t| t >= 2));

    // Unknown routes answer problem+json; request ids are echoed or generated.
    let raw = raw_get(a.addr, "/nope", Some("trace-abc-123")).await;
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    assert!(
        raw.contains("content-type: application/problem+json"),
        "{raw}"
    );
    assert!(raw.contains("x-request-id: trace-abc-123"), "{raw}");
    // The request's log lines carry its id.
    wait_for(DEADLINE, "a log line with the request id", || async {
        a.logs.lock().unwrap().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["request_id"] == "trace-abc-123"))
            })
        })
    })
    .await;
    assert!(raw.contains("\"code\":\"not_found\""), "{raw}");
    let raw = raw_get(a.addr, "/ping", None).await;
    assert!(raw.contains("x-request-id: "), "{raw}");
    // A hostile request id is replaced, not echoed.
    let raw = raw_get(a.addr, "/ping", Some(&"x".repeat(500))).await;
    assert!(!raw.contains(&"x".repeat(200)));
    // A plain GET on /ws is not an upgrade.
    assert_eq!(a.get("/ws").await.0, 400);
}

async fn raw_get(addr: std::net::SocketAddr, path: &str, request_id: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(id) = request_id {
        req.push_str(&format!("X-Request-Id: {id}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf).into_owned()
}

/// `/health` reports the readiness PING's round trip in milliseconds: behind a link that
/// holds Redis's answers 40 ms, it says at least 40, and not seconds.
#[tokio::test]
async fn health_reports_the_redis_round_trip_in_milliseconds() {
    let redis = Redis::start();
    let slow = Proxy::start_delayed(redis.addr(), std::time::Duration::from_millis(40)).await;
    let a = Gateway::start(&slow.url(), &[]);
    a.wait_ready().await;
    let latency = || async {
        let (_, body) = a.get("/health").await;
        let health: Value = serde_json::from_str(&body).expect("json");
        health["checks"]["redis"]["latency_ms"]
            .as_f64()
            .unwrap_or(-1.0)
    };
    // Ready means a PING was answered and timed.
    let ms = latency().await;
    assert!((40.0..1000.0).contains(&ms), "latency_ms = {ms}");
}

#[tokio::test]
async fn the_token_command_says_what_is_missing() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.env_clear().arg("token").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    // No secret: it names the one variable that can sign, not the public key or auth=off.
    let (code, stderr) = run(&[], &["--sub", "a", "--role", "controller"]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("ROOMCAST_JWT_SECRET"), "{stderr}");
    assert!(
        !stderr.contains("PUBLIC_KEY") && !stderr.contains("AUTH=off"),
        "{stderr}"
    );
    // A missing flag is named on the one line.
    let (code, stderr) = run(
        &[("ROOMCAST_JWT_SECRET", SECRET)],
        &["--role", "controller"],
    );
    assert_eq!(code, Some(64));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--sub"), "{stderr}");
    // The secret may follow the subcommand, as `token --help` lists it.
    let (code, stderr) = run(
        &[],
        &["--jwt-secret", SECRET, "--sub", "a", "--role", "controller"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // A claim the gateway would refuse is not minted.
    let (code, stderr) = run(
        &[("ROOMCAST_JWT_SECRET", SECRET)],
        &["--sub", "a b", "--role", "controller"],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("sub"), "{stderr}");
}

/// A gateway that verifies with a public key cannot sign the display token `POST
/// /sessions` answers with, nor the controller token of a join by code: both are refused
/// with 501 before anything is written, where they answered 500 after writing a session
/// and its code on every call.
#[tokio::test]
async fn a_public_key_gateway_refuses_to_create_sessions_before_writing_anything() {
    let redis = Redis::start();
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rs256-public.pem");
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_JWT_PUBLIC_KEY", key)]);
    a.wait_ready().await;
    for _ in 0..3 {
        let r = call(a.addr, "POST", "/api/v1/sessions", None, None).await;
        r.assert_problem(501, "forbidden");
        assert!(r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("ROOMCAST_JWT_SECRET"));
    }
    let r = call(
        a.addr,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&json!({"code": "ABCDEF"})),
    )
    .await;
    r.assert_problem(501, "forbidden");
    for pattern in ["rc:code:*", "rc:{s:*", "rc:sessions*"] {
        let found = redis.cmd_all(&["KEYS", pattern]);
        assert!(
            found.iter().all(|r| r.as_deref() == Some("*0\r\n")),
            "nothing written: {pattern} {found:?}"
        );
    }
    assert!(!a.logged(&["minting needs"]));
}
