//! Roomcast WebSocket protocol v1: every frame a client or server sends, as plain data.
//!
//! Owns the shapes of docs/PROTOCOL.md. It knows nothing about sockets,
//! Redis or sessions; encoding and decoding live in [`crate::codec`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Subprotocol name of the JSON codec (text frames); the default.
pub const SUBPROTOCOL_JSON: &str = "roomcast.v1.json";
/// Subprotocol name of the msgpack codec (binary frames, named fields).
pub const SUBPROTOCOL_MSGPACK: &str = "roomcast.v1.msgpack";

/// What a client may do in a session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Controller,
    Display,
    /// Read-only: may join and receive, never publish, signal or type.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Display => "display",
            Role::Observer => "observer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "controller" => Some(Role::Controller),
            "display" => Some(Role::Display),
            "observer" => Some(Role::Observer),
            _ => None,
        }
    }

    /// Whether this role may publish, signal and type.
    pub fn can_write(self) -> bool {
        !matches!(self, Role::Observer)
    }
}

/// The sender of a message, signal or typing event.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct From {
    pub client_id: String,
    pub user: String,
    pub role: Role,
    pub name: Option<String>,
}

/// A session member as shown in `joined.presence` and `presence` events.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub client_id: String,
    pub user: String,
    pub role: Role,
    pub name: Option<String>,
    pub node: String,
    pub joined_at: u64,
    pub idle: bool,
    /// What the application's join hook attached to this member (any JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub info: Option<serde_json::Value>,
}

/// One stored message, as listed in `joined.history`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
    /// The message's unique id (empty for messages stored before ids existed). A client
    /// sends the id of the last message it processed as `since_id` when it rejoins.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub ts: u64,
    pub from: From,
    pub data: Value,
}

/// `presence.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
    Update,
}

/// `session.event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEvent {
    Expiring,
    Ended,
    Resolved,
    Updated,
}

impl SessionEvent {
    /// The wire name (`session.event`), also used in the lifecycle scripts' payloads.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionEvent::Expiring => "expiring",
            SessionEvent::Ended => "ended",
            SessionEvent::Resolved => "resolved",
            SessionEvent::Updated => "updated",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            SessionEvent::Expiring,
            SessionEvent::Ended,
            SessionEvent::Resolved,
            SessionEvent::Updated,
        ]
        .into_iter()
        .find(|e| e.as_str() == name)
    }
}

