//! Redis behind Sentinel (`redis-sentinel://`): a primary, a replica and three sentinels (quorum
//! two) the test starts. The primary is killed once the replica has everything; the gateways turn
//! not-ready, follow the promotion by themselves, are ready again, and every acked message
//! is delivered once, in order, with the publishes after the failover.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use roomcast_shared::Role;
use serde_json::json;

/// A redis-server (or sentinel) process of the test, killed by pid on drop.
struct Node {
    port: u16,
    child: Option<Child>,
    _dir: PathBuf,
}

impl Node {
    fn spawn(args: &[String], port: u16, dir: PathBuf) -> Node {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        Node {
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    fn data(replica_of: Option<u16>) -> Node {
        let port = free_port();
        let dir = scratch_dir("sentinel-data");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
            "--dir",
            dir.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        Node::spawn(&args, port, dir)
    }

    /// One of a group of sentinels for `primary` that needs `quorum` of them to agree.
    fn sentinel(primary: u16, quorum: u32) -> Node {
        Node::sentinel_with(primary, quorum, "")
    }

    /// A sentinel for `primary`; `extra` lines go to its config (a `requirepass`).
    fn sentinel_with(primary: u16, quorum: u32, extra: &str) -> Node {
        let port = free_port();
        let dir = scratch_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel monitor rc 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds rc 1000\nsentinel failover-timeout rc 5000\n\
                 sentinel parallel-syncs rc 1\n{extra}",
                dir = dir.display()
            ),
        )
        .unwrap();
        let args = vec![
            conf.to_string_lossy().into_owned(),
            "--sentinel".to_string(),
        ];
        Node::spawn(&args, port, dir)
    }

    fn cmd(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        cmd_at(([127, 0, 0, 1], self.port).into(), &args)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_sentinel_failover_and_delivers_every_acked_message() {
    let mut primary = Node::data(None);
    wait_for(DEADLINE, "the primary", || async {
        primary
            .cmd(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    })
    .await;
    let replica = Node::data(Some(primary.port));
    wait_for(DEADLINE, "the replica in sync", || async {
        replica
            .cmd(&["INFO", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
    })
    .await;
    // Three sentinels, two of which must agree that the primary is down.
    let sentinels: Vec<Node> = (0..3).map(|_| Node::sentinel(primary.port, 2)).collect();
    wait_for(
        Duration::from_secs(20),
        "each sentinel sees the replica and the two others",
        || async {
            sentinels.iter().all(|s| {
                s.cmd(&["SENTINEL", "REPLICAS", "rc"])
                    .is_some_and(|r| r.contains(&replica.port.to_string()))
                    && s.cmd(&["SENTINEL", "MASTER", "rc"]).is_some_and(|r| {
                        r.lines()
                            .skip_while(|l| !l.contains("num-other-sentinels"))
                            .nth(2)
                            .is_some_and(|v| v.trim() == "2")
                    })
            })
        },
    )
    .await;

    let url = format!(
        "redis-sentinel://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}&sentinelServiceName=rc",
        sentinels[0].port, sentinels[1].port, sentinels[2].port
    );
    let env = [("ROOMCAST_REDIS_TIMEOUT", "1s")];
    let a = Gateway::start(&url, &env);
    let b = Gateway::start(&url, &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    tv.join("failover", None).await;
    let mut remote = b.connect(&token("ann", &[Role::Controller])).await;
    remote.join("failover", None).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(remote.publish("failover", json!({"before": i})).await);
    }

    // The acked messages reached the replica (its offset caught up with the primary's):
    // the ones a failover must keep. (Durable mode would make each ack wait for that, but
    // the promoted replica has no replica of its own to confirm later publishes.)
    let offset = |node: &Node, field: &str| {
        node.cmd(&["INFO", "replication"]).and_then(|i| {
            i.lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|v| v.trim().to_string())
        })
    };
    wait_for(DEADLINE, "the replica caught up", || async {
        let p = offset(&primary, "master_repl_offset:");
        p.is_some() && p == offset(&replica, "slave_repl_offset:")
    })
    .await;
    primary.kill();
    let killed = std::time::Instant::now();
    wait_for(
        Duration::from_secs(10),
        "readiness 503 without a primary",
        || async { a.get("/health/ready").await.0 == 503 },
    )
    .await;
    // Sentinel promotes the replica (down after 1 s, then the election); both gateways
    // find it by themselves.
    wait_for(Duration::from_secs(30), "the replica promoted", || async {
        replica.cmd(&["ROLE"]).is_some_and(|r| r.contains("master"))
    })
    .await;
    wait_for(Duration::from_secs(30), "A ready again", || async {
        a.get("/health/ready").await.0 == 200
    })
    .await;
    wait_for(Duration::from_secs(30), "B ready again", || async {
        b.get("/health/ready").await.0 == 200
    })
    .await;
    eprintln!(
        "sentinel failover: both gateways ready {:.1} s after the primary died",
        killed.elapsed().as_secs_f64()
    );

    // The controller's connection survived on B; publishing goes to the new primary. A
    // publish caught by the switch may be refused `unavailable`: retry it, as clients do.
    let retry_until = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0..5 {
        let seq = loop {
            remote
                .send_json(json!({"type": "publish", "session": "failover", "data": {"after": i}, "ref": format!("a{i}")}))
                .await;
            let answer = remote
                .expect("the publish's answer", |f| {
                    matches!(f, roomcast_shared::ServerFrame::Ack { reference: Some(r), .. }
                        | roomcast_shared::ServerFrame::Error { reference: Some(r), .. } if *r == format!("a{i}"))
                })
                .await;
            match answer {
                roomcast_shared::ServerFrame::Ack { seq: Some(seq), .. } => break seq,
                other => {
                    assert!(
                        std::time::Instant::now() < retry_until,
                        "publishes still refused after the failover: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
            }
        };
        acked.push(seq);
    }
    // The display's numbering never went back: everything acked arrives once, in order.
    let seen = tv.messages("failover", acked.len()).await;
    assert_eq!(seen, acked, "every acked message, once, in order");
    assert_eq!(acked, (1..=10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_sentinel_password_comes_from_the_url() {
    let primary = Node::data(None);
    wait_for(DEADLINE, "the primary", || async {
        primary
            .cmd(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    })
    .await;
    let sentinel = Node::sentinel_with(primary.port, 1, "requirepass sentinel-secret-42\n");
    let base = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=rc",
        sentinel.port
    );
    let with = Gateway::start(&format!("{base}&sentinelPassword=sentinel-secret-42"), &[]);
    let without = Gateway::start(&base, &[]);
    with.wait_ready().await;
    // Without it the sentinel refuses to say where the primary is, and the log says why.
    without.wait_redis_refusal(&[]).await;
}
