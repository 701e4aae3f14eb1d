//! TLS to Redis (`rediss://`) against a real redis-server that speaks only TLS, with
//! certificates made by `openssl` for the test: the traffic flows, the server's
//! certificate is always verified (CA, name), mutual TLS works, a URL that asks for TLS
//! never speaks plaintext, and settings that cannot be honoured exit 64. A TLS-only Redis
//! Cluster carries traffic between gateways, every node verified; so does a TLS-only
//! sentinel leading to a TLS-only primary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_shared::{Role, ServerFrame};
use serde_json::json;
use testkit::*;

#[tokio::test]
async fn a_rediss_url_verifies_the_server_and_carries_the_traffic() {
    let pki = Pki::create();
    let redis = TlsRedis::start(&pki, false);
    let ca = pki.path("ca.crt");
    let g = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TLS_CA", &ca)]);
    g.wait_ready().await;
    // Everything goes over TLS: the server has no plaintext port.
    let mut c = g.connect(&token("ann", &[Role::Controller])).await;
    c.join("tls-room", None).await;
    assert_eq!(c.publish("tls-room", json!({"over": "tls"})).await, 1);
    let frame = c
        .expect("the message back", |f| {
            matches!(f, ServerFrame::Message { .. })
        })
        .await;
    assert!(matches!(frame, ServerFrame::Message { seq: 1, .. }));

    // The certificate's DNS name, asked for explicitly, verifies too.
    let named = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_REDIS_TLS_CA", &ca),
            ("ROOMCAST_REDIS_TLS_SERVER_NAME", "redis.test"),
        ],
    );
    named.wait_ready().await;
}

#[tokio::test]
async fn the_server_certificate_is_always_verified() {
    let pki = Pki::create();
    let redis = TlsRedis::start(&pki, false);
    // The system's trust store does not know the test CA.
    let system = Gateway::start(&redis.url(), &[]);
    // A CA that did not sign the server's certificate.
    let other = pki.path("other.crt");
    let wrong_ca = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TLS_CA", &other)]);
    // The right CA, a name the certificate does not carry.
    let ca = pki.path("ca.crt");
    let wrong_name = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_REDIS_TLS_CA", &ca),
            ("ROOMCAST_REDIS_TLS_SERVER_NAME", "elsewhere.test"),
        ],
    );
    system
        .wait_redis_refusal(&["UnknownIssuer", "certificate"])
        .await;
    wrong_ca
        .wait_redis_refusal(&["UnknownIssuer", "certificate"])
        .await;
    wrong_name
        .wait_redis_refusal(&["NotValidForName", "certificate"])
        .await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::create();
    let redis = TlsRedis::start(&pki, true);
    let ca = pki.path("ca.crt");
    let anonymous = Gateway::start(&redis.url(), &[("ROOMCAST_REDIS_TLS_CA", &ca)]);
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let identified = Gateway::start(
        &redis.url(),
        &[
            ("ROOMCAST_REDIS_TLS_CA", &ca),
            ("ROOMCAST_REDIS_TLS_CERT", &cert),
            ("ROOMCAST_REDIS_TLS_KEY", &key),
        ],
    );
    identified.wait_ready().await;
    // Redis ends the handshake of a client without a certificate.
    anonymous.wait_redis_refusal(&[]).await;
}

#[tokio::test]
async fn a_url_that_asks_for_tls_never_speaks_plaintext() {
    // Not Redis: a listener that records the first bytes a client sends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                if tokio::io::AsyncReadExt::read_exact(&mut socket, &mut buf)
                    .await
                    .is_ok()
                {
                    let _ = tx.send(buf);
                }
            });
        }
    });
    let pki = Pki::create();
    let ca = pki.path("ca.crt");
    let _g = Gateway::start(
        &format!("rediss://127.0.0.1:{port}"),
        &[("ROOMCAST_REDIS_TLS_CA", &ca)],
    );
    let first = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("the gateway connected")
        .unwrap();
    // 0x16: a TLS handshake record (the ClientHello); a RESP command would start with '*'.
    assert_eq!(first[0], 0x16, "not a TLS record: {first:?}");
    assert_eq!(first[1], 0x03, "not a TLS record: {first:?}");
}

/// Runs `roomcast serve` with `env`: its exit code and stderr (it must exit by itself).
fn serve_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    cmd.env_clear()
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("ROOMCAST_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{env:?} was accepted: the gateway is running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    (status.code(), stderr)
}

