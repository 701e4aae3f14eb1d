//! Redis behind Sentinel (`redis-sentinel://`): a primary, a replica and three sentinels (quorum
//! two) the test starts. The primary is killed once the replica has everything; the gateways turn
//! not-ready, follow the promotion by themselves, are ready again, and every acked message
//! is delivered once, in order, with the publishes after the failover.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roomcast_shared::{close, Role, ServerFrame};
use serde_json::json;
use testkit::*;

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

    /// Sends a signal by name (`-STOP`, `-CONT`).
    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
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

/// A primary, its replica in sync, and three sentinels (quorum two) that all see both.
struct Deployment {
    primary: Node,
    replica: Node,
    _sentinels: Vec<Node>,
    /// The gateway's `redis-sentinel://` URL.
    url: String,
}

impl Deployment {
    async fn start() -> Deployment {
        let primary = Node::data(None);
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
        Deployment {
            primary,
            replica,
            _sentinels: sentinels,
            url,
        }
    }

    /// Waits until the replica has every write the primary took.
    async fn replica_caught_up(&self) {
        let offset = |node: &Node, field: &str| {
            node.cmd(&["INFO", "replication"]).and_then(|i| {
                i.lines()
                    .find_map(|l| l.strip_prefix(field))
                    .map(|v| v.trim().to_string())
            })
        };
        wait_for(DEADLINE, "the replica caught up", || async {
            let p = offset(&self.primary, "master_repl_offset:");
            p.is_some() && p == offset(&self.replica, "slave_repl_offset:")
        })
        .await;
    }
}

/// Publishes, retrying while a failover refuses it `unavailable` (as clients do); answers
/// the acked seq.
async fn publish_retrying(client: &mut WsClient, session: &str, data: serde_json::Value) -> u64 {
    let retry_until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reference = gateway::util::random_id(8);
        client
            .send_json(
                json!({"type": "publish", "session": session, "data": data, "ref": reference}),
            )
            .await;
        let answer = client
            .expect("the publish's answer", |f| {
                matches!(f, ServerFrame::Ack { reference: Some(r), .. }
                    | ServerFrame::Error { reference: Some(r), .. } if *r == reference)
            })
            .await;
        match answer {
            ServerFrame::Ack { seq: Some(seq), .. } => return seq,
            other => {
                assert!(
                    std::time::Instant::now() < retry_until,
                    "publishes still refused after the failover: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_a_sentinel_failover_and_delivers_every_acked_message() {
    let mut d = Deployment::start().await;
    let env = [("ROOMCAST_REDIS_TIMEOUT", "1s")];
    let a = Gateway::start(&d.url, &env);
    let b = Gateway::start(&d.url, &env);
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
    d.replica_caught_up().await;
    d.primary.kill();
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
        d.replica
            .cmd(&["ROLE"])
            .is_some_and(|r| r.contains("master"))
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
    for i in 0..5 {
        acked.push(publish_retrying(&mut remote, "failover", json!({"after": i})).await);
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

const KEY: &str = "sentinel-server-key-0123456789";

/// A failover that loses acked writes: five messages reach the replica, then the replica
/// is cut off (paused, its link killed) and five more are acked and delivered (6..10).
/// The primary dies and Sentinel promotes the stale replica, whose numbering is at 5
/// under the same epoch; the next publishes are acked 6..13 of that fork. Losing 6..10 is
/// what asynchronous replication does (README). What must not happen: the display taking
/// the fork's 11..13 for what follows its 10, or its rejoin being told nothing was missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_stale_replica_is_never_passed_off_as_continuous() {
    let mut d = Deployment::start().await;
    // A grace longer than the failover: the display stays connected through it, so its
    // gateway, not its reconnect, has to notice the fork.
    let env = [
        ("ROOMCAST_REDIS_TIMEOUT", "1s"),
        ("ROOMCAST_REDIS_LOST_GRACE", "60s"),
        ("ROOMCAST_API_KEY", KEY),
    ];
    let a = Gateway::start(&d.url, &env);
    let b = Gateway::start(&d.url, &env);
    a.wait_ready().await;
    b.wait_ready().await;
    let mut tv = a.connect(&token("tv", &[Role::Display])).await;
    let ServerFrame::Joined { epoch, .. } = tv.join("fork", None).await else {
        panic!("not joined");
    };
    // The server API publishes through B: a controller's own connection would be told
    // to resync (4010) by B's gateway, as the display is by A's.
    for n in 1..=5 {
        assert_eq!(b.server_publish(KEY, "fork", json!({"kept": n})).await, n);
    }
    d.replica_caught_up().await;
    d.replica.signal("-STOP");
    assert!(d
        .primary
        .cmd(&["CLIENT", "KILL", "TYPE", "replica"])
        .is_some_and(|r| r.starts_with(':')));
    for n in 6..=10 {
        assert_eq!(b.server_publish(KEY, "fork", json!({"lost": n})).await, n);
    }
    let seen = tv.message_ids("fork", 10).await;
    assert_eq!(
        seen.iter().map(|m| m.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let (ten, ten_id) = seen[9].clone();

    d.primary.kill();
    d.replica.signal("-CONT");
    wait_for(
        Duration::from_secs(30),
        "the stale replica promoted",
        || async {
            d.replica
                .cmd(&["ROLE"])
                .is_some_and(|r| r.contains("master"))
        },
    )
    .await;
    let mut acked = Vec::new();
    for n in 0..8 {
        acked.push(b.server_publish(KEY, "fork", json!({"fork": n})).await);
    }
    assert_eq!(
        acked,
        (6..=13).collect::<Vec<u64>>(),
        "the fork reuses 6..10"
    );

    // The display's stream ends with 4010 before any message of the fork.
    let (after, closed) = tv.seqs_until_closed(Duration::from_secs(30)).await;
    assert_eq!((after, closed), (vec![], Closed::Code(close::RESYNC)));
    // Its rejoin names what it saw at 10: not the fork's 10, so not recovered, with the
    // whole window the session now has (the fork's 6..13 included).
    // (A gateway still settling may refuse it `unavailable`: it is joined again.)
    let (_back, (now, recovered, history)) = WsClient::rejoin_retrying(
        &a,
        &token("tv", &[Role::Display]),
        "fork",
        ten,
        Some(&epoch),
        Some(&ten_id),
    )
    .await;
    assert!(!recovered);
    assert_eq!(history, (1..=13).collect::<Vec<u64>>());
    // The gateways renamed the forked numbering, so a client that names only the epoch
    // (an older SDK) is told too.
    assert_ne!(now, epoch);
    let (_old_client, (_, recovered, _)) = WsClient::rejoin_retrying(
        &b,
        &token("old", &[Role::Display]),
        "fork",
        ten,
        Some(&epoch),
        None,
    )
    .await;
    assert!(!recovered, "the old epoch names a numbering that forked");
}
