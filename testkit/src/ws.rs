//! The protocol client of the tests ([`WsClient`]): connect, join, publish, read frames
//! and closes with deadlines, rejoin with `since`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast_shared::{close, decode_server, ErrorCode, Format, ServerFrame};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Gateway, DEADLINE};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a WebSocket client saw the connection end.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    Code(u16),
    /// The stream ended without a close frame.
    Abrupt,
}

/// Why a join was not answered `joined`.
#[derive(Debug, Clone, PartialEq)]
pub enum NotJoined {
    /// An `error` frame answered it, with this code.
    Refused(ErrorCode),
    /// The connection ended.
    Closed(Closed),
}

/// A protocol client for tests.
pub struct WsClient {
    ws: Ws,
    pub format: Format,
    pub client_id: String,
    /// Frames read while looking for another one, in arrival order.
    pending: std::collections::VecDeque<ServerFrame>,
}

impl WsClient {
    /// Connects and reads `welcome`.
    pub async fn connect(url: &str, token: Option<&str>, protocol: Option<&str>) -> WsClient {
        let (ws, format) = Self::try_connect(url, token, protocol)
            .await
            .unwrap_or_else(|status| panic!("upgrade refused with HTTP {status}"));
        let mut client = WsClient {
            ws,
            format,
            client_id: String::new(),
            pending: Default::default(),
        };
        match client.next_frame().await {
            ServerFrame::Welcome {
                client_id,
                protocol,
                ..
            } => {
                assert_eq!(protocol, 1);
                client.client_id = client_id;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    /// Attempts the upgrade; an HTTP refusal answers its status.
    pub async fn try_connect(
        url: &str,
        token: Option<&str>,
        protocol: Option<&str>,
    ) -> Result<(Ws, Format), u16> {
        let headers: Vec<(&str, &str)> = protocol
            .map(|p| ("sec-websocket-protocol", p))
            .into_iter()
            .collect();
        Self::try_connect_with(url, &headers, token).await
    }

    /// Attempts the upgrade with extra headers.
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
        token: Option<&str>,
    ) -> Result<(Ws, Format), u16> {
        let mut request = url.into_client_request().expect("request");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        for (k, v) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                k.parse().expect("header name");
            request
                .headers_mut()
                .insert(name, v.parse().expect("header"));
        }
        let dial = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request));
        match dial.await.expect("the upgrade answered in time") {
            Ok((ws, response)) => {
                let format = match response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                {
                    Some("roomcast.v1.msgpack") => Format::Msgpack,
                    _ => Format::Json,
                };
                Ok((ws, format))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Connects over a socket with a tiny receive buffer (to make slow consumers quickly).
    pub async fn connect_small_buffer(url: &str, token: &str) -> WsClient {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .expect("addr");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(addr).await.expect("connect");
        let mut request = url.into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let upgrade = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
        let (ws, _) = tokio::time::timeout(DEADLINE, upgrade)
            .await
            .expect("the upgrade answered in time")
            .expect("upgrade");
        let mut client = WsClient {
            ws,
            format: Format::Json,
            client_id: String::new(),
            pending: Default::default(),
        };
        if let ServerFrame::Welcome { client_id, .. } = client.next_frame().await {
            client.client_id = client_id;
        }
        client
    }

    pub async fn send_json(&mut self, v: Value) {
        match self.format {
            Format::Json => self.send_raw(Message::text(v.to_string())).await,
            Format::Msgpack => {
                let bytes = rmp_serde::to_vec_named(&v).expect("msgpack");
                self.send_raw(Message::binary(bytes)).await
            }
        }
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next protocol frame (pings skipped); panics on close or after the deadline.
    pub async fn next_frame(&mut self) -> ServerFrame {
        match self.next_event(DEADLINE).await {
            Ok(frame) => frame,
            Err(closed) => panic!("connection closed: {closed:?}"),
        }
    }

    /// The next frame or how the connection ended.
    pub async fn next_event(&mut self, within: Duration) -> Result<ServerFrame, Closed> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        self.read_event(within).await
    }

    async fn read_event(&mut self, within: Duration) -> Result<ServerFrame, Closed> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no frame within {within:?}"),
                Ok(None) => return Err(Closed::Abrupt),
                Ok(Some(Err(_))) => return Err(Closed::Abrupt),
                Ok(Some(Ok(msg))) => msg,
            };
            match msg {
                Message::Text(t) => {
                    return Ok(decode_server(Format::Json, t.as_bytes()).expect("server frame"))
                }
                Message::Binary(b) => {
                    return Ok(decode_server(Format::Msgpack, &b).expect("server frame"))
                }
                Message::Close(frame) => {
                    return Err(frame
                        .map(|f: CloseFrame| Closed::Code(f.code.into()))
                        .unwrap_or(Closed::Abrupt))
                }
                _ => continue,
            }
        }
    }

    /// Reads frames until the connection closes; answers the close code.
    pub async fn closed(&mut self, within: Duration) -> Closed {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(_) => continue,
                Err(c) => return c,
            }
        }
    }

    /// The first frame that matches; frames before it stay queued for later reads.
    pub async fn expect<F: Fn(&ServerFrame) -> bool>(&mut self, what: &str, f: F) -> ServerFrame {
        if let Some(i) = self.pending.iter().position(&f) {
            return self.pending.remove(i).expect("index");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            match self.read_event(left).await {
                Ok(frame) if f(&frame) => return frame,
                Ok(frame) => self.pending.push_back(frame),
                Err(c) => panic!("closed ({c:?}) while waiting for {what}"),
            }
        }
    }

    pub async fn join(&mut self, session: &str, since: Option<u64>) -> ServerFrame {
        let mut frame = serde_json::json!({"type": "join", "session": session});
        if let Some(s) = since {
            frame["since"] = s.into();
        }
        self.send_json(frame).await;
        self.expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await
    }

    pub async fn join_as(&mut self, session: &str, role: &str) -> ServerFrame {
        self.send_json(serde_json::json!({"type": "join", "session": session, "role": role}))
            .await;
        self.expect("joined", |f| {
            matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. })
        })
        .await
    }

    /// Publishes and waits for the ack; answers the seq.
    pub async fn publish(&mut self, session: &str, data: Value) -> u64 {
        match self.try_publish(session, data).await {
            Ok(seq) => seq,
            Err(other) => panic!("publish refused: {other:?}"),
        }
    }

    /// Publishes and waits for the answer: the acked seq, or the error frame.
    /// [`WsClient::try_publish`] with an idempotency key.
    pub async fn try_publish_keyed(
        &mut self,
        session: &str,
        data: Value,
        key: &str,
    ) -> Result<u64, ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(
            serde_json::json!({"type": "publish", "session": session, "data": data,
            "ref": reference, "idempotency_key": key}),
        )
        .await;
        let frame = self
            .expect("ack", |f| match f {
                ServerFrame::Ack { reference: r, .. } | ServerFrame::Error { reference: r, .. } => {
                    r.as_deref() == Some(reference.as_str())
                }
                _ => false,
            })
            .await;
        match frame {
            ServerFrame::Ack { seq: Some(seq), .. } => Ok(seq),
            other => Err(other),
        }
    }

    pub async fn try_publish(&mut self, session: &str, data: Value) -> Result<u64, ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(serde_json::json!({"type": "publish", "session": session, "data": data, "ref": reference}))
            .await;
        let frame = self
            .expect("ack", |f| match f {
                ServerFrame::Ack { reference: r, .. } => r.as_deref() == Some(reference.as_str()),
                ServerFrame::Error { reference: r, .. } => r.as_deref() == Some(reference.as_str()),
                _ => false,
            })
            .await;
        match frame {
            ServerFrame::Ack { seq: Some(seq), .. } => Ok(seq),
            other => Err(other),
        }
    }

    /// Collects `message` seqs in `session` until `count` arrived.
    pub async fn messages(&mut self, session: &str, count: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        while seqs.len() < count {
            if let ServerFrame::Message {
                session: s, seq, ..
            } = self
                .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
                .await
            {
                if s == session {
                    seqs.push(seq);
                }
            }
        }
        seqs
    }

    /// Collects `(seq, id)` of the `message`s in `session` until `count` arrived.
    pub async fn message_ids(&mut self, session: &str, count: usize) -> Vec<(u64, String)> {
        let mut got = Vec::new();
        while got.len() < count {
            if let ServerFrame::Message {
                session: s,
                seq,
                id,
                ..
            } = self
                .expect("message", |f| matches!(f, ServerFrame::Message { .. }))
                .await
            {
                if s == session {
                    got.push((seq, id));
                }
            }
        }
        got
    }

    /// Rejoins as a client that processed up to `since` does: with the epoch of its
    /// numbering and, when given, the id of the message it saw at `since`. Answers
    /// (epoch, recovered, the history's seqs).
    pub async fn rejoin(
        &mut self,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> (String, bool, Vec<u64>) {
        match self.try_rejoin(session, since, epoch, since_id).await {
            Ok(joined) => joined,
            Err(why) => panic!("rejoin not joined: {why:?}"),
        }
    }

    /// [`WsClient::rejoin`], answering a refusal or a close instead of failing the test: a
    /// gateway still finding its way after a failover may refuse the join `unavailable` or
    /// close 1013 (try again later), which a client meets by joining again.
    pub async fn try_rejoin(
        &mut self,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> Result<(String, bool, Vec<u64>), NotJoined> {
        let reference = gateway::util::random_id(8);
        let mut frame = serde_json::json!(
            {"type": "join", "session": session, "since": since, "ref": reference}
        );
        if let Some(e) = epoch {
            frame["epoch"] = e.into();
        }
        if let Some(id) = since_id {
            frame["since_id"] = id.into();
        }
        self.send_json(frame).await;
        let answer = |f: &ServerFrame| {
            matches!(f, ServerFrame::Joined { reference: Some(r), .. }
                | ServerFrame::Error { reference: Some(r), .. } if *r == reference)
        };
        // Frames met while waiting stay queued for the test (`expect`'s rule): the answer
        // is looked for among them first, then read, never re-read from the queue.
        let frame = match self.pending.iter().position(answer) {
            Some(i) => self.pending.remove(i).expect("index"),
            None => {
                let deadline = tokio::time::Instant::now() + DEADLINE;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    assert!(!left.is_zero(), "timed out waiting for joined");
                    match self.read_event(left).await {
                        Ok(f) if answer(&f) => break f,
                        Ok(f) => self.pending.push_back(f),
                        Err(c) => return Err(NotJoined::Closed(c)),
                    }
                }
            }
        };
        match frame {
            ServerFrame::Joined {
                epoch,
                recovered,
                history,
                ..
            } => Ok((epoch, recovered, history.iter().map(|m| m.seq).collect())),
            ServerFrame::Error { code, .. } => Err(NotJoined::Refused(code)),
            _ => unreachable!("matched above"),
        }
    }

    /// Connects to `gateway` as `token` and rejoins as [`WsClient::rejoin`] does, joining
    /// again while the gateway, settling after a failover, refuses `unavailable` or closes
    /// 1013, as a client does; other refusals fail the test. Answers the client with
    /// (epoch, recovered, the history's seqs).
    pub async fn rejoin_retrying(
        gateway: &Gateway,
        token: &str,
        session: &str,
        since: u64,
        epoch: Option<&str>,
        since_id: Option<&str>,
    ) -> (WsClient, (String, bool, Vec<u64>)) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut client = gateway.connect(token).await;
            match client.try_rejoin(session, since, epoch, since_id).await {
                Ok(joined) => return (client, joined),
                Err(
                    why @ (NotJoined::Refused(ErrorCode::Unavailable)
                    | NotJoined::Closed(Closed::Code(close::TRY_AGAIN_LATER))),
                ) if Instant::now() < deadline => {
                    eprintln!("rejoin of {session}: {why:?}; joining again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(other) => panic!("rejoin refused: {other:?}"),
            }
        }
    }

    /// Reads until the connection closes and answers the seqs of the `message`s that came
    /// before the close, with the close.
    pub async fn seqs_until_closed(&mut self, within: Duration) -> (Vec<u64>, Closed) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seqs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(ServerFrame::Message { seq, .. }) => seqs.push(seq),
                Ok(_) => continue,
                Err(c) => return (seqs, c),
            }
        }
    }

    /// Round-trips a ping and answers every frame received before the pong: a barrier
    /// proving nothing else was queued for us.
    pub async fn drain_until_pong(&mut self) -> Vec<ServerFrame> {
        let reference = gateway::util::random_id(8);
        self.send_json(serde_json::json!({"type": "ping", "ref": reference}))
            .await;
        let mut before = Vec::new();
        loop {
            match self.next_frame().await {
                ServerFrame::Pong { reference: Some(r) } if r == reference => return before,
                other => before.push(other),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Seqs of `message` frames among `frames`.
pub fn message_seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}
