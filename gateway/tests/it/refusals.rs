//! What the gateway refuses, and how it says so, on both surfaces: writes by observers and
//! to ended sessions, token claims at the upgrade, numbers a double would change, REST
//! input held to the WebSocket side's rules, and the bounds of REST presence. Most came
//! from the red teams (issues 10 and 26); each test fails on the gateway as it was.

use gateway::auth::Claims;
use roomcast_shared::{ErrorCode, Role, ServerFrame};
use serde_json::{json, Value};
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "test-api-key-0123456789";

fn claims(sub: &str, name: Option<String>) -> Claims {
    Claims {
        sub: sub.into(),
        roles: vec![Role::Controller, Role::Display],
        sessions: None,
        name,
        exp: gateway::util::now_ms() / 1000 + 3600,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    }
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

fn meta_field(redis: &Redis, session: &str, field: &str) -> String {
    redis
        .cmd(&["HGET", &format!("rc:{{s:{session}}}:meta"), field])
        .unwrap_or_default()
}

#[tokio::test]
async fn observers_cannot_write_activity() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    ctl.join("watched", None).await;
    let before = meta_field(&redis, "watched", "last_activity");
    let mut watcher = a.connect(&token("eye", &[Role::Observer])).await;
    assert!(matches!(
        watcher.join("watched", None).await,
        ServerFrame::Joined { .. }
    ));
    // The observer's join was a read: it did not move the session's activity either.
    let (code, message) = error_for(
        &mut watcher,
        json!({"type": "activity", "session": "watched", "ref": "a1"}),
    )
    .await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    assert_eq!(meta_field(&redis, "watched", "last_activity"), before);
    // A controller's activity is still a write.
    ctl.send_json(json!({"type": "activity", "session": "watched", "ref": "a2"}))
        .await;
    ctl.expect("ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await;
}

#[tokio::test]
async fn ended_sessions_refuse_writes_and_their_codes_answer_410() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", API_KEY)]);
    a.wait_ready().await;
    let created = call(a.addr, "POST", "/api/v1/sessions", None, None)
        .await
        .json();
    let id = created["id"].as_str().unwrap().to_string();
    let code = created["code"].as_str().unwrap().to_string();
    let r = call(
        a.addr,
        "POST",
        &format!("/api/v1/sessions/{id}/messages"),
        Some(API_KEY),
        Some(&json!({"data": "before the end"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        a.addr,
        "DELETE",
        &format!("/api/v1/sessions/{id}"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Every write is refused with 409 session_ended, and the history is still there.
    for (method, path, body) in [
        ("DELETE", format!("/api/v1/sessions/{id}/history"), None),
        (
            "POST",
            format!("/api/v1/sessions/{id}/presence/join"),
            Some(json!({"user": "late"})),
        ),
        (
            "POST",
            format!("/api/v1/sessions/{id}/messages"),
            Some(json!({"data": 1})),
        ),
        (
            "PATCH",
            format!("/api/v1/sessions/{id}"),
            Some(json!({"state": 1})),
        ),
    ] {
        call(a.addr, method, &path, Some(API_KEY), body.as_ref())
            .await
            .assert_problem(409, "session_ended");
    }
    let stats = call(
        a.addr,
        "GET",
        &format!("/api/v1/sessions/{id}/history/stats"),
        Some(API_KEY),
        None,
    )
    .await;
    assert_eq!(stats.json()["count"], 1, "{}", stats.body);
    // Its join code is a tombstone: 410, not 404.
    call(
        a.addr,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&json!({"code": code})),
    )
    .await
    .assert_problem(410, "session_ended");
}

#[tokio::test]
async fn token_claims_are_checked_at_the_upgrade() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", API_KEY)]);
    a.wait_ready().await;
    let url = a.ws_url();
    for (what, claims) in [
        (
            "a 40,000-character name",
            claims("u1", Some("n".repeat(40_000))),
        ),
        (
            "a right-to-left override",
            claims("u2", Some("evil\u{202E}txt.exe".into())),
        ),
        (
            "a name with CR/LF",
            claims("u3", Some("line\r\nbreak".into())),
        ),
        ("a brace in sub", claims("a}b", None)),
        ("a space in sub", claims("a b", None)),
    ] {
        let refused = WsClient::try_connect(&url, Some(&sign_claims(&claims, SECRET)), None).await;
        assert_eq!(refused.err(), Some(401), "{what}");
    }
    // What a token may carry as `sub` is addressable: an e-mail address connects, and a
    // direct message to it over REST arrives.
    let mut ann = a
        .connect(&sign_claims(&claims("ann+tv@example.com", None), SECRET))
        .await;
    wait_for(DEADLINE, "a delivered direct message", || async {
        let r = call(
            a.addr,
            "POST",
            "/api/v1/users/ann+tv%40example.com/messages",
            Some(API_KEY),
            Some(&json!({"data": "hi"})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["delivered"] == true
    })
    .await;
    match ann
        .expect("direct", |f| matches!(f, ServerFrame::Direct { .. }))
        .await
    {
        ServerFrame::Direct { data, .. } => assert_eq!(data, json!("hi")),
        _ => unreachable!(),
    }
    // A name given at join gets the same check, as an error frame.
    for name in ["a\u{0}b", "x\u{2066}y", ""] {
        let (code, message) = error_for(
            &mut ann,
            json!({"type": "join", "session": "names", "name": name}),
        )
        .await;
        assert_eq!(code, ErrorCode::BadRequest, "{name:?}: {message}");
    }
    // So does REST.
    call(
        a.addr,
        "POST",
        "/api/v1/users/a%7Bb/messages",
        Some(API_KEY),
        Some(&json!({"data": 1})),
    )
    .await
    .assert_problem(400, "bad_request");
}

#[tokio::test]
async fn numbers_that_would_change_are_refused() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", API_KEY)]);
    a.wait_ready().await;
    let mut json_client = a.connect(&token("j", &[Role::Controller])).await;
    json_client.join("nums", None).await;
    json_client
        .send_raw(Message::text(
            r#"{"type":"publish","session":"nums","data":{"n":18446744073709551616},"ref":"big"}"#,
        ))
        .await;
    match json_client
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error {
            code, reference, ..
        } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert_eq!(reference.as_deref(), Some("big"));
        }
        _ => unreachable!(),
    }
    // The largest integers that fit are stored exactly.
    json_client
        .send_raw(Message::text(
            r#"{"type":"publish","session":"nums","data":[18446744073709551615,-9223372036854775808],"ref":"max"}"#,
        ))
        .await;
    json_client
        .expect("ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await;
    let stored = json_client
        .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
        .await;
    match stored {
        ServerFrame::Message { data, .. } => {
            assert_eq!(data, json!([u64::MAX, i64::MIN]));
        }
        _ => unreachable!(),
    }
    // msgpack NaN and infinities have no JSON form: refused, not turned into null.
    let mut mp = WsClient::connect(
        &a.ws_url(),
        Some(&token("m", &[Role::Controller])),
        Some("roomcast.v1.msgpack"),
    )
    .await;
    mp.join("nums", None).await;
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        #[derive(serde::Serialize)]
        struct Publish<'a> {
            r#type: &'a str,
            session: &'a str,
            data: f64,
        }
        let bytes = rmp_serde::to_vec_named(&Publish {
            r#type: "publish",
            session: "nums",
            data: bad,
        })
        .unwrap();
        mp.send_raw(Message::binary(bytes)).await;
        match mp
            .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
            .await
        {
            ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest, "{bad}"),
            _ => unreachable!(),
        }
    }
    // Nothing but the one good message was stored.
    assert_eq!(
        redis
            .cmd(&["LLEN", "rc:{s:nums}:hist"])
            .unwrap_or_default()
            .trim(),
        ":1"
    );
    // REST bodies get the same rule.
    call_raw(
        a.addr,
        format!(
            "POST /api/v1/sessions/nums/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n\
             Content-Length: 36\r\n\r\n{{\"data\":100000000000000000000000000}}"
        )
        .as_bytes(),
    )
    .await
    .assert_problem(400, "bad_request");
}

