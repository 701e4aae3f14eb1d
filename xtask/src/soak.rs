//! `make soak` (`cargo xtask soak`): a long run at about half of the measured fan-out
//! capacity with continuous churn, watching for growth. A private redis-server and three
//! gateways on loopback (through the test kit):
//! - a base load (sessions of one controller and N displays) for the whole run, with 10 %
//!   of its displays leaving and coming back every 30 s;
//! - waves of short-lived sessions one after another (connect, join, which creates the
//!   session, publish, leave); each wave's sessions then end by inactivity.
//!
//! Every 10 s it samples each gateway's RSS, open fds, tokio tasks and session pumps, and
//! Redis's keys and memory (`samples.jsonl`). After the load, once every session ended, it
//! lists the keys the run left without a TTL. [`judge`] then reports the growth after the
//! warm-up (`summary.json`, `summary.md`) and fails the run on growth, loss or leaks.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use roomcast_loadtest::report::Report;
use serde::Serialize;
use testkit::{Gateway, Server};

mod judge;
pub(crate) use judge::{judge, Judging};

use crate::kit::Result;
use crate::kit::{
    self, gateway_env, log, Clock, Load, Profile, RedisReader, Workspace, GATEWAY_READY,
};

/// The knobs of a soak, each also read from the environment `make soak` documents.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Minutes of load.
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 10)]
    minutes: u64,
    /// Seconds after publishing starts before growth is judged.
    #[arg(long, env = "SOAK_WARMUP", default_value_t = 120.0)]
    warmup: f64,
    /// Sessions of the base load.
    #[arg(long, env = "SOAK_SESSIONS", default_value_t = 100)]
    sessions: usize,
    /// Displays per base session.
    #[arg(long, env = "SOAK_DISPLAYS", default_value_t = 10)]
    displays: usize,
    /// Messages per second per base session.
    #[arg(long, env = "SOAK_RATE", default_value_t = 20.0)]
    rate: f64,
    /// Largest RSS or fd growth after the warm-up that passes, percent.
    #[arg(long, env = "SOAK_MAX_GROWTH", default_value_t = 5.0)]
    max_growth: f64,
    /// Where samples and the summary go (relative to the workspace).
    #[arg(long, env = "SOAK_OUT", default_value = "bench/soak")]
    out: PathBuf,
    /// Which build to soak (`debug`: the short form of `make test`).
    #[arg(long, env = "SOAK_PROFILE", value_enum, default_value_t = Profile::Release)]
    profile: Profile,
}

const SECRET: &str = "soak-secret-0123456789abcdef";
/// How often the gateways and Redis are sampled.
const EVERY: f64 = 10.0;

/// One gateway at one moment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GatewaySample {
    t: f64,
    node: String,
    rss: u64,
    fds: u64,
    tasks: u64,
    pumps: u64,
    connections: u64,
}

/// Redis at one moment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedisSample {
    t: f64,
    node: &'static str,
    keys: u64,
    used_memory: u64,
}

/// The keys the run created, after every session ended.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Keys {
    baseline_keys: usize,
    new_keys: usize,
    /// The first 20 keys without a TTL: each would outlive its session forever.
    without_ttl: Vec<String>,
    without_ttl_count: usize,
    max_ttl_s: f64,
    /// The bucketed indexes (no TTL by design; the sweeper prunes their entries).
    index_keys: Vec<IndexKey>,
}

#[derive(Debug, Serialize)]
struct IndexKey {
    key: String,
    entries: Option<u64>,
}

/// What the base load's report says of its messages.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Base {
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    reconnects: u64,
    deliveries_per_s: f64,
    #[serde(skip)]
    out_of_order: u64,
    #[serde(skip)]
    unexplained: u64,
}

impl From<&Report> for Base {
    fn from(r: &Report) -> Base {
        Base {
            acked: r.acked,
            delivered: r.delivered,
            lost: r.lost,
            duplicated: r.duplicated,
            reconnects: r.reconnects,
            deliveries_per_s: r.deliveries_per_s,
            out_of_order: r.out_of_order,
            unexplained: r.unexplained,
        }
    }
}

