//! The routes that list sessions rather than act on one: a user's sessions
//! (`GET /users/{user}/sessions`) and the counts of every session
//! (`GET /sessions/stats`), both for the server key.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::view::SessionView;
use super::{ApiError, ApiQuery, Server, UserPath};
use crate::store::SessionStatus;
use crate::util::now_ms;
use crate::App;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserSessionsParams {
    /// `active`, `unresolved` (active or inactive) or `recent` (any status; the default).
    #[serde(rename = "type")]
    #[param(pattern = "^(active|unresolved|recent)$")]
    pub kind: Option<String>,
    /// At most this many (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// `GET /users/{user}/sessions`
#[utoipa::path(get, path = "/users/{user}/sessions", operation_id = "listUserSessions", tag = "sessions", params(super::UserPath, UserSessionsParams),
    responses((status = 200, body = SessionList)))]
pub(crate) async fn of_user(
    State(app): State<Arc<App>>,
    UserPath(user): UserPath,
    _: Server,
    params: ApiQuery<UserSessionsParams>,
) -> Result<Json<SessionList>, ApiError> {
    let params = params.value()?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("`limit` is 1 to 100"));
    }
    use SessionStatus::{Active, Ended, Inactive, Resolved};
    let wanted: &[SessionStatus] = match params.kind.as_deref().unwrap_or("recent") {
        "active" => &[Active],
        "unresolved" => &[Active, Inactive],
        "recent" => &[Active, Inactive, Resolved, Ended],
        _ => {
            return Err(ApiError::bad_request(
                "`type` is active, unresolved or recent",
            ))
        }
    };
    // Scan a bounded window of the user's most recent sessions.
    let ids = app.store.user_session_ids(&user, 500).await?;
    let mut sessions = Vec::new();
    for id in ids {
        if sessions.len() >= limit as usize {
            break;
        }
        if let Some(meta) = app.store.session_meta(&id).await? {
            let view = SessionView::new(&id, meta);
            if wanted.contains(&view.status) {
                sessions.push(view);
            }
        }
    }
    Ok(Json(SessionList { sessions }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Stats {
    pub total: u64,
    pub active: u64,
    pub inactive: u64,
    pub resolved: u64,
    pub ended: u64,
    /// WebSocket connections on live nodes.
    pub connections: u64,
    /// Nodes that sent a heartbeat within three heartbeats.
    pub nodes: u64,
}

/// `GET /sessions/stats`
#[utoipa::path(get, path = "/sessions/stats", operation_id = "getSessionStats", tag = "sessions",
    responses((status = 200, body = Stats)))]
pub(crate) async fn stats(State(app): State<Arc<App>>, _: Server) -> Result<Json<Stats>, ApiError> {
    let ids = app.store.all_session_ids().await?;
    let statuses = app.store.statuses(&ids).await?;
    let mut stats = Stats {
        total: 0,
        active: 0,
        inactive: 0,
        resolved: 0,
        ended: 0,
        connections: 0,
        nodes: 0,
    };
    let mut gone = Vec::new();
    for (id, status) in ids.into_iter().zip(statuses) {
        match status {
            None => gone.push(id),
            Some(s) => {
                stats.total += 1;
                match s {
                    SessionStatus::Active => stats.active += 1,
                    SessionStatus::Inactive => stats.inactive += 1,
                    SessionStatus::Resolved => stats.resolved += 1,
                    SessionStatus::Ended => stats.ended += 1,
                }
            }
        }
    }
    // Keys expire on their own; the index learns it here.
    app.store.forget_sessions(&gone).await?;
    let (nodes, connections) = app
        .store
        .cluster(now_ms(), app.config.node_alive_for())
        .await?;
    stats.nodes = nodes;
    stats.connections = connections;
    Ok(Json(stats))
}
