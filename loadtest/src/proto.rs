//! The wire protocols the load generator speaks: Roomcast v1 (JSON or msgpack subprotocol)
//! and, for the peer comparison, Socket.IO 5 over Engine.IO 4 as served by
//! `loadtest/peers/socketio` (see its README for the frames).
//!
//! Everything above this module deals in [`Event`]s and in the same publish payload
//! (`{"t": send time in µs, "n": per-controller counter, "pad": "..."}`), so both protocols
//! are measured by the same code.

use roomcast_shared::{decode_server, encode, ClientFrame, Format, ServerFrame};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Which server the clients talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Roomcast(Format),
    SocketIo,
}

impl Proto {
    pub(crate) fn parse(name: &str) -> Option<Proto> {
        match name {
            "json" => Some(Proto::Roomcast(Format::Json)),
            "msgpack" => Some(Proto::Roomcast(Format::Msgpack)),
            "socketio" => Some(Proto::SocketIo),
            _ => None,
        }
    }

    /// The WebSocket subprotocol to offer, if any.
    pub(crate) fn subprotocol(self) -> Option<&'static str> {
        match self {
            Proto::Roomcast(Format::Msgpack) => Some("roomcast.v1.msgpack"),
            _ => None,
        }
    }

    /// The frame asking to join `session`; a rejoin passes the last seq seen and the
    /// epoch of its numbering (Roomcast's recovery; the Socket.IO peer has none).
    pub(crate) fn join(self, session: &str, since: Option<(u64, &str)>) -> Result<Message, String> {
        match self {
            Proto::Roomcast(format) => roomcast(
                format,
                &ClientFrame::Join {
                    session: session.to_string(),
                    role: None,
                    name: None,
                    since: since.map(|(seq, _)| seq),
                    epoch: since
                        .map(|(_, epoch)| epoch.to_string())
                        .filter(|e| !e.is_empty()),
                    // The generator reads only seqs (`message_view`), not ids: a fork of
                    // one epoch reaches its displays as the gateways' 4010 and new epoch.
                    since_id: None,
                    reference: None,
                },
            ),
            Proto::SocketIo => Ok(Message::text(format!("42{}", json!(["join", session])))),
        }
    }

    /// The frame publishing `data` to `session`; `n` doubles as the Socket.IO ack id.
    pub(crate) fn publish(self, session: &str, data: Value, n: u64) -> Result<Message, String> {
        match self {
            Proto::Roomcast(format) => roomcast(
                format,
                &ClientFrame::Publish {
                    session: session.to_string(),
                    data,
                    idempotency_key: None,
                    // The counter as `ref`: an answer names the publish it is for.
                    reference: Some(n.to_string()),
                },
            ),
            Proto::SocketIo => Ok(Message::text(format!(
                "42{n}{}",
                json!(["publish", {"session": session, "data": data}])
            ))),
        }
    }

    /// Classifies one frame from the server.
    pub(crate) fn decode(self, msg: &Message) -> Event {
        match (self, msg) {
            (_, Message::Close(c)) => Event::Closed(c.as_ref().map(|c| u16::from(c.code))),
            (Proto::Roomcast(format), Message::Text(t)) => roomcast_event(format, t.as_bytes()),
            (Proto::Roomcast(format), Message::Binary(b)) => roomcast_event(format, b),
            (Proto::SocketIo, Message::Text(t)) => socketio_event(t.as_str()),
            _ => Event::Other,
        }
    }
}

