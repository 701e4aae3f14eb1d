//! Session lifecycle routes: create, join by code, get, patch, end, resolve, resume (the
//! listings are `listing.rs`).
//!
//! Every state change is one `session_transition.lua` call on the session's slot, which
//! also announces it to members; the cross-slot indexes (the bucketed session and
//! due indexes, the join code) are updated after, idempotently.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use roomcast_shared::{ErrorCode, HistoryMessage, Role, SessionEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::view::{load, SessionView};
use super::{
    parse_role, require_server, ApiError, ApiJson, ApiQuery, MaybeJson, SessionRead, SessionWrite,
};
use crate::envelope::decode_entry;
use crate::ids::SessionId;
use crate::store::{LifecycleEvent, SessionMeta, SessionStatus, Transition};
use crate::util::{now_ms, random_id};
use crate::App;

/// Join-code alphabet: no 0/O, 1/I/L, so codes survive being read aloud or off a TV.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 6;
/// Longest `metadata`, `state` or `notes` once serialised.
const MAX_FIELD_BYTES: usize = 16 * 1024;
/// Messages returned by `resume`.
const RESUME_HISTORY: usize = 20;

fn json_field(value: &Value, what: &str) -> Result<String, ApiError> {
    let text = serde_json::to_string(value)
        .map_err(|_| ApiError::bad_request(format!("`{what}` is not JSON")))?;
    if text.len() > MAX_FIELD_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("`{what}` is larger than {MAX_FIELD_BYTES} bytes"),
        ));
    }
    Ok(text)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSession {
    /// Free-form JSON kept with the session.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Lifetime in seconds; longer values are cut to the configured maximum.
    #[serde(default, deserialize_with = "super::integral")]
    #[schema(minimum = 1)]
    pub max_lifetime_s: Option<i64>,
    /// Send `message.published` webhook events for this session (each costs a stream
    /// write per publish).
    #[serde(default)]
    pub message_webhooks: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SessionCreated {
    pub id: String,
    pub code: String,
    pub status: SessionStatus,
    pub created_at: u64,
    pub expires_at: u64,
    pub last_activity: u64,
    /// A display token for this session, valid until it expires.
    pub display_token: String,
}

/// Open routes stay open unless `ROOMCAST_OPEN_SESSIONS=false`.
fn open_route(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    if !app.config.open_sessions {
        require_server(app, headers)?;
    }
    // Both routes answer with a token the gateway signs: refuse before writing anything
    // when it cannot (a public-key deployment signs on the application's backend).
    if !app.auth.can_mint() {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            ErrorCode::Forbidden,
            "this gateway cannot sign tokens (it verifies them with ROOMCAST_JWT_PUBLIC_KEY): \
             create sessions and sign their tokens on your backend, or give the gateway \
             ROOMCAST_JWT_SECRET",
        ));
    }
    Ok(())
}

/// Session tokens outlive their session by a minute, so the session's end (close 4000, with
/// its reason) is what members see, not a token expiry (4001) racing it.
fn token_expiry(session_expires_at_ms: u64) -> u64 {
    session_expires_at_ms / 1000 + 60
}

fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// `POST /sessions`
#[utoipa::path(post, path = "/sessions", operation_id = "createSession", tag = "sessions", security(()), request_body(content = Option<CreateSession>),
    responses((status = 201, body = SessionCreated),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 415, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 501, description = "the gateway cannot sign tokens (public-key mode)", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: MaybeJson<CreateSession>,
) -> Result<Response, ApiError> {
    open_route(&app, &headers)?;
    let body = body.value().await?.unwrap_or_default();
    let max = app.config.max_lifetime.as_secs();
    let lifetime = match body.max_lifetime_s {
        Some(s) if s < 1 => return Err(ApiError::bad_request("`max_lifetime_s` must be positive")),
        Some(s) => (s as u64).min(max),
        None => max,
    };
    let metadata = json_field(&body.metadata.unwrap_or(Value::Null), "metadata")?;
    let now = now_ms();
    let expires_at = now + lifetime * 1000;
    let id = SessionId::generated(random_id(16));
    let mut code = None;
    for _ in 0..8 {
        let candidate = new_code();
        if app
            .store
            .claim_code(
                &candidate,
                &id,
                app.store
                    .code_ttl(Duration::from_secs(lifetime))
                    .as_millis() as u64,
            )
            .await?
        {
            code = Some(candidate);
            break;
        }
    }
    let code = code.ok_or_else(|| {
        tracing::error!("no free join code after 8 tries");
        ApiError::internal()
    })?;
    if !app
        .store
        .create_session(
            &id,
            now,
            expires_at,
            &code,
            "",
            &metadata,
            body.message_webhooks,
        )
        .await?
    {
        return Err(ApiError::internal());
    }
    let due = crate::lifecycle::first_due(&app.config, now, expires_at);
    app.store.touch_indexes(&id, now, None, Some(due)).await?;
    let display_token = app
        .auth
        .mint_until(
            format!("display-{id}"),
            vec![Role::Display],
            &[id.to_string()],
            Some("Display".into()),
            token_expiry(expires_at),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot mint a display token");
            ApiError::internal()
        })?;
    let created = SessionCreated {
        id: id.into_string(),
        code,
        status: SessionStatus::Active,
        created_at: now,
        expires_at,
        last_activity: now,
        display_token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinByCode {
    /// The 6-character join code (case-insensitive).
    #[schema(pattern = "^[A-HJKMNP-Za-hjkmnp-z2-9]{6}$")]
    pub code: String,
    /// Display name for the new member.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]{1,64}$"
    )]
    pub name: Option<String>,
    /// `controller` (default), `display` or `observer`.
    #[serde(default)]
    #[schema(pattern = "^(controller|display|observer)$")]
    pub role: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Joined {
    pub session_id: String,
    /// A token for this session with the requested role.
    pub token: String,
}

/// `POST /sessions/join`
#[utoipa::path(post, path = "/sessions/join", operation_id = "joinSessionByCode", tag = "sessions", security(()), request_body = JoinByCode,
    responses((status = 200, body = Joined),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 410, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 415, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 501, description = "the gateway cannot sign tokens (public-key mode)", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn join(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: ApiJson<JoinByCode>,
) -> Result<Json<Joined>, ApiError> {
    open_route(&app, &headers)?;
    let body = body.value().await?;
    let code = body.code.trim().to_ascii_uppercase();
    if code.len() != CODE_LEN || !code.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return Err(ApiError::bad_request(
            "`code` is 6 characters of A-Z and 2-9",
        ));
    }
    super::checked_name(body.name.as_deref())?;
    let role = parse_role(body.role.as_deref(), Role::Controller)?;
    let id = app
        .store
        .code_session(&code)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown or expired join code"))?;
    let meta = app.store.session_meta(&id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::GONE,
            roomcast_shared::ErrorCode::SessionEnded,
            "the session expired",
        )
    })?;
    let view = SessionView::new(&id, meta);
    if view.status == SessionStatus::Ended || view.expires_at <= now_ms() {
        return Err(ApiError::new(
            StatusCode::GONE,
            roomcast_shared::ErrorCode::SessionEnded,
            "the session has ended",
        ));
    }
    let user = format!("guest-{}", random_id(10));
    let token = app
        .auth
        .mint_until(
            user.clone(),
            vec![role],
            std::slice::from_ref(&id),
            body.name,
            token_expiry(view.expires_at),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "cannot mint a session token");
            ApiError::internal()
        })?;
    app.store
        .touch_indexes(&id, now_ms(), Some(&user), None)
        .await?;
    Ok(Json(Joined {
        session_id: id,
        token,
    }))
}