/// `error.code`: the closed list of docs/PROTOCOL.md.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    TooLarge,
    NotJoined,
    /// Missing or bad credential (HTTP 401).
    Unauthorized,
    /// Valid credential, not allowed (HTTP 403).
    Forbidden,
    NotFound,
    SessionEnded,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in the order docs/PROTOCOL.md lists them.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::NotJoined,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::SessionEnded,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Frames a client sends. Decoded by [`crate::codec::decode_client`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Join {
        session: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Last seq the client saw; absent means "no history wanted".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The numbering `since` belongs to (the `epoch` of an earlier `joined`). When it
        /// is not the session's current one, `since` means nothing: `recovered:false`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// The `id` of the message at `since` (the last one the client processed, or the
        /// `seq_id` of its `joined`). A session whose stored message at `since` is
        /// another one forked (a failover lost writes): `recovered:false`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_id: Option<String>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Leave {
        session: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Publish {
        session: String,
        data: Value,
        /// Stored once within the gateway's idempotency window; a repeat is acked with the
        /// first one's seq.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Signal {
        session: String,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Typing {
        session: String,
        active: bool,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Activity {
        session: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Ping {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// A new token for the same user: the connection's expiry moves to its `exp`
    /// (answered `refreshed`), with no reconnect.
    Refresh {
        token: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl ClientFrame {
    /// The frame's `type`, for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Signal { .. } => "signal",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Activity { .. } => "activity",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }

    /// The client-chosen `ref`, for changing in place (the gateway clips long ones).
    pub fn reference_mut(&mut self) -> Option<&mut String> {
        match self {
            ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Publish { reference, .. }
            | ClientFrame::Signal { reference, .. }
            | ClientFrame::Typing { reference, .. }
            | ClientFrame::Activity { reference, .. }
            | ClientFrame::Ping { reference }
            | ClientFrame::Refresh { reference, .. } => reference.as_mut(),
        }
    }

    /// The client-chosen `ref`, echoed on the reply.
    pub fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Join { reference, .. }
            | ClientFrame::Leave { reference, .. }
            | ClientFrame::Publish { reference, .. }
            | ClientFrame::Signal { reference, .. }
            | ClientFrame::Typing { reference, .. }
            | ClientFrame::Activity { reference, .. }
            | ClientFrame::Ping { reference }
            | ClientFrame::Refresh { reference, .. } => reference.as_deref(),
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        client_id: String,
        node: String,
        heartbeat_ms: u64,
        protocol: u32,
        /// The server's clock (Unix ms): a client times token refreshes by it, not by its
        /// own clock.
        #[serde(default)]
        time: u64,
    },
    Joined {
        session: String,
        seq: u64,
        /// Names the session's numbering: set when its seq counter is created, so a
        /// numbering that starts over (keys lost in a Redis restart or expired) has a new
        /// one. Empty for a session created before epochs existed.
        #[serde(default)]
        epoch: String,
        /// The id of the message at `seq` (empty when there is none, or it predates ids):
        /// the `since_id` of a rejoin that saw no message after this `joined`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        seq_id: String,
        recovered: bool,
        history: Vec<HistoryMessage>,
        presence: Vec<Member>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Message {
        session: String,
        seq: u64,
        /// Unique per stored message (see [`HistoryMessage::id`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        id: String,
        ts: u64,
        from: From,
        data: Value,
    },
    Signal {
        session: String,
        from: From,
        data: Value,
    },
    Typing {
        session: String,
        from: From,
        active: bool,
    },
    Presence {
        session: String,
        event: PresenceEvent,
        member: Member,
    },
    Session {
        session: String,
        event: SessionEvent,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        at: u64,
    },
    /// A server message for one user, on every connection of that user (REST
    /// `POST /users/{user}/messages`). Not stored, no seq, no session.
    Direct { data: Value, ts: u64 },
    Ack {
        #[serde(rename = "ref")]
        reference: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    Error {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// The answer to `refresh`: the connection now expires at `exp` (Unix seconds, the new
    /// token's `exp`).
    Refreshed {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        exp: u64,
    },
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(reference: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            reference,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// The WebSocket close codes of the protocol: one table holding each code's number, the
/// reason text sent with it, and the label it is counted under
/// (`roomcast_disconnects_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure (the client asked, or the server is done with it).
    Normal = 1000,
    /// Node draining: reconnect to another node with `since`.
    GoingAway = 1001,
    /// Text frame that is not UTF-8 (RFC 6455). Do not retry the same bytes.
    InvalidPayload = 1007,
    /// Policy violation. Do not reconnect without fixing the client.
    Policy = 1008,
    /// A frame above the size limit. Do not resend it.
    TooBig = 1009,
    /// Internal error: reconnect with backoff.
    Internal = 1011,
    /// Redis unavailable: reconnect with backoff.
    TryAgainLater = 1013,
    /// The session ended: do not rejoin it.
    SessionEnded = 4000,
    /// The token expired: reconnect with a fresh token.
    TokenExpired = 4001,
    /// Forbidden: do not reconnect with the same token.
    Forbidden = 4003,
    /// The client read too slowly and its send queue overflowed: reconnect with `since`.
    SlowConsumer = 4008,
    /// This connection can no longer give the client a continuous stream of a session:
    /// messages it missed are gone from history, or the session's numbering started over.
    /// Reconnect and rejoin with `since` and `epoch`; the answer is `recovered: false`.
    Resync = 4010,
    /// Connection flood: reconnect after a delay.
    RateLimited = 4029,
}

impl CloseCode {
    /// Every close code, for tables and tests.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidPayload,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::TryAgainLater,
        CloseCode::SessionEnded,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::SlowConsumer,
        CloseCode::Resync,
        CloseCode::RateLimited,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The code with this number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The reason text sent in the close frame.
    pub const fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::GoingAway => "going away: reconnect with since",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "frame too large",
            CloseCode::Internal => "internal error",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::SessionEnded => "session ended",
            CloseCode::TokenExpired => "token expired",
            CloseCode::Forbidden => "forbidden",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::Resync => "resync: reconnect with since and epoch",
            CloseCode::RateLimited => "rate limited",
        }
    }

    /// The `reason` label of `roomcast_disconnects_total` (README "Metrics").
    pub const fn label(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "going_away",
            CloseCode::TooBig => "too_large",
            CloseCode::SessionEnded => "session_ended",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::Resync => "resync",
            CloseCode::TryAgainLater => "unavailable",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::Forbidden => "forbidden",
            CloseCode::Policy => "policy",
            CloseCode::Normal | CloseCode::InvalidPayload | CloseCode::Internal => "closed",
        }
    }
}

/// The close codes as numbers, for clients comparing what they received.
pub mod close {
    use super::CloseCode;

    pub const NORMAL: u16 = CloseCode::Normal.code();
    pub const GOING_AWAY: u16 = CloseCode::GoingAway.code();
    pub const INVALID_PAYLOAD: u16 = CloseCode::InvalidPayload.code();
    pub const POLICY: u16 = CloseCode::Policy.code();
    pub const TOO_BIG: u16 = CloseCode::TooBig.code();
    pub const INTERNAL: u16 = CloseCode::Internal.code();
    pub const TRY_AGAIN_LATER: u16 = CloseCode::TryAgainLater.code();
    pub const SESSION_ENDED: u16 = CloseCode::SessionEnded.code();
    pub const TOKEN_EXPIRED: u16 = CloseCode::TokenExpired.code();
    pub const FORBIDDEN: u16 = CloseCode::Forbidden.code();
    pub const SLOW_CONSUMER: u16 = CloseCode::SlowConsumer.code();
    pub const RESYNC: u16 = CloseCode::Resync.code();
    pub const RATE_LIMITED: u16 = CloseCode::RateLimited.code();
}

#[cfg(test)]
mod close_tests {
    use super::CloseCode;

    #[test]
    fn every_code_round_trips_and_has_a_reason() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(!c.reason().is_empty() && c.reason().len() <= 123, "{c:?}");
        }
        assert_eq!(CloseCode::from_code(1234), None);
    }
}
