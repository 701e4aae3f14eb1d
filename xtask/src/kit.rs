//! What every driver shares: where the workspace and its binaries are, building them, the
//! gateway settings a load generator needs, the load generator as a child process, a
//! clock that counts from the moment publishing started, and reading the gateways'
//! `/health` and `/metrics` and Redis.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::{
    ClientLike, KeysInterface, LuaInterface, ServerInterface, SortedSetsInterface,
};
use fred::types::{Builder, CustomCommand};
use roomcast_loadtest::report::Report;
use testkit::Gateway;
use tokio::process::{Child, Command};

/// A driver's failure: what went wrong, for the person who ran it.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// Gateway settings for a load generator, which is one address with many clients: the
/// per-address and per-user limits that would refuse it are off; the rest is the default.
pub(crate) const LOADGEN_ENV: [(&str, &str); 9] = [
    ("ROOMCAST_MAX_PENDING_PER_IP", "0"),
    ("ROOMCAST_RATE_PUBLISH", "0"),
    ("ROOMCAST_RATE_PUBLISH_IP", "0"),
    ("ROOMCAST_RATE_CONNECT", "0"),
    ("ROOMCAST_RATE_BURST", "0"),
    ("ROOMCAST_RATE_FRAMES", "0"),
    ("ROOMCAST_RATE_API_STRICT", "0"),
    ("ROOMCAST_RATE_CREATE", "0"),
    ("ROOMCAST_MAX_CONNECTIONS", "19000"),
];

/// How long a release gateway may take to become ready.
pub(crate) const GATEWAY_READY: Duration = Duration::from_secs(30);

/// The cargo profile whose binaries a driver runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Profile {
    Release,
    /// The debug build `cargo test --workspace` made (the short soak of `make test`).
    Debug,
}

/// The workspace: its root, and the binaries of one profile.
#[derive(Clone)]
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    profile: Profile,
}

impl Workspace {
    pub(crate) fn new(profile: Profile) -> Workspace {
        // xtask/ is one level below the root.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Workspace { root, profile }
    }

    /// `target/<profile>/<name>` (CARGO_TARGET_DIR moves `target/`).
    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| self.root.join("target"), PathBuf::from);
        let dir = match self.profile {
            Profile::Release => "release",
            Profile::Debug => "debug",
        };
        target.join(dir).join(name)
    }

    /// The gateway to run: `ROOMCAST_BIN` (an A/B against another build), or ours.
    pub(crate) fn gateway(&self) -> PathBuf {
        std::env::var_os("ROOMCAST_BIN").map_or_else(|| self.bin("roomcast"), PathBuf::from)
    }

    /// Builds what the drivers run: in release the gateway, the load generator (with
    /// the webhook sink) and the floor peer, always (cargo makes it a no-op when nothing
    /// changed); in debug the workspace, only when the binaries are missing: `make test`
    /// runs the short soak on what `cargo test --workspace` built, and a `cargo build`
    /// of two packages would resolve features apart from it and build everything again.
    pub(crate) fn build(&self) -> Result<()> {
        let mut cargo =
            std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
        cargo.current_dir(&self.root).args(["build", "-q"]);
        match self.profile {
            Profile::Release => {
                cargo.arg("--release");
                for package in ["roomcast-gateway", "roomcast-loadtest", "roomcast-floor"] {
                    cargo.args(["-p", package]);
                }
            }
            Profile::Debug if self.gateway().exists() && self.bin("loadtest").exists() => {
                return Ok(())
            }
            Profile::Debug => {
                cargo.arg("--workspace");
            }
        }
        log("building the gateway and the load generator");
        let status = cargo
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("cargo build failed ({status})"))
    }
}

/// A heading on stderr, as the drivers print their steps.
pub(crate) fn log(what: &str) {
    eprintln!("\n== {what}");
}

/// A name no earlier run used, for session prefixes (a rerun against the same Redis must
/// not find the last run's sessions).
pub(crate) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}{}", nanos % 100_000)
}

/// The environment of the gateways a driver starts: the load generator's settings, then
/// `extra`, then `GATEWAY_ENV` (space-separated `NAME=value`s, as `make bench` takes).
pub(crate) fn gateway_env(
    redis_url: &str,
    secret: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = LOADGEN_ENV
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("ROOMCAST_REDIS_URL".into(), redis_url.into()));
    env.push(("ROOMCAST_JWT_SECRET".into(), secret.into()));
    env.push(("ROOMCAST_LOG".into(), "warn".into()));
    if let Ok(more) = std::env::var("GATEWAY_ENV") {
        for pair in more.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.into(), v.into()));
            }
        }
    }
    env
}

/// One load generator run, killed if the driver ends first.
pub(crate) struct Load {
    child: Child,
    name: String,
}

