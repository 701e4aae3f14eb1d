//! The webhook admin routes (admin token): each endpoint's state on this instance, the
//! dead letters, and replaying them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Admin, ApiError, ApiPath, ApiQuery};
use crate::store::DeadLetter;
use crate::webhooks::Webhooks;
use crate::App;
use roomcast_shared::ErrorCode;

fn service(app: &App) -> Result<&Arc<Webhooks>, ApiError> {
    app.webhooks.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "webhooks are not configured (ROOMCAST_WEBHOOK_URLS)",
        )
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookStatus {
    /// Each endpoint as this instance sees it.
    pub endpoints: Vec<crate::webhooks::EndpointState>,
    /// Dead letters waiting (all instances share them).
    pub dead_letters: u64,
}

/// `GET /admin/webhooks`
#[utoipa::path(get, path = "/admin/webhooks", operation_id = "webhookStatus", tag = "admin",
    responses((status = 200, body = WebhookStatus),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn status(
    State(app): State<Arc<App>>,
    _: Admin,
) -> Result<Json<WebhookStatus>, ApiError> {
    let hooks = service(&app)?;
    Ok(Json(WebhookStatus {
        endpoints: hooks.endpoint_states(),
        dead_letters: app.store.dead_count().await?,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadParams {
    /// At most this many (1 to 500, default 100).
    pub limit: Option<u64>,
    /// Continue after this dead letter id (`next_after` of the previous page).
    #[param(pattern = "^[0-9]+-[0-9]+$")]
    pub after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetters {
    /// Oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

fn checked_stream_id(id: &str) -> Result<&str, ApiError> {
    let ok = id.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() <= 20
            && b.len() <= 20
            && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(id)
    } else {
        Err(ApiError::bad_request(
            "a dead letter id looks like 1733550000000-0",
        ))
    }
}

/// `GET /admin/webhooks/dead-letters`
#[utoipa::path(get, path = "/admin/webhooks/dead-letters", operation_id = "listDeadLetters", tag = "admin",
    params(DeadParams),
    responses((status = 200, body = DeadLetters),
        (status = 400, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    _: Admin,
    params: ApiQuery<DeadParams>,
) -> Result<Json<DeadLetters>, ApiError> {
    service(&app)?;
    let params = params.value()?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("`limit` is 1 to 500"));
    }
    let after = params.after.as_deref().map(checked_stream_id).transpose()?;
    let dead = app.store.dead_list(after, limit).await?;
    let next_after = (dead.len() as u64 == limit)
        .then(|| dead.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(DeadLetters {
        dead_letters: dead,
        next_after,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Replayed {
    /// Dead letters answered 2xx and removed.
    pub delivered: u64,
    /// Dead letters that failed again and stay, with why.
    pub failed: Vec<ReplayFailure>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReplayFailure {
    pub id: String,
    pub error: String,
}

async fn replay_one(app: &App, hooks: &Webhooks, dead: &DeadLetter) -> Result<(), String> {
    hooks.replay(dead).await?;
    app.store
        .dead_remove(&dead.id)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `POST /admin/webhooks/dead-letters/{id}/replay`: sends it once more (same
/// `webhook-id`); removed when answered 2xx.
#[utoipa::path(post, path = "/admin/webhooks/dead-letters/{id}/replay", operation_id = "replayDeadLetter", tag = "admin",
    params(("id" = String, Path, pattern = "^[0-9]+-[0-9]+$")),
    responses((status = 200, body = Replayed),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn replay(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    _: Admin,
) -> Result<Json<Replayed>, ApiError> {
    let hooks = service(&app)?;
    let id = checked_stream_id(&id)?;
    let dead = app
        .store
        .dead_get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such dead letter"))?;
    Ok(Json(match replay_one(&app, hooks, &dead).await {
        Ok(()) => Replayed {
            delivered: 1,
            failed: Vec::new(),
        },
        Err(error) => Replayed {
            delivered: 0,
            failed: vec![ReplayFailure { id: dead.id, error }],
        },
    }))
}

/// Dead letters one replay-all request goes through.
const REPLAY_ALL_MAX: u64 = 500;

/// `POST /admin/webhooks/dead-letters/replay`: replays up to 500 of the oldest, in
/// order; call again for more.
#[utoipa::path(post, path = "/admin/webhooks/dead-letters/replay", operation_id = "replayDeadLetters", tag = "admin",
    responses((status = 200, body = Replayed),
        (status = 403, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn replay_all(
    State(app): State<Arc<App>>,
    _: Admin,
) -> Result<Json<Replayed>, ApiError> {
    let hooks = service(&app)?;
    let mut out = Replayed {
        delivered: 0,
        failed: Vec::new(),
    };
    for dead in app.store.dead_list(None, REPLAY_ALL_MAX).await? {
        match replay_one(&app, hooks, &dead).await {
            Ok(()) => out.delivered += 1,
            Err(error) => out.failed.push(ReplayFailure { id: dead.id, error }),
        }
    }
    Ok(Json(out))
}
