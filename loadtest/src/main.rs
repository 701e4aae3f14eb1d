//! Roomcast load generator: sessions of one controller and N displays against one or more
//! gateways. Controllers publish at a fixed rate with a send timestamp in each message;
//! displays measure publish-to-receive latency and check seq continuity, so every run
//! reports throughput, latency percentiles, and messages lost, duplicated or out of order.
//!
//! One process holds at most a few tens of thousands of sockets (open files are capped per
//! process), so `--workers N` runs N copies of itself, each with every Nth client, starts
//! them publishing together and merges their results (see `worker.rs`).
//!
//! Wire types come from `roomcast-shared`; tokens are minted with the gateway's secret
//! (`--secret`) or omitted when the gateway runs with `ROOMCAST_AUTH=off` (`--no-auth`).
//! `--protocol socketio` drives the Socket.IO peer in `loadtest/peers/socketio` instead.

mod proto;
mod readiness;
mod report;
mod seq;
mod worker;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::proto::{Event, Joined, Proto};
use crate::report::{Partial, Report, Shared};
use crate::seq::{Seen, SeqCheck};

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

impl Args {
    pub(crate) fn proto(&self) -> Proto {
        Proto::parse(&self.protocol).unwrap_or(Proto::Roomcast(roomcast_shared::Format::Json))
    }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// tungstenite's read buffer per socket. Its default, 128 KiB, is zero-filled before every
/// read: for frames of a few hundred bytes that memset was 30 % of the generator's CPU
/// (and 128 KiB of RSS per idle client). Larger frames still arrive: the buffer grows.
const READ_BUFFER: usize = 4096;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    roles: [&'a str; 2],
    exp: u64,
}

fn mint(secret: &str, sub: &str) -> Result<String, String> {
    let claims = Claims {
        sub,
        roles: ["controller", "display"],
        exp: now_us() / 1_000_000 + 24 * 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// The URL one client dials.
fn client_url(args: &Args, url: &str, user: &str) -> String {
    match args.proto() {
        Proto::SocketIo => format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            url.trim_end_matches('/')
        ),
        Proto::Roomcast(_) if args.no_auth => format!("{url}?user={user}"),
        Proto::Roomcast(_) => url.to_string(),
    }
}

/// Connects one client (socket bound to a source address when given); Roomcast clients
/// carry a token, Socket.IO clients finish the Engine.IO/Socket.IO handshake.
async fn connect(args: &Args, url: &str, user: &str, source: Option<IpAddr>) -> Result<Ws, String> {
    let proto = args.proto();
    let mut request = client_url(args, url, user)
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if matches!(proto, Proto::Roomcast(_)) && !args.no_auth {
        let secret = args
            .secret
            .as_deref()
            .ok_or("--secret or --no-auth is required")?;
        let value = format!("Bearer {}", mint(secret, user)?)
            .parse()
            .map_err(|_| "bad token header".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    if let Some(sub) = proto.subprotocol() {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", sub.parse().map_err(|_| "header")?);
    }
    let host = request.uri().host().ok_or("URL without host")?.to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("host did not resolve")?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .map_err(|e| format!("upgrade: {e}"))?;
    if proto == Proto::SocketIo {
        // The server speaks first (Engine.IO open); then connect to the default namespace.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            other => return Err(format!("handshake: expected open packet, got {other:?}")),
        }
        ws.send(proto::socketio_connect())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The server closes a socket that sends an event before its namespace connect
        // has completed, so wait for the `40{...}` answer.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with("40") => {}
            other => return Err(format!("handshake: expected connect ack, got {other:?}")),
        }
    }
    Ok(ws)
}

/// The next event from a socket (or its read half); WebSocket pings are answered by
/// tungstenite and skipped here. `None` when the stream ends.
async fn next_event<S>(stream: &mut S, proto: Proto) -> Option<Event>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await? {
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Ok(msg) => return Some(proto.decode(&msg)),
            Err(e) => return Some(Event::Broken(e.to_string())),
        }
    }
}

