//! Private `redis-server` processes for tests: a free loopback port, a scratch directory,
//! stopped by pid on drop; one standalone server or a local Redis Cluster. Shared by the integration tests (`common`) and the gateway's own unit
//! tests, which include this file by path; so it uses nothing but std.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const START_DEADLINE: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Unique per process; the pid separates processes.
static NEXT: AtomicU64 = AtomicU64::new(0);

pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "roomcast-test-{}-{}-{}",
        std::process::id(),
        tag,
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// One private redis-server process on a loopback port, with its own directory.
pub struct Server {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts `redis-server` with `args` added to the private defaults, on a free port
    /// (`cluster`: one whose cluster-bus port, +10000, is free too).
    pub fn start(args: &[&str], cluster: bool) -> Server {
        let pick = || {
            if cluster {
                free_cluster_port()
            } else {
                free_port()
            }
        };
        let mut server = Server {
            port: pick(),
            dir: scratch_dir("redis"),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        // The port was free when picked, but another test may take it before this server
        // binds it: then try another one.
        for _ in 0..5 {
            if server.spawn() {
                return server;
            }
            server.port = pick();
        }
        panic!("redis did not start on any of 5 free ports");
    }

    /// Starts the server on `self.port`; false when that port was taken by another
    /// process (whose answers must not be mistaken for ours).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("utf-8 dir").to_string();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--loglevel",
            "warning",
        ];
        args.extend(self.args.iter().map(String::as_str));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                self.child = None;
                return false;
            }
            if self.ping() {
                let info = self.cmd(&["INFO", "server"]).unwrap_or_default();
                return info.contains(&format!("process_id:{pid}\r\n")) || {
                    self.stop();
                    false
                };
            }
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ping(&self) -> bool {
        self.cmd(&["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    }

    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        cmd_at(self.addr(), &args).map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (empty: no persistence; a cluster
    /// node keeps its nodes.conf, so it rejoins its cluster).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster-bus port (+10000) is free too, both below 65536.
pub fn free_cluster_port() -> u16 {
    let seed = std::process::id() as u64 * 7919 + NEXT.fetch_add(1, Ordering::Relaxed) * 104_729;
    for i in 0..2000u64 {
        let port = 20_000 + ((seed + i * 7_477) % 25_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// The Redis a test runs against: one private server, or, when `ROOMCAST_TEST_REDIS` is
/// `cluster`, a private Redis Cluster of 3 primaries, so that the same suites prove both.
pub struct Redis {
    /// The first (or only) server's port.
    pub port: u16,
    servers: Vec<Server>,
    cluster: bool,
}

impl Redis {
    /// The Redis the suite was asked for (see the type).
    pub fn start() -> Redis {
        match std::env::var("ROOMCAST_TEST_REDIS").as_deref() {
            Ok("cluster") => Redis::cluster(3, 0),
            _ => Redis::standalone(),
        }
    }

    /// Whether the suite runs against a cluster.
    pub fn suite_is_cluster() -> bool {
        std::env::var("ROOMCAST_TEST_REDIS").as_deref() == Ok("cluster")
    }

    /// One private server.
    pub fn standalone() -> Redis {
        let server = Server::start(&[], false);
        Redis {
            port: server.port,
            servers: vec![server],
            cluster: false,
        }
    }

    /// A port and a directory, no process yet: [`Redis::restart`] starts it.
    pub fn not_started() -> Redis {
        let server = Server {
            port: free_port(),
            dir: scratch_dir("redis"),
            args: Vec::new(),
            child: None,
        };
        Redis {
            port: server.port,
            servers: vec![server],
            cluster: false,
        }
    }

    /// A private Redis Cluster: `primaries` primaries with `replicas` replicas each, the
    /// slots spread evenly by `redis-cli --cluster create`, a short node timeout so that a
    /// failover takes about two seconds.
    pub fn cluster(primaries: usize, replicas: usize) -> Redis {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A replica may take over whatever its link history: the tests kill
            // primaries on purpose, soon after the cluster formed.
            "--cluster-replica-validity-factor",
            "0",
        ];
        let servers: Vec<Server> = (0..primaries * (1 + replicas))
            .map(|_| Server::start(&args, true))
            .collect();
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(servers.iter().map(|s| format!("127.0.0.1:{}", s.port)));
        create.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .expect("redis-cli must be installed (make test installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let redis = Redis {
            port: servers[0].port,
            servers,
            cluster: true,
        };
        redis.wait_cluster_ok();
        if replicas > 0 {
            redis.wait_replicas_linked();
        }
        redis
    }

    /// Waits until every running replica's link to its primary is up (its initial sync
    /// done), so that a failover has a replica with the data to promote.
    pub fn wait_replicas_linked(&self) {
        self.wait_every_running("replicas in sync", |s| {
            s.cmd(&["INFO", "replication"])
                .is_some_and(|i| i.contains("role:master") || i.contains("master_link_status:up"))
        });
    }

    /// Polls until `ready` holds for every running server (a killed one does not count),
    /// for at most 30 s. Blocking: call it from a blocking context in async tests.
    fn wait_every_running(&self, what: &str, ready: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .servers
            .iter()
            .filter(|s| s.pid().is_some())
            .all(&ready)
        {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every running node reports the cluster healthy and every slot served.
    pub fn wait_cluster_ok(&self) {
        self.wait_every_running("the cluster to be ok", |s| {
            s.cmd(&["CLUSTER", "INFO"]).is_some_and(|i| {
                i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
            })
        });
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The servers: a standalone's one, or every cluster node (primaries and replicas).
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    pub fn servers_mut(&mut self) -> &mut [Server] {
        &mut self.servers
    }

    /// `ROOMCAST_REDIS_URL` for a gateway: every node as a seed on a cluster.
    pub fn url(&self) -> String {
        if !self.cluster {
            return format!("redis://127.0.0.1:{}", self.port);
        }
        let seeds: Vec<String> = self.servers[1..]
            .iter()
            .map(|s| format!("node=127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.port,
            seeds.join("&")
        )
    }

    /// The first server's address (the only one on a standalone).
    pub fn addr(&self) -> SocketAddr {
        self.servers[0].addr()
    }

    /// Whether every server answers PING.
    pub fn ping(&self) -> bool {
        self.servers.iter().all(Server::ping)
    }

    /// Sends one command with redis-cli semantics over RESP and returns the raw reply.
    /// On a cluster it follows MOVED to the node that owns the key.
    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    /// Like [`Redis::cmd`], with binary arguments (msgpack values).
    pub fn cmd_bytes(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let mut addr = self.addr();
        for _ in 0..3 {
            let reply = cmd_at(addr, args)?;
            match moved_to(&reply) {
                Some(to) if self.cluster => addr = to,
                _ => return Some(reply),
            }
        }
        None
    }

    /// One command on every server (FLUSHALL, CLIENT KILL, INFO): their replies.
    pub fn cmd_all(&self, args: &[&str]) -> Vec<Option<String>> {
        self.servers.iter().map(|s| s.cmd(args)).collect()
    }

    /// Kills every server (SIGKILL): an outage.
    pub fn stop(&mut self) {
        self.servers.iter_mut().for_each(Server::stop);
    }

    /// Starts every server again on its port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        self.servers.iter_mut().for_each(Server::restart);
        if self.cluster {
            self.wait_cluster_ok();
        }
    }
}

/// One node of a cluster as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// The primary's id, for a replica.
    pub primary_id: Option<String>,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

impl Redis {
    /// The cluster's nodes as a live node sees them (failed nodes excluded).
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        let reply = self
            .servers
            .iter()
            .find_map(|s| s.cmd(&["CLUSTER", "NODES"]).filter(|r| r.starts_with('$')))
            .expect("a cluster node answers CLUSTER NODES");
        reply
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 || f[2].contains("fail") {
                    return None;
                }
                let port = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = f[8..]
                    .iter()
                    .filter(|r| !r.starts_with('['))
                    .filter_map(|r| match r.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => r.parse().ok().map(|s| (s, s)),
                    })
                    .collect();
                Some(ClusterNode {
                    id: f[0].to_string(),
                    port,
                    primary: f[2].contains("master"),
                    primary_id: (f[3] != "-").then(|| f[3].to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The hash slot of a key (CLUSTER KEYSLOT).
    pub fn keyslot(&self, key: &str) -> u16 {
        let reply = self.cmd(&["CLUSTER", "KEYSLOT", key]).expect("keyslot");
        reply
            .trim_start_matches(':')
            .trim_end()
            .parse()
            .expect("slot")
    }

    /// The primary serving `slot`.
    pub fn owner(&self, slot: u16) -> ClusterNode {
        self.cluster_nodes()
            .into_iter()
            .find(|n| n.primary && n.owns(slot))
            .expect("an owner for every slot")
    }

    /// The port of the live primary serving `slot`; none while its primary has failed and
    /// no replica has taken over yet.
    pub fn owner_port(&self, slot: u16) -> Option<u16> {
        self.cluster_nodes()
            .into_iter()
            .find(|n| n.primary && n.owns(slot))
            .map(|n| n.port)
    }

    /// Moves `slot` to the primary on port `to` as `redis-cli --cluster reshard` does:
    /// IMPORTING/MIGRATING, MIGRATE the keys in batches, then give the slot to `to` on
    /// every primary. Traffic keeps flowing meanwhile (ASK, TRYAGAIN).
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let nodes = self.cluster_nodes();
        let source = nodes
            .iter()
            .find(|n| n.primary && n.owns(slot))
            .expect("source");
        let target = nodes.iter().find(|n| n.port == to).expect("target");
        let at = |port: u16, args: &[&str]| {
            let reply = cmd_at(
                SocketAddr::from(([127, 0, 0, 1], port)),
                &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>(),
            )
            .map(|r| String::from_utf8_lossy(&r).into_owned())
            .unwrap_or_default();
            assert!(!reply.starts_with('-'), "{args:?} on {port}: {reply}");
            reply
        };
        let slot_s = slot.to_string();
        at(
            target.port,
            &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &source.id],
        );
        at(
            source.port,
            &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &target.id],
        );
        loop {
            let reply = at(source.port, &["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            let keys: Vec<&str> = reply
                .split("\r\n")
                .skip(1)
                .filter(|l| !l.starts_with('$') && !l.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            at(source.port, &args);
        }
        at(
            target.port,
            &["CLUSTER", "SETSLOT", &slot_s, "NODE", &target.id],
        );
        at(
            source.port,
            &["CLUSTER", "SETSLOT", &slot_s, "NODE", &target.id],
        );
        for node in nodes
            .iter()
            .filter(|n| n.primary && n.id != source.id && n.id != target.id)
        {
            at(
                node.port,
                &["CLUSTER", "SETSLOT", &slot_s, "NODE", &target.id],
            );
        }
    }
}

/// The node a `-MOVED <slot> <host>:<port>` reply points to.
fn moved_to(reply: &[u8]) -> Option<SocketAddr> {
    let line = std::str::from_utf8(reply.strip_prefix(b"-MOVED ")?).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One command to the Redis at `addr` (a replica, a node the test started itself).
pub fn cmd_at(addr: SocketAddr, args: &[&[u8]]) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    stream.write_all(&req).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = stream.read(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}
