//! WebSocket connections: the checks before the upgrade, then one task per connection.
//!
//! Owns the HTTP-side admission (draining, `Origin`, connection cap, token, subprotocol),
//! and after the upgrade the connection's read loop: decoding frames, applying commands,
//! heartbeats, token expiry, and leaving every session when the socket ends. Outbound
//! frames go through the client's bounded queue (`client`); session fan-out happens in the
//! session pump (`session`). A bad frame gets an `error` frame; only the close codes of
//! SPEC.md end a connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use roomcast_shared::{
    close, decode_client, ClientFrame, ErrorCode, Format, From, Role, ServerFrame,
    PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::api::limits;
use crate::auth::{AuthError, Identity};
use crate::client::{self, ClientHandle};
use crate::envelope::{encode_entry_tail, kind, Event, MemberInfo};
use crate::http::problem;
use crate::hub::SessionHandle;
use crate::metrics as m;
use crate::ratelimit::{Scope, TokenBucket};
use crate::session::{Command, JoinError, JoinRequest};
use crate::store::StoreError;
use crate::util::{now_ms, random_id, valid_id};
use crate::App;

/// Sessions one connection may be joined to at once.
const MAX_SESSIONS_PER_CONNECTION: usize = 16;
/// Longest `ref`.
const MAX_REF_LEN: usize = 128;
/// How long a closing connection keeps reading, waiting for the client's close frame.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    /// Only with `ROOMCAST_AUTH=off`: the user id to act as.
    user: Option<String>,
}

/// `GET /ws`: admission checks, then the upgrade.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    mut ws: WebSocketUpgrade,
) -> Response {
    if app.is_draining() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "node is draining; connect to another node",
        );
    }
    if !origin_allowed(&app.config.allowed_origins, &headers) {
        return problem(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        );
    }
    let ip = app.proxies.client_ip(peer, &headers);
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
    let identity = match authenticate(&app, &headers, &query) {
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
    let format = match select_protocol(&mut ws) {
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
    ws.max_message_size(max)
        .max_frame_size(max)
        // Small per-connection buffers: most frames are small and idle sockets are many
        // (tungstenite never shrinks them). A larger frame still gets room for its whole
        // length; these only bound how much one read takes in and how much one write
        // batches, and 1 KiB still batches several fan-out frames per syscall.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| {
            let tracker = app.tracker.clone();
            tracker.track_future(run(app, socket, identity, format, peer, ip))
        })
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
    let Ok(origin) = origin.to_str() else {
        return false;
    };
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

/// Picks the first offered subprotocol we speak; none offered means JSON.
fn select_protocol(ws: &mut WebSocketUpgrade) -> Result<Format, String> {
    let offered: Vec<String> = ws
        .requested_protocols()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(Format::Json);
    }
    for p in &offered {
        let format = match p.as_str() {
            SUBPROTOCOL_JSON => Format::Json,
            SUBPROTOCOL_MSGPACK => Format::Msgpack,
            _ => continue,
        };
        ws.set_selected_protocol(HeaderValue::from_static(match format {
            Format::Json => SUBPROTOCOL_JSON,
            Format::Msgpack => SUBPROTOCOL_MSGPACK,
        }));
        return Ok(format);
    }
    Err(offered.join(", "))
}

/// A session this connection has joined.
struct Joined {
    handle: SessionHandle,
    info: MemberInfo,
}

/// A command's failure, sent back as an `error` frame (and maybe a close).
struct Failure {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
    close: Option<u16>,
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

    fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::SessionEnded => {
                Failure::new(ErrorCode::SessionEnded, "the session has ended")
            }
            StoreError::NoSuchSession => Failure::new(ErrorCode::NotFound, "no such session"),
            StoreError::SessionResolved => Failure::new(
                ErrorCode::Forbidden,
                "the session is resolved; resume it before writing",
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "redis unavailable");
                Failure {
                    retry_after_ms: Some(1000),
                    ..Failure::new(ErrorCode::Unavailable, "storage unavailable, retry later")
                }
            }
            StoreError::Internal(detail) => {
                tracing::error!(error = %detail, "redis error");
                Failure::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

struct Connection {
    app: Arc<App>,
    client: ClientHandle,
    identity: Identity,
    /// The client's address, for per-IP publish limits.
    ip: String,
    sessions: HashMap<String, Joined>,
    /// `signal` and `typing` allowance.
    signals: Option<TokenBucket>,
    /// Every inbound frame's allowance; running dry closes with 4029.
    frames: Option<TokenBucket>,
}

/// Bytes one socket read takes in (tungstenite's `read_buffer_size`). Allocated for every
/// connection for its whole life; client frames are a few hundred bytes, and a larger one
/// still arrives (the buffer grows for it).
const WS_READ_BUFFER: usize = 512;
/// Bytes of outgoing frames batched before a socket write (`write_buffer_size`).
const WS_WRITE_BUFFER: usize = 1024;

/// The connection task: from `welcome` to the last leave.
///
/// Everything that needs no waiting is set up here, outside the future: an async fn keeps
/// its arguments in its future for its whole life even after they are moved out, and every
/// idle connection's task is as large as that future.
fn run(
    app: Arc<App>,
    socket: WebSocket,
    identity: Identity,
    format: Format,
    peer: SocketAddr,
    ip: IpAddr,
) -> impl std::future::Future<Output = ()> {
    let client_id = random_id(16);
    let span =
        tracing::info_span!("conn", client_id = %client_id, peer = %peer, user = %identity.user);
    let role = identity.default_role().map(Role::as_str).unwrap_or("none");
    let (sink, mut stream) = socket.split();
    let (client, rx) = ClientHandle::new(
        client_id,
        identity.user.clone(),
        format,
        app.config.send_queue,
    );
    let user_channel = app.store.keys().user_channel(&identity.user);
    let mut conn = Connection {
        app: app.clone(),
        client: client.clone(),
        identity,
        ip: limits::ip_key(ip),
        sessions: HashMap::new(),
        signals: TokenBucket::new(app.config.rate_signal),
        frames: TokenBucket::new(app.config.rate_frames),
    };
    async move {
        if app.hub.add_client(client.clone()) {
            // Direct messages for this user reach this instance from now on.
            if let Err(e) = Box::pin(app.bus.subscribe(user_channel.clone())).await {
                // Sessions work without it; keep trying while the user is connected here.
                tracing::debug!(error = %e, "user channel subscribe failed; retrying");
                app.tracker.spawn(retry_user_channel(
                    app.clone(),
                    conn.identity.user.clone(),
                    user_channel.clone(),
                ));
            }
        }
        if app.is_draining() {
            // Upgraded just as the drain began: go elsewhere like everyone else.
            client.kill(close::GOING_AWAY);
        }
        m::connection_opened(role);
        tracing::debug!("connected");
        let writer = app
            .tracker
            .spawn(client::run_writer(sink, rx, client.clone()).in_current_span());
        client.send(&ServerFrame::Welcome {
            client_id: client.id().to_string(),
            node: app.node_id.clone(),
            heartbeat_ms: app.config.heartbeat.as_millis() as u64,
            protocol: PROTOCOL_VERSION,
        });
        let reason = conn.read_loop(&mut stream).await;
        conn.leave_all();
        if app.hub.remove_client(&client) {
            app.bus.unsubscribe(user_channel);
        }
        // Let the writer send its close frame (bounded by its own timeout) while we keep
        // reading: dropping a socket with unread input makes the kernel answer with a
        // reset, which can destroy the close frame (and its code) before the client reads
        // it. The client's own close frame, or a short deadline, ends the drain.
        client.kill(close::NORMAL);
        let drain = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        });
        let (_, _) = tokio::join!(writer, drain);
        m::connection_closed(role, reason);
        tracing::debug!(reason, code = client.close_code(), "disconnected");
    }
    .instrument(span)
}

