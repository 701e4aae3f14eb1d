//! Redis behind Sentinel for tests: redis-server and sentinel processes on free loopback
//! ports ([`RedisNode`], killed by pid on drop), and a deployment of a primary, its replica
//! in sync and three sentinels (quorum two) that all see both ([`SentinelDeployment`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{cmd_at, free_port, scratch_dir, wait_for, DEADLINE};

/// A redis-server (or sentinel) process of the test, killed by pid on drop.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    _dir: PathBuf,
}

impl RedisNode {
    fn spawn(args: &[String], port: u16, dir: PathBuf) -> RedisNode {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        RedisNode {
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    pub fn data(replica_of: Option<u16>) -> RedisNode {
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
        RedisNode::spawn(&args, port, dir)
    }

    /// One of a group of sentinels for `primary` that needs `quorum` of them to agree.
    pub fn sentinel(primary: u16, quorum: u32) -> RedisNode {
        RedisNode::sentinel_with(primary, quorum, "")
    }

    /// A sentinel for `primary`; `extra` lines go to its config (a `requirepass`).
    pub fn sentinel_with(primary: u16, quorum: u32, extra: &str) -> RedisNode {
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
        RedisNode::spawn(&args, port, dir)
    }

    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        cmd_at(([127, 0, 0, 1], self.port).into(), &args)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    /// Sends a signal by name (`-STOP`, `-CONT`).
    pub fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, its replica in sync, and three sentinels (quorum two) that all see both.
pub struct SentinelDeployment {
    pub primary: RedisNode,
    pub replica: RedisNode,
    _sentinels: Vec<RedisNode>,
    /// The gateway's `redis-sentinel://` URL.
    pub url: String,
}

impl SentinelDeployment {
    pub async fn start() -> SentinelDeployment {
        let primary = RedisNode::data(None);
        wait_for(DEADLINE, "the primary", || async {
            primary
                .cmd(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG"))
        })
        .await;
        let replica = RedisNode::data(Some(primary.port));
        wait_for(DEADLINE, "the replica in sync", || async {
            replica
                .cmd(&["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        // Three sentinels, two of which must agree that the primary is down.
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| RedisNode::sentinel(primary.port, 2))
            .collect();
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
        SentinelDeployment {
            primary,
            replica,
            _sentinels: sentinels,
            url,
        }
    }

    /// Waits until the replica has every write the primary took.
    pub async fn replica_caught_up(&self) {
        let offset = |node: &RedisNode, field: &str| {
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
