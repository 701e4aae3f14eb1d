//! One client's outbound side: its bounded send queue, its writer task and its close signal.
//!
//! Owns the rule that producers (fan-out, replies) never wait (ARCHITECTURE.md,
//! "Invariants"): a full queue closes that client with 4008 and nobody else waits. The writer drains the queue
//! in batches, feeding every frame and flushing once per batch. Frames shared by many
//! clients are encoded once per format ([`SharedFrame`]).
//!
//! The queue is a `VecDeque` behind a short mutex plus a `Notify`, not a tokio channel: a
//! bounded channel allocates a 32-slot block (about 1.5 KB) per client up front, and a
//! deque costs nothing while empty and gives back what a burst made it grow.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use roomcast_shared::{encode, CloseCode, Format, ServerFrame};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// What the writer task sends.
#[derive(Debug)]
pub enum Outbound {
    Frame(Message),
    /// Close after everything queued before it (used for `session/ended` then 4000).
    Close(CloseCode),
}

/// The sending half of a client, cheap to clone into session pumps.
#[derive(Clone, Debug)]
pub struct ClientHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    user: String,
    format: Format,
    queue: Mutex<Queue>,
    /// Most frames queued at once; one more closes the client with 4008.
    capacity: usize,
    /// Wakes the writer; a notification sent while it is busy is kept for its next wait.
    ready: Notify,
    kill: CancellationToken,
    /// The close code the writer sends when `kill` fires; the first reason wins.
    code: AtomicU16,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The writer has ended: nothing is queued any more.
    closed: bool,
    /// The writer found the queue empty and sleeps: the next push must wake it. Pushes
    /// while it is awake skip the notification.
    waiting: bool,
}

/// A drained queue keeps at most this many slots; a burst's growth is given back.
const KEEP_SLOTS: usize = 4;

/// Result of offering a frame to a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: the client is being closed with 4008.
    Overflow,
    /// The client is already gone.
    Closed,
}

