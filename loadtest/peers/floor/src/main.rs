//! The floor peer: the least a server can do and still serve Roomcast's load generator.
//!
//! It speaks the JSON subset of the Roomcast protocol the generator uses (`join`,
//! `publish`, `ping`; `joined`, `message`, `ack`, `pong`) over tokio + tungstenite, keeps
//! each session's members in memory, and for every publish encodes one `message` frame
//! and queues that same frame to every member, the publisher included, as Roomcast does.
//! No Redis, no history, no authentication, no limits, one process. What it costs per
//! delivery is the price of "one send per delivery" on the machine, the floor Roomcast's
//! own cost is measured against (BENCHMARKS.md).
//!
//! `GET /health` answers `{"rss_bytes": …, "sockets": …}` like the Socket.IO peer. The
//! address comes from `HOST` (127.0.0.1) and `PORT` (3000).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use roomcast_shared::{decode_client, encode, ClientFrame, Format, From, Role, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A session: its counter (the generator checks every display sees every seq once, in
/// order) and the queues of its members.
#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<(u64, mpsc::UnboundedSender<Message>)>,
}

#[derive(Default)]
struct Floor {
    rooms: DashMap<String, Arc<Mutex<Room>>>,
    next_id: AtomicU64,
    sockets: AtomicUsize,
}

#[tokio::main]
async fn main() {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = match TcpListener::bind(format!("{host}:{port}")).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("floor: bind {host}:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("floor listening on {host}:{port}");
    let floor = Arc::new(Floor::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(floor.clone(), stream));
            }
            // Out of file descriptors and the like: the benchmark reports the refused
            // connections; keep accepting.
            Err(e) => eprintln!("floor: accept: {e}"),
        }
    }
}

/// One TCP connection: a health probe or a WebSocket client.
async fn serve(floor: Arc<Floor>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut head = [0u8; 11];
    if let Ok(n) = stream.peek(&mut head).await {
        if &head[..n] == b"GET /health" {
            // Read the request before answering: closing with it unread would reset the
            // connection under the reply.
            let mut request = Vec::with_capacity(256);
            let mut buf = [0u8; 256];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 4096 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!(
                "{{\"rss_bytes\":{},\"sockets\":{}}}",
                rss_bytes(),
                floor.sockets.load(Ordering::Relaxed)
            );
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    }
    // The gateway's buffer sizes, so both pay the same per read.
    let config = WebSocketConfig::default().read_buffer_size(512);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    floor.sockets.fetch_add(1, Ordering::Relaxed);
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    // The writer: whatever is queued goes out in one flush.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut joined: Vec<Arc<Mutex<Room>>> = Vec::new();
    while let Some(Ok(msg)) = source.next().await {
        let bytes = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(frame) = decode_client(Format::Json, bytes) else {
            continue;
        };
        match frame {
            ClientFrame::Join {
                session, reference, ..
            } => {
                let room = floor.rooms.entry(session.clone()).or_default().clone();
                let seq = {
                    let mut r = room.lock().unwrap_or_else(PoisonError::into_inner);
                    r.members.push((id, tx.clone()));
                    r.seq
                };
                joined.push(room);
                let reply = ServerFrame::Joined {
                    session,
                    seq,
                    epoch: "floor".into(),
                    seq_id: String::new(),
                    recovered: false,
                    history: Vec::new(),
                    presence: Vec::new(),
                    reference,
                };
                send(&tx, &reply);
            }
            ClientFrame::Publish {
                session,
                data,
                reference,
                ..
            } => {
                let Some(room) = floor.rooms.get(&session).map(|r| r.clone()) else {
                    continue;
                };
                let from = From {
                    client_id: id.to_string(),
                    user: "floor".into(),
                    role: Role::Controller,
                    name: None,
                };
                // Encoded once; every member's queue gets the same bytes.
                let seq = {
                    let mut r = room.lock().unwrap_or_else(PoisonError::into_inner);
                    r.seq += 1;
                    let frame = ServerFrame::Message {
                        session,
                        seq: r.seq,
                        // No history, so no recovery to check: no id.
                        id: String::new(),
                        ts: now_ms(),
                        from,
                        data,
                    };
                    if let Some(text) = text(&frame) {
                        for (_, member) in &r.members {
                            let _ = member.send(Message::Text(text.clone()));
                        }
                    }
                    r.seq
                };
                send(
                    &tx,
                    &ServerFrame::Ack {
                        reference,
                        seq: Some(seq),
                    },
                );
            }
            ClientFrame::Ping { reference } => send(&tx, &ServerFrame::Pong { reference }),
            _ => {}
        }
    }
    for room in joined {
        room.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .members
            .retain(|(member, _)| *member != id);
    }
    drop(tx);
    let _ = writer.await;
    floor.sockets.fetch_sub(1, Ordering::Relaxed);
}

fn text(frame: &ServerFrame) -> Option<Utf8Bytes> {
    let bytes = encode(Format::Json, frame).ok()?;
    String::from_utf8(bytes).ok().map(Utf8Bytes::from)
}

fn send(tx: &mpsc::UnboundedSender<Message>, frame: &ServerFrame) {
    if let Some(text) = text(frame) {
        let _ = tx.send(Message::Text(text));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Resident memory from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
