//! Typed configuration: flags and `ROOMCAST_*` variables parsed once into `Config`.
//!
//! Owns every knob of README "Configuration" and its validation. Nothing else
//! reads the environment. Tests build configs with [`Config::from_pairs`] instead of
//! touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub mod webhooks;

/// Exit code for an invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(name = "roomcast", version, about = "Roomcast realtime gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print a JWT signed with the configured secret, for development and tests.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Allowed role; repeat for several. The first is the default role at join.
    #[arg(long = "role", value_parser = parse_role, required = true)]
    pub roles: Vec<roomcast_shared::Role>,
    /// Allowed session; repeat for several. Absent: any session.
    #[arg(long = "session")]
    pub sessions: Vec<String>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// How tokens are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// JWTs are required (the default).
    Jwt,
    /// No authentication at all: development only, logged loudly.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A secret from the configuration. Its `Debug` never shows it, so a config printed by
/// mistake leaks nothing; code that needs the value calls [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("a secret cannot be empty".into());
        }
        Ok(Secret(s.to_string()))
    }
}

/// A sliding-window rate: `COUNT/WINDOW` such as `10/60s`; `0` disables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub window: Duration,
}

impl Rate {
    pub fn is_disabled(&self) -> bool {
        self.count == 0
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "0" {
            return Ok(Rate {
                count: 0,
                window: Duration::from_secs(1),
            });
        }
        let (count, window) = s
            .split_once('/')
            .ok_or_else(|| format!("rate `{s}` is not COUNT/WINDOW (like 10/60s) or 0"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("rate `{s}`: `{count}` is not a count"))?;
        let window = parse_duration(window.trim())?;
        if window.is_zero() {
            return Err(format!("rate `{s}`: the window must be positive"));
        }
        Ok(Rate { count, window })
    }
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    s.parse()
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration (like 30s, 15m): {e}"))
}

fn parse_role(s: &str) -> Result<roomcast_shared::Role, String> {
    roomcast_shared::Role::parse(s)
        .ok_or_else(|| format!("`{s}` is not a role (controller, display, observer)"))
}

/// Everything the gateway is configured with.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Redis URL: redis://, rediss://, redis-cluster://, redis-sentinel://.
    #[arg(
        long,
        env = "ROOMCAST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// With `rediss://`: PEM file of the CAs that sign Redis's certificate (default: the
    /// system's trust store). Verification is always on.
    #[arg(long, env = "ROOMCAST_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,
    /// With `rediss://`: PEM certificate chain for mutual TLS (with `ROOMCAST_REDIS_TLS_KEY`).
    #[arg(long, env = "ROOMCAST_REDIS_TLS_CERT")]
    pub redis_tls_cert: Option<PathBuf>,
    /// With `rediss://`: PEM private key of `ROOMCAST_REDIS_TLS_CERT`.
    #[arg(long, env = "ROOMCAST_REDIS_TLS_KEY")]
    pub redis_tls_key: Option<PathBuf>,
    /// With `rediss://`: the name Redis's certificate must carry, when it is not the host
    /// in the URL (an IP address, or cluster nodes announced by IP).
    #[arg(long, env = "ROOMCAST_REDIS_TLS_SERVER_NAME")]
    pub redis_tls_server_name: Option<String>,
    /// Connections in the Redis command pool.
    #[arg(long, env = "ROOMCAST_REDIS_POOL", default_value_t = 4)]
    pub redis_pool: usize,
    /// Timeout of one Redis command (and of the readiness PING).
    #[arg(long, env = "ROOMCAST_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// How long this node keeps its clients while it cannot reach Redis; then it closes
    /// them with 1001 so they resume on a node that can (0: keep them). History covers
    /// a short outage; a long one, on this node alone, outlasts it.
    #[arg(long, env = "ROOMCAST_REDIS_LOST_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub redis_lost_grace: Duration,
    /// Durable mode: a publish is acked only once `WAIT` confirms it on this many replicas
    /// (0: acked once the primary stored it). See the README's "Durability".
    #[arg(long, env = "ROOMCAST_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long a publish waits for those replicas before it is answered `unavailable`.
    #[arg(long, env = "ROOMCAST_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_wait_timeout: Duration,
    /// Prefix of every Redis key.
    #[arg(long, env = "ROOMCAST_KEY_PREFIX", default_value = "rc")]
    pub key_prefix: String,
    /// Node id; defaults to the hostname plus a random suffix.
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// `jwt` (default) or `off` (development only).
    #[arg(long, env = "ROOMCAST_AUTH", value_enum, default_value = "jwt")]
    pub auth: AuthMode,
    /// HMAC secret for HS256 tokens. (The token settings are global: `roomcast token
    /// --jwt-secret …` works as well as `roomcast --jwt-secret … token`.)
    #[arg(
        long,
        env = "ROOMCAST_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<Secret>,
    /// PEM file with an RSA or EC public key (RS256/ES256 tokens).
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY", global = true)]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss`; unchecked when unset.
    #[arg(long, env = "ROOMCAST_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Required `aud`; unchecked when unset.
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Server API key (REST server routes).
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Admin token (REST admin routes).
    #[arg(long, env = "ROOMCAST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// `false` puts `POST /sessions` and `POST /sessions/join` behind the server API key.
    #[arg(long, env = "ROOMCAST_OPEN_SESSIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub open_sessions: bool,
    /// Whether a WebSocket `join` of a session that does not exist creates it (observers
    /// never do). `false`: sessions are created only with `POST /sessions`.
    #[arg(long, env = "ROOMCAST_IMPLICIT_SESSIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub implicit_sessions: bool,
    /// Most implicitly created sessions one user may hold at once (until each one's
    /// lifetime ends); 0: no cap.
    #[arg(long, env = "ROOMCAST_MAX_SESSIONS_PER_USER", default_value_t = 100)]
    pub max_sessions_per_user: u32,
    /// How long a presence entry added over REST lives without an `activity` call.
    #[arg(long, env = "ROOMCAST_REST_PRESENCE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub rest_presence_ttl: Duration,
    /// REST presence members (`POST …/presence/join`) one session may hold at once; a
    /// join beyond it is answered 429 until one leaves or expires. 0: no bound.
    #[arg(long, env = "ROOMCAST_REST_PRESENCE_MAX", default_value_t = 100)]
    pub rest_presence_max: u32,
    /// Serve the demo app (a display and a phone controller) at `/demo`. `make run` turns
    /// it on; off by default, since it lets anyone create sessions from a browser page.
    #[arg(long, env = "ROOMCAST_DEMO", default_value_t = false, action = clap::ArgAction::Set)]
    pub demo: bool,
    /// Comma-separated `Origin` allow-list for upgrades and for CORS on the REST API;
    /// empty allows any origin.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Comma-separated peer addresses whose `X-Forwarded-For` is trusted.
    #[arg(long, env = "ROOMCAST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Messages kept per session.
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: u32,
    /// Lifetime of a session's keys after its last write.
    #[arg(long, env = "ROOMCAST_HISTORY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub history_ttl: Duration,
    /// How long a publish's idempotency key is remembered: a publish repeated with the
    /// same key within it is stored once and answered with the first one's seq.
    #[arg(long, env = "ROOMCAST_IDEMPOTENCY_WINDOW", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_window: Duration,
    /// WebSocket ping interval; presence is refreshed on the same clock.
    #[arg(long, env = "ROOMCAST_HEARTBEAT", default_value = "25s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    #[arg(long, env = "ROOMCAST_INACTIVITY_WARNING", default_value = "10m", value_parser = parse_duration)]
    pub inactivity_warning: Duration,
    #[arg(long, env = "ROOMCAST_INACTIVITY_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub inactivity_timeout: Duration,
    #[arg(long, env = "ROOMCAST_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub max_lifetime: Duration,
    /// A member is idle after this long without activity.
    #[arg(long, env = "ROOMCAST_IDLE_AFTER", default_value = "30m", value_parser = parse_duration)]
    pub idle_after: Duration,
    /// Largest accepted WebSocket message, in bytes.
    #[arg(long, env = "ROOMCAST_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,
    /// Frames queued per client before it is closed as a slow consumer (4008).
    #[arg(long, env = "ROOMCAST_SEND_QUEUE", default_value_t = 1024)]
    pub send_queue: usize,
    /// Most WebSocket connections this instance accepts; 0: no cap besides the OS.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Most WebSocket connections one user may hold on this instance; 0: no cap.
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_USER", default_value_t = 0)]
    pub max_connections_per_user: usize,
    /// Also serve the operational endpoints (`/health/*`, `/health`, `/ping`, `/metrics`)
    /// on this address, apart from client traffic: probes keep answering when the main
    /// listener is saturated. Unset: only on `ROOMCAST_LISTEN`.
    #[arg(long, env = "ROOMCAST_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// Connections one address may hold that are not (yet) WebSockets; more are answered
    /// 429 at once. Trusted proxies are exempt. 0: no cap.
    #[arg(long, env = "ROOMCAST_MAX_PENDING_PER_IP", default_value_t = 256)]
    pub max_pending_per_ip: usize,
    /// A connection with no request in progress for this long is closed: from its accept
    /// (a socket that sends nothing) and after each response (keep-alive). A request head
    /// must also arrive whole within it.
    #[arg(long, env = "ROOMCAST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a REST request's whole body may take to arrive once its head has: a body
    /// trickled slower is answered 408 and its connection freed.
    #[arg(long, env = "ROOMCAST_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Members listed in `joined.presence` (the largest sessions get the first ones). Every
    /// join reads and sends this list, so it bounds what a join costs in a big session.
    #[arg(long, env = "ROOMCAST_PRESENCE_LIST_MAX", default_value_t = 100)]
    pub presence_list_max: u32,
    /// Presence events (join/leave/update) are broadcast only while a session has at most
    /// this many members: each goes to every member, so joining N members costs N²/2
    /// frames. Larger sessions learn presence through REST. 0: no cap. At 1,000 a filling
    /// 10,000-member session queued half a million events ahead of its messages and
    /// delayed them by seconds (BENCHMARKS.md, "Round 3").
    #[arg(long, env = "ROOMCAST_PRESENCE_EVENTS_MAX", default_value_t = 100)]
    pub presence_events_max: u32,