#[tokio::test]
async fn tls_settings_that_cannot_be_honoured_exit_64() {
    let pki = Pki::create();
    let ca = pki.path("ca.crt");
    let empty = scratch_dir("empty").join("none.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let empty = empty.to_string_lossy().into_owned();
    let cert = pki.path("client.crt");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379"),
                ("ROOMCAST_REDIS_TLS_CA", &ca),
            ],
            "plaintext",
        ),
        (
            &[
                ("ROOMCAST_REDIS_URL", "rediss://127.0.0.1:6379"),
                ("ROOMCAST_REDIS_TLS_CA", "/nonexistent/ca.pem"),
            ],
            "ROOMCAST_REDIS_TLS_CA",
        ),
        (
            &[
                ("ROOMCAST_REDIS_URL", "rediss://127.0.0.1:6379"),
                ("ROOMCAST_REDIS_TLS_CA", &empty),
            ],
            "no certificate",
        ),
        (
            &[
                ("ROOMCAST_REDIS_URL", "rediss://127.0.0.1:6379"),
                ("ROOMCAST_REDIS_TLS_CA", &ca),
                ("ROOMCAST_REDIS_TLS_CERT", &cert),
            ],
            "go together",
        ),
        (
            &[
                ("ROOMCAST_REDIS_URL", "rediss://127.0.0.1:6379"),
                ("ROOMCAST_REDIS_TLS_CA", &ca),
                ("ROOMCAST_REDIS_TLS_SERVER_NAME", "not a name"),
            ],
            "SERVER_NAME",
        ),
    ];
    for (env, says) in cases {
        let (code, stderr) = serve_exit(env);
        assert_eq!(code, Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains(says), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let _ = Path::new(&ca);
}

/// TLS with Redis Cluster: the seeds and every node the gateway discovers are verified
/// against the CA, and messages cross gateways through sharded pub/sub over TLS.
#[tokio::test]
async fn a_tls_cluster_carries_the_traffic_between_gateways() {
    let pki = Pki::create();
    let cluster = TlsCluster::start(&pki);
    let ca = pki.path("ca.crt");
    let env = [("ROOMCAST_REDIS_TLS_CA", ca.as_str())];
    let a = Gateway::start(&cluster.url(), &env);
    let b = Gateway::start(&cluster.url(), &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut ctl = a.connect(&token("ctl", &[Role::Controller])).await;
    let mut displays = Vec::new();
    // Enough sessions that every shard carries some (16384 slots over three nodes).
    let sessions: Vec<String> = (0..12).map(|i| format!("tls-cluster-{i}")).collect();
    for session in &sessions {
        let mut tv = b
            .connect(&token(&format!("tv-{session}"), &[Role::Display]))
            .await;
        assert!(matches!(
            tv.join(session, None).await,
            ServerFrame::Joined { .. }
        ));
        displays.push(tv);
        ctl.join(session, None).await;
    }
    for session in &sessions {
        for n in 1..=3 {
            assert_eq!(ctl.publish(session, json!(n)).await, n);
        }
    }
    for (session, tv) in sessions.iter().zip(displays.iter_mut()) {
        assert_eq!(tv.messages(session, 3).await, vec![1, 2, 3]);
    }
    // And a wrong CA refuses every node: not ready.
    let other = pki.path("other.crt");
    let refused = Gateway::start(&cluster.url(), &[("ROOMCAST_REDIS_TLS_CA", other.as_str())]);
    refused
        .wait_redis_refusal(&["UnknownIssuer", "certificate"])
        .await;
}

/// TLS with Sentinel: a TLS-only primary and a TLS-only sentinel (which also speaks TLS to
/// the primary); the gateway asks the sentinel for the primary and connects to it, both
/// over verified TLS.
#[tokio::test]
async fn a_tls_sentinel_leads_to_a_tls_primary() {
    let pki = Pki::create();
    let primary = TlsRedis::start(&pki, false);
    let sentinel = TlsSentinel::start(&pki, primary.port);
    let port = sentinel.port;
    let ca = pki.path("ca.crt");
    let url = format!("rediss-sentinel://127.0.0.1:{port}?sentinelServiceName=rc");
    let g = Gateway::start(&url, &[("ROOMCAST_REDIS_TLS_CA", ca.as_str())]);
    g.wait_ready().await;
    let mut tv = g.connect(&token("tv", &[Role::Display])).await;
    tv.join("tls-sentinel", None).await;
    let mut ctl = g.connect(&token("ctl", &[Role::Controller])).await;
    ctl.join("tls-sentinel", None).await;
    for n in 1..=3 {
        assert_eq!(ctl.publish("tls-sentinel", json!(n)).await, n);
    }
    assert_eq!(tv.messages("tls-sentinel", 3).await, vec![1, 2, 3]);
}
