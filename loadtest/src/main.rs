//! Roomcast load generator: sessions of one controller and N displays against one or more
//! gateways. Controllers publish at a fixed rate with a send timestamp in each message;
//! displays measure publish-to-receive latency and check seq continuity, so every run
//! reports throughput, latency percentiles, and messages lost, duplicated or out of order.
//!
//! Wire types come from `roomcast-shared`; tokens are minted with the gateway's secret
//! (`--secret`) or omitted when the gateway runs with `ROOMCAST_AUTH=off` (`--no-auth`).

mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};

use roomcast_shared::{decode_server, encode, ClientFrame, Format, ServerFrame};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::report::{Report, Shared};

#[derive(Debug, Parser, Clone)]
#[command(
    name = "loadtest",
    about = "Drive Roomcast gateways and measure latency and loss"
)]
pub(crate) struct Args {
    /// Gateway WebSocket URL; repeat to spread clients over several gateways.
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
    /// Messages per second each controller publishes.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f64,
    /// Padding bytes in each message.
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// How long controllers publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Spread the connects over this long.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) ramp: Duration,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    /// `json` or `msgpack`.
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
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

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

/// Connects one client (socket bound to a source address when given) and reads `welcome`.
async fn connect(args: &Args, url: &str, user: &str, source: Option<IpAddr>) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if !args.no_auth {
        let secret = args
            .secret
            .as_deref()
            .ok_or("--secret or --no-auth is required")?;
        let token = mint(secret, user)?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token header".to_string())?;
        request.headers_mut().insert("authorization", value);
    } else {
        let with_user = format!("{url}?user={user}");
        request = with_user.into_client_request().map_err(|e| e.to_string())?;
    }
    if args.protocol == "msgpack" {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "roomcast.v1.msgpack".parse().map_err(|_| "header")?,
        );
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
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

fn format_of(args: &Args) -> Format {
    if args.protocol == "msgpack" {
        Format::Msgpack
    } else {
        Format::Json
    }
}

async fn send(ws: &mut Ws, format: Format, frame: &ClientFrame) -> Result<(), String> {
    let bytes = encode(format, frame).map_err(|e| e.to_string())?;
    let msg = match format {
        Format::Json => Message::text(String::from_utf8(bytes).map_err(|e| e.to_string())?),
        Format::Msgpack => Message::binary(bytes),
    };
    ws.send(msg).await.map_err(|e| e.to_string())
}

/// The next protocol frame from a socket (or its read half); pings are skipped.
async fn next_frame<S>(stream: &mut S, format: Format) -> Option<Result<ServerFrame, String>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = match stream.next().await? {
            Ok(msg) => msg,
            Err(e) => return Some(Err(e.to_string())),
        };
        let bytes = match msg {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(c) => {
                return Some(Err(format!("closed {:?}", c.map(|c| u16::from(c.code)))))
            }
            _ => continue,
        };
        return Some(decode_server(format, &bytes));
    }
}

/// Connects, joins, and reports how long that took.
async fn connect_and_join(
    args: &Args,
    url: &str,
    user: &str,
    session: &str,
    source: Option<IpAddr>,
    shared: &Shared,
) -> Option<Ws> {
    let started = Instant::now();
    let format = format_of(args);
    let mut ws = match connect(args, url, user, source).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.error(&format!(
                "connect: {}",
                e.split(':').next().unwrap_or("error")
            ));
            return None;
        }
    };
    let join = ClientFrame::Join {
        session: session.to_string(),
        role: None,
        name: None,
        since: None,
        reference: None,
    };
    if let Err(e) = send(&mut ws, format, &join).await {
        shared.error(&format!("join send: {e}"));
        return None;
    }
    loop {
        match next_frame(&mut ws, format).await {
            Some(Ok(ServerFrame::Joined { .. })) => break,
            Some(Ok(ServerFrame::Error { code, .. })) => {
                shared.error(&format!("join refused: {}", code.as_str()));
                return None;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                shared.error(&format!("join: {}", e.chars().take(40).collect::<String>()));
                return None;
            }
            None => {
                shared.error("join: closed");
                return None;
            }
        }
    }
    if let Ok(mut h) = shared.connect_join.lock() {
        let _ = h.record(started.elapsed().as_micros().max(1) as u64);
    }
    Some(ws)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !args.no_auth && args.secret.is_none() {
        eprintln!("loadtest: give --secret (or ROOMCAST_JWT_SECRET), or --no-auth");
        std::process::exit(64);
    }
    if args.protocol != "json" && args.protocol != "msgpack" {
        eprintln!("loadtest: --protocol is json or msgpack");
        std::process::exit(64);
    }
    let report = run(args.clone()).await;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