    #[arg(long, env = "ROOMCAST_RATE_PUBLISH", default_value = "10/60s", value_parser = parse_rate)]
    pub rate_publish: Rate,
    #[arg(long, env = "ROOMCAST_RATE_PUBLISH_IP", default_value = "20/60s", value_parser = parse_rate)]
    pub rate_publish_ip: Rate,
    #[arg(long, env = "ROOMCAST_RATE_CONNECT", default_value = "30/60s", value_parser = parse_rate)]
    pub rate_connect: Rate,
    #[arg(long, env = "ROOMCAST_RATE_API", default_value = "100/15m", value_parser = parse_rate)]
    pub rate_api: Rate,
    #[arg(long, env = "ROOMCAST_RATE_API_STRICT", default_value = "20/15m", value_parser = parse_rate)]
    pub rate_api_strict: Rate,
    #[arg(long, env = "ROOMCAST_RATE_BURST", default_value = "10/1s", value_parser = parse_rate)]
    pub rate_burst: Rate,
    /// Sessions one user may create implicitly (a `join` of a session that does not
    /// exist); the creator's address also counts against `ROOMCAST_RATE_API_STRICT`.
    #[arg(long, env = "ROOMCAST_RATE_CREATE", default_value = "20/15m", value_parser = parse_rate)]
    pub rate_create: Rate,
    /// Per-connection token bucket for `signal` and `typing`.
    #[arg(long, env = "ROOMCAST_RATE_SIGNAL", default_value = "20/1s", value_parser = parse_rate)]
    pub rate_signal: Rate,
    /// Per-connection token bucket for every inbound frame (pings included); a client
    /// above it is closed with 4029.
    #[arg(long, env = "ROOMCAST_RATE_FRAMES", default_value = "200/1s", value_parser = parse_rate)]
    pub rate_frames: Rate,