/// Connects, joins, and reports how long each took; the socket and what `joined` said
/// (its seq is the baseline every later message counts from). `since` makes it a rejoin.
async fn connect_and_join(
    args: &Args,
    url: &str,
    user: &str,
    session: &str,
    source: Option<IpAddr>,
    shared: &Shared,
    since: Option<(u64, &str)>,
) -> Option<(Ws, Joined)> {
    let started = Instant::now();
    let proto = args.proto();
    let mut ws = match connect(args, url, user, source).await {
        Ok(ws) => ws,
        Err(e) => {
            // `e` names its stage (connect, upgrade, handshake) and the reason, which is
            // the error's kind; clipped, so a peer's echoed text cannot make every kind new.
            shared.error(&e.chars().take(60).collect::<String>());
            return None;
        }
    };
    let connected = Instant::now();
    let sent = match proto.join(session, since) {
        Ok(join) => ws.send(join).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        shared.error(&format!("join send: {e}"));
        return None;
    }
    let joined = loop {
        match next_event(&mut ws, proto).await {
            Some(Event::Joined(joined)) => break joined,
            Some(Event::Refused { code, .. }) => {
                shared.error(&format!("join refused: {code}"));
                return None;
            }
            Some(Event::Ping) => {
                let _ = ws.send(proto::pong()).await;
            }
            Some(Event::Closed(code)) => {
                shared.error(&format!("join: closed {code:?}"));
                return None;
            }
            Some(Event::Malformed(e) | Event::Broken(e)) => {
                shared.error(&format!("join: {}", e.chars().take(40).collect::<String>()));
                return None;
            }
            Some(_) => continue,
            None => {
                shared.error("join: closed");
                return None;
            }
        }
    };
    shared.record_connect_join(connected - started, connected.elapsed());
    Some((ws, joined))
}

/// Whether PROTOCOL.md's close-code table says to come back after `code` (`None`: the
/// connection dropped without a close frame). 1000 is the generator's own close; the
/// others name a client that must not return as it is.
fn reconnectable(code: Option<u16>) -> bool {
    !matches!(code, Some(1000 | 1007 | 1008 | 4000 | 4003))
}

/// One client's identity and where it dials.
pub(crate) struct Client<'a> {
    args: &'a Args,
    shared: &'a Shared,
    /// The session's name and its index in the run.
    session: &'a str,
    index: usize,
    user: String,
    source: Option<IpAddr>,
    /// The URL (index into `--url`) it is connected to; a reconnect tries the next one.
    url: usize,
    /// Jitter state (xorshift): no shared RNG on this path.
    jitter: u64,
    /// The client's index in the whole run (all workers).
    id: usize,
    /// Churn storms so far (see `--churn-at`).
    churn: watch::Receiver<u32>,
}

impl Client<'_> {
    /// Whether this client takes part in churn storm `k`: a fixed, spread-out choice of
    /// `--churn-fraction` of the clients, different for each storm.
    fn churns(&self, k: u32) -> bool {
        picked(self.id, k, self.args.churn_fraction)
    }
}

/// Whether client `id` is among the `fraction` picked for storm `k`.
fn picked(id: usize, k: u32, fraction: f64) -> bool {
    let mut h = (id as u64) ^ (u64::from(k) << 32);
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    ((h % 10_000) as f64) < fraction * 10_000.0
}

