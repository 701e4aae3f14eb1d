//! Internal encodings shared through Redis: history entries, member info, pub/sub payloads.
//!
//! Owns the msgpack layouts the Lua scripts assemble or forward (see `redis/*.lua`):
//! an entry is the array `[seq, ts, from, data, id, prev]` (entries stored before ids
//! existed end after `data`); a pub/sub payload is `[kind, body]`.
//! These are not client-facing frames: the gateway turns them into `ServerFrame`s.

use bytes::Bytes;
use roomcast_shared::{From, HistoryMessage, Member, Role, SessionEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Payload kinds, the first element of every pub/sub payload.
pub mod kind {
    /// Not a payload kind: `presence_set.lua` writes the member without announcing it.
    pub const SILENT: u8 = 0;
    /// A stored message (`Entry`), published by `publish.lua`.
    pub const MESSAGE: u8 = 1;
    /// An ephemeral event (`Event`) encoded by a gateway.
    pub const EVENT: u8 = 2;
    /// A member left or expired (`MemberInfo`).
    pub const LEAVE: u8 = 3;
    /// A member joined (`MemberInfo`).
    pub const JOIN: u8 = 4;
    /// A member's info changed, e.g. it is active again (`MemberInfo`).
    pub const UPDATE: u8 = 5;
    /// A session lifecycle event `[event, reason, at]`, encoded by the lifecycle scripts.
    pub const SESSION: u8 = 6;
}

/// A stored message.
///
/// `id` and `prev` chain a numbering: `prev` is the id of the message stored right before
/// this one (`publish.lua` keeps the newest id in the meta's `tip`). Whoever delivered the
/// message at `seq - 1` can tell that this one follows it, and not a message of another
/// branch with the same seq (a restart, or a failover to a replica that lacked writes).
/// Both are empty where unknown (the first message of a numbering has no `prev`; entries
/// stored before ids existed have neither), and an empty one is never a mismatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub ts: u64,
    pub from: From,
    pub data: Value,
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub prev: String,
}

/// Whether two message ids name different messages; an unknown (empty) one never does.
pub fn ids_differ(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && a != b
}

impl Entry {
    pub fn into_history(self) -> HistoryMessage {
        HistoryMessage {
            seq: self.seq,
            id: self.id,
            ts: self.ts,
            from: self.from,
            data: self.data,
        }
    }
}

/// A member as stored in the session's `pinfo` hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub client_id: String,
    pub user: String,
    pub role: Role,
    pub name: Option<String>,
    pub node: String,
    pub joined_at: u64,
    /// Last activity (ms); `idle` is derived from it when shown.
    pub active_at: u64,
    /// What the join hook attached (shown in presence as `info`). Last, and absent from
    /// infos stored before it existed: such infos still decode.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

impl MemberInfo {
    pub fn to_member(&self, now_ms: u64, idle_after_ms: u64) -> Member {
        Member {
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            role: self.role,
            name: self.name.clone(),
            node: self.node.clone(),
            joined_at: self.joined_at,
            idle: now_ms.saturating_sub(self.active_at) > idle_after_ms,
            info: self.info.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Our own types always encode; an empty payload would be rejected on decode.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// Ephemeral events: never stored, no seq.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Signal {
        from: From,
        data: Value,
        /// Direct signal: only this client receives it.
        to: Option<String>,
    },
    Typing {
        from: From,
        active: bool,
    },
    /// A message for every connection of one user (published on the user channel).
    Direct {
        data: Value,
        ts: u64,
    },
}

impl Event {
    /// The pub/sub payload `[2, event]`.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(&(kind::EVENT, self)).unwrap_or_default()
    }
}

/// A decoded pub/sub payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Envelope {
    /// A stored message and, when tracing, its publish's W3C traceparent.
    Message(Entry, Option<String>),
    Event(Event),
    Leave(MemberInfo),
    Join(MemberInfo),
    Update(MemberInfo),
    Session {
        event: SessionEvent,
        reason: Option<String>,
        at: u64,
    },
}

/// A payload we could not read (another version, or corruption).
#[derive(Debug, thiserror::Error)]
#[error("bad pub/sub payload: {0}")]
pub struct EnvelopeError(String);

