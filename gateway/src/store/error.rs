//! What a Redis operation's failure means to the rest of the gateway ([`StoreError`]),
//! and what a client is told of it ([`Told`]): one mapping for REST and WebSocket.

use fred::error::ErrorKind;

/// Why a Redis operation failed, as the rest of the gateway needs to know it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable or did not answer in time: the client may retry.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// The session was ended; nothing can be written to it.
    #[error("session ended")]
    SessionEnded,
    /// The session is resolved: readable, not writable until resumed.
    #[error("session resolved")]
    SessionResolved,
    /// The session does not exist (and the operation does not create it).
    #[error("no such session")]
    NoSuchSession,
    /// Durable mode: the write is on the primary, but fewer replicas than asked confirmed
    /// it in time. It may or may not survive a failover.
    #[error("stored, but only {confirmed} of {wanted} replicas confirmed it in time: it may be lost in a failover, and a retry may store it twice")]
    Unreplicated { confirmed: i64, wanted: i64 },
    /// Redis answered something we did not expect (a bug or a foreign key).
    #[error("redis error: {0}")]
    Internal(String),
}

/// What a client is told of a [`StoreError`], over REST and WebSocket alike: the code, a
/// message safe to show, and whether retrying later may work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub code: roomcast_shared::ErrorCode,
    pub message: String,
    pub retry: bool,
}

impl StoreError {
    /// The one mapping of store failures to what clients see (each surface turns it into
    /// its own shape: a status, an `error` frame). Logs what the client is not shown.
    pub fn told(self) -> Told {
        use roomcast_shared::ErrorCode as C;
        let (code, message, retry) = match self {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "redis unavailable");
                (
                    C::Unavailable,
                    "storage unavailable, retry later".to_string(),
                    true,
                )
            }
            e @ StoreError::Unreplicated { .. } => (C::Unavailable, e.to_string(), true),
            StoreError::SessionEnded => (C::SessionEnded, "the session has ended".into(), false),
            StoreError::NoSuchSession => (C::NotFound, "no such session".into(), false),
            StoreError::SessionResolved => (
                C::Forbidden,
                "the session is resolved; resume it before writing".into(),
                false,
            ),
            StoreError::Internal(detail) => {
                tracing::error!(error = %detail, "redis error");
                (C::Internal, "internal error".into(), false)
            }
        };
        Told {
            code,
            message,
            retry,
        }
    }
}

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        match e.kind() {
            ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Routing => {
                StoreError::Unavailable(e.to_string())
            }
            ErrorKind::Cluster if e.details().contains("CLUSTERDOWN") => {
                StoreError::Unavailable(e.to_string())
            }
            _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Internal(e.to_string()),
        }
    }
}