    /// How long shutdown waits for connections and tasks.
    #[arg(long, env = "ROOMCAST_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "ROOMCAST_LOG", default_value = "info")]
    pub log: String,
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// OTLP collector endpoint (also read from OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "ROOMCAST_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Webhooks and the join hook (docs/WEBHOOKS.md).
    #[command(flatten)]
    pub webhooks: webhooks::WebhookConfig,
}

/// A configuration that cannot work, with a one-line reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Builds a config from `(flag, value)` pairs on top of the defaults, ignoring the
    /// process environment's `ROOMCAST_*` values only in the sense that flags win.
    /// Meant for tests: `Config::from_pairs(&[("redis-url", url)])`.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut args = vec!["roomcast".to_string()];
        for (k, v) in pairs {
            args.push(format!("--{k}={v}"));
        }
        let cli = Cli::try_parse_from(args).map_err(|e| ConfigError(e.to_string()))?;
        cli.config.validate()?;
        Ok(cli.config)
    }

    /// Checks what clap cannot: combinations and ranges. (`gateway::check_config` adds the
    /// checks that read files.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        if self.auth == AuthMode::Jwt && self.jwt_secret.is_none() && self.jwt_public_key.is_none()
        {
            return fail(
                "ROOMCAST_JWT_SECRET or ROOMCAST_JWT_PUBLIC_KEY is required (or ROOMCAST_AUTH=off for development)",
            );
        }
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return fail("set only one of ROOMCAST_JWT_SECRET and ROOMCAST_JWT_PUBLIC_KEY");
        }
        if matches!(&self.jwt_secret, Some(s) if s.expose().len() < 16) {
            return fail("ROOMCAST_JWT_SECRET must be at least 16 bytes");
        }
        if !(1..=5000).contains(&self.presence_list_max) {
            return fail("ROOMCAST_PRESENCE_LIST_MAX must be 1 to 5000");
        }
        if self.history_size == 0 {
            return fail("ROOMCAST_HISTORY_SIZE must be at least 1");
        }
        if self.heartbeat < Duration::from_millis(100) {
            return fail("ROOMCAST_HEARTBEAT must be at least 100ms");
        }
        if self.history_ttl < Duration::from_secs(1) {
            return fail("ROOMCAST_HISTORY_TTL must be at least 1s");
        }
        if self.idempotency_window < Duration::from_secs(1)
            || self.idempotency_window > Duration::from_secs(24 * 3600)
        {
            return fail("ROOMCAST_IDEMPOTENCY_WINDOW must be 1s to 24h");
        }
        if self.inactivity_warning >= self.inactivity_timeout {
            return fail(
                "ROOMCAST_INACTIVITY_WARNING must be shorter than ROOMCAST_INACTIVITY_TIMEOUT",
            );
        }
        if self.max_frame_bytes < 256 {
            return fail("ROOMCAST_MAX_FRAME_BYTES must be at least 256");
        }
        if self.send_queue < 8 {
            return fail("ROOMCAST_SEND_QUEUE must be at least 8");
        }
        // WAIT is a Redis command like any other: past ROOMCAST_REDIS_TIMEOUT the client
        // would give up on it first and report Redis unavailable.
        if self.redis_wait_replicas > 0
            && (self.redis_wait_timeout < Duration::from_millis(1)
                || self.redis_wait_timeout >= self.redis_timeout)
        {
            return fail(
                "ROOMCAST_REDIS_WAIT_TIMEOUT must be at least 1ms and shorter than ROOMCAST_REDIS_TIMEOUT",
            );
        }
        if self.redis_pool == 0 {
            return fail("ROOMCAST_REDIS_POOL must be at least 1");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return fail("ROOMCAST_KEY_PREFIX must be non-empty without braces or spaces");
        }
        const SCHEMES: [&str; 12] = [
            "redis",
            "rediss",
            "redis-cluster",
            "rediss-cluster",
            "redis-sentinel",
            "rediss-sentinel",
            "valkey",
            "valkeys",
            "valkey-cluster",
            "valkeys-cluster",
            "valkey-sentinel",
            "valkeys-sentinel",
        ];
        let scheme = redis_url_scheme(&self.redis_url);
        if !SCHEMES.contains(&scheme.as_str()) {
            return Err(ConfigError(format!(
                "ROOMCAST_REDIS_URL: scheme {scheme:?} is not one this build serves ({})",
                SCHEMES.join(", ")
            )));
        }
        if let Err(e) = fred::types::config::Config::from_url(&self.redis_url) {
            return Err(ConfigError(format!("ROOMCAST_REDIS_URL: {e}")));
        }
        // TLS settings never ride on a plaintext URL. (Their files are read and parsed by
        // `gateway::check_config`, before the start.)
        if !redis_url_uses_tls(&self.redis_url) {
            let settings = [
                ("ROOMCAST_REDIS_TLS_CA", self.redis_tls_ca.is_some()),
                ("ROOMCAST_REDIS_TLS_CERT", self.redis_tls_cert.is_some()),
                ("ROOMCAST_REDIS_TLS_KEY", self.redis_tls_key.is_some()),
                (
                    "ROOMCAST_REDIS_TLS_SERVER_NAME",
                    self.redis_tls_server_name.is_some(),
                ),
            ];
            if let Some((name, _)) = settings.iter().find(|(_, set)| *set) {
                return Err(ConfigError(format!(
                    "{name} is set but ROOMCAST_REDIS_URL is plaintext: use rediss:// for TLS"
                )));
            }
        }
        if self.redis_tls_cert.is_some() != self.redis_tls_key.is_some() {
            return fail(
                "ROOMCAST_REDIS_TLS_CERT and ROOMCAST_REDIS_TLS_KEY go together (mutual TLS)",
            );
        }
        if let Err(e) = crate::net::TrustedProxies::parse(&self.trusted_proxies) {
            return Err(ConfigError(format!("ROOMCAST_TRUSTED_PROXIES: {e}")));
        }
        if self.header_timeout < Duration::from_millis(100) {
            return fail("ROOMCAST_HEADER_TIMEOUT must be at least 100ms");
        }
        if self.body_timeout < Duration::from_millis(100) {
            return fail("ROOMCAST_BODY_TIMEOUT must be at least 100ms");
        }
        if self.allowed_origins.iter().any(|o| o.trim().is_empty()) {
            return fail("ROOMCAST_ALLOWED_ORIGINS has an empty entry");
        }
        if let Some(node) = &self.node_id {
            if node.is_empty() || node.len() > 64 {
                return fail("ROOMCAST_NODE_ID must be 1 to 64 characters");
            }
        }
        self.webhooks.validate(self.redis_timeout)
    }

    /// Checks what `roomcast token` needs: a secret to sign with (a public key can only
    /// verify, and `ROOMCAST_AUTH=off` has nothing to sign for).
    pub fn validate_for_minting(&self) -> Result<(), ConfigError> {
        match &self.jwt_secret {
            None => Err(ConfigError(
                "roomcast token signs with ROOMCAST_JWT_SECRET (HS256): set it (or --jwt-secret) to the gateway's secret".into(),
            )),
            Some(s) if s.expose().len() < 16 => Err(ConfigError(
                "ROOMCAST_JWT_SECRET must be at least 16 bytes".into(),
            )),
            Some(_) => Ok(()),
        }
    }

    /// How long a node counts as alive after its last heartbeat: three missed beats.
    pub fn node_alive_for(&self) -> Duration {
        self.heartbeat * 3
    }

    /// How long a connection waits on its session pump (a join, an activity): past one
    /// Redis timeout and its retries, so a pump stuck behind an outage cannot hold the
    /// connection's reader (heartbeats, kills, token expiry) hostage.
    pub fn pump_reply_timeout(&self) -> Duration {
        self.redis_timeout * 3
    }

    /// The node id: configured, or hostname plus a random suffix.
    pub fn resolve_node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "roomcast".to_string());
        format!("{host}-{}", crate::util::random_id(6))
    }

    /// The OTLP endpoint from our variable or the standard one.
    pub fn otlp(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|s| !s.is_empty())
    }
}

