//! The session as the REST API shows it, and how routes load it: the view built from the
//! meta hash, the 404/409 rules every route shares, and who may act for a user.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{checked_id, ApiError, Credential};
use crate::store::SessionStatus;
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
    /// Why it ended or went inactive.
    pub reason: Option<String>,
}

impl SessionView {
    pub(crate) fn from_fields(id: &str, f: &HashMap<String, String>) -> Self {
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        let json = |k: &str| {
            f.get(k)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or(Value::Null)
        };
        let text = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
        SessionView {
            id: id.to_string(),
            code: text("code"),
            status: SessionStatus::of(f).unwrap_or(SessionStatus::Active),
            created_at: num("created_at").unwrap_or(0),
            expires_at: num("expires_at").unwrap_or(0),
            last_activity: num("last_activity").unwrap_or(0),
            metadata: json("metadata"),
            state: json("state"),
            notes: text("notes"),
            resolved_at: num("resolved_at"),
            ended_at: num("ended_at"),
            reason: text("reason"),
        }
    }
}

/// Loads a session or answers 404.
pub(crate) async fn load(app: &App, id: &str) -> Result<HashMap<String, String>, ApiError> {
    checked_id(id, "id")?;
    app.store
        .session_fields(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such session"))
}

/// Loads a session that may still change: 404 when absent, 409 `session_ended` when it
/// has ended (an ended session refuses every write until its keys expire).
pub(crate) async fn load_open(app: &App, id: &str) -> Result<HashMap<String, String>, ApiError> {
    let fields = load(app, id).await?;
    if SessionStatus::of(&fields) == Some(SessionStatus::Ended) {
        return Err(crate::store::StoreError::SessionEnded.into());
    }
    Ok(fields)
}

/// Whether the credential may act for `user` (server keys may act for anyone).
pub(crate) fn acts_for(credential: &Credential, user: &str) -> bool {
    match credential {
        Credential::Admin | Credential::Server => true,
        Credential::Token(identity) => identity.user == user,
    }
}
