//! Server-side publishing: into a session (exactly like a client publish: seq, history,
//! fan-out) and directly to every connection of one user on any instance.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use roomcast_shared::{ErrorCode, From, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, ApiJson, Server, SessionPath, UserPath};
use crate::envelope::Event;
use crate::publish::{publish_message, touch_indexes_later, PublishError};
use crate::util::now_ms;
use crate::App;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sender {
    /// Shown as `from.user` (default `server`): a user id as tokens carry them.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:@+|-]{1,128}$")]
    pub user: Option<String>,
    /// Shown as `from.name`: 1 to 64 characters, no control or bidi-override characters.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]{1,64}$"
    )]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerMessage {
    /// Any JSON value, up to `ROOMCAST_MAX_FRAME_BYTES` once encoded.
    pub data: Value,
    /// Who the message is shown as coming from.
    #[serde(default)]
    #[schema(value_type = Option<Sender>)]
    pub from: Option<Value>,
    /// A publish repeated with the same key within `ROOMCAST_IDEMPOTENCY_WINDOW` (5 min)
    /// is stored once; the repeat is answered with the first one's seq.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Published {
    pub seq: u64,
    /// The key was seen within the window: nothing new was stored, `seq` is the first
    /// publish's.
    pub repeat: bool,
}

fn check_size(app: &App, data: &Value) -> Result<(), ApiError> {
    let size = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > app.config.max_frame_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("`data` is larger than {} bytes", app.config.max_frame_bytes),
        ));
    }
    Ok(())
}

/// `POST /sessions/{id}/messages`
#[utoipa::path(post, path = "/sessions/{id}/messages", operation_id = "publishMessage", tag = "messages", params(super::SessionPath),
    request_body = ServerMessage,
    responses((status = 200, body = Published),
        (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn publish(
    State(app): State<Arc<App>>,
    SessionPath(id): SessionPath,
    _: Server,
    body: ApiJson<ServerMessage>,
) -> Result<Json<Published>, ApiError> {
    let body = body.value().await?;
    check_size(&app, &body.data)?;
    // Read as a value first: serde would accept an array for a struct, positionally.
    let sender: Sender = match body.from {
        None | Some(Value::Null) => Sender::default(),
        Some(v @ Value::Object(_)) => serde_json::from_value(v)
            .map_err(|e| ApiError::bad_request(format!("invalid `from`: {e}")))?,
        Some(_) => return Err(ApiError::bad_request("`from` must be an object")),
    };
    // The same rules as a token's `sub` and `name`: what clients show of a sender.
    let user = match sender.user {
        Some(user) => super::checked_user(&user)?,
        None => crate::ids::UserId::generated("server".into()),
    };
    super::checked_name(sender.name.as_deref())?;
    if let Some(problem) = body
        .idempotency_key
        .as_deref()
        .and_then(crate::ids::idempotency_key_problem)
    {
        return Err(ApiError::bad_request(format!(
            "`idempotency_key` {problem}"
        )));
    }
    let from = From {
        client_id: "server".into(),
        user: user.to_string(),
        role: Role::Controller,
        name: sender.name,
    };
    // REST publishes are limited per request (the `api` scope, in the middleware).
    let key = body.idempotency_key.as_deref();
    let published = publish_message(&app, &id, &from, &body.data, key, &[])
        .await
        .map(|stored| stored.published)
        .map_err(|e| match e {
            PublishError::Data(e) => ApiError::bad_request(e),
            PublishError::Store(e) => e.into(),
            PublishError::Limited(d) => {
                tracing::error!(
                    scope = d.scope.name(),
                    "a publish without limits was limited"
                );
                ApiError::internal()
            }
        })?;
    // Server publishes are activity in the session index too (a WebSocket member's
    // activity is recorded, throttled, through its connection).
    touch_indexes_later(&app, &id, None, None, true);
    Ok(Json(Published {
        seq: published.seq,
        repeat: published.repeat,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectMessage {
    /// Any JSON value, delivered as a `direct` frame.
    pub data: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Delivered {
    /// Whether any instance had a connection of that user.
    pub delivered: bool,
    /// Instances that received it.
    pub instances: u64,
}

/// `POST /users/{user}/messages`
#[utoipa::path(post, path = "/users/{user}/messages", operation_id = "sendDirectMessage", tag = "messages", params(super::UserPath),
    request_body = DirectMessage,
    responses((status = 200, body = Delivered),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn direct(
    State(app): State<Arc<App>>,
    UserPath(user): UserPath,
    _: Server,
    body: ApiJson<DirectMessage>,
) -> Result<Json<Delivered>, ApiError> {
    let body = body.value().await?;
    check_size(&app, &body.data)?;
    let payload = Event::Direct {
        data: body.data,
        ts: now_ms(),
    }
    .encode();
    let instances = app.store.publish_user(&user, payload).await?;
    Ok(Json(Delivered {
        delivered: instances > 0,
        instances,
    }))
}
