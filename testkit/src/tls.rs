//! Redis over TLS for tests: a PKI made by `openssl` (a CA, a server certificate for
//! `redis.test` and 127.0.0.1, a client certificate, an unrelated CA), and TLS-only
//! servers on free loopback ports, killed by pid on drop: a standalone server, a Cluster of
//! three primaries (TLS on the cluster bus too), a sentinel.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_cluster_port, free_port, scratch_dir, KilledOnDrop, DEADLINE};

/// A CA, a server certificate for `redis.test` and 127.0.0.1, a client certificate, and an
/// unrelated CA, in a scratch directory.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn create() -> Pki {
        let dir = scratch_dir("pki");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        let script = format!(
            "set -e
             openssl req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=roomcast-test-ca
             openssl req -x509 {ec} -keyout other.key -out other.crt -days 2 -subj /CN=unrelated-ca
             openssl req {ec} -keyout server.key -out server.csr -subj /CN=redis.test
             printf 'subjectAltName=DNS:redis.test,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > server.ext
             openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt
             openssl req {ec} -keyout client.key -out client.csr -subj /CN=roomcast-gateway
             printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext
             openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt"
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .current_dir(&dir)
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

/// A redis-server with no plaintext port, only TLS.
pub struct TlsRedis {
    pub port: u16,
    child: Child,
    _dir: PathBuf,
}

impl TlsRedis {
    pub fn start(pki: &Pki, client_certificates: bool) -> TlsRedis {
        let dir = scratch_dir("tls-redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--tls-cert-file", &pki.path("server.crt")])
            .args(["--tls-key-file", &pki.path("server.key")])
            .args(["--tls-ca-cert-file", &pki.path("ca.crt")])
            .args([
                "--tls-auth-clients",
                if client_certificates { "yes" } else { "no" },
            ])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS redis did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three primaries that speak only TLS, clients and cluster bus alike.
pub struct TlsCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    _dirs: Vec<PathBuf>,
}

impl TlsCluster {
    pub fn start(pki: &Pki) -> TlsCluster {
        let mut cluster = TlsCluster {
            ports: Vec::new(),
            children: Vec::new(),
            _dirs: Vec::new(),
        };
        for _ in 0..3 {
            let dir = scratch_dir("tls-cluster");
            let port = free_cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--tls-cluster", "yes"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--tls-cert-file", &pki.path("server.crt")])
                .args(["--tls-key-file", &pki.path("server.key")])
                .args(["--tls-ca-cert-file", &pki.path("ca.crt")])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            cluster.ports.push(port);
            cluster.children.push(child);
            cluster._dirs.push(dir);
        }
        let deadline = Instant::now() + DEADLINE;
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "TLS cluster node did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut create = vec![
            "--tls".to_string(),
            "--cacert".into(),
            pki.path("ca.crt"),
            "--cluster".into(),
            "create".into(),
        ];
        create.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.push("--cluster-yes".into());
        let out = Command::new("redis-cli").args(&create).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in &cluster.ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["--tls", "--cacert", &pki.path("ca.crt")])
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the TLS cluster did not become ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    pub fn url(&self) -> String {
        format!(
            "rediss-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A sentinel that speaks only TLS (to clients and to the primary), watching the TLS
/// primary on `primary_port` as `rc`; answers once it names that primary.
pub struct TlsSentinel {
    pub port: u16,
    _process: KilledOnDrop,
    _dir: PathBuf,
}

impl TlsSentinel {
    pub fn start(pki: &Pki, primary_port: u16) -> TlsSentinel {
        let dir = scratch_dir("tls-sentinel");
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients no\ntls-replication yes\n\
                 sentinel monitor rc 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds rc 1000\n",
                dir = dir.display(),
                cert = pki.path("server.crt"),
                key = pki.path("server.key"),
                ca = pki.path("ca.crt"),
                primary = primary_port,
            ),
        )
        .unwrap();
        let process = KilledOnDrop(
            Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel"),
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = Command::new("redis-cli")
                .args(["--tls", "--cacert", &pki.path("ca.crt")])
                .args([
                    "-p",
                    &port.to_string(),
                    "SENTINEL",
                    "get-master-addr-by-name",
                    "rc",
                ])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&answer.stdout).contains(&primary_port.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "the TLS sentinel did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsSentinel {
            port,
            _process: process,
            _dir: dir,
        }
    }
}