impl Connection {
    /// Reads until the client leaves or must go; answers why, for the metric label.
    async fn read_loop(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
    ) -> &'static str {
        let heartbeat = self.app.config.heartbeat;
        let mut ping = interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let expires = self
            .identity
            .expires_at_ms
            .map(|exp| Instant::now() + Duration::from_millis(exp.saturating_sub(now_ms())));
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let killed = self.client.killed().clone();
        loop {
            tokio::select! {
                biased;
                _ = killed.cancelled() => return close_label(self.client.close_code()),
                _ = &mut expiry => {
                    self.client.kill(close::TOKEN_EXPIRED);
                    return "token_expired";
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > heartbeat * 2 {
                        self.client.kill(close::GOING_AWAY);
                        return "heartbeat_timeout";
                    }
                    self.client.offer(Message::Ping(Default::default()));
                }
                msg = stream.next() => {
                    let msg = match msg {
                        None => return "client_closed",
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => return self.read_error(e),
                    };
                    last_seen = Instant::now();
                    if let Some(frames) = &mut self.frames {
                        if frames.take(std::time::Instant::now()).is_err() {
                            m::rate_limited("frames");
                            self.client.kill(close::RATE_LIMITED);
                            return "rate_limited";
                        }
                    }
                    // Frame handling is boxed: its Redis futures are kilobytes, and inline
                    // they would size every idle connection's task for its busiest moment.
                    match msg {
                        Message::Text(text) => {
                            Box::pin(self.on_bytes(Format::Json, text.as_bytes())).await
                        }
                        Message::Binary(bytes) => {
                            Box::pin(self.on_bytes(Format::Msgpack, &bytes)).await
                        }
                        // tungstenite answers pings itself; any frame proves liveness.
                        Message::Ping(_) | Message::Pong(_) => {}
                        Message::Close(_) => return "client_closed",
                    }
                }
            }
        }
    }

    /// A read error ends the connection; size and UTF-8 violations get their close codes.
    fn read_error(&self, e: axum::Error) -> &'static str {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let inner = e.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(_)) => {
                self.client.kill(close::TOO_BIG);
                "too_large"
            }
            Some(WsError::Utf8(_)) => {
                self.client.kill(close::INVALID_PAYLOAD);
                "invalid_utf8"
            }
            Some(WsError::Protocol(p)) => {
                tracing::debug!(error = %p, "protocol violation");
                self.client.kill(close::POLICY);
                "protocol_error"
            }
            _ => {
                tracing::debug!(error = %inner, "read failed");
                "io_error"
            }
        }
    }

    async fn on_bytes(&mut self, got: Format, bytes: &[u8]) {
        let format = self.client.format();
        if got != format {
            let expected = match format {
                Format::Json => "text frames (roomcast.v1.json)",
                Format::Msgpack => "binary frames (roomcast.v1.msgpack)",
            };
            self.fail(
                None,
                Failure::new(
                    ErrorCode::BadRequest,
                    format!("this connection accepts {expected}"),
                ),
            );
            return;
        }
        let mut frame = match decode_client(format, bytes) {
            Ok(frame) => frame,
            Err(e) => {
                m::received("invalid");
                self.fail(e.reference.map(clip_ref), Failure::new(e.code, e.message));
                return;
            }
        };
        m::received(frame.kind());
        // Every reply echoes at most MAX_REF_LEN bytes of it.
        if let Some(r) = frame.reference_mut() {
            *r = clip_ref(std::mem::take(r));
        }
        let reference = frame.reference().map(str::to_string);
        if let Err(failure) = self.apply(frame).await {
            self.fail(reference, failure);
        }
    }

    fn fail(&self, reference: Option<String>, failure: Failure) {
        self.client.send(&ServerFrame::Error {
            reference,
            code: failure.code,
            message: failure.message,
            retry_after_ms: failure.retry_after_ms,
        });
        if let Some(code) = failure.close {
            self.client.close_after_queue(code);
        }
    }

    async fn apply(&mut self, frame: ClientFrame) -> Result<(), Failure> {
        match frame {
            ClientFrame::Join {
                session,
                role,
                name,
                since,
                reference,
            } => {
                let span = tracing::info_span!("join", session = %session);
                self.join(session, role, name, since, reference)
                    .instrument(span)
                    .await
            }
            ClientFrame::Leave { session, reference } => {
                let joined = self
                    .sessions
                    .remove(&session)
                    .ok_or_else(|| not_joined(&session))?;
                let (done, wait) = oneshot::channel();
                let leave = Command::Leave {
                    client_id: self.client.id().to_string(),
                    done: Some(done),
                };
                if joined.handle.tx.send(leave).await.is_ok() {
                    let _ = wait.await;
                }
                self.ack(reference, None);
                Ok(())
            }
            ClientFrame::Publish {
                session,
                data,
                reference,
            } => {
                let started = std::time::Instant::now();
                let from = self.writer_in(&session)?;
                self.publish_allowed().await?;
                let now = now_ms();
                let tail = encode_entry_tail(now, &from, &data).map_err(|e| {
                    Failure::new(ErrorCode::BadRequest, format!("data cannot be stored: {e}"))
                })?;
                let span = tracing::info_span!("publish", session = %session);
                let published = async {
                    let traceparent = crate::telemetry::current_traceparent();
                    self.app
                        .store
                        .publish(&session, tail, now, traceparent.as_deref())
                        .await
                }
                .instrument(span)
                .await
                .map_err(Failure::from_store)?;
                m::publish_duration(started.elapsed());
                self.client.send(&ServerFrame::Ack {
                    reference,
                    seq: Some(published.seq),
                });
                if let Some(due) = published.due(&self.app.config, now) {
                    // Back under the lifecycle clock.
                    self.touch_indexes(&session, None, Some(due), true);
                }
                self.note_activity(&session).await;
                Ok(())
            }
            ClientFrame::Signal {
                session,
                data,
                to,
                reference,
            } => {
                let from = self.writer_in(&session)?;
                self.signal_allowed()?;
                if let Some(to) = &to {
                    if !valid_id(to) {
                        return Err(Failure::new(
                            ErrorCode::BadRequest,
                            "`to` is not a client id",
                        ));
                    }
                }
                let payload = Event::Signal { from, data, to }.encode();
                self.app
                    .store
                    .publish_event(&session, payload)
                    .await
                    .map_err(Failure::from_store)?;
                self.ack(reference, None);
                self.note_activity(&session).await;
                Ok(())
            }
            ClientFrame::Typing {
                session,
                active,
                reference,
            } => {
                let from = self.writer_in(&session)?;
                self.signal_allowed()?;
                let payload = Event::Typing { from, active }.encode();
                self.app
                    .store
                    .publish_event(&session, payload)
                    .await
                    .map_err(Failure::from_store)?;
                self.ack(reference, None);
                self.note_activity(&session).await;
                Ok(())
            }
            ClientFrame::Activity { session, reference } => {
                // Activity keeps a session alive: a write, refused to observers.
                self.writer_in(&session)?;
                self.touch(&session).await?;
                self.ack(reference, None);
                Ok(())
            }
            ClientFrame::Ping { reference } => {
                self.client.send(&ServerFrame::Pong { reference });
                Ok(())
            }
        }
    }

    async fn join(
        &mut self,
        session: String,
        role: Option<Role>,
        name: Option<String>,
        since: Option<u64>,
        reference: Option<String>,
    ) -> Result<(), Failure> {
        if !valid_id(&session) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                "`session` must be 1 to 128 characters of A-Z a-z 0-9 _ - . :",
            ));
        }
        if self.sessions.contains_key(&session) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                "already joined to this session",
            ));
        }
        if self.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("at most {MAX_SESSIONS_PER_CONNECTION} sessions per connection"),
            ));
        }
        if !self.identity.may_join(&session) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                "the token does not allow this session",
            ));
        }
        let role = match role.or(self.identity.default_role()) {
            Some(role) if self.identity.roles.contains(&role) => role,
            Some(role) => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    format!("the token does not allow the role {}", role.as_str()),
                ))
            }
            None => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    "the token allows no role",
                ))
            }
        };
        // The token's name was checked at the upgrade; a name in the frame is checked here.
        if let Some(problem) = name.as_deref().and_then(crate::util::name_problem) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!("`name` {problem}"),
            ));
        }
        let name = name.or_else(|| self.identity.name.clone());
        let now = now_ms();
        let info = MemberInfo {
            client_id: self.client.id().to_string(),
            user: self.identity.user.clone(),
            role,
            name,
            node: self.app.node_id.clone(),
            joined_at: now,
            active_at: now,
        };
        // A pump that is retiring answers Retry; the next lookup spawns a fresh one. A
        // join first assumes the session exists; only when it does not are the creation
        // rules checked and the join sent again, allowed to create it.
        let mut create = false;
        for _ in 0..4 {
            let handle = self.app.hub.session(&self.app, &session);
            let (reply, answer) = oneshot::channel();
            let request = JoinRequest {
                client: self.client.clone(),
                info: info.clone(),
                since,
                reference: reference.clone(),
                create,
                reply,
            };
            if handle
                .tx
                .send(Command::Join(Box::new(request)))
                .await
                .is_err()
            {
                continue;
            }
            // Bounded: a pump stuck behind a Redis outage must not hold this connection's
            // reader (heartbeats, kills, token expiry) hostage.
            let deadline = self.app.config.redis_timeout * 3;
            let Ok(answer) = tokio::time::timeout(deadline, answer).await else {
                return Err(Failure {
                    close: Some(close::TRY_AGAIN_LATER),
                    retry_after_ms: Some(1000),
                    ..Failure::new(ErrorCode::Unavailable, "join timed out, reconnect later")
                });
            };
            match answer {
                Ok(Ok(created)) => {
                    // A new session goes under the lifecycle clock; an observer's join is a
                    // read and records no activity.
                    let now = now_ms();
                    let expires = now + self.app.config.max_lifetime.as_millis() as u64;
                    let due = created
                        .then(|| crate::lifecycle::first_due(&self.app.config, now, expires));
                    self.touch_indexes(
                        &session,
                        Some(self.identity.user.clone()),
                        due,
                        role.can_write(),
                    );
                    self.sessions.insert(session, Joined { handle, info });
                    return Ok(());
                }
                Ok(Err(JoinError::Store(StoreError::NoSuchSession))) if !create => {
                    self.may_create(&session, role).await?;
                    create = true;
                }
                Ok(Err(JoinError::Retry)) | Err(_) => continue,
                Ok(Err(JoinError::Store(StoreError::Unavailable(detail)))) => {
                    tracing::warn!(error = %detail, "join failed: redis unavailable");
                    return Err(Failure {
                        close: Some(close::TRY_AGAIN_LATER),
                        retry_after_ms: Some(1000),
                        ..Failure::new(
                            ErrorCode::Unavailable,
                            "storage unavailable, reconnect later",
                        )
                    });
                }
                Ok(Err(JoinError::Store(e))) => return Err(Failure::from_store(e)),
            }
        }
        Err(Failure::new(ErrorCode::Internal, "could not join, retry"))
    }

    /// Whether this connection may create `session` by joining it: implicit creation is
    /// on, the role can write (observers never create), the creation limits admit it
    /// (per address, shared with `POST /sessions`, and per user), and the user is under
    /// the cap of sessions it holds.
    async fn may_create(&self, session: &str, role: Role) -> Result<(), Failure> {
        let config = &self.app.config;
        let missing =
            |why: &str| Failure::new(ErrorCode::NotFound, format!("no such session; {why}"));
        if !config.implicit_sessions {
            return Err(missing("create it with POST /api/v1/sessions"));
        }
        if !role.can_write() {
            return Err(missing("observers cannot create sessions"));
        }
        let (ip, user) = tokio::join!(
            limits::check(&self.app, Scope::ApiStrict, &self.ip),
            limits::check(&self.app, Scope::Create, &self.identity.user),
        );
        for decision in [ip, user].into_iter().flatten() {
            if !decision.admitted {
                return Err(Failure {
                    retry_after_ms: Some(decision.retry_after().as_millis() as u64),
                    ..Failure::new(
                        ErrorCode::RateLimited,
                        format!(
                            "at most {} sessions created per {}s ({})",
                            decision.limit,
                            decision.window.as_secs().max(1),
                            decision.scope.name()
                        ),
                    )
                });
            }
        }
        let cap = config.max_sessions_per_user;
        if cap > 0 {
            let now = now_ms();
            let expires = now + config.max_lifetime.as_millis() as u64;
            let counted = self
                .app
                .store
                .claim_owned(&self.identity.user, session, now, expires, cap)
                .await
                .map_err(Failure::from_store)?;
            if !counted {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    format!("this user already holds {cap} sessions it created (ROOMCAST_MAX_SESSIONS_PER_USER)"),
                ));
            }
        }
        Ok(())
    }

    /// Counts a publish against the user's and the address's windows. Fails closed: when
    /// Redis cannot answer, the publish could not be stored either.
    async fn publish_allowed(&self) -> Result<(), Failure> {
        let config = &self.app.config;
        let store = &self.app.store;
        let user = async {
            let rate = config.rate_publish;
            if rate.is_disabled() {
                return Ok(None);
            }
            store
                .rate_check(Scope::Publish, &self.identity.user, rate)
                .await
                .map(Some)
        };
        let ip = async {
            let rate = config.rate_publish_ip;
            if rate.is_disabled() {
                return Ok(None);
            }
            store
                .rate_check(Scope::PublishIp, &self.ip, rate)
                .await
                .map(Some)
        };
        let (user, ip) = tokio::join!(user, ip);
        for decision in [user, ip] {
            match decision {
                Ok(Some(d)) if !d.admitted => {
                    m::rate_limited(d.scope.name());
                    return Err(Failure {
                        retry_after_ms: Some(d.retry_after().as_millis() as u64),
                        ..Failure::new(
                            ErrorCode::RateLimited,
                            format!(
                                "at most {} publishes per {}s ({})",
                                d.limit,
                                d.window.as_secs().max(1),
                                d.scope.name()
                            ),
                        )
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    m::rate_limit_unavailable("publish");
                    return Err(Failure::from_store(e));
                }
            }
        }
        Ok(())
    }

    /// Takes a token for a `signal` or `typing` frame.
    fn signal_allowed(&mut self) -> Result<(), Failure> {
        let Some(bucket) = &mut self.signals else {
            return Ok(());
        };
        bucket.take(std::time::Instant::now()).map_err(|wait| {
            m::rate_limited("signal");
            Failure {
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                ..Failure::new(ErrorCode::RateLimited, "too many signals and typing frames")
            }
        })
    }

    /// The `from` of a write in `session`, if this connection may write there.
    fn writer_in(&self, session: &str) -> Result<From, Failure> {
        let joined = self
            .sessions
            .get(session)
            .ok_or_else(|| not_joined(session))?;
        if !joined.info.role.can_write() {
            return Err(Failure::new(ErrorCode::Forbidden, "observers cannot write"));
        }
        Ok(From {
            client_id: joined.info.client_id.clone(),
            user: joined.info.user.clone(),
            role: joined.info.role,
            name: joined.info.name.clone(),
        })
    }

    fn ack(&self, reference: Option<String>, seq: Option<u64>) {
        // Commands other than publish are acknowledged only when the client asked (ref).
        if reference.is_some() || seq.is_some() {
            self.client.send(&ServerFrame::Ack { reference, seq });
        }
    }

    /// Records activity in presence after a write, at most every so often; a member that
    /// was idle is announced active again.
    async fn note_activity(&mut self, session: &str) {
        let Some(joined) = self.sessions.get(session) else {
            return;
        };
        let config = &self.app.config;
        // Often enough that neither `idle` nor the inactivity warning fires on a member
        // that keeps writing; rarely enough to cost little.
        let stale_after = (config.idle_after / 2)
            .min(config.inactivity_warning / 4)
            .min(Duration::from_secs(60))
            .as_millis() as u64;
        if now_ms().saturating_sub(joined.info.active_at) > stale_after {
            if let Err(f) = self.touch(session).await {
                tracing::debug!(error = %f.message, "activity update failed");
            }
            self.touch_indexes(session, None, None, true);
        }
    }

    /// Records activity (when `activity`) in the cross-slot session indexes, and the
    /// user's membership and the lifecycle due time when given, off the connection's path.
    fn touch_indexes(&self, session: &str, user: Option<String>, due: Option<u64>, activity: bool) {
        let app = self.app.clone();
        let session = session.to_string();
        self.app.tracker.spawn(async move {
            let now = now_ms();
            let result = if activity {
                app.store
                    .touch_indexes(&session, now, user.as_deref(), due)
                    .await
            } else if let Some(user) = user {
                app.store.remember_user_session(&user, &session, now).await
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "index touch failed");
            }
        });
    }

    /// Writes this member's activity to presence and the session.
    async fn touch(&mut self, session: &str) -> Result<(), Failure> {
        let now = now_ms();
        let idle_after = self.app.config.idle_after.as_millis() as u64;
        let Some(joined) = self.sessions.get_mut(session) else {
            return Err(not_joined(session));
        };
        let was_idle = now.saturating_sub(joined.info.active_at) > idle_after;
        joined.info.active_at = now;
        let info = joined.info.encode();
        let announce = if was_idle { kind::UPDATE } else { 0 };
        // Expiry 0: update the entry only if it is still there. A member swept meanwhile
        // was announced as gone; the pump's next refresh re-adds it with a join.
        self.app
            .store
            .presence_set(session, self.client.id(), 0, &info, announce, now)
            .await
            .map_err(Failure::from_store)
    }

    /// Leaves every joined session; the pumps remove the presence entries.
    fn leave_all(&mut self) {
        for (session, joined) in self.sessions.drain() {
            let leave = Command::Leave {
                client_id: self.client.id().to_string(),
                done: None,
            };
            if joined.handle.tx.try_send(leave).is_err() {
                // The pump is gone or saturated: remove the entry directly.
                let app = self.app.clone();
                let client_id = self.client.id().to_string();
                self.app.tracker.spawn(async move {
                    let _ = app.store.leave(&session, &client_id).await;
                });
            }
        }
    }
}