/// What a client saw, in protocol-neutral terms.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    /// The join succeeded; Roomcast tells the session's current seq (the baseline
    /// after which every message must arrive), Socket.IO has none (its counter starts at 1).
    Joined(Joined),
    /// The server refused something (join or publish), with its code, the payload
    /// counter of the publish it refused (its `ref`) and the wait it asked for.
    Refused {
        code: String,
        n: Option<u64>,
        retry_after_ms: Option<u64>,
    },
    /// A publish was acknowledged: the seq it got (Roomcast) and the payload counter `n`
    /// it was for (Roomcast's `ref`; Socket.IO's ack id, which is also its seq).
    Ack { seq: Option<u64>, n: Option<u64> },
    /// A room message: its sequence number (Roomcast's seq, or the payload's `n` for
    /// Socket.IO, which has none) and the publisher's send time when present.
    Message { seq: u64, sent_us: Option<u64> },
    /// Socket.IO's application-level ping: the client must answer with [`pong`].
    Ping,
    /// The server closed the socket (with its close code, if any).
    Closed(Option<u16>),
    /// A frame the generator does not need (welcome, presence, Socket.IO handshake).
    Other,
    /// A frame that does not parse.
    Malformed(String),
    /// The connection failed (reset, protocol error) without a close frame.
    Broken(String),
}

/// What a `joined` told: the seq to count from, the numbering it belongs to, and on a
/// rejoin whether the missed messages came back, with them (seq, send time).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Joined {
    pub(crate) seq: u64,
    pub(crate) epoch: String,
    pub(crate) recovered: bool,
    pub(crate) history: Vec<(u64, Option<u64>)>,
}

/// The answer to [`Event::Ping`].
pub(crate) fn pong() -> Message {
    Message::text("3")
}

/// The Socket.IO namespace connect sent after the Engine.IO open packet.
pub(crate) fn socketio_connect() -> Message {
    Message::text("40")
}

fn roomcast(format: Format, frame: &ClientFrame) -> Result<Message, String> {
    let bytes = encode(format, frame).map_err(|e| e.to_string())?;
    Ok(match format {
        Format::Json => Message::text(String::from_utf8(bytes).map_err(|e| e.to_string())?),
        Format::Msgpack => Message::binary(bytes),
    })
}

/// The fields of a Roomcast `message` frame the generator measures, borrowed. Decoding the
/// whole `ServerFrame` (an internally tagged enum, which serde buffers field by field
/// before choosing the variant) for every delivery cost the generator CPU the servers
/// under test need; other frames, and messages whose `data` is not ours, take the full
/// decoder.
#[derive(serde::Deserialize)]
struct MessageView<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    seq: u64,
    data: Stamp,
}

/// The publish payload's send time (`pad` and `n` are skipped unread).
#[derive(serde::Deserialize)]
struct Stamp {
    t: Option<u64>,
}

fn message_view(format: Format, bytes: &[u8]) -> Option<Event> {
    let view: MessageView<'_> = match format {
        Format::Json => serde_json::from_slice(bytes).ok()?,
        Format::Msgpack => rmp_serde::from_slice(bytes).ok()?,
    };
    (view.kind == "message").then_some(Event::Message {
        seq: view.seq,
        sent_us: view.data.t,
    })
}

fn roomcast_event(format: Format, bytes: &[u8]) -> Event {
    if let Some(event) = message_view(format, bytes) {
        return event;
    }
    match decode_server(format, bytes) {
        Ok(ServerFrame::Joined {
            seq,
            epoch,
            recovered,
            history,
            ..
        }) => Event::Joined(Joined {
            seq,
            epoch,
            recovered,
            history: history
                .iter()
                .map(|m| (m.seq, m.data.get("t").and_then(Value::as_u64)))
                .collect(),
        }),
        Ok(ServerFrame::Ack { seq, reference }) => Event::Ack {
            seq,
            n: reference.and_then(|r| r.parse().ok()),
        },
        Ok(ServerFrame::Error {
            code,
            reference,
            retry_after_ms,
            ..
        }) => Event::Refused {
            code: code.as_str().to_string(),
            n: reference.and_then(|r| r.parse().ok()),
            retry_after_ms,
        },
        Ok(ServerFrame::Message { seq, data, .. }) => Event::Message {
            seq,
            sent_us: data.get("t").and_then(Value::as_u64),
        },
        Ok(_) => Event::Other,
        Err(e) => Event::Malformed(e),
    }
}