/// The scheme of a Redis URL, lowercased ("" without one).
fn redis_url_scheme(url: &str) -> String {
    url.split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether a Redis URL asks for TLS (`rediss://`, `rediss-cluster://`, `valkeys://`, …).
pub fn redis_url_uses_tls(url: &str) -> bool {
    let scheme = redis_url_scheme(url);
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_spec() {
        let c = Config::from_pairs(&[("jwt-secret", "0123456789abcdef0123")]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.history_size, 100);
        assert_eq!(c.history_ttl, Duration::from_secs(86400));
        assert_eq!(c.heartbeat, Duration::from_secs(25));
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.send_queue, 1024);
        assert_eq!(
            c.rate_publish,
            Rate {
                count: 10,
                window: Duration::from_secs(60)
            }
        );
        assert!(c.allowed_origins.is_empty());
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::from_pairs(&[
            ("jwt-secret", "0123456789abcdef-very-secret"),
            ("api-key", "key-very-secret"),
            ("admin-token", "admin-very-secret"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(
            c.api_key.as_ref().map(Secret::expose),
            Some("key-very-secret")
        );
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            "20/15m".parse::<Rate>().unwrap(),
            Rate {
                count: 20,
                window: Duration::from_secs(900)
            }
        );
        assert!("0".parse::<Rate>().unwrap().is_disabled());
        assert!("ten/1s".parse::<Rate>().is_err());
        assert!("10".parse::<Rate>().is_err());
        assert!("10/0s".parse::<Rate>().is_err());
    }

    #[test]
    fn auth_required_unless_off() {
        assert!(Config::from_pairs(&[]).is_err());
        assert!(Config::from_pairs(&[("auth", "off")]).is_ok());
        assert!(Config::from_pairs(&[("jwt-secret", "short")]).is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let s = ("jwt-secret", "0123456789abcdef0123");
        assert!(Config::from_pairs(&[s, ("heartbeat", "soon")]).is_err());
        assert!(Config::from_pairs(&[s, ("history-size", "0")]).is_err());
        assert!(Config::from_pairs(&[s, ("listen", "nowhere")]).is_err());
        assert!(Config::from_pairs(&[s, ("inactivity-warning", "20m")]).is_err());
        // Durable mode's WAIT must end before the command timeout would.
        let wait = [("redis-wait-replicas", "1"), ("redis-timeout", "2s")];
        assert!(Config::from_pairs(&[s, wait[0], wait[1], ("redis-wait-timeout", "1s")]).is_ok());
        let e =
            Config::from_pairs(&[s, wait[0], wait[1], ("redis-wait-timeout", "2s")]).unwrap_err();
        assert!(e.0.contains("ROOMCAST_REDIS_WAIT_TIMEOUT"), "{e}");
        // TLS settings never ride on a plaintext URL.
        let e = Config::from_pairs(&[s, ("redis-tls-ca", "/etc/ssl/ca.pem")]).unwrap_err();
        assert!(e.0.contains("plaintext"), "{e}");
        // A scheme that is not one of Redis's is not quietly taken for redis://.
        for url in [
            "http://h:6379",
            "memcached://h:11211",
            "redis+unix:///tmp/r.sock",
        ] {
            let e = Config::from_pairs(&[s, ("redis-url", url)]).unwrap_err();
            assert!(e.0.contains("ROOMCAST_REDIS_URL"), "{url}: {e}");
        }
        let c = Config::from_pairs(&[
            s,
            ("allowed-origins", "https://a.example,https://b.example"),
        ])
        .unwrap();
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.example", "https://b.example"]
        );
    }
}
