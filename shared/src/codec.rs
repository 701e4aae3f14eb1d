//! Pure encode/decode of protocol frames for both subprotocols.
//!
//! Owns the mapping from bytes to [`ClientFrame`]/[`ServerFrame`] and the classification of
//! bad input into the error codes of docs/PROTOCOL.md. No I/O here: the gateway and the
//! load generator call these functions on frames they already hold.

use std::borrow::Cow;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use crate::protocol::{ClientFrame, ErrorCode, ServerFrame};

/// The codec a connection speaks, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `roomcast.v1.json`: UTF-8 text frames.
    Json,
    /// `roomcast.v1.msgpack`: binary frames, maps with named fields.
    Msgpack,
}

/// Why a frame could not be decoded, with the code for the `error` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
    /// The `ref` of the frame, when it could be read, so the error can echo it.
    pub reference: Option<String>,
}

impl DecodeError {
    fn new(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        DecodeError {
            code,
            message: message.into(),
            reference,
        }
    }
}

/// The first pass over a frame: its `type` and `ref`, everything else skipped.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "ref", default)]
    reference: Option<PeekRef>,
}

/// `ref` as sent: a string is echoed; any other type is a bad request.
#[derive(Deserialize)]
#[serde(untagged)]
enum PeekRef {
    Str(String),
    Other(IgnoredAny),
}

const KNOWN_TYPES: [&str; 8] = [
    "join", "leave", "publish", "signal", "typing", "activity", "ping", "refresh",
];

/// Decodes a client frame. Malformed input gets `bad_request`, an unknown `type` gets
/// `unknown_type`; both carry the frame's `ref` when it was readable.
pub fn decode_client(format: Format, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    let shape = match format {
        Format::Msgpack => one_msgpack_map(bytes),
        // serde would read a struct from an array too (positionally).
        Format::Json => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | None => Ok(()),
            Some(_) => Err("a frame must be one JSON object"),
        },
    };
    shape.map_err(|e| DecodeError::new(ErrorCode::BadRequest, e, None))?;
    let peek: Peek<'_> = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| {
            DecodeError::new(ErrorCode::BadRequest, format!("malformed JSON: {e}"), None)
        })?,
        Format::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| {
            DecodeError::new(
                ErrorCode::BadRequest,
                format!("malformed msgpack: {e}"),
                None,
            )
        })?,
    };
    let reference = match peek.reference {
        None => None,
        Some(PeekRef::Str(s)) => Some(s),
        Some(PeekRef::Other(_)) => {
            return Err(DecodeError::new(
                ErrorCode::BadRequest,
                "`ref` must be a string",
                None,
            ))
        }
    };
    let Some(kind) = peek.kind else {
        return Err(DecodeError::new(
            ErrorCode::BadRequest,
            "frame has no string `type`",
            reference,
        ));
    };
    if !KNOWN_TYPES.contains(&kind.as_ref()) {
        let shown: String = kind.chars().take(32).collect();
        return Err(DecodeError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type `{shown}`"),
            reference,
        ));
    }
    let frame: Result<ClientFrame, String> = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Format::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    };
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) => {
            return Err(DecodeError::new(
                ErrorCode::BadRequest,
                format!("invalid `{kind}` frame: {e}"),
                reference,
            ))
        }
    };
    // A number that decoding would have changed (a float for a huge integer, null for
    // NaN) is refused rather than stored altered.
    let numbers = match format {
        Format::Json => crate::numbers::check_json(bytes),
        Format::Msgpack => crate::numbers::check_msgpack(bytes),
    };
    match numbers {
        Ok(()) => Ok(frame),
        Err(e) => Err(DecodeError::new(ErrorCode::BadRequest, e.0, reference)),
    }
}

/// A msgpack frame is exactly one map, as a JSON frame is one object: rmp-serde would also
/// read a struct from an array (positionally) and stop after the first value (serde_json
/// refuses anything after the object by itself).
fn one_msgpack_map(bytes: &[u8]) -> Result<(), &'static str> {
    let is_map = matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    if !is_map {
        return Err("a frame must be one msgpack map");
    }
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    IgnoredAny::deserialize(&mut de).map_err(|_| "malformed msgpack")?;
    if de.position() != bytes.len() as u64 {
        return Err("a frame must be one msgpack map, with nothing after it");
    }
    Ok(())
}

/// Encodes a frame in the given format. JSON output is always valid UTF-8.
pub fn encode<T: serde::Serialize>(format: Format, frame: &T) -> Result<Vec<u8>, EncodeError> {
    match format {
        Format::Json => serde_json::to_vec(frame).map_err(|e| EncodeError(e.to_string())),
        Format::Msgpack => rmp_serde::to_vec_named(frame).map_err(|e| EncodeError(e.to_string())),
    }
}

