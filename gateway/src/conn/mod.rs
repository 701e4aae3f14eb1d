//! WebSocket connections: the checks before the upgrade, then one task per connection.
//!
//! This file owns the HTTP-side admission (draining, `Origin`, connection cap, token,
//! subprotocol), the upgrade handshake itself (RFC 6455: so that the upgraded socket runs
//! through `frames::FrameGuard`, which counts every frame), and the connection's state
//! (`Connection`, its joined sessions, `Failure`); `task` the connection task (its read
//! loop, heartbeats, token expiry, leaving every session when the socket ends); `frames`
//! the frame budget below tungstenite; `commands` what each client frame does. Outbound frames
//! go through the client's bounded queue (`client`); session fan-out happens in the
//! session pump (`session`). A bad frame gets an `error` frame; only the close codes of
//! docs/PROTOCOL.md end a connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use roomcast_shared::{CloseCode, ErrorCode, Format, From, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::auth::{AuthError, Identity};
use crate::client::ClientHandle;
use crate::ids::SessionId;
use crate::problem::problem;
use crate::ratelimit as limits;
use crate::ratelimit::{Scope, TokenBucket};
use crate::session::SessionHandle;
use crate::store::StoreError;
use crate::App;

mod commands;
mod frames;
mod task;

/// An upgraded client connection: tungstenite over the frame counter over hyper's socket.
pub(crate) type Socket = WebSocketStream<frames::FrameGuard<TokioIo<Upgraded>>>;

/// Sessions one connection may be joined to at once.
const MAX_SESSIONS_PER_CONNECTION: usize = 16;
/// Longest `ref`.
const MAX_REF_LEN: usize = 128;
/// How long a closing connection keeps reading, waiting for the client's close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
    /// Only with `ROOMCAST_AUTH=off`: the user id to act as.
    user: Option<String>,
}

/// `GET /ws`: admission checks, then the upgrade.
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    req: Request,
) -> Response {
    let (mut parts, _body) = req.into_parts();
    let headers = &parts.headers;
    let (accept, on_upgrade) = match handshake(headers, parts.extensions.remove()) {
        Ok(ok) => ok,
        Err((status, detail)) => return problem(status, ErrorCode::BadRequest, detail),
    };
    if app.is_draining() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "node is draining; connect to another node",
        );
    }
    if !origin_allowed(&app.config.allowed_origins, headers) {
        return problem(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        );
    }
    let ip = app.proxies.client_ip(peer, headers);
    let ip_key = limits::ip_key(ip);
    for (scope, what) in [
        (Scope::Burst, "too many requests in a burst"),
        (Scope::Connect, "too many connections from this address"),
    ] {
        if let Some(d) = limits::check(&app, scope, &ip_key)
            .await
            .filter(|d| !d.admitted)
        {
            return limits::refusal(&d, what);
        }
    }
    let cap = app.config.max_connections;
    if cap > 0 && app.hub.client_count() >= cap {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "connection limit reached",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let identity = match authenticate(&app, headers, &query) {
        Ok(identity) => identity,
        Err(e) => {
            let (status, code) = match e {
                AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
                _ => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            };
            return problem(status, code, &e.to_string());
        }
    };
    let per_user = app.config.max_connections_per_user;
    if per_user > 0 && app.hub.user_connection_count(&identity.user) >= per_user {
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            &format!("at most {per_user} connections per user on this node"),
        );
        // A slot frees when one of the user's connections closes: no window to wait for.
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let (format, selected) = match select_protocol(headers) {
        Ok(format) => format,
        Err(offered) => {
            return problem(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("unsupported subprotocol {offered:?}; use {SUBPROTOCOL_JSON} or {SUBPROTOCOL_MSGPACK}"),
            )
        }
    };
    let max = app.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // Small per-connection buffers: most frames are small and idle sockets are many
        // (tungstenite never shrinks them). A larger frame still gets room for its whole
        // length; these only bound how much one read takes in and how much one write
        // batches, and 1 KiB still batches several fan-out frames per syscall.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER);
    let budget = TokenBucket::new(app.config.rate_frames);
    let tracker = app.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, peer = %peer, "upgrade failed");
                return;
            }
        };
        let client = ClientHandle::new(
            crate::util::random_id(16),
            identity.user.to_string(),
            format,
            app.config.send_queue,
        );
        let io = frames::FrameGuard::new(TokioIo::new(upgraded), budget, client.0.clone());
        let socket = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(config)).await;
        task::run(app, socket, client, identity, peer, ip).await
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = selected {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Checks an upgrade request (RFC 6455 §4.2.1) and answers the `Sec-WebSocket-Accept`
/// value with the connection's upgrade, or the status (400; 426 for a connection hyper
/// cannot hand over) and reason to answer instead.
fn handshake(
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Result<(HeaderValue, OnUpgrade), (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let bad = |detail| Err((StatusCode::BAD_REQUEST, detail));
    if !has_token(header::CONNECTION, "upgrade") {
        return bad("`Connection` must include `upgrade`: this is the WebSocket endpoint");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return bad("`Upgrade` must be `websocket`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return bad("`Sec-WebSocket-Version` must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad("`Sec-WebSocket-Key` is missing");
    };
    let Some(on_upgrade) = on_upgrade else {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 is required)",
        ));
    };
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| (StatusCode::BAD_REQUEST, "bad `Sec-WebSocket-Key`"))?;
    Ok((accept, on_upgrade))
}

fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    // Browsers always send Origin; a client without one is not a browser page and cannot
    // be the victim of cross-site WebSocket hijacking.
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    origin.to_str().is_ok_and(|o| origin_listed(allowed, o))
}

/// Whether `origin` is on the allow-list (`*` lists every origin). The REST API's CORS
/// (`http::cors`) answers from the same list, so a page that may open the socket may also
/// call the API.
pub(crate) fn origin_listed(allowed: &[String], origin: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

fn authenticate(app: &App, headers: &HeaderMap, query: &WsQuery) -> Result<Identity, AuthError> {
    if app.auth.is_off() {
        return Ok(app.auth.anonymous(query.user.as_deref()));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = bearer
        .or(query.token.as_deref())
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    app.auth.verify(token)
}

/// Picks the first offered subprotocol we speak, with the header value that names it;
/// none offered means JSON (and no header).
fn select_protocol(headers: &HeaderMap) -> Result<(Format, Option<HeaderValue>), String> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok((Format::Json, None));
    }
    for p in &offered {
        let (format, name) = match p.as_str() {
            SUBPROTOCOL_JSON => (Format::Json, SUBPROTOCOL_JSON),
            SUBPROTOCOL_MSGPACK => (Format::Msgpack, SUBPROTOCOL_MSGPACK),
            _ => continue,
        };
        return Ok((format, Some(HeaderValue::from_static(name))));
    }
    Err(offered.join(", "))
}

/// A session this connection has joined.
struct Joined {
    handle: SessionHandle,
    /// Who this connection writes as in the session (identity only: the member's state,
    /// such as when it was last active, is the pump's).
    from: From,
    /// When this connection last reported activity here (throttles the reports).
    touched_at: u64,
}

/// The `retry_after_ms` of an `unavailable` error.
const UNAVAILABLE_RETRY_MS: u64 = 1000;

/// A command's failure, sent back as an `error` frame (and maybe a close).
struct Failure {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
    close: Option<CloseCode>,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            retry_after_ms: None,
            close: None,
        }
    }

    /// Redis (or a pump waiting on it) did not answer: retry after a second.
    fn unavailable(message: &str) -> Self {
        Failure {
            retry_after_ms: Some(UNAVAILABLE_RETRY_MS),
            ..Failure::new(ErrorCode::Unavailable, message)
        }
    }

    /// Also closes the connection with `code` once the error frame is out.
    fn closing(self, code: CloseCode) -> Self {
        Failure {
            close: Some(code),
            ..self
        }
    }

    fn from_store(e: StoreError) -> Self {
        let told = e.told();
        if told.retry {
            Failure::unavailable(&told.message)
        } else {
            Failure::new(told.code, told.message)
        }
    }
}

struct Connection {
    app: Arc<App>,
    client: ClientHandle,
    identity: Identity,
    /// The client's address, for per-IP publish limits.
    ip: String,
    sessions: HashMap<SessionId, Joined>,
    /// `signal` and `typing` allowance.
    signals: Option<TokenBucket>,
}

/// Bytes one socket read takes in (tungstenite's `read_buffer_size`). Allocated for every
/// connection for its whole life; client frames are a few hundred bytes, and a larger one
/// still arrives (the buffer grows for it).
const WS_READ_BUFFER: usize = 512;
/// Bytes of outgoing frames batched before a socket write (`write_buffer_size`).
const WS_WRITE_BUFFER: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        assert!(origin_allowed(&[], &h));
        let allowed = vec!["https://app.example".to_string()];
        assert!(
            origin_allowed(&allowed, &h),
            "non-browser clients send no Origin"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!origin_allowed(&allowed, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        assert!(origin_allowed(&allowed, &h));
    }
}

#[cfg(test)]
mod task_size {
    use super::*;
    use std::future::Future;
    use tokio_tungstenite::tungstenite::Message;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, D, E, G, F: Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn writer_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection keeps one reader task and one writer task alive, each as large
    /// as its future's busiest state: frame handling must stay boxed out of them.
    #[test]
    fn idle_connection_tasks_stay_small() {
        let reader = future_size(task::run);
        let writer = writer_size(
            crate::client::run_writer::<futures_util::stream::SplitSink<Socket, Message>>,
        );
        eprintln!("reader task future {reader} B, writer {writer} B");
        assert!(reader <= 1536, "connection future is {reader} bytes");
        assert!(writer <= 2048, "writer future is {writer} bytes");
    }
}
