//! Gateways for the drivers of `cargo xtask` (soak, chaos): a built binary on a port of
//! its own, with the production defaults plus what the driver sets (not the test
//! defaults of [`Gateway::start`]), its output in a log file, ready before it is used.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{free_port, http_get, Gateway};

impl Gateway {
    /// Starts `bin` with `env` (the rest of the environment is inherited, as a shell
    /// would), `ROOMCAST_LISTEN` on a free loopback port and `ROOMCAST_NODE_ID`
    /// `<name>-<port>`; logs to `<logs>/gateway-<port>.log`. Waits up to `within` for
    /// `/health/ready`; panics, naming the log, if it exits or is not ready by then.
    pub async fn launch(
        bin: &Path,
        env: &[(String, String)],
        logs: &Path,
        name: &str,
        within: Duration,
    ) -> Gateway {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = logs.join(format!("gateway-{port}.log"));
        let out = File::create(&log).expect("the gateway's log file");
        let err = out.try_clone().expect("the gateway's log file");
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("ROOMCAST_LISTEN", addr.to_string())
            .env("ROOMCAST_NODE_ID", format!("{name}-{port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut gateway = Gateway {
            addr,
            ops: None,
            child: Some(child),
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        let deadline = Instant::now() + within;
        loop {
            if http_get(addr, "/health/ready").await.0 == 200 {
                return gateway;
            }
            if let Some(code) = gateway.wait_exit(Duration::ZERO) {
                panic!(
                    "the gateway on {addr} exited ({code}); see {}",
                    log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the gateway on {addr} was not ready within {within:?}; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
