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
mod report;
mod seq;
mod worker;

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

use crate::proto::{Event, Proto};
use crate::report::{Partial, Report, Shared};
use crate::seq::SeqCheck;

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
            Err(e) => return Some(Event::Malformed(e.to_string())),
        }
    }
}

/// Connects, joins, and reports how long each took; the socket and the session's seq at
/// the join (the baseline every later message counts from).
async fn connect_and_join(
    args: &Args,
    url: &str,
    user: &str,
    session: &str,
    source: Option<IpAddr>,
    shared: &Shared,
) -> Option<(Ws, u64)> {
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
    let sent = match proto.join(session) {
        Ok(join) => ws.send(join).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        shared.error(&format!("join send: {e}"));
        return None;
    }
    let baseline = loop {
        match next_event(&mut ws, proto).await {
            Some(Event::Joined { seq }) => break seq,
            Some(Event::Refused(code)) => {
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
            Some(Event::Malformed(e)) => {
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
    Some((ws, baseline))
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
            let url = args.urls[this % args.urls.len()].clone();
            let source = (!args.source.is_empty()).then(|| args.source[this % args.source.len()]);
            let delay = ramp_step * this as u32;
            let (args, shared, limit, session) =
                (args.clone(), shared.clone(), limit.clone(), session.clone());
            let (arrived, mut go) = (arrived_tx.clone(), go_rx.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let user = if is_controller {
                    format!("{session}-ctl")
                } else {
                    format!("{session}-d{d}")
                };
                let ws = {
                    let _permit = limit.acquire().await;
                    let join = connect_and_join(&args, &url, &user, &session, source, &shared);
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
                let Some((ws, baseline)) = ws else { return };
                if is_controller {
                    controller(ws, &args, &session, s, &shared).await;
                } else {
                    display(ws, &args, s, baseline, &shared).await;
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
                        "{label}[{:>4.0}s] joined {:>6} sent {:>9} received {:>10} ({:>8}/s) lost {} errors {}",
                        started.elapsed().as_secs_f64(),
                        shared.joined.load(Ordering::Relaxed),
                        shared.sent.load(Ordering::Relaxed),
                        now,
                        now - last,
                        shared.lost.load(Ordering::Relaxed),
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
    let _ = go_tx.send(true);
    let started = Instant::now();
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    shared.partial(started.elapsed(), connect_phase)
}

/// Publishes at the configured rate until the duration is over; counts acks. At rate 0
/// it only holds the connection (answering heartbeats) for the duration. Controller
/// `index` starts `index / sessions` of a period late.
async fn controller(ws: Ws, args: &Args, session: &str, index: usize, shared: &Shared) {
    let proto = args.proto();
    let end = Instant::now() + args.duration;
    let pad = "x".repeat(args.payload);
    let (mut sink, mut stream) = ws.split();
    // Socket.IO pings arrive on the read half; their pongs go out through the writer.
    let (pongs, mut pong_rx) = mpsc::channel::<()>(4);
    let reader = async {
        while let Some(event) = next_event(&mut stream, proto).await {
            match event {
                Event::Ack { seq } => {
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                    if let Some(seq) = seq {
                        shared.tallies.acked(index, seq);
                    }
                }
                Event::Refused(code) => shared.error(&format!("publish: {code}")),
                Event::Ping => {
                    let _ = pongs.try_send(());
                }
                Event::Closed(code) => {
                    shared.error(&format!("controller: closed {code:?}"));
                    break;
                }
                Event::Malformed(e) => {
                    shared.error(&format!(
                        "controller: {}",
                        e.chars().take(40).collect::<String>()
                    ));
                    break;
                }
                Event::Joined { .. } | Event::Message { .. } | Event::Other => {}
            }
        }
    };
    let writer = async {
        let period = Duration::from_secs_f64(1.0 / args.rate.max(1e-6));
        // Controllers are spread evenly over one period: all starting at the same instant
        // would publish in lockstep bursts that no real set of publishers produces.
        let phase = period.mul_f64(index as f64 / args.sessions.max(1) as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        let stop = tokio::time::sleep_until(end.into());
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = pong_rx.recv() => {
                    if sink.send(proto::pong()).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick(), if args.rate > 0.0 => {
                    n += 1;
                    let data = json!({"t": now_us(), "n": n, "pad": pad});
                    let Ok(msg) = proto.publish(session, data, n) else { break };
                    if sink.send(msg).await.is_err() {
                        shared.error("controller: send failed");
                        break;
                    }
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(args.drain).await;
        let _ = sink.close().await;
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

/// Latency samples a display keeps before adding them to the shared histogram.
const LATENCY_BATCH: usize = 64;

/// Receives until the controller's run (plus the drain) is over; checks seq continuity
/// from `baseline` (the seq at its join) and records latency.
async fn display(mut ws: Ws, args: &Args, session: usize, baseline: u64, shared: &Shared) {
    let proto = args.proto();
    // Samples are batched into the process-wide histogram: one hdrhistogram per display
    // (about 140 KB each) would cost gigabytes at tens of thousands of displays.
    let mut samples = Vec::new();
    let end = Instant::now() + args.duration + args.drain;
    let mut check = SeqCheck::new(baseline);
    let stop = tokio::time::sleep_until(end.into());
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            e = next_event(&mut ws, proto) => e,
            _ = &mut stop => break,
        };
        match event {
            Some(Event::Message { seq, sent_us }) => {
                shared.received.fetch_add(1, Ordering::Relaxed);
                check.see(seq);
                if let Some(t) = sent_us {
                    samples.push(now_us().saturating_sub(t).max(1));
                    if samples.len() >= LATENCY_BATCH {
                        shared.add_latencies(&mut samples);
                    }
                }
            }
            Some(Event::Ping) => {
                if ws.send(proto::pong()).await.is_err() {
                    shared.error("display: pong failed");
                    break;
                }
            }
            Some(Event::Closed(code)) => {
                shared.error(&format!("display: closed {code:?}"));
                break;
            }
            Some(Event::Malformed(e)) => {
                shared.error(&format!(
                    "display: {}",
                    e.chars().take(40).collect::<String>()
                ));
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let _ = ws.close(None).await;
    shared.display_done(session, &check);
    shared.add_latencies(&mut samples);
}
