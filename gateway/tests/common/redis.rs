//! A private `redis-server` for tests: a free loopback port, a scratch directory, stopped
//! by pid on drop. Shared by the integration tests (`common`) and the gateway's own unit
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

/// A private redis-server on a free loopback port.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis::not_started();
        // The port was free when picked, but another test may take it before this server
        // binds it: then try another one.
        for _ in 0..5 {
            if redis.spawn() {
                return redis;
            }
            redis.port = free_port();
        }
        panic!("redis did not start on any of 5 free ports");
    }

    /// A port and a directory, no process yet: [`Redis::restart`] starts it.
    pub fn not_started() -> Redis {
        Redis {
            port: free_port(),
            dir: scratch_dir("redis"),
            child: None,
        }
    }

    /// Starts the server on `self.port`; false when that port was taken by another
    /// process (whose answers must not be mistaken for ours).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().expect("utf-8 dir"),
                "--loglevel",
                "warning",
            ])
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the server answers PING.
    pub fn ping(&self) -> bool {
        self.cmd(&["PING"]).is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command with redis-cli semantics over RESP and returns the raw reply.
    pub fn cmd(&self, args: &[&str]) -> Option<String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args)
            .map(|r| String::from_utf8_lossy(&r).into_owned())
    }

    /// Like [`Redis::cmd`], with binary arguments (msgpack values).
    pub fn cmd_bytes(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        cmd_at(self.addr(), args)
    }

    /// Kills the server (SIGKILL): an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
