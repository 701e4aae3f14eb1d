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

use gateway::auth::{Authenticator, Claims};
use gateway::config::{Config, TokenArgs};
use roomcast_shared::{Role, ServerFrame};
use serde_json::Value;

mod http;
mod launch;
mod proxy;
mod receiver;
mod redis;
mod sentinel;
mod tls;
mod ws;
pub use http::{call, call_raw, call_with, http_get, http_request, sample, Resp};
pub use proxy::Proxy;
pub use receiver::{signature_valid, verify_with_standardwebhooks, Answer, Delivery, Receiver};
pub use redis::{cmd_at, free_cluster_port, free_port, scratch_dir, ClusterNode, Redis, Server};
pub use sentinel::{RedisNode, SentinelDeployment};
pub use tls::{Pki, TlsCluster, TlsRedis, TlsSentinel};
pub use ws::{message_seqs, Closed, NotJoined, WsClient};

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