/// A Socket.IO `message` event, `["message", {"session": .., "data": {"t", "n", "pad"}}]`,
/// borrowed like [`MessageView`].
type SioMessage<'a> = (std::borrow::Cow<'a, str>, SioPayload);

#[derive(serde::Deserialize)]
struct SioPayload {
    data: SioData,
}

#[derive(serde::Deserialize)]
struct SioData {
    t: Option<u64>,
    n: u64,
}

fn socketio_event(text: &str) -> Event {
    if text == "2" {
        return Event::Ping;
    }
    // Engine.IO message (4) carrying a Socket.IO event (2) or ack (3), with an optional
    // decimal ack id before the JSON array.
    let Some(rest) = text.strip_prefix('4') else {
        return Event::Other;
    };
    let (kind, rest) = rest.split_at(rest.len().min(1));
    let body = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let ack_id = rest[..rest.len() - body.len()].parse::<u64>().ok();
    match kind {
        "2" => {
            // The same lean path as Roomcast's messages, so both servers get the same
            // share of the machine from the generator.
            if let Ok((name, payload)) = serde_json::from_str::<SioMessage<'_>>(body) {
                if name == "message" {
                    return Event::Message {
                        seq: payload.data.n,
                        sent_us: payload.data.t,
                    };
                }
            }
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(body) else {
                return Event::Malformed(format!("event {}", clip(text)));
            };
            match items.first().and_then(Value::as_str) {
                Some("joined") => Event::Joined(Joined::default()),
                Some("message") => {
                    let data = items.get(1).and_then(|m| m.get("data"));
                    match data.and_then(|d| d.get("n")).and_then(Value::as_u64) {
                        Some(seq) => Event::Message {
                            seq,
                            sent_us: data.and_then(|d| d.get("t")).and_then(Value::as_u64),
                        },
                        None => Event::Malformed(format!("message {}", clip(text))),
                    }
                }
                _ => Event::Other,
            }
        }
        "3" => match serde_json::from_str::<Value>(body) {
            Ok(Value::Array(items))
                if items.first().and_then(|a| a.get("ok")) == Some(&Value::Bool(false)) =>
            {
                Event::Refused {
                    code: "publish".into(),
                    n: ack_id,
                    retry_after_ms: None,
                }
            }
            Ok(_) => Event::Ack {
                seq: ack_id,
                n: ack_id,
            },
            Err(_) => Event::Malformed(format!("ack {}", clip(text))),
        },
        "4" => Event::Refused {
            code: "connect".into(),
            n: None,
            retry_after_ms: None,
        },
        _ => Event::Other,
    }
}

fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sio(text: &str) -> Event {
        Proto::SocketIo.decode(&Message::text(text))
    }

    #[test]
    fn socketio_frames_from_the_peer_readme() {
        assert_eq!(sio("2"), Event::Ping);
        assert_eq!(
            sio(r#"0{"sid":"a","upgrades":[],"pingInterval":25000}"#),
            Event::Other
        );
        assert_eq!(sio(r#"40{"sid":"b"}"#), Event::Other);
        assert_eq!(
            sio(r#"42["joined",{"session":"S"}]"#),
            Event::Joined(Joined::default())
        );
        assert_eq!(
            sio(r#"42["message",{"session":"S","data":{"t":5,"n":7,"pad":"x"}}]"#),
            Event::Message {
                seq: 7,
                sent_us: Some(5)
            }
        );
        assert_eq!(
            sio(r#"431[{"ok":true}]"#),
            Event::Ack {
                seq: Some(1),
                n: Some(1)
            }
        );
        assert_eq!(sio(r#"43[{"ok":true}]"#), Event::Ack { seq: None, n: None });
        assert_eq!(
            sio(r#"4312[{"ok":false,"error":"x"}]"#),
            Event::Refused {
                code: "publish".into(),
                n: Some(12),
                retry_after_ms: None
            }
        );
        assert!(matches!(sio(r#"42["message",{}]"#), Event::Malformed(_)));
        assert!(matches!(sio("42[nope"), Event::Malformed(_)));
    }

    #[test]
    fn socketio_publish_carries_the_ack_id() {
        let text = match Proto::SocketIo.publish("S", json!({"n": 3}), 3) {
            Ok(Message::Text(t)) => t.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(text, r#"423["publish",{"data":{"n":3},"session":"S"}]"#);
    }

    #[test]
    fn roomcast_message_and_error() {
        let p = Proto::Roomcast(Format::Json);
        let m = Message::text(
            r#"{"type":"message","session":"s","seq":9,"from":{"client_id":"c","user":"u","role":"controller"},"data":{"t":11},"ts":1}"#,
        );
        assert_eq!(
            p.decode(&m),
            Event::Message {
                seq: 9,
                sent_us: Some(11)
            }
        );
        // The fast path and the full decoder agree, in both formats.
        let frame = ServerFrame::Message {
            session: "s".into(),
            seq: 7,
            id: "m7".into(),
            ts: 1,
            from: roomcast_shared::From {
                client_id: "c".into(),
                user: "u".into(),
                role: roomcast_shared::Role::Controller,
                name: None,
            },
            data: json!({"t": 123, "n": 7, "pad": "xxxx"}),
        };
        for format in [Format::Json, Format::Msgpack] {
            let bytes = encode(format, &frame).unwrap();
            let want = Event::Message {
                seq: 7,
                sent_us: Some(123),
            };
            assert_eq!(message_view(format, &bytes), Some(want), "{format:?}");
        }
        // A message whose data is not our payload still counts, without a send time.
        let foreign = Message::text(
            r#"{"type":"message","session":"s","seq":3,"from":{"client_id":"c","user":"u","role":"controller"},"data":"hi","ts":1}"#,
        );
        assert_eq!(
            p.decode(&foreign),
            Event::Message {
                seq: 3,
                sent_us: None
            }
        );
        let joined = Message::text(
            r#"{"type":"joined","session":"s","seq":41,"recovered":true,"history":[],"presence":[]}"#,
        );
        assert_eq!(
            p.decode(&joined),
            Event::Joined(Joined {
                seq: 41,
                recovered: true,
                ..Joined::default()
            })
        );
        let rejoined = Message::text(
            r#"{"type":"joined","session":"s","seq":43,"epoch":"e1","recovered":true,"presence":[],"history":[
              {"seq":42,"ts":1,"from":{"client_id":"c","user":"u","role":"controller"},"data":{"t":7}},
              {"seq":43,"ts":1,"from":{"client_id":"c","user":"u","role":"controller"},"data":"hi"}]}"#,
        );
        assert_eq!(
            p.decode(&rejoined),
            Event::Joined(Joined {
                seq: 43,
                epoch: "e1".into(),
                recovered: true,
                history: vec![(42, Some(7)), (43, None)],
            })
        );
        let join = match p.join("s", Some((42, "e1"))) {
            Ok(Message::Text(t)) => t.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            join.contains(r#""since":42"#) && join.contains(r#""epoch":"e1""#),
            "{join}"
        );
        let first = match p.join("s", None) {
            Ok(Message::Text(t)) => t.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            !first.contains("since") && !first.contains("epoch"),
            "{first}"
        );
        let ack = Message::text(r#"{"type":"ack","ref":null,"seq":42}"#);
        assert_eq!(
            p.decode(&ack),
            Event::Ack {
                seq: Some(42),
                n: None
            }
        );
        let ack = Message::text(r#"{"type":"ack","ref":"7","seq":43}"#);
        assert_eq!(
            p.decode(&ack),
            Event::Ack {
                seq: Some(43),
                n: Some(7)
            }
        );
        let refused = Message::text(
            r#"{"type":"error","ref":"8","code":"unavailable","message":"redis","retry_after_ms":10}"#,
        );
        assert_eq!(
            p.decode(&refused),
            Event::Refused {
                code: "unavailable".into(),
                n: Some(8),
                retry_after_ms: Some(10)
            }
        );
    }
}