impl Client<'_> {
    /// Dials the next URLs in turn with exponential backoff and full jitter until a
    /// join succeeds, or `end` passes (`None`).
    async fn rejoin(&mut self, since: Option<(u64, &str)>, end: Instant) -> Option<(Ws, Joined)> {
        let args = self.args;
        let mut backoff = args.backoff_min.max(Duration::from_millis(1));
        loop {
            // Full jitter: a whole gateway's clients must not come back in one instant.
            self.jitter ^= self.jitter << 13;
            self.jitter ^= self.jitter >> 7;
            self.jitter ^= self.jitter << 17;
            let pause = backoff.mul_f64((self.jitter % 1000) as f64 / 1000.0);
            if Instant::now() + pause >= end {
                return None;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(args.backoff_max);
            self.url = (self.url + 1) % args.urls.len();
            let url = &args.urls[self.url];
            let join = connect_and_join(
                args,
                url,
                &self.user,
                self.session,
                self.source,
                self.shared,
                since,
            );
            if let Ok(Some(joined)) = tokio::time::timeout(args.join_timeout, join).await {
                return Some(joined);
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    let usage = |msg: &str| -> ! {
        eprintln!("loadtest: {msg}");
        std::process::exit(64);
    };
    if args.proto() == Proto::SocketIo {
        // The peer has no authentication.
    } else if !args.no_auth && args.secret.is_none() {
        usage("give --secret (or ROOMCAST_JWT_SECRET), or --no-auth");
    }
    if Proto::parse(&args.protocol).is_none() {
        usage("--protocol is json, msgpack or socketio");
    }
    if args.workers == 0 || args.rate < 0.0 || !args.rate.is_finite() {
        usage("--workers must be at least 1 and --rate a finite number >= 0");
    }
    if args.reconnect && args.proto() == Proto::SocketIo {
        usage("--reconnect needs a Roomcast protocol: the Socket.IO peer has no recovery");
    }
    if !args.churn_at.is_empty() && !args.reconnect {
        usage("--churn-at needs --reconnect");
    }
    if !(0.0..=1.0).contains(&args.churn_fraction) {
        usage("--churn-fraction is between 0 and 1");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Some(index) = args.worker_index {
        // A worker: run its share in lockstep with the parent, print the partial result.
        std::process::exit(runtime.block_on(worker::serve(args, index)));
    }
    let partial = if args.workers > 1 {
        match runtime.block_on(worker::spawn_all(&args)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("loadtest: {e}");
                std::process::exit(1);
            }
        }
    } else {
        runtime.block_on(run(args.clone(), None, None))
    };
    let report = Report::build(&args, partial);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if args.fail_on_loss && report.unexplained > 0 {
        eprintln!(
            "loadtest: {} message(s) lost, duplicated or reordered without a reset or a window to explain them",
            report.unexplained
        );
        std::process::exit(3);
    }
}

/// Runs this process's share of a load test: every client when `share` is `None`, else
/// the clients whose global index is `i` modulo `n` for `share = Some((i, n))`. A worker
/// passes its `gate`: once its clients have joined it reports ready and waits for the
/// parent's go, so all workers start publishing together.
pub(crate) async fn run(
    args: Args,
    share: Option<(usize, usize)>,
    gate: Option<worker::Gate>,
) -> Partial {
    let args = Arc::new(args);
    let shared = Arc::new(Shared::new(args.sessions));
    let (mine, of) = share.unwrap_or((0, 1));
    let total = args.sessions * (args.displays + 1);
    let clients = (0..total).filter(|i| i % of == mine).count();
    // Each client reports once it has joined (or failed to), then waits for the go.
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<()>();
    let (go_tx, go_rx) = watch::channel(false);
    let (churn_tx, churn_rx) = watch::channel(0u32);
    let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let ramp_step = if total > 0 {
        args.ramp / total as u32
    } else {
        Duration::ZERO
    };
    let connecting = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    let mut index = 0usize;
    for s in 0..args.sessions {
        let session = format!("{}-{s}", args.prefix);
        for d in 0..=args.displays {
            let this = index;
            index += 1;
            if this % of != mine {
                continue;
            }
            let is_controller = d == 0;
            let url = this % args.urls.len();
            let source = (!args.source.is_empty()).then(|| args.source[this % args.source.len()]);
            let delay = ramp_step * this as u32;
            let (args, shared, limit, session) =
                (args.clone(), shared.clone(), limit.clone(), session.clone());
            let (arrived, mut go) = (arrived_tx.clone(), go_rx.clone());
            let churn = churn_rx.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let user = if is_controller {
                    format!("{session}-ctl")
                } else {
                    format!("{session}-d{d}")
                };
                let ws = {
                    let _permit = limit.acquire().await;
                    let join = connect_and_join(
                        &args,
                        &args.urls[url],
                        &user,
                        &session,
                        source,
                        &shared,
                        None,
                    );
                    match tokio::time::timeout(args.join_timeout, join).await {
                        Ok(ws) => ws,
                        Err(_) => {
                            shared.error("join: timed out");
                            None
                        }
                    }
                };
                let _ = arrived.send(());
                if go.wait_for(|go| *go).await.is_err() {
                    return;
                }
                let Some((ws, joined)) = ws else { return };
                let mut client = Client {
                    args: &args,
                    shared: &shared,
                    session: &session,
                    index: s,
                    user,
                    source,
                    url,
                    jitter: (this as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                    id: this,
                    churn,
                };
                if is_controller {
                    controller(ws, joined, &mut client).await;
                } else {
                    display(ws, joined, &mut client).await;
                }
            }));
        }
    }
    drop(arrived_tx);
    let progress = {
        let shared = shared.clone();
        let enabled = args.progress;
        let label = share.map(|(i, _)| format!("[w{i}] ")).unwrap_or_default();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = shared.received.load(Ordering::Relaxed);
                if enabled {
                    eprintln!(
                        "{label}[{:>4.0}s] joined {:>6} sent {:>9} received {:>10} ({:>8}/s) lost {} reconnects {} errors {}",
                        started.elapsed().as_secs_f64(),
                        shared.joined.load(Ordering::Relaxed),
                        shared.sent.load(Ordering::Relaxed),
                        now,
                        now - last,
                        shared.lost.load(Ordering::Relaxed),
                        shared.reconnects.load(Ordering::Relaxed),
                        shared.error_count()
                    );
                }
                last = now;
            }
        })
    };
    for _ in 0..clients {
        if arrived_rx.recv().await.is_none() {
            break;
        }
    }
    let connect_phase = connecting.elapsed();
    if let Some(gate) = gate {
        gate.open().await;
    }
    shared.start_clock();
    let _ = go_tx.send(true);
    let started = Instant::now();
    if let (Some(path), 0) = (&args.started_file, mine) {
        if let Err(e) = std::fs::write(path, b"") {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
        }
    }
    let churns = {
        let at = args.churn_at.clone();
        tokio::spawn(async move {
            for (k, t) in at.into_iter().enumerate() {
                tokio::time::sleep_until((started + t).into()).await;
                let _ = churn_tx.send(k as u32 + 1);
            }
            // Keep the sender: a dropped one would wake every display's select.
            std::future::pending::<()>().await;
        })
    };
    // One process watches readiness (workers share the gateways).
    let readiness = (mine == 0 && !args.ready_urls.is_empty())
        .then(|| tokio::spawn(readiness::watch(args.ready_urls.clone(), shared.clone())));
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    churns.abort();
    if let Some(watch) = readiness {
        watch.abort();
    }
    shared.partial(started.elapsed(), connect_phase)
}

