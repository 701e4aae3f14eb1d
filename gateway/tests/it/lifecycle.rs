//! The session lifecycle against real Redis and several gateways: every due warning and
//! transition happens, once, on time, however many sessions are due together; sessions a
//! `join` creates live under the same rules (limits, lifetime) as REST-created ones.

use std::time::Duration;

use roomcast_shared::{close, ErrorCode, Role, ServerFrame, SessionEvent};
use serde_json::json;
use testkit::*;

const API_KEY: &str = "test-api-key-0123456789";

/// Reads `fields` of every session's meta, one pipelined connection per server; on a
/// cluster each session's answer comes from the node that owns it (the others answer
/// MOVED).
fn metas(redis: &Redis, ids: &[String], fields: &[&str]) -> Vec<Vec<Option<u64>>> {
    let mut merged: Vec<Option<Vec<Option<u64>>>> = vec![None; ids.len()];
    for server in redis.servers() {
        for (slot, answer) in merged.iter_mut().zip(metas_at(server.addr(), ids, fields)) {
            if slot.is_none() {
                *slot = answer;
            }
        }
    }
    merged
        .into_iter()
        .map(|m| m.expect("some node owns every session"))
        .collect()
}

/// [`metas`] on one server: `None` where it answered an error (MOVED).
fn metas_at(
    addr: std::net::SocketAddr,
    ids: &[String],
    fields: &[&str],
) -> Vec<Option<Vec<Option<u64>>>> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut out = String::new();
    for id in ids {
        let key = format!("rc:{{s:{id}}}:meta");
        out.push_str(&format!(
            "*{}\r\n$5\r\nHMGET\r\n${}\r\n{key}\r\n",
            2 + fields.len(),
            key.len()
        ));
        for f in fields {
            out.push_str(&format!("${}\r\n{f}\r\n", f.len()));
        }
    }
    stream.write_all(out.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut read_line = |line: &mut String| {
        line.clear();
        reader.read_line(line).unwrap();
        line.trim_end().to_string()
    };
    ids.iter()
        .map(|_| {
            let header = read_line(&mut line);
            if header.starts_with('-') {
                return None;
            }
            let n: usize = header.trim_start_matches('*').parse().unwrap();
            Some(
                (0..n)
                    .map(|_| {
                        let len = read_line(&mut line);
                        if len == "$-1" {
                            None
                        } else {
                            read_line(&mut line).parse().ok()
                        }
                    })
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn hundreds_of_sessions_due_together_are_each_warned_and_deactivated_once() {
    let redis = Redis::start();
    let env = [
        ("ROOMCAST_INACTIVITY_WARNING", "2s"),
        ("ROOMCAST_INACTIVITY_TIMEOUT", "4s"),
        ("ROOMCAST_API_KEY", API_KEY),
    ];
    let a = Gateway::start(&redis.url(), &env);
    let b = Gateway::start(&redis.url(), &env);
    a.wait_ready().await;
    b.wait_ready().await;
    // More than one claim batch, created about at once, so they all fall due together.
    const N: usize = 600;
    let mut ids = Vec::with_capacity(N);
    let mut display_token = String::new();
    for i in 0..N {
        let g = if i % 2 == 0 { &a } else { &b };
        let r = call(g.addr, "POST", "/api/v1/sessions", None, None).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let v = r.json();
        ids.push(v["id"].as_str().unwrap().to_string());
        display_token = v["display_token"].as_str().unwrap().to_string();
    }
    // A member sits in the last session created: it hears both events, in order.
    let mut tv = a.connect(&display_token).await;
    assert!(matches!(
        tv.join(ids.last().unwrap(), None).await,
        ServerFrame::Joined { .. }
    ));
    let want = [SessionEvent::Expiring, SessionEvent::Updated];
    let mut got = Vec::new();
    while got.len() < want.len() {
        if let ServerFrame::Session { event, .. } = tv
            .expect("session event", |f| {
                matches!(f, ServerFrame::Session { .. })
            })
            .await
        {
            got.push(event);
        }
    }
    assert_eq!(got, want);
    wait_for(
        Duration::from_secs(30),
        "every session inactive",
        || async {
            metas(&redis, &ids, &["inactive_at"])
                .iter()
                .all(|m| m[0].is_some())
        },
    )
    .await;
    // Each event once, across both instances.
    for (event, want) in [("expiring", N), ("inactive", N)] {
        let label = format!("event=\"{event}\"");
        let total = a
            .metric("roomcast_lifecycle_transitions_total", &label)
            .await
            + b.metric("roomcast_lifecycle_transitions_total", &label)
                .await;
        assert_eq!(total as usize, want, "{event}");
    }
    // And on time: the clock looks every second at most, so nothing waited for the
    // others. The bound here is loose for a busy CI machine; `make bench` measures it.
    let mut worst = (0, 0);
    for m in metas(&redis, &ids, &["last_activity", "warned_at", "inactive_at"]) {
        let (last, warned, inactive) = (m[0].unwrap(), m[1].unwrap(), m[2].unwrap());
        worst.0 = worst.0.max(warned.saturating_sub(last + 2000));
        worst.1 = worst.1.max(inactive.saturating_sub(last + 4000));
    }
    assert!(worst.0 <= 5000 && worst.1 <= 5000, "late by {worst:?} ms");
    // Nothing left to do for an inactive session but its end of life.
    // (The due index is split over 16 buckets, `rc:sessions:due:{b0}` to `{b15}`.)
    let due: usize = (0..16)
        .map(|b| {
            let reply = redis
                .cmd(&["ZCARD", &format!("rc:sessions:due:{{b{b}}}")])
                .unwrap();
            reply
                .trim()
                .trim_start_matches(':')
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(due, N);
}

#[tokio::test]
async fn a_session_created_by_a_join_ends_at_its_lifetime_like_any_other() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_MAX_LIFETIME", "3s"),
            ("ROOMCAST_HISTORY_TTL", "1s"),
            ("ROOMCAST_API_KEY", API_KEY),
        ],
    );
    a.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    assert!(matches!(
        ctl.join("brief", None).await,
        ServerFrame::Joined { .. }
    ));
    assert_eq!(ctl.publish("brief", json!("hello")).await, 1);
    match ctl
        .expect("ended", |f| {
            matches!(
                f,
                ServerFrame::Session {
                    event: SessionEvent::Ended,
                    ..
                }
            )
        })
        .await
    {
        ServerFrame::Session { reason, .. } => assert_eq!(reason.as_deref(), Some("max_lifetime")),
        _ => unreachable!(),
    }
    assert_eq!(
        ctl.closed(DEADLINE).await,
        Closed::Code(close::SESSION_ENDED)
    );
    // It stays ended: no join or publish brings it back with its numbering continuing.
    let mut late = a.connect(&token("late", &[Role::Controller])).await;
    match late.join("brief", None).await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::SessionEnded),
        f => panic!("{f:?}"),
    }
    call(
        a.addr,
        "POST",
        "/api/v1/sessions/brief/messages",
        Some(API_KEY),
        Some(&json!({"data": "again"})),
    )
    .await
    .assert_problem(409, "session_ended");
    // Its meta outlives the lifetime (a tombstone), though the history TTL is shorter.
    assert!(redis
        .cmd(&["HGET", "rc:{s:brief}:meta", "status"])
        .unwrap()
        .contains("ended"));
}

/// Joins `session` and answers the error code it got, if any.
async fn join_error(c: &mut WsClient, session: &str) -> Option<ErrorCode> {
    match c.join(session, None).await {
        ServerFrame::Joined { .. } => None,
        ServerFrame::Error {
            code,
            retry_after_ms,
            ..
        } => {
            if code == ErrorCode::RateLimited {
                assert!(retry_after_ms.is_some_and(|ms| ms > 0));
            }
            Some(code)
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn implicit_creation_is_limited_and_can_be_switched_off() {
    let redis = Redis::start();
    let exists = |id: &str| {
        redis
            .cmd(&["EXISTS", &format!("rc:{{s:{id}}}:meta")])
            .unwrap()
            .trim()
            == ":1"
    };
    // Per user: two creations a minute; joining sessions that exist is not creating.
    {
        let a = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_CREATE", "2/60s")]);
        a.wait_ready().await;
        let mut u = a.connect(&token("maker", &[Role::Controller])).await;
        assert_eq!(join_error(&mut u, "made-1").await, None);
        assert_eq!(join_error(&mut u, "made-2").await, None);
        assert_eq!(
            join_error(&mut u, "made-3").await,
            Some(ErrorCode::RateLimited)
        );
        assert!(!exists("made-3"));
        let mut again = a.connect(&token("maker", &[Role::Controller])).await;
        assert_eq!(join_error(&mut again, "made-1").await, None);
        // Observers never create a session, whatever the limits.
        let mut eye = a.connect(&token("eye", &[Role::Observer])).await;
        assert_eq!(
            join_error(&mut eye, "nobody-here").await,
            Some(ErrorCode::NotFound)
        );
        assert!(!exists("nobody-here"));
        assert_eq!(join_error(&mut eye, "made-2").await, None);
    }
    // Per address, shared with POST /sessions.
    {
        let a = Gateway::start(&redis.url(), &[("ROOMCAST_RATE_API_STRICT", "2/60s")]);
        a.wait_ready().await;
        assert_eq!(
            call(a.addr, "POST", "/api/v1/sessions", None, None)
                .await
                .status,
            201
        );
        let mut u = a.connect(&token("ip-user", &[Role::Controller])).await;
        assert_eq!(join_error(&mut u, "ip-1").await, None);
        assert_eq!(
            join_error(&mut u, "ip-2").await,
            Some(ErrorCode::RateLimited)
        );
    }
    // A cap on the sessions one user holds.
    {
        let a = Gateway::start(&redis.url(), &[("ROOMCAST_MAX_SESSIONS_PER_USER", "2")]);
        a.wait_ready().await;
        let mut u = a.connect(&token("hoarder", &[Role::Controller])).await;
        assert_eq!(join_error(&mut u, "hoard-1").await, None);
        assert_eq!(join_error(&mut u, "hoard-2").await, None);
        assert_eq!(
            join_error(&mut u, "hoard-3").await,
            Some(ErrorCode::Forbidden)
        );
        assert!(!exists("hoard-3"));
    }
    // Switched off: only REST creates.
    {
        let a = Gateway::start(&redis.url(), &[("ROOMCAST_IMPLICIT_SESSIONS", "false")]);
        a.wait_ready().await;
        let mut u = a.connect(&token("strict", &[Role::Controller])).await;
        assert_eq!(
            join_error(&mut u, "not-made").await,
            Some(ErrorCode::NotFound)
        );
        assert!(!exists("not-made"));
        let created = call(a.addr, "POST", "/api/v1/sessions", None, None)
            .await
            .json();
        assert_eq!(
            join_error(&mut u, created["id"].as_str().unwrap()).await,
            None
        );
    }
}

/// The listing index forgets sessions idle past both their history and their lifetime: a
/// gateway's first tick prunes such entries from every bucket and keeps recent ones.
#[tokio::test]
async fn the_listing_index_forgets_sessions_idle_past_every_horizon() {
    let redis = Redis::start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    for bucket in ["rc:sessions:{b0}", "rc:sessions:{b9}"] {
        redis.cmd(&["ZADD", bucket, "1", "ancient", &now, "recent"]);
    }
    let g = Gateway::start(&redis.url(), &[]);
    g.wait_ready().await;
    wait_for(DEADLINE, "the ancient entries pruned", || async {
        ["rc:sessions:{b0}", "rc:sessions:{b9}"]
            .iter()
            .all(|b| redis.cmd(&["ZSCORE", b, "ancient"]).as_deref() == Some("$-1\r\n"))
    })
    .await;
    for bucket in ["rc:sessions:{b0}", "rc:sessions:{b9}"] {
        assert_eq!(
            redis.cmd(&["ZSCORE", bucket, "recent"]).as_deref(),
            Some(format!("${}\r\n{now}\r\n", now.len()).as_str()),
            "{bucket} keeps a recent session"
        );
    }
}
