//! Roomcast WebSocket protocol v1: every frame a client or server sends, as plain data.
//!
//! Owns the shapes of SPEC.md "WebSocket protocol v1". It knows nothing about sockets,
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
}

/// One stored message, as listed in `joined.history`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub seq: u64,
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

/// `error.code`: the closed list of SPEC.md.
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
            | ClientFrame::Ping { reference } => reference.as_mut(),
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
            | ClientFrame::Ping { reference } => reference.as_deref(),
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
    },
    Joined {
        session: String,
        seq: u64,
        recovered: bool,
        history: Vec<HistoryMessage>,
        presence: Vec<Member>,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    Message {
        session: String,
        seq: u64,
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

/// WebSocket close codes of SPEC.md, with whether a client should reconnect.
pub mod close {
    /// Normal closure (the client asked, or the server is done with it).
    pub const NORMAL: u16 = 1000;
    /// Node draining: reconnect to another node with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// Text frame that is not UTF-8 (RFC 6455). Do not retry the same bytes.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation. Do not reconnect without fixing the client.
    pub const POLICY: u16 = 1008;
    /// A frame above the size limit. Do not resend it.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: reconnect with backoff.
    pub const INTERNAL: u16 = 1011;
    /// Redis unavailable: reconnect with backoff.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session ended: do not rejoin it.
    pub const SESSION_ENDED: u16 = 4000;
    /// The token expired: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Forbidden: do not reconnect with the same token.
    pub const FORBIDDEN: u16 = 4003;
    /// The client read too slowly and its send queue overflowed: reconnect with `since`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// Connection flood: reconnect after a delay.
    pub const RATE_LIMITED: u16 = 4029;
}
