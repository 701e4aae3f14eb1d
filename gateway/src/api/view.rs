//! The session as the REST API shows it, and how routes load it: the view built from the
//! meta hash, the 404/409 rules every route shares, and who may act for a user.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{checked_id, ApiError, Credential};
use crate::store::{SessionMeta, SessionStatus};
use crate::App;

/// A session as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionView {
    pub id: String,
    /// Join code (sessions created over REST only).
    pub code: Option<String>,
    pub status: SessionStatus,
    pub created_at: u64,
    pub expires_at: u64,
    pub last_activity: u64,
    pub metadata: Value,
    pub state: Value,
    pub notes: Option<String>,
    pub resolved_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// Why it ended: `max_lifetime`, or the `reason` of `DELETE /sessions/{id}` (default
    /// `ended`). An inactive session's status says why on its own.
    pub reason: Option<String>,
    /// `message.published` webhook events are sent for this session (set at creation or
    /// by PATCH; `ROOMCAST_WEBHOOK_EVENTS` may send them for every session).
    pub message_webhooks: bool,
}

impl SessionView {
    pub(crate) fn new(id: &str, meta: SessionMeta) -> Self {
        SessionView {
            id: id.to_string(),
            code: meta.code,
            status: meta.status,
            created_at: meta.created_at,
            expires_at: meta.expires_at,
            last_activity: meta.last_activity,
            metadata: meta.metadata,
            state: meta.state,
            notes: meta.notes,
            resolved_at: meta.resolved_at,
            ended_at: meta.ended_at,
            reason: meta.reason,
            message_webhooks: meta.message_webhooks,
        }
    }
}

/// Loads a session or answers 404.
pub(crate) async fn load(app: &App, id: &str) -> Result<SessionMeta, ApiError> {
    checked_id(id, "id")?;
    app.store
        .session_meta(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such session"))
}

/// Loads a session that may still change: 404 when absent, 409 `session_ended` when it
/// has ended (an ended session refuses every write until its keys expire).
pub(crate) async fn load_open(app: &App, id: &str) -> Result<SessionMeta, ApiError> {
    let meta = load(app, id).await?;
    if meta.status == SessionStatus::Ended {
        return Err(crate::store::StoreError::SessionEnded.into());
    }
    Ok(meta)
}

/// Whether the credential may act for `user` (server keys may act for anyone).
pub(crate) fn acts_for(credential: &Credential, user: &str) -> bool {
    match credential {
        Credential::Admin | Credential::Server => true,
        Credential::Token(identity) => identity.user == user,
    }
}
