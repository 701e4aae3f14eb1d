//! The test kit: private Redis processes (standalone, cluster, Sentinel, TLS), `roomcast`
//! gateway processes, a fault proxy, WebSocket clients and a minimal HTTP client, for the
//! gateway's integration tests and for `cargo xtask` (bench, soak and chaos drive the
//! same processes; [`Gateway::launch`] starts a gateway the way they need it). Everything
//! binds loopback, is stopped by pid on drop, and waits on conditions with deadlines
//! instead of sleeping. A failed expectation panics:
//! that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use gateway::auth::{Authenticator, Claims};
use gateway::config::{Config, TokenArgs};
use roomcast_shared::{close, decode_server, ErrorCode, Format, Role, ServerFrame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod launch;
mod proxy;
mod receiver;
mod redis;
mod sentinel;
mod tls;
pub use proxy::Proxy;
pub use receiver::{signature_valid, verify_with_standardwebhooks, Answer, Delivery, Receiver};
pub use redis::{cmd_at, free_cluster_port, free_port, scratch_dir, ClusterNode, Redis, Server};
pub use sentinel::{RedisNode, SentinelDeployment};
pub use tls::{Pki, TlsCluster, TlsRedis, TlsSentinel};

pub const SECRET: &str = "test-secret-0123456789abcdef0123";

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process of the test, killed (by pid) when the test ends, passed or failed.
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `roomcast` process.
/// The `roomcast` binary: `ROOMCAST_BIN`, or the one cargo built beside the running test
/// binary (tests run from `target/<profile>/deps/`; cargo builds a package's binaries for
/// its integration tests).
pub fn gateway_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("ROOMCAST_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    dir.join(format!("roomcast{}", std::env::consts::EXE_SUFFIX))
}

/// The load generator's binary. `cargo test --workspace` builds it next to the
/// gateway's (the loadtest crate's own integration tests, `loadtest/tests/cli.rs`, make
/// cargo build it).
pub fn loadtest_bin() -> std::path::PathBuf {
    gateway_bin().with_file_name(format!("loadtest{}", std::env::consts::EXE_SUFFIX))
}

pub struct Gateway {
    pub addr: SocketAddr,
    /// The ops listener's address, when `ROOMCAST_OPS_LISTEN` was set.
    pub ops: Option<SocketAddr>,
    child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts a gateway on `redis_url` with test defaults plus `env`.
    pub fn start(redis_url: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_limited(redis_url, env, None)
    }

    /// Like [`Gateway::start`], with the process's open-files limit set to `nofile`.
    pub fn start_limited(redis_url: &str, env: &[(&str, &str)], nofile: Option<u32>) -> Gateway {
        let bin = gateway_bin();
        let mut cmd = match nofile {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\""))
                    .arg(&bin);
                sh
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ROOMCAST_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_REDIS_URL", redis_url)
            .env("ROOMCAST_LOG", "info,gateway=debug")
            .env("ROOMCAST_LOG_FORMAT", "json")
            // Test clients read only when a test looks: a short heartbeat would time them out.
            .env("ROOMCAST_HEARTBEAT", "5s")
            .env("ROOMCAST_REDIS_TIMEOUT", "1s")
            .env("ROOMCAST_SHUTDOWN_GRACE", "5s")
            // Tests of Redis outages watch clients stay and catch up; the shedding of
            // clients after a long outage has tests of its own that set it.
            .env("ROOMCAST_REDIS_LOST_GRACE", "0s");
        // The shared secret, unless the test verifies with a public key instead.
        if !env.iter().any(|(k, _)| *k == "ROOMCAST_JWT_PUBLIC_KEY") {
            cmd.env("ROOMCAST_JWT_SECRET", SECRET);
        }
        // Every test client comes from 127.0.0.1: limits are off unless a test sets them.
        for scope in [
            "PUBLISH",
            "PUBLISH_IP",
            "CONNECT",
            "API",
            "API_STRICT",
            "BURST",
            "SIGNAL",
            "FRAMES",
            "CREATE",
        ] {
            cmd.env(format!("ROOMCAST_RATE_{scope}"), "0");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roomcast");
        let stdout = child.stdout.take().expect("stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        let ops = Arc::new(Mutex::new(None));
        let ops_seen = ops.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if addr_tx.is_some() {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
                        // The ops listener is announced before the main one.
                        if v["fields"]["message"] == "ops listening" {
                            *ops_seen.lock().expect("ops") = addr;
                        }
                        if v["fields"]["message"] == "listening" {
                            if let Some(a) = addr {
                                let _ = addr_tx.take().map(|tx| tx.send(a));
                            }
                        }
                    }
                }
                if std::env::var_os("ROOMCAST_TEST_LOGS").is_some() {
                    eprintln!("{line}");
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(DEADLINE)
            .expect("gateway did not report its address");
        let ops = *ops.lock().expect("ops");
        Gateway {
            addr,
            ops,
            child: Some(child),
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (`-STOP`, `-CONT`): a paused process keeps its sockets, so
    /// what is sent to it waits in the kernel until it runs again.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// `POST /sessions/{id}/messages` with the server `key`, retried while it answers 503
    /// (Redis coming back, a failover); answers the acked seq.
    pub async fn server_publish(&self, key: &str, session: &str, data: Value) -> u64 {
        let path = format!("/api/v1/sessions/{session}/messages");
        let body = serde_json::json!({ "data": data });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = call(self.addr, "POST", &path, Some(key), Some(&body)).await;
            if r.status == 200 {
                return r.json()["seq"].as_u64().expect("seq");
            }
            assert!(
                r.status == 503 && Instant::now() < deadline,
                "publish refused: {} {}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Whether one log line holds every one of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// Waits until the gateway logs that a Redis connection failed (for one of `why`, when
    /// given), then checks that it is not ready.
    pub async fn wait_redis_refusal(&self, why: &[&str]) {
        wait_for(DEADLINE, "a logged Redis connection failure", || async {
            if why.is_empty() {
                return self.logged(&["redis connection failed"]);
            }
            why.iter()
                .any(|w| self.logged(&["redis connection failed", w]))
        })
        .await;
        let (status, body) = self.get("/health/ready").await;
        assert_eq!(status, 503, "{body}");
    }

    /// Waits until the gateway is ready (Redis and pub/sub up).
    pub async fn wait_ready(&self) {
        wait_for(DEADLINE, "gateway readiness", || async {
            self.get("/health/ready").await.0 == 200
        })
        .await;
    }

    pub async fn connect(&self, token: &str) -> WsClient {
        WsClient::connect(&self.ws_url(), Some(token), None).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates session `id` the way a first writer does (join, then leave), so that observers,
/// who never create sessions, can join it. Leaves no member behind.
pub async fn open_session(g: &Gateway, id: &str) {
    let mut opener = g.connect(&token("opener", &[Role::Controller])).await;
    assert!(
        matches!(opener.join(id, None).await, ServerFrame::Joined { .. }),
        "session {id} could not be created"
    );
    opener
        .send_json(serde_json::json!({"type": "leave", "session": id, "ref": "bye"}))
        .await;
    opener
        .expect("leave ack", |f| matches!(f, ServerFrame::Ack { .. }))
        .await;
    opener.close().await;
}

/// Minimal HTTP/1.1 GET; answers status and body. Connection errors answer status 0.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[]).await
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Some(r)) => r,
        _ => (0, String::new()),
    }
}

/// Mints a token with the test secret.
pub fn token(sub: &str, roles: &[Role]) -> String {
    token_with(sub, roles, &[], Duration::from_secs(3600))
}

pub fn token_with(sub: &str, roles: &[Role], sessions: &[&str], ttl: Duration) -> String {
    let config = Config::from_pairs(&[("jwt-secret", SECRET)]).expect("config");
    Authenticator::from_config(&config)
        .expect("auth")
        .mint(&TokenArgs {
            sub: sub.into(),
            roles: roles.to_vec(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            name: None,
            ttl,
        })
        .expect("mint")
}

/// Signs arbitrary claims with `secret` (HS256), for forged and expired tokens.
pub fn sign_claims(claims: &Claims, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a WebSocket client saw the connection end.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    Code(u16),
    /// The stream ended without a close frame.
    Abrupt,
}

/// Why a join was not answered `joined`.
#[derive(Debug, Clone, PartialEq)]
pub enum NotJoined {
    /// An `error` frame answered it, with this code.
    Refused(ErrorCode),
    /// The connection ended.
    Closed(Closed),
}

/// A protocol client for tests.
pub struct WsClient {
    ws: Ws,
    pub format: Format,
    pub client_id: String,
    /// Frames read while looking for another one, in arrival order.
    pending: std::collections::VecDeque<ServerFrame>,
}

impl WsClient {
    /// Connects and reads `welcome`.
    pub async fn connect(url: &str, token: Option<&str>, protocol: Option<&str>) -> WsClient {
        let (ws, format) = Self::try_connect(url, token, protocol)
            .await
            .unwrap_or_else(|status| panic!("upgrade refused with HTTP {status}"));
        let mut client = WsClient {
            ws,
            format,
            client_id: String::new(),
            pending: Default::default(),
        };
        match client.next_frame().await {
            ServerFrame::Welcome {
                client_id,
                protocol,
                ..
            } => {
                assert_eq!(protocol, 1);
                client.client_id = client_id;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    /// Attempts the upgrade; an HTTP refusal answers its status.
    pub async fn try_connect(
        url: &str,
        token: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<(Ws, Format), u16> {
        let headers: Vec<(&str, &str)> = protocol
            .map(|p| ("sec-websocket-protocol", p))
            .into_iter()
            .collect();
        Self::try_connect_with(url, &headers, token).await
    }

    /// Attempts the upgrade with extra headers.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
        token: Option<&str>,
    ) -> Result<(Ws, Format), u16> {
        let mut request = url.into_client_request().expect("request");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        for (k, v) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                k.parse().expect("header name");
            request
                .headers_mut()
                .insert(name, v.parse().expect("header"));
        }
        let dial = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request));
        match dial.await.expect("the upgrade answered in time") {
            Ok((ws, response)) => {
                let format = match response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                {
                    Some("roomcast.v1.msgpack") => Format::Msgpack,
                    _ => Format::Json,
                };
                Ok((ws, format))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Connects over a socket with a tiny receive buffer (to make slow consumers quickly).
    pub async fn connect_small_buffer(url: &str, token: &str) -> WsClient {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .expect("addr");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(addr).await.expect("connect");
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let upgrade = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
        let (ws, _) = tokio::time::timeout(DEADLINE, upgrade)
            .await
            .expect("the upgrade answered in time")
            .expect("upgrade");
        let mut client = WsClient {
            ws,
            format: Format::Json,
            client_id: String::new(),
            pending: Default::default(),
        };
        if let ServerFrame::Welcome { client_id, .. } = client.next_frame().await {
            client.client_id = client_id;
        }
        client
    }

    pub async fn send_json(&mut self, v: Value) {
        match self.format {
            Format::Json => self.send_raw(Message::text(v.to_string())).await,
            Format::Msgpack => {
                let bytes = rmp_serde::to_vec_named(&v).expect("msgpack");
                self.send_raw(Message::binary(bytes)).await
            }
        }
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next protocol frame (pings skipped); panics on close or after the deadline.
    pub async fn next_frame(&mut self) -> ServerFrame {
        match self.next_event(DEADLINE).await {
            Ok(frame) => frame,
            Err(closed) => panic!("connection closed: {closed:?}"),
        }
    }

    /// The next frame or how the connection ended.
    pub async fn next_event(&mut self, within: Duration) -> Result<ServerFrame, Closed> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        self.read_event(within).await
    }

    async fn read_event(&mut self, within: Duration) -> Result<ServerFrame, Closed> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no frame within {within:?}"),
                Ok(None) => return Err(Closed::Abrupt),
                Ok(Some(Err(_))) => return Err(Closed::Abrupt),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return Ok(decode_server(Format::Json, t.as_bytes()).expect("server frame"))
                }
                Message::Binary(b) => {
                    return Ok(decode_server(Format::Msgpack, &b).expect("server frame"))
                }
                Message::Close(frame) => {
                    return Err(frame
                        .map(|f: CloseFrame| Closed::Code(f.code.into()))
                        .unwrap_or(Closed::Abrupt))
                }
                _ => continue,
            }
        }
    }

    /// Reads frames until the connection closes; answers the close code.
    pub async fn closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(_) => continue,
                Err(c) => return c,
            }
        }
    }

    /// The first frame that matches; frames before it stay queued for later reads.
    pub async fn expect<F: Fn(&ServerFrame) -> bool>(&mut self, what: &str, f: F) -> ServerFrame {
        if let Some(i) = self.pending.iter().position(&f) {
            return self.pending.remove(i).expect("index");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            match self.read_event(left).await {
                Ok(frame) if f(&frame) => return frame,
                Ok(frame) => self.pending.push_back(frame),
                Err(c) => panic!("closed ({c:?}) while waiting for {what}"),
            }
        }
    }

    pub async fn join(&mut self, session: &str, since: Option<u64>) -> ServerFrame {
        let mut frame = serde_json::json!({"type": "join", "session": session});
        if let Some(s) = since {
            frame["since"] = s.into();
        }
        self.send_json(frame).await;
        self.expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await
    }

    pub async fn join_as(&mut self, session: &str, role: &str) -> ServerFrame {
        self.send_json(serde_json::json!({"type": "join", "session": session, "role": role}))
            .await;
        self.expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await
    }

    /// Publishes and waits for the ack; answers the seq.
    pub async fn publish(&mut self, session: &str, data: Value) -> u64 {
        match self.try_publish(session, data).await {
            Ok(seq) => seq,
            Err(other) => panic!("publish refused: {other:?}"),
        }
    }

    /// Publishes and waits for the answer: the acked seq, or the error frame.
    /// [`WsClient::try_publish`] with an idempotency key.
    pub async fn try_publish_keyed(
        &mut self,
        session: &str,
        data: Value,
        key: &str,
    ) -> Result<u64, ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(
            serde_json::json!({"type": "publish", "session": session, "data": data,
            "ref": reference, "idempotency_key": key}),
        )
        .await;
        let frame = self
            .expect("ack", |f| match f {
                ServerFrame::Ack { reference: r, .. } | ServerFrame::Error { reference: r, .. } => {
                    r.as_deref() == Some(reference.as_str())
                }
                _ => false,
            })
            .await;
        match frame {
            ServerFrame::Ack { seq: Some(seq), .. } => Ok(seq),
            other => Err(other),
        }
    }

    pub async fn try_publish(&mut self, session: &str, data: Value) -> Result<u64, ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(serde_json::json!({"type": "publish", "session": session, "data": data, "ref": reference}))
            .await;
        let frame = self
            .expect("ack", |f| match f {
                ServerFrame::Ack { reference: r, .. } => r.as_deref() == Some(reference.as_str()),
                ServerFrame::Error { reference: r, .. } => r.as_deref() == Some(reference.as_str()),
                _ => false,
            })
            .await;
        match frame {
            ServerFrame::Ack { seq: Some(seq), .. } => Ok(seq),
            other => Err(other),
        }
    }

    /// Collects `message` seqs in `session` until `count` arrived.
    pub async fn messages(&mut self, session: &str, count: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < count {
            if let ServerFrame::Message {
                session: s, seq, ..
            } = self
                .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
                .await
            {
                if s == session {
                    seqs.push(seq);
                }
            }
        }
        seqs
    }

    /// Collects `(seq, id)` of the `message`s in `session` until `count` arrived.
    pub async fn message_ids(&mut self, session: &str, count: usize) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        while got.len() < count {
            if let ServerFrame::Message {
                session: s,
                seq,
                id,
                ..
            } = self
                .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
                .await
            {
                if s == session {
                    got.push((seq, id));
                }
            }
        }
        got
    }

    /// Rejoins as a client that processed up to `since` does: with the epoch of its
    /// numbering and, when given, the id of the message it saw at `since`. Answers
    /// (epoch, recovered, the history's seqs).
    pub async fn rejoin(
        &mut self,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> (String, bool, Vec<u64>) {
        match self.try_rejoin(session, since, epoch, since_id).await {
            Ok(joined) => joined,
            Err(why) => panic!("rejoin not joined: {why:?}"),
        }
    }

    /// [`WsClient::rejoin`], answering a refusal or a close instead of failing the test: a
    /// gateway still finding its way after a failover may refuse the join `unavailable` or
    /// close 1013 (try again later), which a client meets by joining again.
    pub async fn try_rejoin(
        &mut self,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> Result<(String, bool, Vec<u64>), NotJoined> {
        let reference = gateway::util::random_id(8);
        let mut frame = serde_json::json!(
            {"type": "join", "session": session, "since": since, "ref": reference}
        );
        if let Some(e) = epoch {
            frame["epoch"] = e.into();
        }
        if let Some(id) = since_id {
            frame["since_id"] = id.into();
        }
        self.send_json(frame).await;
        let answer = |f: &ServerFrame| {
            matches!(f, ServerFrame::Joined { reference: Some(r), .. }
                | ServerFrame::Error { reference: Some(r), .. } if *r == reference)
        };
        // Frames met while waiting stay queued for the test (`expect`'s rule): the answer
        // is looked for among them first, then read, never re-read from the queue.
        let frame = match self.pending.iter().position(answer) {
            Some(i) => self.pending.remove(i).expect("index"),
            None => {
                let deadline = tokio::time::Instant::now() + DEADLINE;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    assert!(!left.is_zero(), "timed out waiting for joined");
                    match self.read_event(left).await {
                        Ok(f) if answer(&f) => break f,
                        Ok(f) => self.pending.push_back(f),
                        Err(c) => return Err(NotJoined::Closed(c)),
                    }
                }
            }
        };
        match frame {
            ServerFrame::Joined {
                epoch,
                recovered,
                history,
                ..
            } => Ok((epoch, recovered, history.iter().map(|m| m.seq).collect())),
            ServerFrame::Error { code, .. } => Err(NotJoined::Refused(code)),
            _ => unreachable!("matched above"),
        }
    }

    /// Connects to `gateway` as `token` and rejoins as [`WsClient::rejoin`] does, joining
    /// again while the gateway, settling after a failover, refuses `unavailable` or closes
    /// 1013, as a client does; other refusals fail the test. Answers the client with
    /// (epoch, recovered, the history's seqs).
    pub async fn rejoin_retrying(
        gateway: &Gateway,
        token: &str,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> (WsClient, (String, bool, Vec<u64>)) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut client = gateway.connect(token).await;
            match client.try_rejoin(session, since, epoch, since_id).await {
                Ok(joined) => return (client, joined),
                Err(
                    why @ (NotJoined::Refused(ErrorCode::Unavailable)
                    | NotJoined::Closed(Closed::Code(close::TRY_AGAIN_LATER))),
                ) if Instant::now() < deadline => {
                    eprintln!("rejoin of {session}: {why:?}; joining again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(other) => panic!("rejoin refused: {other:?}"),
            }
        }
    }

    /// Reads until the connection closes and answers the seqs of the `message`s that came
    /// before the close, with the close.
    pub async fn seqs_until_closed(&mut self, within: Duration) -> (Vec<u64>, Closed) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seqs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(ServerFrame::Message { seq, .. }) => seqs.push(seq),
                Ok(_) => continue,
                Err(c) => return (seqs, c),
            }
        }
    }

    /// Round-trips a ping and answers every frame received before the pong: a barrier
    /// proving nothing else was queued for us.
    pub async fn drain_until_pong(&mut self) -> Vec<ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(serde_json::json!({"type": "ping", "ref": reference}))
            .await;
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                ServerFrame::Pong { reference: Some(r) } if r == reference => return before,
                other => before.push(other),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Seqs of `message` frames among `frames`.