/// Numbers are stored exactly or refused, over both surfaces: a fraction or exponent a
/// double cannot hold is refused like an integer beyond 64 bits.
#[tokio::test]
async fn numbers_are_stored_exactly_or_refused_everywhere() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", API_KEY)]);
    a.wait_ready().await;
    let mut c = a.connect(&token("n", &[Role::Controller])).await;
    c.join("exact", None).await;
    for literal in ["1e-400", "12345678901234567890.5"] {
        c.send_raw(Message::text(format!(
            r#"{{"type":"publish","session":"exact","data":{literal},"ref":"x"}}"#
        )))
        .await;
        let frame = c
            .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
            .await;
        assert!(
            matches!(&frame, ServerFrame::Error { code: ErrorCode::BadRequest, message, .. } if message.contains("exactly")),
            "{literal}: {frame:?}"
        );
        let r = call_raw(
            a.addr,
            format!(
                "POST /api/v1/sessions/exact/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"data\":{literal}}}",
                literal.len() + 9
            )
            .as_bytes(),
        )
        .await;
        r.assert_problem(400, "bad_request");
    }
    // What a double holds goes through, as sent.
    assert_eq!(c.publish("exact", json!(0.1)).await, 1);
}

/// The low findings of the second red team, each as the docs now state it.
#[tokio::test]
async fn frames_signals_and_tokens_behave_as_documented() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    // A signal to oneself is refused, never echoed.
    let mut me = a.connect(&token("me", &[Role::Controller])).await;
    me.join("low", None).await;
    let own = me.client_id.clone();
    let (code, message) = error_for(
        &mut me,
        json!({"type": "signal", "session": "low", "data": 1, "to": own, "ref": "s"}),
    )
    .await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("own client id"), "{message}");
    assert!(me
        .drain_until_pong()
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Signal { .. })));
    // One msgpack map per frame: an array, trailing bytes and two maps are refused.
    let mut packed = WsClient::connect(
        &a.ws_url(),
        Some(&token("mp", &[Role::Display])),
        Some("roomcast.v1.msgpack"),
    )
    .await;
    let ping = rmp_serde::to_vec_named(&json!({"type": "ping", "ref": "p"})).unwrap();
    for bad in [
        rmp_serde::to_vec(&json!(["ping", "arr"])).unwrap(),
        [ping.clone(), vec![0xc0]].concat(),
        [ping.clone(), ping.clone()].concat(),
    ] {
        packed.send_raw(Message::binary(bad)).await;
        let frame = packed
            .expect("error", |f| {
                matches!(f, ServerFrame::Error { .. } | ServerFrame::Pong { .. })
            })
            .await;
        assert!(
            matches!(
                frame,
                ServerFrame::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{frame:?}"
        );
    }
    // A token that allows no session is refused before the upgrade, with 403.
    let none = sign_claims(
        &Claims {
            sessions: Some(vec![]),
            ..claims("nobody", None)
        },
        SECRET,
    );
    assert_eq!(
        WsClient::try_connect(&a.ws_url(), Some(&none), None)
            .await
            .err(),
        Some(403)
    );
    // An audience array is a valid `aud` (checked against the configured one).
    let b = Gateway::start(&redis.url(), &[("ROOMCAST_JWT_AUDIENCE", "roomcast")]);
    b.wait_ready().await;
    let listed = sign_claims(
        &Claims {
            aud: Some(gateway::auth::Audience::Many(vec![
                "other".into(),
                "roomcast".into(),
            ])),
            ..claims("aud", None)
        },
        SECRET,
    );
    assert!(WsClient::try_connect(&b.ws_url(), Some(&listed), None)
        .await
        .is_ok());
}

