//! The REST API under `/api/v1`: sessions, history, presence, server publish.
//!
//! Owns the HTTP edge of the session model: the router, and one [`ApiError`] that renders
//! RFC 9457 problem+json with a `code` of docs/PROTOCOL.md's `error` table (internals are
//! logged, never returned). Who may call and the path's ids are extractors (`access.rs`),
//! bodies and queries are read lazily after them (`body.rs`); every rejection is a
//! problem too. A handler states only what it does: its business rules; Redis access goes
//! through `store`.

/// Who may call, and the checked ids of the path.
mod access;
/// Lazily read bodies and queries.
mod body;
pub(crate) mod history;
pub(crate) mod limits;
pub(crate) mod listing;
pub(crate) mod messages;
pub(crate) mod openapi;
pub(crate) mod presence;
pub(crate) mod sessions;
pub(crate) mod view;
pub(crate) mod webhooks;

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use roomcast_shared::{ErrorCode, Role};

use crate::problem::problem;
use crate::store::StoreError;
use crate::App;

pub(crate) use access::{
    checked_id, checked_user, require_server, Admin, ApiPath, Credential, Server, SessionPath,
    SessionRead, SessionWrite, UserPath,
};
pub(crate) use body::{ApiJson, ApiQuery, MaybeJson};

/// Largest REST request body.
const MAX_BODY: usize = 64 * 1024;

/// The `/api/v1` router.
pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/openapi.json", get(openapi::serve))
        .route("/sessions", post(sessions::create))
        .route("/sessions/join", post(sessions::join))
        .route("/sessions/stats", get(listing::stats))
        .route(
            "/sessions/{id}",
            get(sessions::get)
                .patch(sessions::patch)
                .delete(sessions::end),
        )
        .route("/sessions/{id}/resolve", post(sessions::resolve))
        .route("/sessions/{id}/resume", post(sessions::resume))
        .route(
            "/sessions/{id}/history",
            get(history::list).delete(history::clear),
        )
        .route("/sessions/{id}/history/latest", get(history::latest))
        .route("/sessions/{id}/history/search", get(history::search))
        .route("/sessions/{id}/history/stats", get(history::stats))
        .route("/sessions/{id}/presence", get(presence::summary))
        .route("/sessions/{id}/presence/users", get(presence::users))
        .route("/sessions/{id}/presence/join", post(presence::join))
        .route("/sessions/{id}/presence/leave", post(presence::leave))
        .route("/sessions/{id}/presence/activity", post(presence::activity))
        .route("/sessions/{id}/presence/cleanup", post(presence::cleanup))
        .route("/sessions/{id}/messages", post(messages::publish))
        .route("/users/{user}/messages", post(messages::direct))
        .route("/users/{user}/sessions", get(listing::of_user))
        .route(
            "/admin/rate-limits/{scope}/{key}",
            get(limits::show).delete(limits::reset),
        )
        .route("/admin/webhooks", get(webhooks::status))
        .route("/admin/webhooks/dead-letters", get(webhooks::list))
        .route(
            "/admin/webhooks/dead-letters/replay",
            post(webhooks::replay_all),
        )
        .route(
            "/admin/webhooks/dead-letters/{id}/replay",
            post(webhooks::replay),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::BadRequest,
                "this route does not take that method (see Allow)",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Every REST failure: a status, an error `code` and a message safe to show.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    detail: String,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    pub(crate) fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, detail)
    }

    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, detail)
    }

    /// 429 with `Retry-After`: a bound that frees up by itself.
    pub(crate) fn too_many(detail: impl Into<String>, retry_after_s: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            detail,
        );
        e.retry_after = Some(retry_after_s.max(1));
        e
    }

    pub(crate) fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::BadRequest, detail)
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem(self.status, self.code, &self.detail);
        if let Some(seconds) = self.retry_after {
            if let Ok(v) = header::HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let told = e.told();
        let status = match told.code {
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            // 409: the request conflicts with the session's state (ended, or resolved);
            // 410 is kept for join codes.
            ErrorCode::SessionEnded | ErrorCode::Forbidden => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut e = ApiError::new(status, told.code, told.message);
        if told.retry {
            e.retry_after = Some(1);
        }
        e
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

/// A display name from a request: 400 with the reason when it is refused.
pub(crate) fn checked_name(name: Option<&str>) -> Result<(), ApiError> {
    match name.and_then(crate::util::name_problem) {
        Some(problem) => Err(ApiError::bad_request(format!("`name` {problem}"))),
        None => Ok(()),
    }
}

/// Parses a role name from a request body.
pub(crate) fn parse_role(role: Option<&str>, default: Role) -> Result<Role, ApiError> {
    match role {
        None => Ok(default),
        Some(r) => Role::parse(r)
            .ok_or_else(|| ApiError::bad_request("`role` must be controller, display or observer")),
    }
}

/// An integer as JSON Schema means it: `3079` and `3079.0` alike; `null` is absent.
pub(crate) fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom("expected an integer")),
        _ => Err(D::Error::custom("expected an integer")),
    }
}

/// A field that is present, even as `null`, is `Some`; only an absent one is `None`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    <serde_json::Value as serde::Deserialize>::deserialize(d).map(Some)
}