impl Envelope {
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let err = |e: rmp_serde::decode::Error| EnvelopeError(e.to_string());
        // A traced message is [1, entry, traceparent].
        if let [0x93, kind::MESSAGE, body @ ..] = bytes {
            let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(body));
            let entry = Entry::deserialize(&mut de).map_err(err)?;
            let traceparent = String::deserialize(&mut de).ok();
            return Ok(Envelope::Message(entry, traceparent));
        }
        // Every other payload is a 2-element array whose first element is a positive fixint.
        let [0x92, k, body @ ..] = bytes else {
            return Err(EnvelopeError("not a [kind, body] array".into()));
        };
        match *k {
            kind::MESSAGE => rmp_serde::from_slice(body)
                .map(|e| Envelope::Message(e, None))
                .map_err(err),
            kind::EVENT => rmp_serde::from_slice(body)
                .map(Envelope::Event)
                .map_err(err),
            kind::LEAVE => MemberInfo::decode(body).map(Envelope::Leave).map_err(err),
            kind::JOIN => MemberInfo::decode(body).map(Envelope::Join).map_err(err),
            kind::UPDATE => MemberInfo::decode(body).map(Envelope::Update).map_err(err),
            kind::SESSION => {
                let (event, reason, at): (String, String, u64) =
                    rmp_serde::from_slice(body).map_err(err)?;
                let event = SessionEvent::parse(&event)
                    .ok_or_else(|| EnvelopeError(format!("unknown session event {event}")))?;
                let reason = (!reason.is_empty()).then_some(reason);
                Ok(Envelope::Session { event, reason, at })
            }
            other => Err(EnvelopeError(format!("unknown kind {other}"))),
        }
    }
}

/// Decodes a stored history entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, EnvelopeError> {
    rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))
}

/// A message about to be stored: its new unique `id` and the entry's middle
/// (`ts, from, data, id`). `publish.lua` puts the array header and the seq in front and
/// `prev` behind, which only it knows (see the script).
#[derive(Debug, Clone)]
pub struct EntryTail {
    pub id: String,
    /// Shared, so the script call (and its retry on `NOSCRIPT`) takes it without a copy.
    pub bytes: Bytes,
}

impl EntryTail {
    /// The entry `publish.lua` stores for this tail as `seq` after `prev`, byte for byte
    /// (`'\150' .. cmsgpack.pack(seq) .. tail .. cmsgpack.pack(prev)`; cmsgpack and rmp
    /// both pick the shortest form of an integer and a string). The publishing instance
    /// recognises its own message's pub/sub copy by it without decoding it
    /// ([`is_payload_of`]).
    pub fn stored(&self, seq: u64, prev: &str) -> Vec<u8> {
        let mut entry = Vec::with_capacity(self.bytes.len() + prev.len() + 16);
        entry.push(0x96);
        // Writing integers and strings to a Vec cannot fail.
        let _ = rmp_serde::encode::write(&mut entry, &seq);
        entry.extend_from_slice(&self.bytes);
        let _ = rmp_serde::encode::write(&mut entry, prev);
        entry
    }
}

/// Whether `payload` is the pub/sub payload of the stored `entry` (`[1, entry]`, or
/// `[1, entry, traceparent]` when tracing). Byte-identical entries are the same message:
/// the same seq, id and `prev`.
pub fn is_payload_of(payload: &[u8], entry: &[u8]) -> bool {
    match payload {
        [0x92, kind::MESSAGE, body @ ..] => body == entry,
        // The entry is self-delimiting: what follows it is the traceparent.
        [0x93, kind::MESSAGE, body @ ..] => body.starts_with(entry),
        _ => false,
    }
}

/// Characters of a message id: 62 random bits, so two branches of one numbering never
/// give the same seq the same id.
pub const MESSAGE_ID_CHARS: usize = 12;

/// Encodes a new message with a fresh id.
pub fn encode_entry_tail(ts: u64, from: &From, data: &Value) -> Result<EntryTail, EnvelopeError> {
    encode_entry_tail_with_id(ts, from, data, crate::util::random_id(MESSAGE_ID_CHARS))
}