/// `GET /sessions/{id}`
#[utoipa::path(get, path = "/sessions/{id}", operation_id = "getSession", tag = "sessions", params(super::SessionPath),
    responses((status = 200, body = SessionView),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
) -> Result<Json<SessionView>, ApiError> {
    Ok(Json(SessionView::new(&id, load(&app, &id).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchSession {
    /// Replaces the metadata (`null` clears it).
    #[serde(default, deserialize_with = "super::present")]
    pub metadata: Option<Value>,
    /// Application state shared by the session's members (`null` clears it).
    #[serde(default, deserialize_with = "super::present")]
    pub state: Option<Value>,
    /// Turns `message.published` webhook events for this session on or off.
    #[serde(default)]
    pub message_webhooks: Option<bool>,
}

/// Applies a transition and maps its outcome.
async fn transition(
    app: &App,
    id: &str,
    allowed: &[SessionStatus],
    to: Option<SessionStatus>,
    event: Option<LifecycleEvent<'_>>,
    fields: &[(&str, String)],
) -> Result<SessionMeta, ApiError> {
    match app
        .store
        .transition(id, now_ms(), allowed, to, event, fields)
        .await?
    {
        Transition::Done(meta) => Ok(*meta),
        Transition::Missing => Err(ApiError::not_found("no such session")),
        Transition::Conflict(SessionStatus::Ended) => Err(ApiError::new(
            StatusCode::CONFLICT,
            roomcast_shared::ErrorCode::SessionEnded,
            "the session has ended",
        )),
        Transition::Conflict(status) => Err(ApiError::conflict(format!(
            "not allowed while the session is {status}"
        ))),
    }
}

/// `PATCH /sessions/{id}`
#[utoipa::path(patch, path = "/sessions/{id}", operation_id = "updateSession", tag = "sessions", params(super::SessionPath), request_body = PatchSession,
    responses((status = 200, body = SessionView),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn patch(
    State(app): State<Arc<App>>,
    SessionWrite { id, .. }: SessionWrite,
    body: ApiJson<PatchSession>,
) -> Result<Json<SessionView>, ApiError> {
    let body = body.value().await?;
    let mut fields = Vec::new();
    if let Some(m) = &body.metadata {
        fields.push(("metadata", json_field(m, "metadata")?));
    }
    if let Some(s) = &body.state {
        fields.push(("state", json_field(s, "state")?));
    }
    if let Some(on) = body.message_webhooks {
        fields.push(("hooks_messages", if on { "1" } else { "" }.to_string()));
    }
    if fields.is_empty() {
        return Err(ApiError::bad_request(
            "give `metadata`, `state` and/or `message_webhooks`",
        ));
    }
    let event = LifecycleEvent {
        event: SessionEvent::Updated,
        reason: "patched",
        at: now_ms(),
    };
    let after = transition(
        &app,
        &id,
        &[
            SessionStatus::Active,
            SessionStatus::Inactive,
            SessionStatus::Resolved,
        ],
        None,
        Some(event),
        &fields,
    )
    .await?;
    Ok(Json(SessionView::new(&id, after)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EndParams {
    /// Why the session ends (shown to members).
    #[param(max_length = 200)]
    pub reason: Option<String>,
}

/// `DELETE /sessions/{id}`: ends it; members get `session/ended`, then close 4000.
#[utoipa::path(delete, path = "/sessions/{id}", operation_id = "endSession", tag = "sessions", params(super::SessionPath, EndParams),
    responses((status = 200, body = SessionView),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn end(
    State(app): State<Arc<App>>,
    SessionWrite { id, .. }: SessionWrite,
    params: ApiQuery<EndParams>,
) -> Result<Json<SessionView>, ApiError> {
    let params = params.value()?;
    let reason = params.reason.unwrap_or_else(|| "ended".into());
    if reason.chars().count() > 200 {
        return Err(ApiError::bad_request("`reason` is at most 200 characters"));
    }
    let now = now_ms();
    let event = LifecycleEvent {
        event: SessionEvent::Ended,
        reason: &reason,
        at: now,
    };
    let fields = [("ended_at", now.to_string()), ("reason", reason.clone())];
    let after = transition(
        &app,
        &id,
        &[
            SessionStatus::Active,
            SessionStatus::Inactive,
            SessionStatus::Resolved,
        ],
        Some(SessionStatus::Ended),
        Some(event),
        &fields,
    )
    .await?;
    // The join code stays as a tombstone (410) until it expires with the session's keys.
    app.store.unschedule(&id).await?;
    if let Some(owner) = &after.owner {
        app.store.disown(owner, &id).await?;
    }
    Ok(Json(SessionView::new(&id, after)))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveSession {
    #[serde(default)]
    #[schema(max_length = 16384)]
    pub notes: Option<String>,
}

/// `POST /sessions/{id}/resolve`
#[utoipa::path(post, path = "/sessions/{id}/resolve", operation_id = "resolveSession", tag = "sessions", params(super::SessionPath),
    request_body(content = Option<ResolveSession>),
    responses((status = 200, body = SessionView),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn resolve(
    State(app): State<Arc<App>>,
    SessionWrite { id, .. }: SessionWrite,
    body: MaybeJson<ResolveSession>,
) -> Result<Json<SessionView>, ApiError> {
    let notes = body
        .value()
        .await?
        .and_then(|b| b.notes)
        .unwrap_or_default();
    if notes.len() > MAX_FIELD_BYTES {
        return Err(ApiError::bad_request(format!(
            "`notes` is at most {MAX_FIELD_BYTES} bytes"
        )));
    }
    let now = now_ms();
    let event = LifecycleEvent {
        event: SessionEvent::Resolved,
        reason: "resolved",
        at: now,
    };
    let fields = [("resolved_at", now.to_string()), ("notes", notes)];
    let after = transition(
        &app,
        &id,
        &[SessionStatus::Active, SessionStatus::Inactive],
        Some(SessionStatus::Resolved),
        Some(event),
        &fields,
    )
    .await?;
    Ok(Json(SessionView::new(&id, after)))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Resumed {
    pub session: SessionView,
    /// The most recent messages, oldest first.
    pub history: Vec<HistoryMessage>,
}

/// `POST /sessions/{id}/resume`: reactivates an inactive or resolved session inside its
/// lifetime.
#[utoipa::path(post, path = "/sessions/{id}/resume", operation_id = "resumeSession", tag = "sessions", params(super::SessionPath),
    responses((status = 200, body = Resumed),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn resume(
    State(app): State<Arc<App>>,
    SessionWrite { id, .. }: SessionWrite,
) -> Result<Json<Resumed>, ApiError> {
    let current = SessionView::new(&id, load(&app, &id).await?);
    let now = now_ms();
    if current.expires_at <= now {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            roomcast_shared::ErrorCode::SessionEnded,
            "the session's lifetime is over",
        ));
    }
    let event = LifecycleEvent {
        event: SessionEvent::Updated,
        reason: "resumed",
        at: now,
    };
    let fields = [
        ("last_activity", now.to_string()),
        ("warned_for", String::new()),
    ];
    let after = transition(
        &app,
        &id,
        &[SessionStatus::Inactive, SessionStatus::Resolved],
        Some(SessionStatus::Active),
        Some(event),
        &fields,
    )
    .await?;
    let view = SessionView::new(&id, after);
    let due = crate::lifecycle::first_due(&app.config, now, view.expires_at);
    app.store.touch_indexes(&id, now, None, Some(due)).await?;
    let mut history: Vec<HistoryMessage> = app
        .store
        .history_all(&id)
        .await?
        .iter()
        .take(RESUME_HISTORY)
        .filter_map(|b| decode_entry(b).ok())
        .map(|e| e.into_history())
        .collect();
    history.reverse();
    Ok(Json(Resumed {
        session: view,
        history,
    }))
}