/// Why a client stopped reading one connection.
enum Stop {
    /// The run is over.
    End,
    /// The connection closed (with its close code) or failed, and why.
    Dropped(Option<u16>, String),
    /// A seq or an ack at or below one already had: a duplicate, or the session's
    /// numbering started over. A rejoin tells which.
    Suspect,
    /// A churn storm picked this client: it leaves and comes back.
    Churn,
}

/// What controllers and displays do alike with an event: answer Socket.IO pings, and
/// stop on one that ends the connection (`Some`); others are ignored (`None`).
async fn housekeeping(ws: &mut Ws, event: Option<Event>) -> Option<Stop> {
    let clip = |e: String| e.chars().take(40).collect::<String>();
    let Some(event) = event else {
        return Some(Stop::Dropped(None, "ended".into()));
    };
    match event {
        Event::Ping => ws
            .send(proto::pong())
            .await
            .is_err()
            .then(|| Stop::Dropped(None, "pong failed".into())),
        Event::Closed(code) => Some(Stop::Dropped(code, format!("closed {code:?}"))),
        Event::Broken(e) => Some(Stop::Dropped(None, clip(e))),
        Event::Malformed(e) => Some(Stop::Dropped(None, format!("malformed {}", clip(e)))),
        _ => None,
    }
}

