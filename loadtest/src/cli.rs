//! The load generator's command line: what to dial, how many sessions and displays, the
//! load, faults to ride out (reconnects, churn storms), and where to report.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use crate::proto::Proto;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "loadtest",
    about = "Drive Roomcast gateways (or the Socket.IO peer) and measure latency and loss"
)]
pub(crate) struct Args {
    /// Gateway WebSocket URL; repeat to spread clients over several gateways. For
    /// `--protocol socketio` give the peer's base URL (ws://host:port).
    #[arg(long = "url", required = true)]
    pub(crate) urls: Vec<String>,
    /// HS256 secret to mint tokens with (the gateway's ROOMCAST_JWT_SECRET).
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// Connect without tokens (gateways running with ROOMCAST_AUTH=off).
    #[arg(long)]
    pub(crate) no_auth: bool,
    /// Sessions, each with one controller.
    #[arg(long, default_value_t = 10)]
    pub(crate) sessions: usize,
    /// Displays per session.
    #[arg(long, default_value_t = 10)]
    pub(crate) displays: usize,
    /// How clients are spread over the `--url`s: `client` deals them out one by one (a
    /// session's controller and displays land on different gateways), `session` puts all
    /// of a session's clients on one gateway (as a session-affine ingress would) and
    /// deals out the sessions.
    #[arg(long, value_enum, default_value_t = Placement::Client)]
    pub(crate) placement: Placement,
    /// Messages per second each controller publishes; 0 holds the connections idle.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f64,
    /// Padding bytes in each message.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long controllers publish (or, at rate 0, how long connections stay open).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Spread the connects over this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) ramp: Duration,
    /// Connects in flight at once (per worker process).
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    /// `json` or `msgpack` (Roomcast subprotocols), or `socketio` (the peer server).
    #[arg(long, default_value = "json")]
    pub(crate) protocol: String,
    /// Loopback source addresses to spread client sockets over (more local ports).
    #[arg(long, value_delimiter = ',')]
    pub(crate) source: Vec<IpAddr>,
    /// Session id prefix (runs with different prefixes do not share sessions).
    #[arg(long, default_value = "lt")]
    pub(crate) prefix: String,
    /// After publishing stops, wait this long for the last deliveries.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) drain: Duration,
    /// Write the report as JSON to this file as well.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Print progress every second.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) progress: bool,
    /// A client that has not connected and joined within this long counts as an error.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) join_timeout: Duration,
    /// Worker processes; each opens every Nth client (open files are capped per process).
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Set by the parent on its workers: which share this process runs.
    #[arg(long, hide = true)]
    pub(crate) worker_index: Option<usize>,
    /// Reconnect like a real client: a display whose connection drops (or is closed with
    /// a code PROTOCOL.md says to reconnect after) dials the next URL with backoff and
    /// rejoins with `since` and `epoch`; a controller rejoins and retries publishes
    /// refused `unavailable`. Roomcast protocols only.
    #[arg(long)]
    pub(crate) reconnect: bool,
    /// The first reconnect backoff (full jitter, doubling up to `--backoff-max`).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub(crate) backoff_min: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) backoff_max: Duration,
    /// A readiness URL (`http://host:port/health/ready`) to poll every 100 ms during the
    /// run; repeat per gateway. The report says how long each answered anything but 200.
    #[arg(long = "ready-url")]
    pub(crate) ready_urls: Vec<String>,
    /// Exit 3 when anything is lost, duplicated or reordered that a numbering reset or
    /// a `recovered: false` does not explain.
    #[arg(long)]
    pub(crate) fail_on_loss: bool,
    /// Churn storms: at each of these times after the go, `--churn-fraction` of the
    /// displays close their connection and come back (with `--reconnect`).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub(crate) churn_at: Vec<Duration>,
    #[arg(long, default_value_t = 0.2)]
    pub(crate) churn_fraction: f64,
    /// Written (empty) when publishing starts, for scripts that time a fault from it.
    #[arg(long)]
    pub(crate) started_file: Option<std::path::PathBuf>,
}

/// See [`Args::placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Placement {
    Client,
    Session,
}

impl Args {
    pub(crate) fn proto(&self) -> Proto {
        Proto::parse(&self.protocol).unwrap_or(Proto::Roomcast(roomcast_shared::Format::Json))
    }
}
