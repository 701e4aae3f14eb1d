//! The connection task: from `welcome` to the last leave. Owns the read loop (frames,
//! heartbeats, token expiry, kills), the classification of read errors into close codes,
//! decoding frames into commands, and the close handshake's drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_shared::{
    decode_client, CloseCode, ErrorCode, Format, Role, ServerFrame, PROTOCOL_VERSION,
};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

use crate::auth::Identity;
use crate::client::{self, ClientHandle};
use crate::metrics as m;
use crate::ratelimit as limits;
use crate::ratelimit::TokenBucket;
use crate::util::now_ms;
use crate::App;

use super::{Connection, Failure, Socket, CLOSE_DRAIN, MAX_REF_LEN};

/// The connection task: from `welcome` to the last leave.
///
/// Everything that needs no waiting is set up here, outside the future: an async fn keeps
/// its arguments in its future for its whole life even after they are moved out, and every
/// idle connection's task is as large as that future.
pub(super) fn run(
    app: Arc<App>,
    socket: Socket,
    (client, rx): (ClientHandle, client::Outbox),
    identity: Identity,
    peer: SocketAddr,
    ip: IpAddr,
) -> impl std::future::Future<Output = ()> {
    let span =
        tracing::info_span!("conn", client_id = %client.id(), peer = %peer, user = %identity.user);
    let role = identity.default_role().map(Role::as_str).unwrap_or("none");
    let (sink, mut stream) = socket.split();
    let user_channel = app.store.keys().user_channel(&identity.user);
    let mut conn = Connection {
        app: app.clone(),
        client: client.clone(),
        identity,
        ip: limits::ip_key(ip),
        sessions: HashMap::new(),
        signals: TokenBucket::new(app.config.rate_signal),
    };
    async move {
        if app.hub.add_client(client.clone()) {
            // Direct messages for this user reach this instance from now on.
            if let Err(e) = Box::pin(app.bus.subscribe(user_channel.clone())).await {
                // Sessions work without it; keep trying while the user is connected here.
                tracing::debug!(error = %e, "user channel subscribe failed; retrying");
                app.tracker.spawn(retry_user_channel(
                    app.clone(),
                    conn.identity.user.to_string(),
                    user_channel.clone(),
                ));
            }
        }
        if app.is_draining() {
            // Upgraded just as the drain began: go elsewhere like everyone else.
            client.kill(CloseCode::GoingAway);
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
            time: now_ms(),
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
        client.kill(CloseCode::Normal);
        let drain = tokio::time::timeout(CLOSE_DRAIN, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        });
        let (_, _) = tokio::join!(writer, drain);
        m::connection_closed(role, reason);
        tracing::debug!(reason, code = client.close_code().code(), "disconnected");
    }
    .instrument(span)
}

impl Connection {
    /// Reads until the client leaves or must go; answers why, for the metric label.
    async fn read_loop(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<Socket>,
    ) -> &'static str {
        let heartbeat = self.app.config.heartbeat;
        let mut ping = interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // The token's expiry (4001), which a `refresh` moves. Without one (auth off) the
        // timer is never polled (the branch below is disabled), whatever its deadline.
        let deadline = |exp: Option<u64>| {
            Instant::now() + Duration::from_millis(exp.unwrap_or(0).saturating_sub(now_ms()))
        };
        let mut expires_at_ms = self.identity.expires_at_ms;
        let expiry = tokio::time::sleep_until(deadline(expires_at_ms));
        tokio::pin!(expiry);
        let killed = self.client.killed().clone();
        loop {
            tokio::select! {
                biased;
                _ = killed.cancelled() => return self.client.close_code().label(),
                _ = &mut expiry, if expires_at_ms.is_some() => {
                    self.client.kill(CloseCode::TokenExpired);
                    return "token_expired";
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > heartbeat * 2 {
                        self.client.kill(CloseCode::GoingAway);
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
                    // Every frame was counted below tungstenite (`frames::FrameGuard`).
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
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => return "client_closed",
                    }
                    // A `refresh` moved the expiry.
                    if self.identity.expires_at_ms != expires_at_ms {
                        expires_at_ms = self.identity.expires_at_ms;
                        expiry.as_mut().reset(deadline(expires_at_ms));
                    }
                }
            }
        }
    }

    /// A read error ends the connection; size and UTF-8 violations get their close codes.
    /// (Frame-budget violations never get here: `frames::FrameGuard` kills the client.)
    fn read_error(&self, e: WsError) -> &'static str {
        match e {
            WsError::Capacity(_) => {
                self.client.kill(CloseCode::TooBig);
                "too_large"
            }
            WsError::Utf8(_) => {
                self.client.kill(CloseCode::InvalidPayload);
                "invalid_utf8"
            }
            WsError::Protocol(p) => {
                tracing::debug!(error = %p, "protocol violation");
                self.client.kill(CloseCode::Policy);
                "protocol_error"
            }
            other => {
                tracing::debug!(error = %other, "read failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_clipped_on_char_boundaries() {
        let long = "é".repeat(100);
        let clipped = clip_ref(long);
        assert!(clipped.len() <= MAX_REF_LEN);
        assert!(clipped.chars().all(|c| c == 'é'));
    }
}
