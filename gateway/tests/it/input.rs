//! Bad input and bad credentials: each gets its documented answer, the process stays up,
//! and a well-behaved member of the same session notices nothing.

use std::time::Duration;

use gateway::auth::Claims;
use roomcast_shared::{close, ErrorCode, Role, ServerFrame};
use serde_json::json;
use testkit::*;
use tokio_tungstenite::tungstenite::Message;

const BOTH: &[Role] = &[Role::Controller, Role::Display];

/// Sends `frame` and expects an `error` frame with `code` (and `ref` when given).
async fn expect_error(
    client: &mut WsClient,
    frame: Message,
    code: ErrorCode,
    reference: Option<&str>,
) {
    client.send_raw(frame).await;
    match client
        .expect("error", |f| matches!(f, ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error {
            code: got,
            reference: r,
            message,
            ..
        } => {
            assert_eq!(got, code, "{message}");
            assert_eq!(r.as_deref(), reference, "{message}");
            assert!(!message.is_empty());
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_lives() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    let mut bystander = a.connect(&token("tv", &[Role::Display])).await;
    let mut bad = a.connect(&token("bad", BOTH)).await;
    for c in [&mut ctl, &mut bystander, &mut bad] {
        c.join("hostile", None).await;
    }
    let cases: Vec<(Message, ErrorCode, Option<&str>)> = vec![
        (Message::text("{not json"), ErrorCode::BadRequest, None),
        (
            Message::text(r#"{"type":"publish","session":"hostile","data":"#),
            ErrorCode::BadRequest,
            None,
        ),
        (Message::text("[1,2,3]"), ErrorCode::BadRequest, None),
        (
            Message::text("\"just a string\""),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text(r#"{"no_type":1}"#),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text(r#"{"type":"teleport","ref":"t1"}"#),
            ErrorCode::UnknownType,
            Some("t1"),
        ),
        (Message::text(r#"{"type":42}"#), ErrorCode::BadRequest, None),
        (
            Message::text(r#"{"type":"publish","session":"hostile","ref":"m1"}"#),
            ErrorCode::BadRequest,
            Some("m1"),
        ),
        (
            Message::text(r#"{"type":"join","ref":"j1"}"#),
            ErrorCode::BadRequest,
            Some("j1"),
        ),
        (
            Message::text(r#"{"type":"typing","session":"hostile","active":"yes","ref":"y"}"#),
            ErrorCode::BadRequest,
            Some("y"),
        ),
        (
            Message::text(r#"{"type":"join","session":"../../etc/passwd","ref":"p"}"#),
            ErrorCode::BadRequest,
            Some("p"),
        ),
        (
            Message::text(r#"{"type":"join","session":"{s:x}","ref":"h"}"#),
            ErrorCode::BadRequest,
            Some("h"),
        ),
        (
            Message::text(format!(
                r#"{{"type":"join","session":"{}","ref":"long"}}"#,
                "x".repeat(500)
            )),
            ErrorCode::BadRequest,
            Some("long"),
        ),
        (
            Message::text(r#"{"type":"join","session":"s","since":-5,"ref":"neg"}"#),
            ErrorCode::BadRequest,
            Some("neg"),
        ),
        (
            Message::text(r#"{"type":"publish","session":"elsewhere","data":1,"ref":"nj"}"#),
            ErrorCode::NotJoined,
            Some("nj"),
        ),
        (
            Message::text(r#"{"type":"ping","ref":{"nested":true}}"#),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text("{\"type\":\"ping\u{0}\"}"),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text(r#"{"type":"ping\u0000","ref":"nul"}"#),
            ErrorCode::UnknownType,
            Some("nul"),
        ),
        (
            Message::text(r#"{"type":"publish","session":"hostile\u0000","data":1,"ref":"nul2"}"#),
            ErrorCode::NotJoined,
            Some("nul2"),
        ),
        (
            Message::binary(vec![0xc1, 0xff, 0x00, 0x13]),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text(format!("{}1{}", "[".repeat(200), "]".repeat(200))),
            ErrorCode::BadRequest,
            None,
        ),
        (
            Message::text(r#"{"type":"join","session":"hostile","ref":"again"}"#),
            ErrorCode::BadRequest,
            Some("again"),
        ),
        (
            Message::text(
                r#"{"type":"signal","session":"hostile","data":1,"to":"no such/id","ref":"to"}"#,
            ),
            ErrorCode::BadRequest,
            Some("to"),
        ),
    ];
    let count = cases.len();
    for (frame, code, reference) in cases {
        expect_error(&mut bad, frame, code, reference).await;
    }
    // Still the same connection, still working.
    assert!(bad
        .drain_until_pong()
        .await
        .iter()
        .all(|f| !matches!(f, ServerFrame::Error { .. })));
    assert_eq!(bad.publish("hostile", json!("still here")).await, 1);
    // The bystander saw only the one real message.
    assert_eq!(bystander.messages("hostile", 1).await, vec![1]);
    let rest = bystander.drain_until_pong().await;
    assert!(
        rest.iter()
            .all(|f| !matches!(f, ServerFrame::Error { .. } | ServerFrame::Message { .. })),
        "{rest:?}"
    );
    assert_eq!(a.get("/health/live").await.0, 200);
    let (_, metrics) = a.get("/metrics").await;
    assert!(
        metrics.contains("roomcast_errors_total{code=\"bad_request\"}"),
        "{count} cases counted"
    );
}

#[tokio::test]
async fn msgpack_garbage_and_wrong_frame_kinds() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let t = token("mp", BOTH);
    let mut mp = WsClient::connect(&a.ws_url(), Some(&t), Some("roomcast.v1.msgpack")).await;
    for garbage in [
        vec![0xc1],
        vec![0x81, 0xa4],
        vec![0x92, 0x01, 0x02],
        b"{\"type\":\"ping\"}".to_vec(),
    ] {
        expect_error(
            &mut mp,
            Message::binary(garbage),
            ErrorCode::BadRequest,
            None,
        )
        .await;
    }
    // A text frame on the msgpack subprotocol.
    expect_error(
        &mut mp,
        Message::text(r#"{"type":"ping"}"#),
        ErrorCode::BadRequest,
        None,
    )
    .await;
    assert!(mp.drain_until_pong().await.is_empty());
}

#[tokio::test]
async fn oversize_frames_close_1009_and_others_are_unaffected() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_MAX_FRAME_BYTES", "4096")]);
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", BOTH)).await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let mut big = a.connect(&token("big", BOTH)).await;
    for c in [&mut ctl, &mut tv, &mut big] {
        c.join("size", None).await;
    }
    let huge = json!({"type": "publish", "session": "size", "data": "y".repeat(10_000)});
    big.send_raw(Message::text(huge.to_string())).await;
    assert_eq!(big.closed(DEADLINE).await, Closed::Code(close::TOO_BIG));
    // Just under the limit is fine.
    ctl.publish("size", json!("z".repeat(3000))).await;
    assert_eq!(tv.messages("size", 1).await, vec![1]);
    assert_eq!(a.get("/health/live").await.0, 200);
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let mut c = a.connect(&token("u", BOTH)).await;
    // A text frame whose payload is not UTF-8 (tungstenite lets us send raw bytes).
    let raw = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    c.send_raw(Message::Frame(raw)).await;
    assert_eq!(
        c.closed(DEADLINE).await,
        Closed::Code(close::INVALID_PAYLOAD)
    );
    assert_eq!(a.get("/health/live").await.0, 200);
}

#[tokio::test]
async fn silent_clients_are_closed_after_two_heartbeats() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_HEARTBEAT", "300ms")]);
    a.wait_ready().await;
    // A raw socket that completes the handshake, then reads but never answers a ping.
    let mut tcp = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let t = token("quiet", BOTH);
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {t}\r\n\r\n"
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Server frames are unmasked: opcode 0x8 with a 2-byte code 1001 is 88 02 03 e9
    // (possibly followed by a reason, so look for the code bytes after 0x88).
    let close_1001 = |b: &[u8]| {
        b.windows(4)
            .any(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xe9])
    };
    let mut pings = 0;
    while !close_1001(&buf) {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut chunk))
            .await
            .expect("the server never closed the silent client")
            .unwrap();
        assert!(n > 0, "connection dropped without a close frame");
        pings += chunk[..n].windows(1).filter(|w| w[0] == 0x89).count();
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(pings >= 1, "the server pinged before giving up");
    // Two 300 ms intervals without an answer, checked on the next tick.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bad_credentials_never_upgrade() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[("ROOMCAST_ALLOWED_ORIGINS", "https://app.example")],
    );
    a.wait_ready().await;
    let url = a.ws_url();
    let now = gateway::util::now_ms() / 1000;
    let claims = |exp: u64| Claims {
        sub: "mallory".into(),
        roles: vec![Role::Controller],
        sessions: None,
        name: None,
        exp,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
    };
    let expired = sign_claims(&claims(now - 3600), SECRET);
    let forged = sign_claims(&claims(now + 3600), "some-other-secret-of-enough-length");
    let alg_none = {
        let enc = |s: &str| {
            use std::fmt::Write;
            // base64url without padding, enough for this test.
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = s.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    let _ = out.write_char(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        };
        format!(
            "{}.{}.",
            enc(r#"{"alg":"none","typ":"JWT"}"#),
            enc(&format!(
                r#"{{"sub":"mallory","roles":["controller"],"exp":{}}}"#,
                now + 3600
            ))
        )
    };
    for (what, token) in [
        ("missing", None),
        ("empty", Some(String::new())),
        ("garbage", Some("not.a.jwt".to_string())),
        ("expired", Some(expired)),
        ("wrong signature", Some(forged)),
        ("alg none", Some(alg_none)),
    ] {
        let result = WsClient::try_connect(&url, token.as_deref(), None).await;
        assert_eq!(result.err(), Some(401), "{what} token");
    }
    // A token with no role is valid but allows nothing.
    let no_role = sign_claims(
        &Claims {
            roles: vec![],
            ..claims(now + 3600)
        },
        SECRET,
    );
    assert_eq!(
        WsClient::try_connect(&url, Some(&no_role), None)
            .await
            .err(),
        Some(403)
    );
    // ?token= works for browsers.
    let good = token("alice", BOTH);
    let ok = WsClient::try_connect(&format!("{url}?token={good}"), None, None).await;
    assert!(ok.is_ok());
    // A foreign Origin is refused (cross-site WebSocket hijacking).
    let evil =
        WsClient::try_connect_with(&url, &[("origin", "https://evil.example")], Some(&good)).await;
    assert_eq!(evil.err(), Some(403));
    let friendly =
        WsClient::try_connect_with(&url, &[("origin", "https://app.example")], Some(&good)).await;
    assert!(friendly.is_ok());
    assert_eq!(a.get("/health/live").await.0, 200);
}

#[tokio::test]
async fn a_token_that_expires_mid_connection_closes_4001() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let now = gateway::util::now_ms() / 1000;
    let short = sign_claims(
        &Claims {
            sub: "brief".into(),
            roles: vec![Role::Display],
            sessions: None,
            name: None,
            exp: now + 2,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
        },
        SECRET,
    );
    let mut c = a.connect(&short).await;
    c.join("brief", None).await;
    assert_eq!(
        c.closed(Duration::from_secs(6)).await,
        Closed::Code(close::TOKEN_EXPIRED)
    );
}

#[tokio::test]
async fn invalid_config_exits_64() {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .env_clear()
        .env("ROOMCAST_HEARTBEAT", "soon")
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(status.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("soon"), "{stderr}");
    let missing_secret = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .env_clear()
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(missing_secret.status.code(), Some(64));
    // The token subcommand mints something the gateway accepts.
    let minted = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .env_clear()
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .args(["token", "--sub", "alice", "--role", "controller"])
        .output()
        .expect("run");
    assert!(minted.status.success());
    let token = String::from_utf8(minted.stdout).expect("utf-8");
    let config = gateway::config::Config::from_pairs(&[("jwt-secret", SECRET)]).expect("config");
    let identity = gateway::auth::Authenticator::from_config(&config)
        .expect("auth")
        .verify(token.trim())
        .expect("valid token");
    assert_eq!(identity.user, "alice");
}

#[tokio::test]
async fn fragments_adding_up_past_the_limit_close_1009() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_MAX_FRAME_BYTES", "4096")]);
    a.wait_ready().await;
    let mut bystander = a.connect(&token("tv", &[Role::Display])).await;
    bystander.join("frag", None).await;
    let mut c = a.connect(&token("frag", BOTH)).await;
    // Each fragment is small; together they exceed the 4 KiB message limit.
    c.send_raw(Message::Frame(Frame::message(
        vec![b'['; 1000],
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    for _ in 0..10 {
        c.send_raw(Message::Frame(Frame::message(
            vec![b' '; 1000],
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    }
    assert_eq!(c.closed(DEADLINE).await, Closed::Code(close::TOO_BIG));
    // Huge arrays and strings inside the limit are just data, or a clear error.
    let mut ok = a.connect(&token("ok", BOTH)).await;
    ok.join("frag", None).await;
    let many: Vec<u8> = vec![0; 1500];
    assert_eq!(ok.publish("frag", json!(many)).await, 1);
    assert_eq!(bystander.messages("frag", 1).await, vec![1]);
    assert_eq!(a.get("/health/live").await.0, 200);
}

/// `ROOMCAST_AUTH=off` (development only): anyone connects as the `?user=` they name, with
/// every role, and the gateway says so loudly at start.
#[tokio::test]
async fn with_auth_off_anyone_connects_as_the_user_they_name() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_AUTH", "off")]);
    a.wait_ready().await;
    assert!(a.logged(&["AUTHENTICATION IS OFF"]), "the start-up warning");
    let mut kiosk = WsClient::connect(&format!("{}?user=kiosk", a.ws_url()), None, None).await;
    let mut watcher = WsClient::connect(&a.ws_url(), None, None).await;
    watcher.join("open-house", None).await;
    kiosk.join("open-house", None).await;
    let joined = watcher
        .expect(
            "the kiosk's arrival",
            |f| matches!(f, ServerFrame::Presence { member, .. } if member.user == "kiosk"),
        )
        .await;
    assert!(matches!(joined, ServerFrame::Presence { .. }));
    assert_eq!(kiosk.publish("open-house", json!("hello")).await, 1);
    // Over REST any bearer stands for an anonymous user of any session.
    let r = call(
        a.addr,
        "GET",
        "/api/v1/sessions/open-house",
        Some("anyone"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}