impl ClientHandle {
    /// Creates the handle and the receiver its writer drains.
    pub fn new(id: String, user: String, format: Format, queue: usize) -> (Self, Outbox) {
        let inner = Arc::new(Inner {
            id,
            user,
            format,
            queue: Mutex::new(Queue::default()),
            capacity: queue.max(1),
            ready: Notify::new(),
            kill: CancellationToken::new(),
            code: AtomicU16::new(0),
        });
        (
            ClientHandle {
                inner: inner.clone(),
            },
            Outbox { inner },
        )
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn user(&self) -> &str {
        &self.inner.user
    }

    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// Fires when the client must go: slow consumer, drain, session ended, token expiry.
    pub fn killed(&self) -> &CancellationToken {
        &self.inner.kill
    }

    /// The close code chosen when the client was killed.
    pub fn close_code(&self) -> CloseCode {
        // 0 (not killed) and only our own codes are ever stored.
        CloseCode::from_code(self.inner.code.load(Ordering::Acquire)).unwrap_or(CloseCode::Normal)
    }

    /// Whether the writer has ended (the connection is over).
    pub fn is_gone(&self) -> bool {
        self.inner.lock().closed
    }

    /// Closes the client now with `code`, skipping anything still queued.
    pub fn kill(&self, code: CloseCode) {
        let _ =
            self.inner
                .code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.inner.kill.cancel();
    }

    /// Queues a message without waiting. A full queue kills the client with 4008.
    pub fn offer(&self, msg: Message) -> Offer {
        self.overflowed(self.inner.push(Outbound::Frame(msg), None))
    }

    /// Queues a message and a reply meant for this client in one push, so that the
    /// writer, woken once, sends them in one write (an own message and its `ack`).
    pub fn offer_with(&self, msg: Message, reply: &ServerFrame) -> Offer {
        match encode_message(self.inner.format, reply) {
            Some(reply) => self.overflowed(
                self.inner
                    .push(Outbound::Frame(msg), Some(Outbound::Frame(reply))),
            ),
            None => self.offer(msg),
        }
    }

    /// A full queue kills the client with 4008.
    fn overflowed(&self, offer: Offer) -> Offer {
        match offer {
            Offer::Overflow => {
                if !self.inner.kill.is_cancelled() {
                    m::slow_consumer();
                    tracing::info!(client_id = %self.inner.id, "send queue full: closing slow consumer");
                    self.kill(CloseCode::SlowConsumer);
                }
                Offer::Overflow
            }
            other => other,
        }
    }

    /// Encodes and queues a frame meant for this client only.
    pub fn send(&self, frame: &ServerFrame) -> Offer {
        if let ServerFrame::Error { code, .. } = frame {
            m::error_sent(code.as_str());
        }
        match encode_message(self.inner.format, frame) {
            Some(msg) => self.offer(msg),
            None => Offer::Closed,
        }
    }

    /// Queues a close behind what is already queued; kills at once if the queue is full.
    pub fn close_after_queue(&self, code: CloseCode) {
        if self.inner.push(Outbound::Close(code), None) != Offer::Queued {
            self.kill(code);
        }
    }
}

impl Inner {
    /// The queue, even if a holder panicked: its state is a plain deque and a flag, valid
    /// after any completed push or pop.
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item`, and `then` right behind it, or neither.
    fn push(&self, item: Outbound, then: Option<Outbound>) -> Offer {
        let wake = {
            let mut q = self.lock();
            if q.closed {
                return Offer::Closed;
            }
            if q.items.len() + usize::from(then.is_some()) >= self.capacity {
                return Offer::Overflow;
            }
            q.items.push_back(item);
            q.items.extend(then);
            std::mem::take(&mut q.waiting)
        };
        if wake {
            self.ready.notify_one();
        }
        Offer::Queued
    }
}

/// The writer's end of a client's queue. Dropping it marks the client gone.
#[derive(Debug)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl Outbox {
    /// The next queued item, waiting for one; `None` once the queue is closed.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            {
                let mut q = self.inner.lock();
                if let Some(item) = q.items.pop_front() {
                    return Some(item);
                }
                if q.closed {
                    return None;
                }
                q.waiting = true;
            }
            // A push between the unlock and the wait is not missed: it sees `waiting`, and
            // notify_one keeps a permit when nobody waits yet, which this wait then takes.
            self.inner.ready.notified().await;
        }
    }

    /// The next queued item if there is one.
    pub fn try_recv(&self) -> Option<Outbound> {
        let mut q = self.inner.lock();
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > KEEP_SLOTS {
            q.items.shrink_to(KEEP_SLOTS);
        }
        item
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut q = self.inner.lock();
        q.closed = true;
        q.items = VecDeque::new();
    }
}

/// Encodes one frame for one format. Our frames always encode; a failure is logged.
fn encode_message(format: Format, frame: &ServerFrame) -> Option<Message> {
    match encode(format, frame) {
        Ok(bytes) => Some(match format {
            // serde_json output is UTF-8 by construction.
            Format::Json => Message::Text(Utf8Bytes::try_from(Bytes::from(bytes)).ok()?),
            Format::Msgpack => Message::Binary(Bytes::from(bytes)),
        }),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a server frame");
            None
        }
    }
}

/// A frame for many clients, encoded at most once per format and shared by reference count.
pub struct SharedFrame {
    frame: ServerFrame,
    json: OnceLock<Option<Message>>,
    msgpack: OnceLock<Option<Message>>,
}

impl SharedFrame {
    pub fn new(frame: ServerFrame) -> Self {
        SharedFrame {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
        }
    }

    /// The encoded message for `format` (a cheap clone of shared bytes).
    pub fn message(&self, format: Format) -> Option<Message> {
        let cell = match format {
            Format::Json => &self.json,
            Format::Msgpack => &self.msgpack,
        };
        cell.get_or_init(|| encode_message(format, &self.frame))
            .clone()
    }
}

/// How long a close frame may take to leave before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames fed per flush.
const BATCH: usize = 64;

/// Drains the client's queue into the socket until the queue closes or the client is
/// killed; then sends the close frame (bounded in time) and returns.
pub async fn run_writer<S>(mut sink: S, mut rx: Outbox, client: ClientHandle)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let kill = client.killed().clone();
    let mut close_code = None;
    loop {
        // Feed what is queued (up to BATCH frames), then flush once. Items are taken one
        // at a time rather than into a batch vector, which idle sockets would each keep.
        let write = async {
            let mut next = rx.recv().await;
            if next.is_none() {
                return Ok(Some(CloseCode::Normal));
            }
            let mut fed = 0;
            while let Some(item) = next.take() {
                match item {
                    Outbound::Frame(msg) => sink.feed(msg).await?,
                    Outbound::Close(code) => return Ok(Some(code)),
                }
                fed += 1;
                if fed < BATCH {
                    next = rx.try_recv();
                }
            }
            sink.flush().await.map(|()| None)
        };
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            result = write => match result {
                Ok(None) => {}
                Ok(Some(code)) => {
                    close_code = Some(code);
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    // The peer is gone; make the reader stop too.
                    client.kill(CloseCode::Normal);
                    return;
                }
            },
        }
    }
    let code = close_code.unwrap_or_else(|| client.close_code());
    if close_code.is_some() {
        client.kill(code);
    }
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_kills_with_4008_once() {
        let (client, _rx) = ClientHandle::new("c".into(), "u".into(), Format::Json, 2);
        let frame = ServerFrame::Pong { reference: None };
        assert_eq!(client.send(&frame), Offer::Queued);
        assert_eq!(client.send(&frame), Offer::Queued);
        assert_eq!(client.send(&frame), Offer::Overflow);
        assert!(client.killed().is_cancelled());
        assert_eq!(client.close_code(), CloseCode::SlowConsumer);
        // A later reason does not overwrite the first.
        client.kill(CloseCode::GoingAway);
        assert_eq!(client.close_code(), CloseCode::SlowConsumer);
    }

    #[tokio::test]
    async fn shared_frame_encodes_once_per_format() {
        let shared = SharedFrame::new(ServerFrame::Pong {
            reference: Some("r".into()),
        });
        let a = shared.message(Format::Json).unwrap();
        let b = shared.message(Format::Json).unwrap();
        match (a, b) {
            (Message::Text(a), Message::Text(b)) => {
                assert_eq!(a.as_str(), r#"{"type":"pong","ref":"r"}"#);
                // Same allocation: the bytes were shared, not re-encoded.
                assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            shared.message(Format::Msgpack),
            Some(Message::Binary(_))
        ));
    }

    #[tokio::test]
    async fn writer_wakes_on_push_and_a_drained_queue_gives_back_its_burst() {
        let (client, mut rx) = ClientHandle::new("c".into(), "u".into(), Format::Json, 4096);
        let pong = ServerFrame::Pong { reference: None };
        let waiter = tokio::spawn(async move {
            let got = rx.recv().await;
            (got.is_some(), rx)
        });
        tokio::task::yield_now().await;
        assert_eq!(client.send(&pong), Offer::Queued);
        let (got, rx) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiting writer was woken")
            .expect("task");
        assert!(got);
        for _ in 0..1000 {
            assert_eq!(client.send(&pong), Offer::Queued);
        }
        let burst = client.inner.lock().items.capacity();
        assert!(burst >= 1000);
        // Draining a burst does not reallocate on the way (that would copy the rest of
        // the queue at every frame); the slots are given back once it is empty.
        assert!(rx.try_recv().is_some());
        assert_eq!(client.inner.lock().items.capacity(), burst);
        let mut drained = 1;
        while rx.try_recv().is_some() {
            drained += 1;
        }
        assert_eq!(drained, 1000);
        assert!(client.inner.lock().items.capacity() <= KEEP_SLOTS);
        assert!(!client.is_gone());
        drop(rx);
        assert!(client.is_gone(), "the writer's end dropped means gone");
    }

    #[test]
    fn a_handle_knows_whose_it_is() {
        // The hub files connections by user (direct messages, per-user counts).
        let (client, _rx) =
            ClientHandle::new("c1".into(), "ann@example.com".into(), Format::Msgpack, 8);
        assert_eq!(
            (client.id(), client.user(), client.format()),
            ("c1", "ann@example.com", Format::Msgpack)
        );
    }

    #[tokio::test]
    async fn closed_queue_reports_closed() {
        let (client, rx) = ClientHandle::new("c".into(), "u".into(), Format::Json, 2);
        drop(rx);
        assert_eq!(
            client.send(&ServerFrame::Pong { reference: None }),
            Offer::Closed
        );
    }
}
