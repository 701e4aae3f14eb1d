//! Dialing: a token per client, the URL for the protocol, the WebSocket (bound to a source
//! address when given), the join with its timings, and which closes a client comes back
//! after.

use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::Args;
use crate::proto::{self, Event, Joined, Proto};
use crate::report::Shared;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// tungstenite's read buffer per socket. Its default, 128 KiB, is zero-filled before every
/// read: for frames of a few hundred bytes that memset was 30 % of the generator's CPU
/// (and 128 KiB of RSS per idle client). Larger frames still arrive: the buffer grows.
const READ_BUFFER: usize = 4096;

pub(crate) fn now_us() -> u64 {
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

pub(crate) fn mint(secret: &str, sub: &str) -> Result<String, String> {
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
pub(crate) fn client_url(args: &Args, url: &str, user: &str) -> String {
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
pub(crate) async fn connect(
    args: &Args,
    url: &str,
    user: &str,
    source: Option<IpAddr>,
) -> Result<Ws, String> {
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
pub(crate) async fn next_event<S>(stream: &mut S, proto: Proto) -> Option<Event>
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
pub(crate) async fn connect_and_join(
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
pub(crate) fn reconnectable(code: Option<u16>) -> bool {
    !matches!(code, Some(1000 | 1007 | 1008 | 4000 | 4003))
}