impl Load {
    /// Starts `loadtest` with `args`, its table in `<work>/<name>.table` and its log in
    /// `<work>/<name>.log`, and waits (up to `within`) until every client joined and
    /// publishing started.
    pub(crate) async fn start(
        ws: &Workspace,
        work: &Path,
        name: &str,
        args: &[String],
        within: Duration,
    ) -> Result<Load> {
        let started = work.join(format!("{name}.started"));
        let _ = std::fs::remove_file(&started);
        let mut load = Load::spawn(ws, work, name, args, Some(&started))?;
        let deadline = Instant::now() + within;
        while !started.exists() {
            if let Ok(Some(status)) = load.child.try_wait() {
                return Err(format!(
                    "{name}: the load generator exited ({status}) before publishing; see {}",
                    work.join(format!("{name}.log")).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name}: publishing did not start within {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(load)
    }

    /// Starts `loadtest` without waiting for anything.
    pub(crate) fn spawn(
        ws: &Workspace,
        work: &Path,
        name: &str,
        args: &[String],
        started: Option<&Path>,
    ) -> Result<Load> {
        Load::spawn_pinned(ws, work, name, args, started, None)
    }

    /// [`Load::spawn`], on CPU `core` only when given (`taskset -c`).
    pub(crate) fn spawn_pinned(
        ws: &Workspace,
        work: &Path,
        name: &str,
        args: &[String],
        started: Option<&Path>,
        core: Option<&str>,
    ) -> Result<Load> {
        let file = |ext: &str| {
            std::fs::File::create(work.join(format!("{name}.{ext}")))
                .map_err(|e| format!("cannot write in {}: {e}", work.display()))
        };
        let mut cmd = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.args(["-c", core]).arg(ws.bin("loadtest"));
                c
            }
            None => Command::new(ws.bin("loadtest")),
        };
        cmd.args(args)
            .args(["--progress", "false"])
            .stdin(Stdio::null())
            .stdout(file("table")?)
            .stderr(file("log")?)
            .kill_on_drop(true);
        if let Some(started) = started {
            cmd.arg("--started-file").arg(started);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", ws.bin("loadtest").display()))?;
        Ok(Load {
            child,
            name: name.to_string(),
        })
    }

    /// Waits for the run to end.
    pub(crate) async fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .map_err(|e| format!("{}: cannot wait for the load generator: {e}", self.name))
    }

    /// Its process id (0 once reaped).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Whether it has ended.
    pub(crate) fn ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// The `--url` and, with `ready`, `--ready-url` arguments for `gateways`.
pub(crate) fn url_args(gateways: &[Gateway], ready: bool) -> Vec<String> {
    let mut args = Vec::new();
    for g in gateways {
        args.extend(["--url".to_string(), g.ws_url()]);
        if ready {
            args.extend([
                "--ready-url".to_string(),
                format!("http://{}/health/ready", g.addr),
            ]);
        }
    }
    args
}

/// Reads a report the load generator wrote, with its own type.
pub(crate) fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a load report: {e}", path.display()))
}

/// Seconds since publishing started: the time line a scenario's faults follow.
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock(Instant::now())
    }

    pub(crate) fn elapsed(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Waits until `secs` after the start (at once if that has passed).
    pub(crate) async fn at(&self, secs: f64) {
        tokio::time::sleep_until((self.0 + Duration::from_secs_f64(secs.max(0.0))).into()).await;
    }
}

/// The sum of every sample of the counter `name` (all label sets) in a Prometheus scrape.
pub(crate) fn metric_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A gateway's `/health` document.
pub(crate) async fn health(g: &Gateway) -> Result<serde_json::Value> {
    let (status, body) = g.get("/health").await;
    if status == 0 {
        return Err(format!("the gateway on {} does not answer /health", g.addr));
    }
    serde_json::from_str(&body).map_err(|e| format!("/health of {}: {e}", g.addr))
}

/// A client of the run's Redis, for what the drivers read of it.
pub(crate) struct RedisReader(fred::clients::Client);

impl RedisReader {
    pub(crate) async fn connect(port: u16) -> Result<RedisReader> {
        let config = fred::types::config::Config::from_url(&format!("redis://127.0.0.1:{port}"))
            .map_err(|e| e.to_string())?;
        let client = Builder::from_config(config)
            .build()
            .map_err(|e| e.to_string())?;
        client
            .init()
            .await
            .map_err(|e| format!("redis on {port}: {e}"))?;
        Ok(RedisReader(client))
    }

    pub(crate) async fn dbsize(&self) -> Result<u64> {
        self.0.dbsize().await.map_err(|e| e.to_string())
    }

    /// `used_memory` of `INFO memory`.
    pub(crate) async fn used_memory(&self) -> Result<u64> {
        let info: String = self
            .0
            .custom(
                CustomCommand::new_static("INFO", fred::types::ClusterHash::FirstKey, false),
                vec!["memory"],
            )
            .await
            .map_err(|e| e.to_string())?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
            .ok_or_else(|| "INFO memory without used_memory".to_string())
    }

    /// Every key (SCAN, so a large keyspace does not block the server).
    pub(crate) async fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, page): (String, Vec<String>) = self
                .0
                .scan_page(cursor, "*", Some(1000), None)
                .await
                .map_err(|e| e.to_string())?;
            keys.extend(page);
            if next == "0" {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    pub(crate) async fn pttl(&self, key: &str) -> Result<i64> {
        self.0.pttl(key).await.map_err(|e| e.to_string())
    }

    /// SCRIPT LOAD: the script's SHA-1.
    pub(crate) async fn script_load(&self, script: &str) -> Result<String> {
        self.0.script_load(script).await.map_err(|e| e.to_string())
    }

    /// ZCARD of `key` when it is a sorted set.
    pub(crate) async fn zcard(&self, key: &str) -> Result<Option<u64>> {
        let kind: String = self.0.r#type(key).await.map_err(|e| e.to_string())?;
        if kind != "zset" {
            return Ok(None);
        }
        self.0.zcard(key).await.map(Some).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn a_counter_is_summed_over_its_label_sets_and_nothing_else() {
        let scrape = "# TYPE x counter\n\
            roomcast_slow_consumer_disconnects_total{reason=\"queue\"} 3\n\
            roomcast_slow_consumer_disconnects_total{reason=\"write\"} 4\n\
            roomcast_slow_consumer_disconnects_totals 100\n\
            roomcast_other 7\n";
        assert_eq!(
            metric_sum(scrape, "roomcast_slow_consumer_disconnects_total"),
            7.0
        );
        assert_eq!(metric_sum(scrape, "roomcast_missing"), 0.0);
    }
}
