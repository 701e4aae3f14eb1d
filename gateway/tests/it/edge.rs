//! The network edge under connection pressure (issue 10, item 1): sockets that never send
//! a byte are closed, one address cannot hold more than its share of unupgraded
//! connections, and a process at its descriptor limit refuses cleanly while its ops
//! listener keeps answering probes. The full-scale form (20,000 silent sockets from two
//! processes) belongs to `make bench`; these run the same code paths small. Requests are
//! held to their documented bounds too: header count and size, bodies read only after
//! the credentials and within the body timeout, HTTP/1.1 only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roomcast_shared::{Role, ServerFrame};
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads until the server closes the socket; answers what it sent first.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the socket open"),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A GET from a given loopback source address; answers the status (0: no answer) and
/// the whole response.
async fn get_from(source: [u8; 4], addr: SocketAddr, path: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let Ok(mut s) = socket.connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let answer = until_closed(&mut s).await;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn sockets_without_a_request_are_closed_from_accept_and_after_each_response() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[("ROOMCAST_HEADER_TIMEOUT", "500ms")]);
    a.wait_ready().await;
    // A WebSocket is not an idle HTTP connection: it outlives the timeout.
    let mut ws = a.connect(&token("tv", &[Role::Display])).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(a.addr).await.unwrap());
    }
    // Kept alive after one answered request, then silent.
    let mut kept = TcpStream::connect(a.addr).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for s in &mut silent {
        assert_eq!(until_closed(s).await, "", "closed without a word");
    }
    let answer = until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        a.metric("roomcast_connections_refused_total", "header_timeout")
            .await
            >= 51.0
    );
    ws.send_json(serde_json::json!({"type": "ping", "ref": "still-here"}))
        .await;
    assert!(matches!(
        ws.next_frame().await,
        ServerFrame::Pong { reference: Some(r) } if r == "still-here"
    ));
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_unupgraded_connections() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_MAX_PENDING_PER_IP", "10"),
            ("ROOMCAST_HEADER_TIMEOUT", "30s"),
            ("ROOMCAST_OPS_LISTEN", "127.0.0.1:0"),
        ],
    );
    a.wait_ready().await;
    // Upgraded connections are not pending: twelve WebSockets from the same address.
    let mut sockets = Vec::new();
    for i in 0..12 {
        sockets.push(a.connect(&token(&format!("u{i}"), &[Role::Display])).await);
    }
    let mut silent = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(a.addr).await.unwrap();
        // Proof of acceptance: each is served in turn until its share is used up.
        s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        silent.push(s);
    }
    let mut refused = TcpStream::connect(a.addr).await.unwrap();
    let answer = until_closed(&mut refused).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    assert!(answer.contains("Retry-After"), "{answer}");
    // Another address is not affected.
    assert_eq!(
        get_from([127, 0, 0, 2], a.addr, "/health/live").await.0,
        200
    );
    let (_, metrics) = get_from([127, 0, 0, 2], a.addr, "/metrics").await;
    let refused = sample(&metrics, "roomcast_connections_refused_total", "per_ip");
    assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
    // The ops listener keeps no per-address share (probes come from a few addresses and
    // it has its own small capacity): ten idle sockets there, and a probe still answers.
    let ops = a.ops.expect("ops listener address");
    let mut idle_on_ops = Vec::new();
    for _ in 0..10 {
        idle_on_ops.push(TcpStream::connect(ops).await.unwrap());
    }
    assert_eq!(http_get(ops, "/health/live").await.0, 200);
    drop(idle_on_ops);
    // A slot frees when one of them closes.
    drop(silent.pop());
    wait_for(DEADLINE, "a free slot", || async {
        get_from([127, 0, 0, 1], a.addr, "/ping").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn at_the_descriptor_limit_clients_are_refused_and_probes_still_answer() {
    let redis = Redis::start();
    let a = Gateway::start_limited(
        &redis.url(),
        &[
            ("ROOMCAST_OPS_LISTEN", "127.0.0.1:0"),
            ("ROOMCAST_MAX_PENDING_PER_IP", "0"),
            ("ROOMCAST_HEADER_TIMEOUT", "30s"),
        ],
        Some(256),
    );
    a.wait_ready().await;
    let ops = a.ops.expect("ops listener address");
    // More silent sockets than the process has descriptors.
    let mut silent = Vec::new();
    for _ in 0..320 {
        silent.push(TcpStream::connect(a.addr).await.unwrap());
    }
    wait_for(DEADLINE, "refusals at capacity", || async {
        sample(
            &http_get(ops, "/metrics").await.1,
            "roomcast_connections_refused_total",
            "capacity",
        )
        .is_some_and(|n| n > 0.0)
    })
    .await;
    // Probes answer on the ops listener; the node is still ready (Redis and pub/sub up).
    assert_eq!(http_get(ops, "/health/live").await.0, 200);
    assert_eq!(http_get(ops, "/health/ready").await.0, 200);
    // A client on the main listener is told 503 instead of hanging.
    let mut late = TcpStream::connect(a.addr).await.unwrap();
    let answer = until_closed(&mut late).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // No accept loop spinning on EMFILE, and no log flood.
    let accept_lines = a
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(accept_lines <= 3, "{accept_lines} accept-failure lines");
    // Capacity comes back as the silent sockets go.
    drop(silent);
    wait_for(DEADLINE, "the main listener serving again", || async {
        http_get(a.addr, "/health/live").await.0 == 200
    })
    .await;
}

const API_KEY: &str = "test-api-key-0123456789";

/// Writes `head` and `body` on a fresh connection, then waits (up to `within`) for the
/// start of an answer; answers what arrived (empty when the server closed first).
async fn answer_to(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    within: Duration,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn header_count_and_size_limits_are_the_documented_ones() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let request = |headers: usize| {
        let mut r = String::from("GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        // Host and Connection count too.
        for i in 0..headers.saturating_sub(2) {
            r.push_str(&format!("X-H{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    assert_eq!(call_raw(a.addr, request(100).as_bytes()).await.status, 200);
    assert_eq!(call_raw(a.addr, request(101).as_bytes()).await.status, 431);
    let under = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    assert_eq!(call_raw(a.addr, under.as_bytes()).await.status, 200);
}

/// A body that trickles in is cut off after `ROOMCAST_BODY_TIMEOUT` with a 408, and a
/// request without credentials is answered 401 before its body has arrived: credentials
/// come first, and nothing is buffered for a request that has none.
#[tokio::test]
async fn bodies_are_read_after_credentials_and_within_the_body_timeout() {
    let redis = Redis::start();
    let a = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_API_KEY", API_KEY),
            ("ROOMCAST_BODY_TIMEOUT", "1s"),
        ],
    );
    a.wait_ready().await;
    // 100 bytes announced, 10 sent, no credential: 401 now, not when the rest comes.
    let head = "POST /api/v1/sessions/s/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let answer = answer_to(a.addr, head, b"{\"data\":  ", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // With the key, the handler waits for the body, but only for the body timeout.
    let head = format!(
        "POST /api/v1/sessions/s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let started = Instant::now();
    let answer = answer_to(a.addr, &head, b"{\"data\":  ", Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("ROOMCAST_BODY_TIMEOUT"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A declared length over the limit is refused without asking for the body, even when
    // the client waits for `100 Continue`.
    let head = format!(
        "POST /api/v1/sessions/s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n"
    );
    let answer = answer_to(a.addr, &head, b"", Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "no 100 Continue: {answer}"
    );
    assert!(answer.contains("too_large"), "{answer}");
}

/// Only HTTP/1.1 is served: an HTTP/2 prior-knowledge (h2c) connection is refused, so
/// the per-connection and per-address bounds and the header-line rule hold for every
/// request.
#[tokio::test]
async fn cleartext_http2_is_not_served() {
    let redis = Redis::start();
    let a = Gateway::start(&redis.url(), &[]);
    a.wait_ready().await;
    let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An HTTP/2 server would answer with a SETTINGS frame (binary, no status line).
    let answer = answer_to(a.addr, preface, &[0, 0, 0, 4, 0, 0, 0, 0, 0], DEADLINE).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
        "{answer:?}"
    );
    assert_eq!(a.get("/health/live").await.0, 200);
}