fn encode_entry_tail_with_id(
    ts: u64,
    from: &From,
    data: &Value,
    id: String,
) -> Result<EntryTail, EnvelopeError> {
    let err = |e: rmp_serde::encode::Error| EnvelopeError(e.to_string());
    // One buffer for the four parts, each written as `to_vec` would: the bytes are
    // allocated once instead of once per part and again while the parts are appended.
    let mut bytes = Vec::with_capacity(128);
    rmp_serde::encode::write(&mut bytes, &ts).map_err(err)?;
    rmp_serde::encode::write(&mut bytes, from).map_err(err)?;
    rmp_serde::encode::write(&mut bytes, data).map_err(err)?;
    rmp_serde::encode::write(&mut bytes, &id).map_err(err)?;
    Ok(EntryTail {
        id,
        bytes: Bytes::from(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from() -> From {
        From {
            client_id: "c1".into(),
            user: "u".into(),
            role: Role::Controller,
            name: None,
        }
    }

    /// What publish.lua does: `'\150' .. cmsgpack.pack(seq) .. tail .. cmsgpack.pack(prev)`,
    /// for each width cmsgpack may choose for the seq.
    #[test]
    fn lua_assembled_entry_decodes() {
        let data = json!({"text": "hi", "n": [1, 2]});
        let tail = encode_entry_tail_with_id(1234, &from(), &data, "id7".into()).unwrap();
        assert_eq!(
            encode_entry_tail(1, &from(), &data).unwrap().id.len(),
            MESSAGE_ID_CHARS
        );
        let seq_encodings: [(u64, Vec<u8>); 4] = [
            (5, vec![0x05]),
            (200, vec![0xcc, 200]),
            (70000, vec![0xce, 0, 1, 0x11, 0x70]),
            (1 << 40, vec![0xcf, 0, 0, 1, 0, 0, 0, 0, 0]),
        ];
        for (seq, packed) in seq_encodings {
            let mut entry = vec![0x96];
            entry.extend(&packed);
            entry.extend(&tail.bytes);
            entry.extend(rmp_serde::to_vec("id6").unwrap());
            assert_eq!(
                tail.stored(seq, "id6"),
                entry,
                "the gateway's copy of seq {seq}"
            );
            let e = decode_entry(&entry).unwrap();
            assert_eq!(e.seq, seq);
            assert_eq!(e.ts, 1234);
            assert_eq!(e.data, data);
            assert_eq!((e.id.as_str(), e.prev.as_str()), ("id7", "id6"));
            let mut payload = vec![0x92, kind::MESSAGE];
            payload.extend(&entry);
            assert_eq!(
                Envelope::decode(&payload).unwrap(),
                Envelope::Message(e.clone(), None)
            );
            assert!(is_payload_of(&payload, &entry));
            assert!(!is_payload_of(&payload, &tail.stored(seq, "id5")));
            assert!(!is_payload_of(&payload, &tail.stored(seq + 1, "id6")));
            // With a trace context appended, as publish.lua does when tracing.
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let mut traced = vec![0x93, kind::MESSAGE];
            traced.extend(&entry);
            traced.extend(rmp_serde::to_vec(tp).unwrap());
            assert!(is_payload_of(&traced, &entry));
            assert!(!is_payload_of(&traced, &tail.stored(seq, "id5")));
            assert_eq!(
                Envelope::decode(&traced).unwrap(),
                Envelope::Message(e, Some(tp.into()))
            );
        }
    }

    /// Entries stored before ids existed (`[seq, ts, from, data]`) still decode, with
    /// unknown ids that never count as a mismatch.
    #[test]
    fn entries_without_ids_decode() {
        let mut entry = vec![0x94, 0x05];
        entry.extend(rmp_serde::to_vec(&1234u64).unwrap());
        entry.extend(rmp_serde::to_vec(&from()).unwrap());
        entry.extend(rmp_serde::to_vec(&json!("x")).unwrap());
        let e = decode_entry(&entry).unwrap();
        assert_eq!((e.seq, e.id.as_str(), e.prev.as_str()), (5, "", ""));
        assert!(!ids_differ(&e.id, "abc") && !ids_differ("abc", ""));
        assert!(ids_differ("abc", "abd") && !ids_differ("abc", "abc"));
    }

    #[test]
    fn events_and_members_round_trip() {
        let ev = Event::Typing {
            from: from(),
            active: true,
        };
        assert_eq!(Envelope::decode(&ev.encode()).unwrap(), Envelope::Event(ev));
        let info = MemberInfo {
            client_id: "c".into(),
            user: "u".into(),
            role: Role::Display,
            name: Some("TV".into()),
            node: "n1".into(),
            joined_at: 10,
            active_at: 10,
            info: None,
        };
        let mut payload = vec![0x92, kind::LEAVE];
        payload.extend(info.encode());
        assert_eq!(
            Envelope::decode(&payload).unwrap(),
            Envelope::Leave(info.clone())
        );
        assert!(!info.to_member(20, 100).idle);
        assert!(info.to_member(200, 100).idle);
    }

    /// What the lifecycle scripts publish: `'\146\6' .. cmsgpack.pack({event, reason, at})`.
    #[test]
    fn lua_session_events_decode() {
        let mut payload = vec![0x92, kind::SESSION, 0x93];
        payload.extend(rmp_serde::to_vec("expiring").unwrap());
        payload.extend(rmp_serde::to_vec("inactivity").unwrap());
        payload.extend([0xcf, 0, 0, 1, 0x8c, 0, 0, 0, 0]);
        assert_eq!(
            Envelope::decode(&payload).unwrap(),
            Envelope::Session {
                event: SessionEvent::Expiring,
                reason: Some("inactivity".into()),
                at: 0x18c_0000_0000,
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &[][..],
            &[0x92],
            &[0x92, 9, 1],
            &[0x91, 1],
            &[0x92, 1, 0xc1],
        ] {
            assert!(Envelope::decode(bad).is_err());
        }
    }
}