/// Runs one load test and returns its report.
pub(crate) async fn run(args: Args) -> Report {
    let args = Arc::new(args);
    let shared = Arc::new(Shared::new());
    let clients = args.sessions * (args.displays + 1);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let ramp_step = if clients > 0 {
        args.ramp / clients as u32
    } else {
        Duration::ZERO
    };
    let format = format_of(&args);
    let mut tasks = Vec::with_capacity(clients);
    let mut index = 0usize;
    for s in 0..args.sessions {
        let session = format!("{}-{s}", args.prefix);
        for d in 0..=args.displays {
            let is_controller = d == 0;
            let url = args.urls[index % args.urls.len()].clone();
            let source = (!args.source.is_empty()).then(|| args.source[index % args.source.len()]);
            let delay = ramp_step * index as u32;
            index += 1;
            let (args, shared, barrier, gate, session) = (
                args.clone(),
                shared.clone(),
                barrier.clone(),
                gate.clone(),
                session.clone(),
            );
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let user = format!(
                    "{session}-{}",
                    if is_controller {
                        "ctl".to_string()
                    } else {
                        format!("d{d}")
                    }
                );
                let ws = {
                    let _permit = gate.acquire().await;
                    connect_and_join(&args, &url, &user, &session, source, &shared).await
                };
                barrier.wait().await;
                let Some(ws) = ws else { return };
                if is_controller {
                    controller(ws, &args, &session, format, &shared).await;
                } else {
                    display(ws, &args, format, &shared).await;
                }
            }));
        }
    }
    barrier.wait().await;
    let started = Instant::now();
    let progress = {
        let shared = shared.clone();
        let enabled = args.progress;
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = shared.received.load(Ordering::Relaxed);
                if enabled {
                    eprintln!(
                        "[{:>4.0}s] sent {:>9} received {:>10} ({:>8}/s) lost {} errors {}",
                        started.elapsed().as_secs_f64(),
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
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    Report::build(&args, &shared, started.elapsed())
}

/// Publishes at the configured rate until the duration is over; counts acks.
async fn controller(ws: Ws, args: &Args, session: &str, format: Format, shared: &Shared) {
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + args.duration;
    let pad = "x".repeat(args.payload);
    let (mut sink, mut stream) = ws.split();
    let reader = async {
        while let Some(frame) = next_frame(&mut stream, format).await {
            match frame {
                Ok(ServerFrame::Ack { .. }) => {
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ServerFrame::Error { code, .. }) => {
                    shared.error(&format!("publish: {}", code.as_str()))
                }
                Ok(_) => {}
                Err(e) => {
                    shared.error(&format!("controller: {e}"));
                    break;
                }
            }
        }
    };
    let writer = async {
        while Instant::now() < end {
            tick.tick().await;
            let frame = ClientFrame::Publish {
                session: session.to_string(),
                data: json!({"t": now_us(), "pad": pad}),
                reference: None,
            };
            let Ok(bytes) = encode(format, &frame) else {
                break;
            };
            let msg = match format {
                Format::Json => Message::text(String::from_utf8(bytes).unwrap_or_default()),
                Format::Msgpack => Message::binary(bytes),
            };
            if sink.send(msg).await.is_err() {
                shared.error("controller: send failed");
                break;
            }
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(args.drain).await;
        let _ = sink.close().await;
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

/// Receives until the controller's run (plus the drain) is over; checks seq continuity
/// and records latency.
async fn display(mut ws: Ws, args: &Args, format: Format, shared: &Shared) {
    let mut hist = Some(report::histogram());
    let end = Instant::now() + args.duration + args.drain;
    let mut check = SeqCheck::default();
    loop {
        let frame = tokio::select! {
            f = next_frame(&mut ws, format) => f,
            _ = tokio::time::sleep_until(end.into()) => break,
        };
        match frame {
            Some(Ok(ServerFrame::Message { seq, data, .. })) => {
                shared.received.fetch_add(1, Ordering::Relaxed);
                check.see(seq);
                if let (Some(t), Some(h)) = (data.get("t").and_then(|t| t.as_u64()), hist.as_mut())
                {
                    let _ = h.record(now_us().saturating_sub(t).max(1));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                shared.error(&format!(
                    "display: {}",
                    e.chars().take(40).collect::<String>()
                ));
                break;
            }
            None => break,
        }
    }
    let _ = ws.close(None).await;
    shared.lost.fetch_add(check.lost, Ordering::Relaxed);
    shared
        .duplicates
        .fetch_add(check.duplicates, Ordering::Relaxed);
    if let (Some(h), Ok(mut total)) = (hist, shared.latency.lock()) {
        let _ = total.add(&h);
    }
}

/// Per-display seq accounting: a jump forward counts the skipped seqs as lost; a seq at or
/// below the last one counts as duplicated or out of order (the protocol forbids both).
#[derive(Debug, Default)]
struct SeqCheck {
    last: Option<u64>,
    lost: u64,
    duplicates: u64,
}

impl SeqCheck {
    fn see(&mut self, seq: u64) {
        match self.last {
            Some(last) if seq <= last => self.duplicates += 1,
            Some(last) => {
                self.lost += seq - last - 1;
                self.last = Some(seq);
            }
            None => self.last = Some(seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SeqCheck;

    fn run(seqs: &[u64]) -> (u64, u64) {
        let mut c = SeqCheck::default();
        for s in seqs {
            c.see(*s);
        }
        (c.lost, c.duplicates)
    }

    #[test]
    fn seq_accounting() {
        assert_eq!(run(&[1, 2, 3]), (0, 0));
        assert_eq!(
            run(&[5, 6, 7]),
            (0, 0),
            "the first seq seen is the baseline"
        );
        assert_eq!(run(&[1, 3, 4]), (1, 0));
        assert_eq!(run(&[1, 2, 2, 3]), (0, 1));
        assert_eq!(
            run(&[1, 3, 2, 4]),
            (1, 1),
            "a late 2 is lost then out of order"
        );
    }
}