/// Runs the soak; `Ok(false)` when the judge failed it.
pub(crate) async fn run(args: Args) -> Result<bool> {
    let ws = Workspace::new(args.profile);
    ws.build()?;
    let out = ws.root.join(&args.out);
    let name = out
        .file_name()
        .map_or("soak".into(), |n| n.to_string_lossy().into_owned());
    let work = ws.root.join(".run/soak").join(name);
    let _ = std::fs::remove_dir_all(&work);
    for dir in [&out, &work] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }

    let redis = Server::start(&["--maxclients", "20000"], false);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Sessions end 20 s after their last activity, so the waves' sessions come and go
    // within the run and the base load's within a minute after it.
    let env = gateway_env(
        &url,
        SECRET,
        &[
            ("ROOMCAST_MAX_SESSIONS_PER_USER", "0"),
            ("ROOMCAST_INACTIVITY_WARNING", "10s"),
            ("ROOMCAST_INACTIVITY_TIMEOUT", "20s"),
        ],
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateway::launch(&ws.gateway(), &env, &work, "soak", GATEWAY_READY).await);
    }
    let reader = RedisReader::connect(redis.port).await?;
    // Keys before any session: the node registry.
    let baseline: HashSet<String> = reader.keys().await?.into_iter().collect();

    let mut sampler = Sampler::create(&out)?;
    // The idle point, before any client: what tasks and pumps must come back to.
    sampler.sample(-EVERY, &gateways, &reader).await?;

    let storms: Vec<String> = (1..)
        .map(|k| k * 30)
        .take_while(|s| *s < args.minutes * 60)
        .map(|s| format!("{s}s"))
        .collect();
    log(&format!(
        "soak: {} min, {} sessions x {} displays at {} msg/s, churn every 30 s, waves of 20 sessions",
        args.minutes, args.sessions, args.displays, args.rate
    ));
    let urls = kit::url_args(&gateways, false);
    let mut base_args = urls.clone();
    base_args.extend(
        [
            "--secret",
            SECRET,
            "--sessions",
            &args.sessions.to_string(),
            "--displays",
            &args.displays.to_string(),
            "--rate",
            &args.rate.to_string(),
            "--duration",
            &format!("{}m", args.minutes),
            "--drain",
            "5s",
            "--ramp",
            "5s",
            "--reconnect",
            "--churn-at",
            &storms.join(","),
            "--churn-fraction",
            "0.1",
            "--prefix",
            &kit::unique("soak"),
        ]
        .map(String::from),
    );
    base_args.extend(["--json".into(), out.join("base.json").display().to_string()]);
    let mut base = Load::start(&ws, &work, "base", &base_args, Duration::from_secs(120)).await?;
    let clock = Clock::start();

    // Waves until the base load ends: each 20 sessions x 4 displays for 15 s.
    let waves = {
        let (ws, work, urls) = (ws.clone(), work.clone(), urls.clone());
        let end = (args.minutes * 60).saturating_sub(20) as f64;
        tokio::spawn(async move { waves(&ws, &work, &urls, end).await })
    };

    let mut next = 0.0;
    while !base.ended() {
        if clock.elapsed() >= next {
            sampler.sample(next, &gateways, &reader).await?;
            next += EVERY;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    base.wait().await?;
    let (waves, failed) = waves.await.map_err(|e| format!("the waves' task: {e}"))??;
    if let Ok(table) = std::fs::read_to_string(work.join("base.table")) {
        eprint!("{table}");
    }

    log("soak: waiting for every session to end");
    let deadline = Instant::now() + Duration::from_secs(120);
    while pumps(&gateways).await? > 0 {
        if Instant::now() > deadline {
            eprintln!("soak: sessions still open after 120 s");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    sampler
        .sample(clock.elapsed().round(), &gateways, &reader)
        .await?;

    let keys = keys_left(&reader, &baseline).await?;
    write_json(&out.join("keys.json"), &keys)?;
    drop(gateways);
    drop(redis);

    let report = kit::read_report(&out.join("base.json"))?;
    let summary = judge(
        &sampler.gateways,
        &sampler.redis,
        &keys,
        Base::from(&report),
        Judging {
            warmup: args.warmup,
            max_growth: args.max_growth,
            waves,
            failed_waves: failed,
        },
    );
    write_json(&out.join("summary.json"), &summary)?;
    let md = summary.markdown();
    std::fs::write(out.join("summary.md"), &md).map_err(|e| e.to_string())?;
    print!("{md}");
    Ok(summary.passed)
}

/// Wave after wave until `end` seconds: answers how many ran and how many failed.
async fn waves(
    ws: &Workspace,
    work: &std::path::Path,
    urls: &[String],
    end: f64,
) -> Result<(usize, usize)> {
    let clock = Clock::start();
    let (mut ran, mut failed) = (0, 0);
    while clock.elapsed() < end {
        ran += 1;
        let mut args = urls.to_vec();
        args.extend(
            [
                "--secret",
                SECRET,
                "--sessions",
                "20",
                "--displays",
                "4",
                "--rate",
                "5",
                "--duration",
                "15s",
                "--drain",
                "2s",
                "--reconnect",
                "--fail-on-loss",
                "--prefix",
                &kit::unique(&format!("wave{ran}-")),
                "--json",
                &work.join("wave.json").display().to_string(),
            ]
            .map(String::from),
        );
        let status = Load::spawn(ws, work, "wave", &args, None)?.wait().await?;
        if !status.success() {
            failed += 1;
            let _ = std::fs::copy(
                work.join("wave.log"),
                work.join(format!("wave-{ran}.failed.log")),
            );
        }
    }
    Ok((ran, failed))
}

/// Session pumps alive on every gateway together.
async fn pumps(gateways: &[Gateway]) -> Result<u64> {
    let mut sum = 0;
    for g in gateways {
        sum += kit::health(g).await?["checks"]["sessions"]["local"]
            .as_u64()
            .unwrap_or(0);
    }
    Ok(sum)
}

/// The samples so far, also appended to `samples.jsonl` as they are taken.
struct Sampler {
    file: std::fs::File,
    gateways: Vec<GatewaySample>,
    redis: Vec<RedisSample>,
}

impl Sampler {
    fn create(out: &std::path::Path) -> Result<Sampler> {
        let path = out.join("samples.jsonl");
        let file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Sampler {
            file,
            gateways: Vec::new(),
            redis: Vec::new(),
        })
    }

    async fn sample(&mut self, t: f64, gateways: &[Gateway], reader: &RedisReader) -> Result<()> {
        for g in gateways {
            let h = kit::health(g).await?;
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            let pid = g.pid();
            let s = GatewaySample {
                t,
                node: g.addr.port().to_string(),
                rss: rss(pid),
                fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count) as u64,
                tasks: n(&h["checks"]["runtime"]["tasks"]),
                pumps: n(&h["checks"]["sessions"]["local"]),
                connections: n(&h["checks"]["connections"]["count"]),
            };
            self.line(&s)?;
            self.gateways.push(s);
        }
        let r = RedisSample {
            t,
            node: "redis",
            keys: reader.dbsize().await?,
            used_memory: reader.used_memory().await?,
        };
        self.line(&r)?;
        self.redis.push(r);
        Ok(())
    }

    fn line(&mut self, s: &impl Serialize) -> Result<()> {
        let line = serde_json::to_string(s).map_err(|e| e.to_string())?;
        writeln!(self.file, "{line}").map_err(|e| e.to_string())
    }
}

/// Resident memory of `pid`, bytes (0 once it is gone).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// The keys the run created and what they were left with.
async fn keys_left(reader: &RedisReader, baseline: &HashSet<String>) -> Result<Keys> {
    let mut keys = Keys {
        baseline_keys: baseline.len(),
        ..Keys::default()
    };
    let mut longest = 0;
    let mut created: Vec<String> = reader
        .keys()
        .await?
        .into_iter()
        .filter(|k| !baseline.contains(k))
        .collect();
    created.sort();
    keys.new_keys = created.len();
    for key in created {
        let ttl = reader.pttl(&key).await?;
        if key.contains(":{b") {
            let entries = reader.zcard(&key).await?;
            keys.index_keys.push(IndexKey { key, entries });
        } else if ttl < 0 {
            keys.without_ttl_count += 1;
            if keys.without_ttl.len() < 20 {
                keys.without_ttl.push(key);
            }
        } else {
            longest = longest.max(ttl);
        }
    }
    keys.max_ttl_s = longest as f64 / 1000.0;
    Ok(keys)
}

fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
