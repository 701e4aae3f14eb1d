//! The REST API against real Redis and several gateway processes: the session lifecycle end
//! to end, validation and authorization of every route, inactivity exactly once across
//! instances, history paging, presence without sockets, direct messages.

use std::time::Duration;

use roomcast_shared::{close, ErrorCode, Role, ServerFrame, SessionEvent};
use serde_json::{json, Value};
use testkit::*;

const API_KEY: &str = "test-api-key-0123456789";
const ADMIN: &str = "test-admin-token-0123456789";

fn rest_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ROOMCAST_API_KEY", API_KEY),
        ("ROOMCAST_ADMIN_TOKEN", ADMIN),
    ]
}

fn gateway(redis: &Redis, extra: &[(&'static str, &'static str)]) -> Gateway {
    let mut env = rest_env();
    env.extend_from_slice(extra);
    Gateway::start(&redis.url(), &env)
}

async fn create(g: &Gateway, body: Option<Value>) -> Value {
    let r = call(g.addr, "POST", "/api/v1/sessions", None, body.as_ref()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

async fn ws(g: &Gateway, token: &str) -> WsClient {
    WsClient::connect(&g.ws_url(), Some(token), None).await
}

async fn session_event(c: &mut WsClient, want: SessionEvent) -> (Option<String>, u64) {
    match c
        .expect(
            "session event",
            |f| matches!(f, ServerFrame::Session { event, .. } if *event == want),
        )
        .await
    {
        ServerFrame::Session { reason, at, .. } => (reason, at),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn lifecycle_end_to_end_across_two_instances() {
    let redis = Redis::start();
    let a = gateway(&redis, &[]);
    let b = gateway(&redis, &[]);
    a.wait_ready().await;
    b.wait_ready().await;

    // Create on A: a code from the unambiguous alphabet and a display token.
    let created = create(&a, Some(json!({"metadata": {"room": "lobby"}}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    let code = created["code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    assert!(
        code.bytes()
            .all(|c| b"ABCDEFGHJKMNPQRSTUVWXYZ23456789".contains(&c)),
        "{code}"
    );
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].as_u64().unwrap() > created["created_at"].as_u64().unwrap());
    let display_token = created["display_token"].as_str().unwrap().to_string();

    // Join by code on B (any case) for a controller token.
    let joined = call(
        b.addr,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&json!({"code": code.to_lowercase(), "name": "Phone"})),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let joined = joined.json();
    assert_eq!(joined["session_id"], id.as_str());
    let controller_token = joined["token"].as_str().unwrap().to_string();

    let mut display = ws(&a, &display_token).await;
    let mut controller = ws(&b, &controller_token).await;
    assert!(matches!(
        display.join(&id, None).await,
        ServerFrame::Joined { .. }
    ));
    assert!(matches!(
        controller.join(&id, None).await,
        ServerFrame::Joined { .. }
    ));
    // The display token cannot join another session.
    assert!(matches!(
        display.join("elsewhere", None).await,
        ServerFrame::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));

    // The session token reads the session; the server key publishes like a client.
    let got = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}"),
        Some(&display_token),
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.json()["metadata"], json!({"room": "lobby"}));
    let published = call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/messages"),
        Some(API_KEY),
        Some(&json!({"data": {"slide": 1}, "from": {"user": "cms"}})),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(published.json()["seq"], 1);
    for c in [&mut display, &mut controller] {
        match c
            .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
            .await
        {
            ServerFrame::Message {
                seq, from, data, ..
            } => {
                assert_eq!(
                    (seq, from.user.as_str(), data),
                    (1, "cms", json!({"slide": 1}))
                );
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(controller.publish(&id, json!("from the phone")).await, 2);

    // Patch: members hear `updated`.
    let patched = call(
        b.addr,
        "PATCH",
        &format!("/api/v1/sessions/{id}"),
        Some(&controller_token),
        Some(&json!({"state": {"slide": 2}})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["state"], json!({"slide": 2}));
    assert_eq!(
        session_event(&mut display, SessionEvent::Updated)
            .await
            .0
            .as_deref(),
        Some("patched")
    );

    // Resolve: members hear it; writes are refused until resumed.
    let resolved = call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/resolve"),
        Some(API_KEY),
        Some(&json!({"notes": "done"})),
    )
    .await;
    assert_eq!(resolved.status, 200, "{}", resolved.body);
    assert_eq!(resolved.json()["status"], "resolved");
    session_event(&mut display, SessionEvent::Resolved).await;
    session_event(&mut controller, SessionEvent::Resolved).await;
    controller
        .send_json(json!({"type": "publish", "session": id, "data": 3, "ref": "r"}))
        .await;
    match controller
        .expect("refusal", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        _ => unreachable!(),
    }
    // Resolving twice conflicts.
    call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/resolve"),
        Some(API_KEY),
        None,
    )
    .await
    .assert_problem(409, "bad_request");

    // Resume: active again, with recent history oldest first.
    let resumed = call(
        b.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/resume"),
        Some(&controller_token),
        None,
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let resumed = resumed.json();
    assert_eq!(resumed["session"]["status"], "active");
    let seqs: Vec<u64> = resumed["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(controller.publish(&id, json!("back")).await, 3);

    // End with a reason: `session/ended` on both instances, then close 4000.
    let ended = call(
        a.addr,
        "DELETE",
        &format!("/api/v1/sessions/{id}?reason=show%20over"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.json()["status"], "ended");
    for c in [&mut display, &mut controller] {
        assert_eq!(
            session_event(c, SessionEvent::Ended).await.0.as_deref(),
            Some("show over")
        );
        assert_eq!(c.closed(DEADLINE).await, Closed::Code(close::SESSION_ENDED));
    }
    // The code is a tombstone (410 until the session's keys expire); the ended session
    // refuses joins and writes.
    call(
        a.addr,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&json!({"code": code})),
    )
    .await
    .assert_problem(410, "session_ended");
    let mut late = ws(&a, &token("late", &[Role::Display])).await;
    assert!(matches!(
        late.join(&id, None).await,
        ServerFrame::Error {
            code: ErrorCode::SessionEnded,
            ..
        }
    ));
    call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/messages"),
        Some(API_KEY),
        Some(&json!({"data": 1})),
    )
    .await
    .assert_problem(409, "session_ended");
    call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/resume"),
        Some(API_KEY),
        None,
    )
    .await
    .assert_problem(409, "session_ended");

    // Stats see it.
    let stats = call(b.addr, "GET", "/api/v1/sessions/stats", Some(API_KEY), None).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let stats = stats.json();
    assert_eq!(stats["ended"], 1);
    assert!(stats["total"].as_u64().unwrap() >= 1);
    assert_eq!(stats["nodes"], 2);
}

#[tokio::test]
async fn routes_validate_and_authorize() {
    let redis = Redis::start();
    let a = gateway(&redis, &[]);
    a.wait_ready().await;
    let s = create(&a, None).await;
    let id = s["id"].as_str().unwrap().to_string();
    let display = s["display_token"].as_str().unwrap().to_string();
    let other = create(&a, None).await["display_token"]
        .as_str()
        .unwrap()
        .to_string();
    let observer = token_with("obs", &[Role::Observer], &[&id], Duration::from_secs(60));
    let unlisted = token("nobody", &[Role::Controller]);
    let base = format!("/api/v1/sessions/{id}");

    let session_routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", base.clone(), None),
        ("PATCH", base.clone(), Some(json!({"metadata": 1}))),
        ("GET", format!("{base}/history"), None),
        ("GET", format!("{base}/history/latest"), None),
        ("GET", format!("{base}/history/search?q=x"), None),
        ("GET", format!("{base}/history/stats"), None),
        ("DELETE", format!("{base}/history"), None),
        ("GET", format!("{base}/presence"), None),
        ("GET", format!("{base}/presence/users"), None),
        ("POST", format!("{base}/presence/join"), None),
    ];
    for (method, path, body) in &session_routes {
        // No credential: 401. A token for another session or no session claim: 403.
        call(a.addr, method, path, None, body.as_ref())
            .await
            .assert_problem(401, "unauthorized");
        call(a.addr, method, path, Some("garbage"), body.as_ref())
            .await
            .assert_problem(401, "unauthorized");
        call(a.addr, method, path, Some(&other), body.as_ref())
            .await
            .assert_problem(403, "forbidden");
        call(a.addr, method, path, Some(&unlisted), body.as_ref())
            .await
            .assert_problem(403, "forbidden");
        // The session's own token works.
        let ok = call(a.addr, method, path, Some(&display), body.as_ref()).await;
        assert_eq!(ok.status, 200, "{method} {path}: {}", ok.body);
        // An unknown session: 404; an absurd id: 400.
        let missing = path.replace(&id, "no-such-session");
        call(a.addr, method, &missing, Some(API_KEY), body.as_ref())
            .await
            .assert_problem(404, "not_found");
        let absurd = path.replace(&id, "..%2F..%2Fetc%2Fpasswd");
        call(a.addr, method, &absurd, Some(API_KEY), body.as_ref())
            .await
            .assert_problem(400, "bad_request");
    }
    // Observers read but do not write (presence over REST is a write).
    call(
        a.addr,
        "POST",
        &format!("{base}/presence/join"),
        Some(&observer),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    assert_eq!(
        call(a.addr, "GET", &base, Some(&observer), None)
            .await
            .status,
        200
    );
    call(
        a.addr,
        "PATCH",
        &base,
        Some(&observer),
        Some(&json!({"state": 1})),
    )
    .await
    .assert_problem(403, "forbidden");
    call(a.addr, "DELETE", &base, Some(&observer), None)
        .await
        .assert_problem(403, "forbidden");

    // Server-key routes refuse session tokens; admin routes refuse the server key.
    for (method, path, body) in [
        ("POST", format!("{base}/messages"), Some(json!({"data": 1}))),
        ("GET", "/api/v1/sessions/stats".to_string(), None),
        ("GET", "/api/v1/users/u1/sessions".to_string(), None),
        (
            "POST",
            "/api/v1/users/u1/messages".to_string(),
            Some(json!({"data": 1})),
        ),
    ] {
        call(a.addr, method, &path, Some(&display), body.as_ref())
            .await
            .assert_problem(403, "forbidden");
        call(a.addr, method, &path, None, body.as_ref())
            .await
            .assert_problem(401, "unauthorized");
        assert_eq!(
            call(a.addr, method, &path, Some(API_KEY), body.as_ref())
                .await
                .status,
            200,
            "{method} {path}"
        );
        assert_eq!(
            call(a.addr, method, &path, Some(ADMIN), body.as_ref())
                .await
                .status,
            200,
            "{method} {path}"
        );
    }
    let cleanup = format!("{base}/presence/cleanup");
    call(a.addr, "POST", &cleanup, Some(API_KEY), None)
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(
        call(a.addr, "POST", &cleanup, Some(ADMIN), None)
            .await
            .status,
        200
    );

    // Validation.
    let bad: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(json!({"max_lifetime_s": 0})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(json!({"unknown": true})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(json!([1, 2])),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/sessions".into(),
            Some(json!({"metadata": "x".repeat(20_000)})),
            413,
            "too_large",
        ),
        (
            "POST",
            "/api/v1/sessions/join".into(),
            Some(json!({"code": "0OIL1!"})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/sessions/join".into(),
            Some(json!({"code": "ZZZZZZ"})),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/v1/sessions/join".into(),
            Some(json!({"name": "no code"})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/v1/sessions/join".into(),
            Some(json!({"code": "ABCDEF", "role": "admin"})),
            400,
            "bad_request",
        ),
        ("PATCH", base.clone(), Some(json!({})), 400, "bad_request"),
        (
            "GET",
            format!("{base}/history?limit=0"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history?limit=101"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history?before=-1"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history?limit=abc"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history/search"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history/search?q="),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/history/search?q={}", "x".repeat(201)),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/api/v1/users/u1/sessions?type=weird".into(),
            None,
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{base}/messages"),
            Some(json!({"nodata": 1})),
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{base}/presence/activity"),
            Some(json!({"client_id": "nope"})),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("{base}/presence/leave"),
            Some(json!({"client_id": "bad id!"})),
            400,
            "bad_request",
        ),
        ("GET", "/api/v1/nothing/here".into(), None, 404, "not_found"),
        (
            "POST",
            format!("{base}/presence/join"),
            Some(json!({"client_id": "someone-elses-socket-id"})),
            400,
            "bad_request",
        ),
    ];
    for (method, path, body, status, code) in bad {
        let credential = if path.contains("/sessions/join") || path == "/api/v1/sessions" {
            None
        } else {
            Some(API_KEY)
        };
        let r = call(a.addr, method, &path, credential, body.as_ref()).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        r.assert_problem(status, code);
    }
    // A lifetime above the maximum is cut to it (24 h by default).
    let long = create(&a, Some(json!({"max_lifetime_s": 999_999_999}))).await;
    let lifetime = long["expires_at"].as_u64().unwrap() - long["created_at"].as_u64().unwrap();
    assert_eq!(lifetime, 86_400_000);
    // Wrong media type and broken JSON.
    let raw = "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi";
    call_raw(a.addr, raw.as_bytes())
        .await
        .assert_problem(415, "bad_request");
    let raw = "POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\":";
    call_raw(a.addr, raw.as_bytes())
        .await
        .assert_problem(400, "bad_request");
    // Every answer carries a request id.
    let r = call(a.addr, "GET", &base, Some(API_KEY), None).await;
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    // The OpenAPI document is served.
    let doc = call(a.addr, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/sessions/{id}/history"].is_object());
}

#[tokio::test]
async fn closed_session_creation_needs_the_server_key() {
    let redis = Redis::start();
    let a = gateway(&redis, &[("ROOMCAST_OPEN_SESSIONS", "false")]);
    a.wait_ready().await;
    call(a.addr, "POST", "/api/v1/sessions", None, None)
        .await
        .assert_problem(401, "unauthorized");
    let created = call(a.addr, "POST", "/api/v1/sessions", Some(API_KEY), None).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let code = created.json()["code"].as_str().unwrap().to_string();
    call(
        a.addr,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&json!({"code": code})),
    )
    .await
    .assert_problem(401, "unauthorized");
    assert_eq!(
        call(
            a.addr,
            "POST",
            "/api/v1/sessions/join",
            Some(API_KEY),
            Some(&json!({"code": code}))
        )
        .await
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_warning_and_timeout_fire_exactly_once_across_three_instances() {
    let redis = Redis::start();
    let short = [
        ("ROOMCAST_INACTIVITY_WARNING", "1s"),
        ("ROOMCAST_INACTIVITY_TIMEOUT", "2s"),
    ];
    let gateways = [
        gateway(&redis, &short),
        gateway(&redis, &short),
        gateway(&redis, &short),
    ];
    for g in &gateways {
        g.wait_ready().await;
    }
    let created = create(&gateways[0], None).await;
    let id = created["id"].as_str().unwrap().to_string();
    let display = created["display_token"].as_str().unwrap().to_string();
    // One silent member on each instance.
    let mut members = Vec::new();
    for g in &gateways {
        let mut c = ws(g, &display).await;
        c.join(&id, None).await;
        members.push(c);
    }
    let mut expiring_at = Vec::new();
    for c in &mut members {
        let (reason, at) = session_event(c, SessionEvent::Expiring).await;
        assert_eq!(reason.as_deref(), Some("inactivity"));
        expiring_at.push(at);
        let (reason, _) = session_event(c, SessionEvent::Updated).await;
        assert_eq!(reason.as_deref(), Some("inactive"));
    }
    // `at` is when the session becomes inactive: last activity + timeout, the same for all.
    assert!(
        expiring_at.windows(2).all(|w| w[0] == w[1]),
        "{expiring_at:?}"
    );
    let status = call(
        gateways[1].addr,
        "GET",
        &format!("/api/v1/sessions/{id}"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(status.json()["status"], "inactive");
    // Exactly one instance announced each event...
    let mut warned = 0;
    let mut inactive = 0;
    for g in &gateways {
        warned += g
            .metric("roomcast_lifecycle_transitions_total", "event=\"expiring\"")
            .await as u64;
        inactive += g
            .metric("roomcast_lifecycle_transitions_total", "event=\"inactive\"")
            .await as u64;
    }
    assert_eq!(
        (warned, inactive),
        (1, 1),
        "one warning and one timeout across three sweepers"
    );
    // ...and no member got a second copy.
    for c in &mut members {
        let rest = c.drain_until_pong().await;
        assert!(
            rest.iter()
                .all(|f| !matches!(f, ServerFrame::Session { .. })),
            "{rest:?}"
        );
    }
    // Resume brings it back; activity then keeps it from warning again right away.
    let resumed = call(
        gateways[2].addr,
        "POST",
        &format!("/api/v1/sessions/{id}/resume"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    for c in &mut members {
        assert_eq!(
            session_event(c, SessionEvent::Updated).await.0.as_deref(),
            Some("resumed")
        );
    }
}

#[tokio::test]
async fn max_lifetime_ends_the_session() {
    let redis = Redis::start();
    let a = gateway(&redis, &[]);
    a.wait_ready().await;
    let created = create(&a, Some(json!({"max_lifetime_s": 1}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut c = ws(&a, created["display_token"].as_str().unwrap()).await;
    c.join(&id, None).await;
    assert_eq!(
        session_event(&mut c, SessionEvent::Ended)
            .await
            .0
            .as_deref(),
        Some("max_lifetime")
    );
    assert_eq!(c.closed(DEADLINE).await, Closed::Code(close::SESSION_ENDED));
}

#[tokio::test]
async fn history_pages_walk_every_message_once_and_search_and_stats_agree() {
    let redis = Redis::start();
    let a = gateway(&redis, &[]);
    a.wait_ready().await;
    let id = create(&a, None).await["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/sessions/{id}/messages");
    for i in 1..=110u64 {
        let text = if i == 77 {
            "The Needle in the HAYSTACK".to_string()
        } else {
            format!("message {i}")
        };
        let r = call(
            a.addr,
            "POST",
            &path,
            Some(API_KEY),
            Some(&json!({"data": {"text": text}})),
        )
        .await;
        assert_eq!(r.json()["seq"], i);
    }
    // Cap 100: seqs 11..=110 are stored. Walk them 7 at a time, newest first.
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let q = match before {
            Some(b) => format!("/api/v1/sessions/{id}/history?limit=7&before={b}"),
            None => format!("/api/v1/sessions/{id}/history?limit=7"),
        };
        let page = call(a.addr, "GET", &q, Some(API_KEY), None).await.json();
        seen.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap()),
        );
        match page["next_before"].as_u64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (11..=110).rev().collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    // A page that holds everything left says there is nothing more.
    let all = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history?limit=100"),
        Some(API_KEY),
        None,
    )
    .await
    .json();
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(100));
    assert_eq!(all["next_before"], Value::Null, "{all}");
    // `before=1` is the smallest seq: valid, and nothing is older.
    let none = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history?before=1"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(none.status, 200, "{:?}", none.body);
    let none = none.json();
    assert_eq!(none["messages"], json!([]), "{none}");
    assert_eq!(none["next_before"], Value::Null, "{none}");
    // `q` may be 200 characters long.
    let long = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/search?q={}", "x".repeat(200)),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(long.status, 200);
    let latest = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/latest?limit=3"),
        Some(API_KEY),
        None,
    )
    .await
    .json();
    let latest: Vec<u64> = latest["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(latest, vec![110, 109, 108]);
    let found = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/search?q=needle%20in"),
        Some(API_KEY),
        None,
    )
    .await
    .json();
    let found = found["messages"].as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["seq"], 77);
    let stats = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/stats"),
        Some(API_KEY),
        None,
    )
    .await
    .json();
    assert_eq!(
        (
            stats["count"].as_u64(),
            stats["first_seq"].as_u64(),
            stats["last_seq"].as_u64()
        ),
        (Some(100), Some(11), Some(110))
    );
    assert_eq!(
        stats["duration_ms"].as_u64().unwrap(),
        stats["last_ts"].as_u64().unwrap() - stats["first_ts"].as_u64().unwrap()
    );
    // The same window a WebSocket join with since=0 gets.
    let mut c = ws(&a, &token("tv", &[Role::Display])).await;
    match c.join(&id, Some(0)).await {
        ServerFrame::Joined {
            history, recovered, ..
        } => {
            assert!(!recovered);
            assert_eq!(
                history.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (11..=110).collect::<Vec<_>>()
            );
        }
        f => panic!("{f:?}"),
    }
    // Clear: empty, numbering continues.
    assert_eq!(
        call(
            a.addr,
            "DELETE",
            &format!("/api/v1/sessions/{id}/history"),
            Some(API_KEY),
            None
        )
        .await
        .json()["cleared"],
        true
    );
    let stats = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/stats"),
        Some(API_KEY),
        None,
    )
    .await
    .json();
    assert_eq!(stats["count"], 0);
    assert_eq!(
        call(
            a.addr,
            "POST",
            &path,
            Some(API_KEY),
            Some(&json!({"data": 1}))
        )
        .await
        .json()["seq"],
        111
    );
}

#[tokio::test]
async fn presence_without_sockets_and_summaries() {
    let redis = Redis::start();
    let a = gateway(&redis, &[("ROOMCAST_REST_PRESENCE_TTL", "1s")]);
    a.wait_ready().await;
    let created = create(&a, None).await;
    let id = created["id"].as_str().unwrap().to_string();
    let display = created["display_token"].as_str().unwrap().to_string();
    let mut tv = ws(&a, &display).await;
    tv.join(&id, None).await;
    let base = format!("/api/v1/sessions/{id}/presence");
    // A kiosk without a socket joins over REST; the display hears it.
    let joined = call(
        a.addr,
        "POST",
        &format!("{base}/join"),
        Some(API_KEY),
        Some(&json!({"user": "kiosk-1", "role": "observer", "name": "Kiosk"})),
    )
    .await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    let client_id = joined.json()["client_id"].as_str().unwrap().to_string();
    match tv
        .expect("presence join", |f| {
            matches!(f, ServerFrame::Presence { .. })
        })
        .await
    {
        ServerFrame::Presence { member, .. } => assert_eq!(
            (member.user.as_str(), member.role),
            ("kiosk-1", Role::Observer)
        ),
        _ => unreachable!(),
    }
    let summary = call(a.addr, "GET", &base, Some(API_KEY), None).await.json();
    assert_eq!(summary["total"], 2);
    assert_eq!(
        summary["by_role"],
        json!({"controller": 0, "display": 1, "observer": 1})
    );
    assert_eq!(summary["idle"], 0);
    let users = call(
        a.addr,
        "GET",
        &format!("{base}/users"),
        Some(&display),
        None,
    )
    .await
    .json();
    assert_eq!(users["members"].as_array().unwrap().len(), 2);
    // Activity refreshes; without it the entry expires and is swept (and announced).
    assert_eq!(
        call(
            a.addr,
            "POST",
            &format!("{base}/activity"),
            Some(API_KEY),
            Some(&json!({"client_id": client_id}))
        )
        .await
        .status,
        200
    );
    wait_for(DEADLINE, "the REST member to expire", || async {
        call(a.addr, "GET", &base, Some(API_KEY), None).await.json()["total"] == 1
    })
    .await;
    let cleanup = call(
        a.addr,
        "POST",
        &format!("{base}/cleanup"),
        Some(ADMIN),
        None,
    )
    .await
    .json();
    assert!(cleanup["removed"].as_u64().is_some());
    match tv
        .expect("presence leave", |f| {
            matches!(
                f,
                ServerFrame::Presence {
                    event: roomcast_shared::PresenceEvent::Leave,
                    ..
                }
            )
        })
        .await
    {
        ServerFrame::Presence { member, .. } => assert_eq!(member.user, "kiosk-1"),
        _ => unreachable!(),
    }
    // Leave over REST.
    let again = call(
        a.addr,
        "POST",
        &format!("{base}/join"),
        Some(API_KEY),
        Some(&json!({"user": "kiosk-2"})),
    )
    .await
    .json();
    let left = call(
        a.addr,
        "POST",
        &format!("{base}/leave"),
        Some(API_KEY),
        Some(&json!({"client_id": again["client_id"]})),
    )
    .await;
    assert_eq!(left.json()["left"], true);
    // A token acts only for its own user.
    let mine = call(
        a.addr,
        "POST",
        &format!("{base}/join"),
        Some(&display),
        None,
    )
    .await
    .json();
    let theirs = call(
        a.addr,
        "POST",
        &format!("{base}/join"),
        Some(API_KEY),
        Some(&json!({"user": "someone"})),
    )
    .await
    .json();
    assert_eq!(
        call(
            a.addr,
            "POST",
            &format!("{base}/activity"),
            Some(&display),
            Some(&json!({"client_id": mine["client_id"]}))
        )
        .await
        .status,
        200
    );
    call(
        a.addr,
        "POST",
        &format!("{base}/leave"),
        Some(&display),
        Some(&json!({"client_id": theirs["client_id"]})),
    )
    .await
    .assert_problem(403, "forbidden");
}

#[tokio::test]
async fn direct_messages_reach_every_connection_of_a_user_on_any_instance() {
    let redis = Redis::start();
    let a = gateway(&redis, &[]);
    let b = gateway(&redis, &[]);
    a.wait_ready().await;
    b.wait_ready().await;
    let alice = token("alice", &[Role::Controller]);
    let mut phone = ws(&a, &alice).await;
    let mut laptop = ws(&b, &alice).await;
    let mut bob = ws(&a, &token("bob", &[Role::Controller])).await;
    let sent = call(
        a.addr,
        "POST",
        "/api/v1/users/alice/messages",
        Some(API_KEY),
        Some(&json!({"data": {"note": "hi"}})),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(sent.json(), json!({"delivered": true, "instances": 2}));
    for c in [&mut phone, &mut laptop] {
        match c
            .expect("direct", |f| matches!(f, ServerFrame::Direct { .. }))
            .await
        {
            ServerFrame::Direct { data, .. } => assert_eq!(data, json!({"note": "hi"})),
            _ => unreachable!(),
        }
    }
    assert!(bob.drain_until_pong().await.is_empty());
    // Nobody connected: accepted, not delivered.
    let none = call(
        a.addr,
        "POST",
        "/api/v1/users/carol/messages",
        Some(API_KEY),
        Some(&json!({"data": 1})),
    )
    .await;
    assert_eq!(none.json(), json!({"delivered": false, "instances": 0}));
    // The user index lists the sessions a user joined.
    phone.join("s-alice", None).await;
    wait_for(DEADLINE, "the user index", || async {
        let r = call(
            a.addr,
            "GET",
            "/api/v1/users/alice/sessions?type=active",
            Some(API_KEY),
            None,
        )
        .await;
        r.json()["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["id"] == "s-alice"))
    })
    .await;
}