/// What a controller keeps across its connections.
struct Publisher {
    /// Payload counter (also the publish's `ref`).
    n: u64,
    /// Publishes awaiting their answer: counter to (first send time in µs, retries so far).
    in_flight: HashMap<u64, (u64, u32)>,
    /// Publishes refused `unavailable`, to send again: (when, counter, send time, retries),
    /// soonest first.
    retries: BinaryHeap<Reverse<(tokio::time::Instant, u64, u64, u32)>>,
    /// The numbering the acks on this connection belong to.
    epoch: String,
    /// The highest seq acked on this connection: acks of one connection come in order,
    /// so one at or below it means the numbering started over.
    last_ack: u64,
    /// The ack that went backwards, counted once a rejoin names its numbering.
    held_ack: Option<u64>,
}

/// Publishes at the configured rate until the duration is over; counts acks by numbering.
/// At rate 0 it only holds the connection (answering heartbeats) for the duration.
/// Controller `index` starts `index / sessions` of a period late. With `--reconnect` it
/// comes back after a drop and sends a publish refused `unavailable` again (its payload
/// keeps the first send time, so the latency shows the outage).
async fn controller(mut ws: Ws, joined: Joined, c: &mut Client<'_>) {
    let (args, shared) = (c.args, c.shared);
    let end = Instant::now() + args.duration;
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1e-6));
    // Controllers are spread evenly over one period: all starting at the same instant
    // would publish in lockstep bursts that no real set of publishers produces.
    let phase = period.mul_f64(c.index as f64 / args.sessions.max(1) as f64);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut p = Publisher {
        n: 0,
        in_flight: HashMap::new(),
        retries: BinaryHeap::new(),
        epoch: joined.epoch,
        last_ack: 0,
        held_ack: None,
    };
    loop {
        let stop = publish_on(&mut ws, &mut p, &mut tick, c, end, true).await;
        match stop {
            Stop::End => break,
            Stop::Dropped(code, why) if args.reconnect && reconnectable(code) => {
                shared.dropped(&format!("controller: {why}"));
            }
            Stop::Dropped(_, why) => {
                shared.error(&format!("controller: {why}"));
                return;
            }
            Stop::Suspect | Stop::Churn => {}
        }
        shared.reconnected();
        // Whether the publishes in flight were stored is unknown (PROTOCOL.md): they are
        // not sent again, and their seqs, if any, are accounted by what displays see.
        p.in_flight.clear();
        let _ = ws.close(None).await;
        let Some((fresh, joined)) = c.rejoin(None, end).await else {
            return;
        };
        ws = fresh;
        p.epoch = joined.epoch;
        p.last_ack = 0;
        if let Some(seq) = p.held_ack.take() {
            p.last_ack = seq;
            shared.tallies.acked(c.index, &p.epoch, seq);
        }
    }
    // The drain: no more publishes, but the acks of the last ones still count.
    let drained = Instant::now() + args.drain;
    let _ = publish_on(&mut ws, &mut p, &mut tick, c, drained, false).await;
    let _ = ws.close(None).await;
}