/// Subscribes a user's direct-message channel after a failed first attempt, with backoff,
/// for as long as the user has a connection on this instance.
async fn retry_user_channel(app: Arc<App>, user: String, channel: String) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        if app.hub.user_connection_count(&user) == 0 {
            return;
        }
        match app.bus.subscribe(channel.clone()).await {
            Ok(()) => {
                // The last connection may have left while we subscribed.
                if app.hub.user_connection_count(&user) == 0 {
                    app.bus.unsubscribe(channel);
                }
                return;
            }
            Err(_) => delay = (delay * 2).min(Duration::from_secs(5)),
        }
    }
}

fn not_joined(session: &str) -> Failure {
    let shown: String = session.chars().take(64).collect();
    Failure::new(
        ErrorCode::NotJoined,
        format!("not joined to session `{shown}`"),
    )
}

fn clip_ref(mut r: String) -> String {
    if r.len() > MAX_REF_LEN {
        let mut end = MAX_REF_LEN;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r.truncate(end);
    }
    r
}

/// The disconnect-reason label for a close code.
fn close_label(code: u16) -> &'static str {
    match code {
        close::GOING_AWAY => "going_away",
        close::TOO_BIG => "too_large",
        close::SESSION_ENDED => "session_ended",
        close::TOKEN_EXPIRED => "token_expired",
        close::SLOW_CONSUMER => "slow_consumer",
        close::TRY_AGAIN_LATER => "unavailable",
        close::RATE_LIMITED => "rate_limited",
        close::FORBIDDEN => "forbidden",
        close::POLICY => "policy",
        _ => "closed",
    }
}

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

    #[test]
    fn refs_are_clipped_on_char_boundaries() {
        let long = "é".repeat(100);
        let clipped = clip_ref(long);
        assert!(clipped.len() <= MAX_REF_LEN);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}

#[cfg(test)]
mod task_size {
    use super::*;
    use std::future::Future;

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
        let reader = future_size(run);
        let writer = writer_size(client::run_writer);
        eprintln!("reader task future {reader} B, writer {writer} B");
        assert!(reader <= 1536, "connection future is {reader} bytes");
        assert!(writer <= 2048, "writer future is {writer} bytes");
    }
}