/// REST answers as the WebSocket side does: a key given twice is refused, a method a
/// route does not take is a problem+json 405, `from.user` follows the user-id rules,
/// and a presence join with the server key names its user.
#[tokio::test]
async fn rest_input_rules_match_the_websocket_side() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_API_KEY", API_KEY)]);
    a.wait_ready().await;
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let r = call_raw(
        a.addr,
        post("/api/v1/sessions/rules/messages", r#"{"data":1,"data":2}"#).as_bytes(),
    )
    .await;
    r.assert_problem(400, "bad_request");
    assert!(r.body.contains("duplicate"), "{}", r.body);
    let r = call(a.addr, "PUT", "/api/v1/sessions/rules", Some(API_KEY), None).await;
    r.assert_problem(405, "bad_request");
    assert!(r.header("allow").is_some(), "{:?}", r.headers);
    for user in ["a\u{0}b", "line\nfeed", "\u{202e}evil"] {
        call(
            a.addr,
            "POST",
            "/api/v1/sessions/rules/messages",
            Some(API_KEY),
            Some(&json!({"data": 1, "from": {"user": user}})),
        )
        .await
        .assert_problem(400, "bad_request");
    }
    let ok = call(
        a.addr,
        "POST",
        "/api/v1/sessions/rules/messages",
        Some(API_KEY),
        Some(&json!({"data": 1, "from": {"user": "bot@app", "name": "Bot"}})),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A presence join with the server key and no `user`: the member is its own user, as
    // the OpenAPI document says.
    let r = call(
        a.addr,
        "POST",
        "/api/v1/sessions/rules/presence/join",
        Some(API_KEY),
        Some(&json!({"role": "display"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let member = r.json()["client_id"].as_str().unwrap().to_string();
    let page = call(
        a.addr,
        "GET",
        "/api/v1/sessions/rules/presence/users",
        Some(API_KEY),
        None,
    )
    .await
    .json();
    let listed = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["client_id"] == member.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(listed["user"], member.as_str());
}

/// REST presence is bounded per session (`ROOMCAST_REST_PRESENCE_MAX`) and its listing is
/// paged: one credential cannot fill a session with thousands of members, and reading them
/// back comes a page at a time, each member once.
#[tokio::test]
async fn rest_presence_is_bounded_and_its_listing_paged() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_API_KEY", API_KEY),
            ("ROOMCAST_REST_PRESENCE_MAX", "5"),
        ],
    );
    a.wait_ready().await;
    open_session(&a, "crowd").await;
    let join = |n: usize| async move {
        let body = json!({"user": format!("u{n}")});
        call(
            a.addr,
            "POST",
            "/api/v1/sessions/crowd/presence/join",
            Some(API_KEY),
            Some(&body),
        )
        .await
    };
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = join(n).await;
        assert_eq!(r.status, 200, "{}", r.body);
        ids.push(r.json()["client_id"].as_str().unwrap().to_string());
    }
    let refused = join(5).await;
    refused.assert_problem(429, "rate_limited");
    assert!(
        refused.header("retry-after").is_some(),
        "{:?}",
        refused.headers
    );
    // A member that leaves makes room; one that re-joins its own id takes none.
    let r = call(
        a.addr,
        "POST",
        "/api/v1/sessions/crowd/presence/leave",
        Some(API_KEY),
        Some(&json!({"client_id": ids[0]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = join(6).await;
    assert_eq!(r.status, 200, "{}", r.body);
    ids[0] = r.json()["client_id"].as_str().unwrap().to_string();
    let again = call(
        a.addr,
        "POST",
        "/api/v1/sessions/crowd/presence/join",
        Some(API_KEY),
        Some(&json!({"user": "u1", "client_id": ids[1]})),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);

    // Pages of 2, in client_id order, each member once.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(c) => format!("/api/v1/sessions/crowd/presence/users?limit=2&after={c}"),
            None => "/api/v1/sessions/crowd/presence/users?limit=2".to_string(),
        };
        let page = call(a.addr, "GET", &path, Some(API_KEY), None).await.json();
        let members = page["members"].as_array().unwrap();
        assert!(members.len() <= 2);
        listed.extend(
            members
                .iter()
                .map(|m| m["client_id"].as_str().unwrap().to_string()),
        );
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    call(
        a.addr,
        "GET",
        "/api/v1/sessions/crowd/presence/users?limit=1001",
        Some(API_KEY),
        None,
    )
    .await
    .assert_problem(400, "bad_request");
}
