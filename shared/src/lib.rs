//! Roomcast wire types, shared by the gateway and the load generator.
//!
//! - [`protocol`]: the frames of WebSocket protocol v1 (docs/PROTOCOL.md) and the close codes.
//! - [`codec`]: pure JSON/msgpack encode and decode, with bad input classified into the
//!   protocol's error codes.
//! - [`numbers`]: refusal of numbers that decoding would change (huge JSON integers,
//!   non-finite msgpack floats).
//!
//! Nothing here does I/O; the types are the boundary, so they are the only `Serialize` ones.

pub mod codec;
pub mod numbers;
pub mod protocol;

pub use codec::{decode_client, decode_server, encode, DecodeError, Format};
pub use protocol::*;
