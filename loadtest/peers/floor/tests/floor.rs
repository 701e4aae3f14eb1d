//! The floor peer as the load generator sees it: a join answers the session's seq, a
//! publish is acked with its seq and reaches every member (the publisher too) once, in
//! order, and `/health` counts the sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Floor(Child, u16);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn health(port: u16) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    serde_json::from_str(reply.split("\r\n\r\n").nth(1)?).ok()
}

fn start() -> Floor {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_floor"))
        .env("PORT", port.to_string())
        .spawn()
        .unwrap();
    let floor = Floor(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(port).is_none() {
        assert!(Instant::now() < deadline, "floor did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    floor
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a frame within 5 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

async fn join(port: u16, session: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    let frame = json!({"type": "join", "session": session, "ref": "j"});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_reaches_every_member_once_in_order_and_is_acked() {
    let floor = start();
    let mut controller = join(floor.1, "room").await;
    let joined = next(&mut controller).await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["seq"], 0);
    assert_eq!(joined["ref"], "j");
    let mut displays = Vec::new();
    for _ in 0..2 {
        let mut d = join(floor.1, "room").await;
        assert_eq!(next(&mut d).await["type"], "joined");
        displays.push(d);
    }
    let mut elsewhere = join(floor.1, "other").await;
    assert_eq!(next(&mut elsewhere).await["seq"], 0);
    assert_eq!(health(floor.1).unwrap()["sockets"], 4);

    for n in 1..=3 {
        let publish =
            json!({"type": "publish", "session": "room", "data": {"n": n}, "ref": n.to_string()});
        controller
            .send(Message::text(publish.to_string()))
            .await
            .unwrap();
    }
    let (mut acks, mut echoes) = (Vec::new(), Vec::new());
    while acks.len() < 3 || echoes.len() < 3 {
        let frame = next(&mut controller).await;
        match frame["type"].as_str() {
            Some("ack") => acks.push((frame["ref"].clone(), frame["seq"].clone())),
            Some("message") => echoes.push(frame["seq"].clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        acks,
        [
            (json!("1"), json!(1)),
            (json!("2"), json!(2)),
            (json!("3"), json!(3))
        ]
    );
    assert_eq!(echoes, [1, 2, 3]);
    for d in &mut displays {
        for n in 1..=3 {
            let m = next(d).await;
            assert_eq!(
                (m["type"].as_str(), m["seq"].as_u64()),
                (Some("message"), Some(n))
            );
            assert_eq!(m["data"]["n"], n);
            assert_eq!(m["session"], "room");
        }
    }
    // Another session heard nothing: its next frame is the answer to a ping.
    elsewhere
        .send(Message::text(
            json!({"type": "ping", "ref": "p"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut elsewhere).await["type"], "pong");

    // A member that left is forgotten by its session and by the socket count.
    drop(displays.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(floor.1).unwrap()["sockets"] != 3 {
        assert!(
            Instant::now() < deadline,
            "a closed socket is still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