/// One connection's publishing (when `publishing`; else only its answers): ticks, acks,
/// retries and heartbeats until `end` or until the connection ends.
async fn publish_on(
    ws: &mut Ws,
    p: &mut Publisher,
    tick: &mut tokio::time::Interval,
    c: &Client<'_>,
    end: Instant,
    publishing: bool,
) -> Stop {
    let (args, shared) = (c.args, c.shared);
    let proto = args.proto();
    let pad = "x".repeat(args.payload);
    let stop = tokio::time::sleep_until(end.into());
    tokio::pin!(stop);
    loop {
        let retry_at = p.retries.peek().map(|r| r.0 .0);
        let send = tokio::select! {
            _ = &mut stop => return Stop::End,
            event = next_event(ws, proto) => {
                match event {
                    Some(Event::Ack { seq, n }) => {
                        shared.acked.fetch_add(1, Ordering::Relaxed);
                        if let Some((t, _)) = n.and_then(|n| p.in_flight.remove(&n)) {
                            shared.record_ack(now_us().saturating_sub(t));
                        }
                        if let Some(seq) = seq {
                            if seq <= p.last_ack && args.reconnect {
                                // The acks went backwards: a new numbering whose epoch
                                // only a join tells. This ack belongs to it, so it is
                                // counted once the rejoin has named it.
                                p.held_ack = Some(seq);
                                return Stop::Suspect;
                            }
                            p.last_ack = seq;
                            shared.tallies.acked(c.index, &p.epoch, seq);
                        }
                    }
                    Some(Event::Refused { code, n, retry_after_ms }) => {
                        let retry = n.and_then(|n| p.in_flight.remove(&n).map(|sent| (n, sent)));
                        match retry {
                            Some((n, (t, tries))) if args.reconnect && code == "unavailable" => {
                                shared.publish_retries.fetch_add(1, Ordering::Relaxed);
                                // Per message, exponential (an app's outbox backs off too),
                                // and never sooner than the server asked.
                                let backoff = 100u64.saturating_mul(1 << tries.min(6)).min(5000);
                                let wait = Duration::from_millis(backoff.max(retry_after_ms.unwrap_or(0)));
                                p.retries.push(Reverse((tokio::time::Instant::now() + wait, n, t, tries + 1)));
                            }
                            _ => shared.error(&format!("publish: {code}")),
                        }
                    }
                    other => {
                        if let Some(stop) = housekeeping(ws, other).await {
                            return stop;
                        }
                    }
                }
                None
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if publishing && retry_at.is_some() => {
                p.retries.pop().map(|Reverse((_, n, t, tries))| (n, t, tries))
            }
            _ = tick.tick(), if publishing && args.rate > 0.0 => {
                p.n += 1;
                Some((p.n, now_us(), 0))
            }
        };
        let Some((n, t, tries)) = send else { continue };
        let data = json!({"t": t, "n": n, "pad": pad});
        let Ok(msg) = proto.publish(c.session, data, n) else {
            return Stop::End;
        };
        if ws.send(msg).await.is_err() {
            return Stop::Dropped(None, "send failed".into());
        }
        p.in_flight.insert(n, (t, tries));
        if tries == 0 {
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Latency samples a display keeps before adding them to the shared histograms.
const LATENCY_BATCH: usize = 64;

/// A display's account of its session across its connections.
struct Viewer {
    /// The numbering it follows, and what it saw there.
    epoch: String,
    check: SeqCheck,
    /// (second of the run, latency µs) not yet added to the shared histograms.
    samples: Vec<(usize, u64)>,
    /// After a reconnect: the seq that means caught up, and when the connection was lost.
    catching_up: Option<(u64, Instant)>,
}

impl Viewer {
    /// One message (live, or from a rejoin's history). An `Again` is returned to the
    /// caller only when a rejoin can settle it; otherwise it is a duplicate.
    fn see(&mut self, seq: u64, sent_us: Option<u64>, c: &Client<'_>, settle: bool) -> Seen {
        let shared = c.shared;
        shared.received.fetch_add(1, Ordering::Relaxed);
        let seen = self.check.see(seq);
        if seen == Seen::Again {
            if settle {
                shared.received.fetch_sub(1, Ordering::Relaxed);
                return seen;
            }
            self.check.duplicated += 1;
        }
        if let Some(t) = sent_us {
            self.samples
                .push((shared.second(), now_us().saturating_sub(t).max(1)));
            if self.samples.len() >= LATENCY_BATCH {
                shared.add_latencies(&mut self.samples);
            }
        }
        if let Some((target, lost_at)) = self.catching_up {
            if self.check.last() >= target {
                shared.record_recovery(lost_at.elapsed());
                self.catching_up = None;
            }
        }
        seen
    }

    /// Takes in a rejoin's answer. `held`: the connection was left because a seq came
    /// again; in the same numbering that was a duplicate, in a new one it was not.
    fn rejoined(&mut self, joined: Joined, held: bool, lost_at: Instant, c: &Client<'_>) {
        let shared = c.shared;
        let mut history = joined.history;
        if joined.epoch != self.epoch {
            // The numbering started over: close the account of the old one (what it
            // missed there is counted as taken by the reset) and follow the new one
            // from the oldest message the server still has.
            shared.numbering_resets.fetch_add(1, Ordering::Relaxed);
            shared.display_reset(c.index, &self.epoch, &self.check);
            self.epoch = joined.epoch;
            self.check = SeqCheck::new(0);
            let first = history
                .first()
                .map_or(joined.seq, |m| m.0.saturating_sub(1));
            self.check.skip_to(first);
        } else {
            if held {
                self.check.duplicated += 1;
            }
            if !joined.recovered {
                // More was missed than the session keeps: the history is its whole
                // window; what came before it is gone.
                shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                let last = self.check.last();
                history.retain(|m| m.0 > last);
                let first = history
                    .first()
                    .map_or(joined.seq, |m| m.0.saturating_sub(1));
                self.check.skip_to(first);
            }
        }
        self.catching_up = Some((joined.seq, lost_at));
        if self.check.last() >= joined.seq {
            shared.record_recovery(lost_at.elapsed());
            self.catching_up = None;
        }
        for (seq, sent_us) in history {
            self.see(seq, sent_us, c, false);
        }
    }
}

/// Receives until the controller's run (plus the drain) is over; checks seq continuity
/// from the seq at its join and records latency. With `--reconnect` it comes back after a
/// drop with `since` and `epoch`, and accounts for what the rejoin says.
async fn display(mut ws: Ws, joined: Joined, c: &mut Client<'_>) {
    let (args, shared) = (c.args, c.shared);
    let end = Instant::now() + args.duration + args.drain;
    let mut v = Viewer {
        epoch: joined.epoch,
        check: SeqCheck::new(joined.seq),
        samples: Vec::new(),
        catching_up: None,
    };
    let settle = args.reconnect && args.proto() != Proto::SocketIo;
    loop {
        let stop = receive(&mut ws, &mut v, c, end, settle).await;
        let held = match stop {
            Stop::End => break,
            Stop::Dropped(code, why) if settle && reconnectable(code) => {
                shared.dropped(&format!("display: {why}"));
                false
            }
            Stop::Dropped(_, why) => {
                shared.error(&format!("display: {why}"));
                break;
            }
            Stop::Suspect => true,
            Stop::Churn => false,
        };
        let lost_at = Instant::now();
        shared.reconnected();
        let _ = ws.close(None).await;
        let since = (v.check.last(), v.epoch.clone());
        let Some((fresh, joined)) = c.rejoin(Some((since.0, &since.1)), end).await else {
            if held {
                v.check.duplicated += 1;
            }
            shared.error("display: could not rejoin before the end");
            break;
        };
        ws = fresh;
        v.rejoined(joined, held, lost_at, c);
    }
    let _ = ws.close(None).await;
    shared.display_done(c.index, &v.epoch, &v.check);
    shared.add_latencies(&mut v.samples);
}

/// One connection's messages until the run ends or the connection does.
async fn receive(
    ws: &mut Ws,
    v: &mut Viewer,
    c: &mut Client<'_>,
    end: Instant,
    settle: bool,
) -> Stop {
    let proto = c.args.proto();
    let stop = tokio::time::sleep_until(end.into());
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = next_event(ws, proto) => e,
            _ = &mut stop => return Stop::End,
            Ok(()) = c.churn.changed() => {
                let k = *c.churn.borrow_and_update();
                if c.churns(k) {
                    return Stop::Churn;
                }
                continue;
            }
        };
        match event {
            Some(Event::Message { seq, sent_us }) => {
                if v.see(seq, sent_us, c, settle) == Seen::Again {
                    return Stop::Suspect;
                }
            }
            other => {
                if let Some(stop) = housekeeping(ws, other).await {
                    return stop;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::picked;

    #[test]
    fn a_churn_storm_picks_about_its_fraction_and_another_set_each_time() {
        let first: Vec<usize> = (0..2000).filter(|&i| picked(i, 1, 0.2)).collect();
        let second: Vec<usize> = (0..2000).filter(|&i| picked(i, 2, 0.2)).collect();
        for storm in [&first, &second] {
            assert!((340..=460).contains(&storm.len()), "{}", storm.len());
        }
        let both = first.iter().filter(|i| second.contains(i)).count();
        assert!(both < 150, "storms pick different clients: {both} in both");
        assert!(!(0..100).any(|i| picked(i, 1, 0.0)));
        assert!((0..100).all(|i| picked(i, 1, 1.0)));
    }
}
