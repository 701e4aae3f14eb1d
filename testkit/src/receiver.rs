//! A webhook receiver for tests: an HTTP/1.1 server on loopback that records every
//! request (path, Standard Webhooks headers, body) and answers as the test says
//! (a status, a JSON body, a delay, or never). Signatures are checked twice: here with
//! our own HMAC, and by Python's `standardwebhooks` package, an implementation that
//! shares no code with the gateway.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub at: Instant,
    /// What it was answered (0: never answered).
    pub status: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// How to answer a request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    Json(u16, Value),
    /// Answer after a delay.
    Later(Duration, Box<Answer>),
    /// Read the request, never answer (the connection stays open until the test ends).
    Never,
}

type Plan = dyn Fn(&Delivery, usize) -> Answer + Send + Sync;

struct State {
    deliveries: Vec<Delivery>,
    plan: Arc<Plan>,
}

pub struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Starts a receiver answering 204 to everything.
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            deliveries: Vec::new(),
            plan: Arc::new(|_: &Delivery, _: usize| Answer::Status(204)),
        }));
        let stop = CancellationToken::new();
        let (s, st) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = st.cancelled() => return,
                };
                if let Ok((stream, _)) = conn {
                    tokio::spawn(serve(stream, s.clone(), st.clone()));
                }
            }
        });
        Receiver { addr, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How to answer from now on: given the request and how many earlier requests had
    /// the same `webhook-id` (0 for a first try).
    pub fn answer_with(&self, plan: impl Fn(&Delivery, usize) -> Answer + Send + Sync + 'static) {
        self.state.lock().unwrap().plan = Arc::new(plan);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// The bodies of requests to `path` answered 2xx, in arrival order.
    pub fn acknowledged(&self, path: &str) -> Vec<Value> {
        self.deliveries()
            .iter()
            .filter(|d| d.path == path && (200..300).contains(&d.status))
            .map(Delivery::json)
            .collect()
    }

    /// Waits until `cond` holds over the deliveries so far.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&[Delivery]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            if cond(&self.deliveries()) {
                return;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .deliveries()
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {} {}",
                            d.path,
                            d.status,
                            String::from_utf8_lossy(&d.body)
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; received:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, stop: CancellationToken) {
    let mut buf = Vec::new();
    loop {
        // Read one request head, then its body (Content-Length).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::select! {
                n = stream.read(&mut chunk) => n.unwrap_or(0),
                _ = stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let mut delivery = Delivery {
            path,
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body,
            at: Instant::now(),
            status: 0,
        };
        let (plan, index) = {
            let mut s = state.lock().unwrap();
            let earlier = s
                .deliveries
                .iter()
                .filter(|d| d.id == delivery.id && !d.id.is_empty())
                .count();
            s.deliveries.push(delivery.clone());
            (s.plan.clone(), (s.deliveries.len() - 1, earlier))
        };
        let mut answer = plan(&delivery, index.1);
        loop {
            match answer {
                Answer::Later(delay, next) => {
                    tokio::time::sleep(delay).await;
                    answer = *next;
                }
                Answer::Never => {
                    stop.cancelled().await;
                    return;
                }
                _ => break,
            }
        }
        let (status, reply) = match answer {
            Answer::Status(s) => (s, String::new()),
            Answer::Json(s, v) => (s, v.to_string()),
            _ => unreachable!(),
        };
        delivery.status = status;
        state.lock().unwrap().deliveries[index.0].status = status;
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Our own check of a delivery's signature against `whsec_` secrets: true when one of
/// its `v1,` signatures is the HMAC-SHA256 of `id.timestamp.body` under one of them.
pub fn signature_valid(d: &Delivery, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", d.id, d.timestamp).as_bytes());
    mac.update(&d.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    d.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
}

/// Checks every delivery's signature with Python's `standardwebhooks` (PyPI) under
/// `secret`: the independent implementation. Its interpreter is the test venv's
/// (`make deps` installs it) or `ROOMCAST_TEST_PYTHON`.
pub fn verify_with_standardwebhooks(deliveries: &[Delivery], secret: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var("ROOMCAST_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".run/py-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run `make deps` (scripts/install-deps.sh --test) to install standardwebhooks",
        python.display()
    );
    let list: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id, "timestamp": d.timestamp, "signature": d.signature,
                "body": String::from_utf8_lossy(&d.body),
            })
        })
        .collect();
    let file = crate::scratch_dir("webhooks").join("deliveries.json");
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/verify_webhooks.py"))
        .arg(&file)
        .arg(secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(verified, deliveries.len());
}