pub fn message_seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Stores a message in `session` exactly as a publish does (`publish.lua`, with the key
/// prefix `rc`), without any gateway, publishing its payload on `channel`: the session's
/// own channel, or one nobody listens on. Answers the script's raw reply
/// (`*6 :seq :reactivated :created :events :repeat $prev`).
pub fn publish_with_script(redis: &Redis, session: &str, channel: &str, data: &Value) -> Vec<u8> {
    let now = gateway::util::now_ms();
    let from = roomcast_shared::From {
        client_id: "script".into(),
        user: "script".into(),
        role: Role::Controller,
        name: None,
    };
    let tail = gateway::envelope::encode_entry_tail(now, &from, data).expect("encodes");
    let now_s = now.to_string();
    let expires = (now + 3_600_000).to_string();
    let key = |k: &str| format!("rc:{{s:{session}}}:{k}");
    let (seq, hist, meta, events) = (key("seq"), key("hist"), key("meta"), key("ev"));
    let idem = key("idem:");
    // The gateway's script: the events prelude in front of publish.lua (no events: the
    // spec is empty). The gateway also wraps it to count recorded events; unwrapped, it
    // answers the script's own reply.
    let script = [
        &include_bytes!("../../redis/events.lua")[..],
        &include_bytes!("../../redis/publish.lua")[..],
    ]
    .concat();
    redis
        .cmd_bytes(&[
            b"EVAL",
            &script,
            b"6",
            seq.as_bytes(),
            hist.as_bytes(),
            meta.as_bytes(),
            channel.as_bytes(),
            events.as_bytes(),
            idem.as_bytes(),
            &tail.bytes,
            b"100",
            b"86400000",
            now_s.as_bytes(),
            b"",
            expires.as_bytes(),
            b"3600000",
            tail.id.as_bytes(),
            b"",
            b"",
        ])
        .expect("redis answers")
}

/// An HTTP response as the tests see it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a problem+json answer with `status` and `code`.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{}", self.body);
        assert_eq!(p["status"], status);
        assert!(p["title"].is_string() && p["detail"].is_string() && p["type"].is_string());
    }
}

/// One HTTP/1.1 request with an optional JSON body and a bearer credential.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    let authorization = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    call_with(addr, method, path, &headers, body).await
}

/// Sends raw request bytes and parses the (non-chunked or chunked) response.
pub async fn call_raw(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One HTTP/1.1 request with extra headers and an optional JSON body.
pub async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    ));
    call_raw(addr, req.as_bytes()).await
}

/// The value of the sample `name{labels} value` in a Prometheus text scrape (`labels` is
/// matched as a substring; "" matches an unlabelled sample).
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Gateway {
    /// One sample from this gateway's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        sample(&self.get("/metrics").await.1, name, labels).unwrap_or(0.0)
    }
}