/// Decodes a server frame (used by clients: tests and the load generator).
pub fn decode_server(format: Format, bytes: &[u8]) -> Result<ServerFrame, String> {
    decode_any(format, bytes)
}

fn decode_any<T: DeserializeOwned>(format: Format, bytes: &[u8]) -> Result<T, String> {
    match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Format::Msgpack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// A frame that could not be encoded (a bug: our own types always encode).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeError(pub String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "encode failed: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{From, Role};
    use serde_json::json;

    fn json(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    /// One map per msgpack frame, one object per JSON frame: no arrays, nothing after it
    /// (a second map included).
    #[test]
    fn a_msgpack_frame_is_exactly_one_map() {
        let ping = rmp_serde::to_vec_named(&json!({"type": "ping", "ref": "m"})).unwrap();
        assert!(decode_client(Format::Msgpack, &ping).is_ok());
        let array = rmp_serde::to_vec(&json!(["ping", "arr"])).unwrap();
        let trailing = [ping.clone(), vec![0xc0]].concat();
        let two = [ping.clone(), ping.clone()].concat();
        for bad in [array, trailing, two, vec![]] {
            let e = decode_client(Format::Msgpack, &bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
        }
        for bad in [
            &br#"["ping","arr"]"#[..],
            br#"{"type":"ping"} {"type":"ping"}"#,
        ] {
            assert_eq!(
                decode_client(Format::Json, bad).unwrap_err().code,
                ErrorCode::BadRequest
            );
        }
    }

    #[test]
    fn decodes_every_client_type() {
        let cases = [
            json!({"type":"join","session":"s1","role":"display","since":3,"ref":"a"}),
            json!({"type":"leave","session":"s1"}),
            json!({"type":"publish","session":"s1","data":{"x":[1,2]},"ref":"p"}),
            json!({"type":"signal","session":"s1","data":1,"to":"c2"}),
            json!({"type":"typing","session":"s1","active":true}),
            json!({"type":"activity","session":"s1"}),
            json!({"type":"ping","ref":"r"}),
        ];
        for case in cases {
            let f = decode_client(Format::Json, &json(case.clone())).unwrap();
            assert_eq!(f.kind(), case["type"].as_str().unwrap());
            // Round-trip through msgpack with named fields.
            let packed = rmp_serde::to_vec_named(&case).unwrap();
            assert_eq!(decode_client(Format::Msgpack, &packed).unwrap(), f);
        }
    }

    #[test]
    fn join_fields() {
        let f = decode_client(
            Format::Json,
            br#"{"type":"join","session":"s","since":0,"epoch":"e","ref":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Join {
                session: "s".into(),
                role: None,
                name: None,
                since: Some(0),
                epoch: Some("e".into()),
                since_id: None,
                reference: Some("x".into())
            }
        );
    }

    #[test]
    fn malformed_json_is_bad_request() {
        let e = decode_client(Format::Json, b"{\"type\":").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_client(Format::Json, b"[1,2]").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_client(Format::Json, b"null").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn unknown_type_keeps_ref() {
        let e = decode_client(Format::Json, br#"{"type":"launch","ref":"r1"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.reference.as_deref(), Some("r1"));
    }

    #[test]
    fn missing_and_wrong_fields_are_bad_request_with_ref() {
        for bad in [
            br#"{"type":"publish","ref":"r"}"#.as_slice(),
            br#"{"type":"join","session":5,"ref":"r"}"#,
            br#"{"type":"typing","session":"s","active":"yes","ref":"r"}"#,
            br#"{"type":"join","session":"s","since":-1,"ref":"r"}"#,
            br#"{"type":"join","session":"s","role":"admin","ref":"r"}"#,
        ] {
            let e = decode_client(Format::Json, bad).unwrap_err();
            assert_eq!(
                e.code,
                ErrorCode::BadRequest,
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(e.reference.as_deref(), Some("r"));
        }
    }

    #[test]
    fn non_string_type_or_ref_is_bad_request() {
        let e = decode_client(Format::Json, br#"{"type":7}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_client(Format::Json, br#"{"type":"ping","ref":{"a":1}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn msgpack_garbage_is_bad_request() {
        for bad in [
            &[0xc1u8][..],
            &[0x81, 0xa4],
            &[0xff, 0x00, 0x13],
            b"{\"type\":\"ping\"}",
        ] {
            let e = decode_client(Format::Msgpack, bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn server_frames_round_trip_both_formats() {
        let from = From {
            client_id: "c1".into(),
            user: "alice".into(),
            role: Role::Controller,
            name: Some("Alice".into()),
        };
        let frames = [
            ServerFrame::Message {
                session: "s".into(),
                seq: 9,
                id: "k3x9abcdefgh".into(),
                ts: 1_700_000_000_000,
                from: from.clone(),
                data: json!({"k": "v", "n": [1, 2.5, null]}),
            },
            ServerFrame::Ack {
                reference: None,
                seq: Some(3),
            },
            ServerFrame::error(Some("r".into()), ErrorCode::RateLimited, "slow down"),
            ServerFrame::Pong { reference: None },
        ];
        for frame in frames {
            for format in [Format::Json, Format::Msgpack] {
                let bytes = encode(format, &frame).unwrap();
                assert_eq!(decode_server(format, &bytes).unwrap(), frame);
            }
        }
    }

    #[test]
    fn ack_without_ref_has_null_ref() {
        let bytes = encode(
            Format::Json,
            &ServerFrame::Ack {
                reference: None,
                seq: Some(1),
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v, json!({"type":"ack","ref":null,"seq":1}));
    }
}

/// Property tests: the decoder never panics, classifies every failure, and round-trips
/// every valid frame in both formats.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::protocol::Role;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// Objects shaped like frames: a known or unknown `type` plus arbitrary fields.
    fn frame_like() -> impl Strategy<Value = Value> {
        let kind = prop_oneof![
            Just("join"),
            Just("leave"),
            Just("publish"),
            Just("signal"),
            Just("typing"),
            Just("activity"),
            Just("ping"),
            Just("bogus"),
        ];
        let field = prop_oneof![
            Just("session"),
            Just("data"),
            Just("ref"),
            Just("since"),
            Just("role"),
            Just("to"),
            Just("active"),
            Just("name"),
        ];
        (kind, prop::collection::btree_map(field, json_value(), 0..6)).prop_map(|(k, fields)| {
            let mut m: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            m.insert("type".into(), Value::String(k.into()));
            Value::Object(m)
        })
    }

    fn valid_frame() -> impl Strategy<Value = ClientFrame> {
        let id = "[A-Za-z0-9_.:-]{1,16}";
        let reference = prop::option::of("[a-z0-9]{0,8}");
        let role = prop::option::of(prop_oneof![
            Just(Role::Controller),
            Just(Role::Display),
            Just(Role::Observer)
        ]);
        prop_oneof![
            (
                id,
                role,
                prop::option::of(".{0,10}"),
                prop::option::of(any::<u64>()),
                prop::option::of("[a-z0-9]{0,12}"),
                prop::option::of("[a-z0-9]{0,12}"),
                reference.clone()
            )
                .prop_map(
                    |(session, role, name, since, epoch, since_id, reference)| {
                        ClientFrame::Join {
                            session,
                            role,
                            name,
                            since,
                            epoch,
                            since_id,
                            reference,
                        }
                    }
                ),
            (id, json_value(), prop::option::of(id), reference.clone()).prop_map(
                |(session, data, idempotency_key, reference)| ClientFrame::Publish {
                    session,
                    data,
                    idempotency_key,
                    reference,
                }
            ),
            (id, json_value(), prop::option::of(id), reference.clone()).prop_map(
                |(session, data, to, reference)| ClientFrame::Signal {
                    session,
                    data,
                    to,
                    reference
                }
            ),
            (id, any::<bool>(), reference.clone()).prop_map(|(session, active, reference)| {
                ClientFrame::Typing {
                    session,
                    active,
                    reference,
                }
            }),
            reference.prop_map(|reference| ClientFrame::Ping { reference }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            for format in [Format::Json, Format::Msgpack] {
                if let Err(e) = decode_client(format, &bytes) {
                    prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownType));
                    prop_assert!(!e.message.is_empty());
                }
            }
        }

        #[test]
        fn frame_like_objects_are_classified(value in frame_like()) {
            // A `ref` that is not a string is refused before the type is looked at.
            // (`null` counts as absent.)
            let bad_ref = value.get("ref").is_some_and(|r| !r.is_string() && !r.is_null());
            let unknown = value["type"] == "bogus" && !bad_ref;
            let json = serde_json::to_vec(&value).unwrap();
            let packed = rmp_serde::to_vec_named(&value).unwrap();
            for (format, bytes) in [(Format::Json, json), (Format::Msgpack, packed)] {
                match decode_client(format, &bytes) {
                    Ok(frame) => prop_assert_eq!(frame.kind(), value["type"].as_str().unwrap()),
                    Err(e) if unknown => prop_assert_eq!(e.code, ErrorCode::UnknownType),
                    Err(e) => prop_assert_eq!(e.code, ErrorCode::BadRequest),
                }
            }
        }

        #[test]
        fn valid_frames_round_trip(frame in valid_frame()) {
            for format in [Format::Json, Format::Msgpack] {
                let bytes = encode(format, &frame).unwrap();
                prop_assert_eq!(decode_client(format, &bytes).unwrap(), frame.clone());
            }
        }
    }
}
