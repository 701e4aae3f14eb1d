//! The REST API under `/api/v1`: sessions, history, presence, server publish.
//!
//! Owns the HTTP edge of the session model: one [`ApiError`] that renders RFC 9457
//! problem+json with a `code` of docs/PROTOCOL.md's `error` table (internals are logged,
//! never returned), the credentials of README "REST API" (server API key, admin token,
//! session JWTs; keys compared in constant time), and extractors whose rejections are
//! problems too.
//! Business rules live in the route modules; Redis access goes through `store`.

pub(crate) mod history;
pub(crate) mod limits;
pub(crate) mod listing;
pub(crate) mod messages;
pub(crate) mod openapi;
pub(crate) mod presence;
pub(crate) mod sessions;
pub(crate) mod view;
pub(crate) mod webhooks;

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use roomcast_shared::{ErrorCode, Role};

use crate::auth::{AuthError, Identity};
use crate::ids::{SessionId, UserId};
use crate::problem::problem;
use crate::store::StoreError;
use crate::App;

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

/// A request body not read yet: handlers check credentials first and read it after
/// (`value().await`), so a request without credentials is answered 401 at once, however
/// slowly its body would arrive, and no body is buffered for it.
pub(crate) struct LazyBody {
    body: axum::body::Body,
    /// `Content-Type` is JSON.
    json: bool,
    /// `Content-Length`, when given.
    length: Option<u64>,
    /// The whole body must arrive within this (`ROOMCAST_BODY_TIMEOUT`).
    timeout: std::time::Duration,
}

impl LazyBody {
    fn new(req: axum::extract::Request, app: &App) -> Self {
        let headers = req.headers();
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        LazyBody {
            body: req.into_body(),
            json,
            length,
            timeout: app.config.body_timeout,
        }
    }

    /// Reads the whole body: at most [`MAX_BODY`] bytes, within the body timeout. A
    /// declared length over the limit is refused before anything is read (so an
    /// `Expect: 100-continue` client is never told to send it).
    async fn bytes(self) -> Result<axum::body::Bytes, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        };
        if self.length.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let limited = http_body_util::Limited::new(self.body, MAX_BODY);
        match tokio::time::timeout(self.timeout, http_body_util::BodyExt::collect(limited)).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => Err(ApiError::bad_request(format!(
                "reading the body failed: {e}"
            ))),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                format!(
                    "the body did not arrive within {} ms (ROOMCAST_BODY_TIMEOUT)",
                    self.timeout.as_millis()
                ),
            )),
        }
    }

    /// The body as an optional JSON object of `T` (empty or `null`: `None`).
    async fn object<T: serde::de::DeserializeOwned>(self) -> Result<Option<T>, ApiError> {
        let json = self.json;
        let bytes = self.bytes().await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest,
                "the body must be application/json",
            ));
        }
        parse_object(&bytes)
    }
}

/// A required JSON object body of `T`, read and parsed when the handler asks
/// ([`ApiJson::value`]), after its credential checks.
pub(crate) struct ApiJson<T>(LazyBody, std::marker::PhantomData<fn() -> T>);

impl<T: serde::de::DeserializeOwned> ApiJson<T> {
    pub(crate) async fn value(self) -> Result<T, ApiError> {
        self.0
            .object()
            .await?
            .ok_or_else(|| ApiError::bad_request("a JSON object body is required"))
    }
}

impl<T> FromRequest<Arc<App>> for ApiJson<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(
        req: axum::extract::Request,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        Ok(ApiJson(LazyBody::new(req, app), std::marker::PhantomData))
    }
}

/// Parses a request body that must be a JSON object (serde would also accept an array
/// for a struct, positionally, which no client means). `null` means no body. The object
/// is read straight into `T`, so a key given twice is refused (as on the WebSocket side)
/// rather than the last one winning.
fn parse_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, ApiError> {
    let invalid = |e: serde_json::Error| match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request(format!("invalid body: {e}")),
        _ => ApiError::bad_request(format!("invalid JSON body: {e}")),
    };
    let parsed = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes).map(Some).map_err(invalid)?,
        _ => match serde_json::from_slice::<serde_json::Value>(bytes).map_err(invalid)? {
            serde_json::Value::Null => None,
            _ => return Err(ApiError::bad_request("the body must be a JSON object")),
        },
    };
    // An integer beyond 64 bits parses as a float that has lost digits: refuse it.
    roomcast_shared::numbers::check_json(bytes).map_err(|e| ApiError::bad_request(e.0))?;
    Ok(parsed)
}

/// An optional JSON object body (empty or `null` means `None`); read like [`ApiJson`].
pub(crate) struct MaybeJson<T>(LazyBody, std::marker::PhantomData<fn() -> T>);

impl<T: serde::de::DeserializeOwned> MaybeJson<T> {
    pub(crate) async fn value(self) -> Result<Option<T>, ApiError> {
        self.0.object().await
    }
}

impl<T> FromRequest<Arc<App>> for MaybeJson<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(
        req: axum::extract::Request,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        Ok(MaybeJson(LazyBody::new(req, app), std::marker::PhantomData))
    }
}

/// Query parameters of `T`, parsed lazily like [`ApiJson`].
pub(crate) struct ApiQuery<T>(Result<T, ApiError>);

impl<T> ApiQuery<T> {
    pub(crate) fn value(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let parsed = axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| q.0)
            .map_err(ApiError::from);
        Ok(ApiQuery(parsed))
    }
}

/// `Path` whose rejections are problems.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// A validated id from the path.
pub(crate) fn checked_id(id: &str, what: &'static str) -> Result<SessionId, ApiError> {
    SessionId::parse(id, what).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A user id from a path or body: 400 unless it is one a token could carry.
pub(crate) fn checked_user(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user, "user").map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A display name from a request: 400 with the reason when it is refused.
pub(crate) fn checked_name(name: Option<&str>) -> Result<(), ApiError> {
    match name.and_then(crate::util::name_problem) {
        Some(problem) => Err(ApiError::bad_request(format!("`name` {problem}"))),
        None => Ok(()),
    }
}

/// Who is calling.
#[derive(Debug)]
pub(crate) enum Credential {
    Admin,
    Server,
    Token(Identity),
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The caller's credential from `Authorization: Bearer` or `X-Api-Key`; 401 when absent
/// or invalid.
pub(crate) fn credential(app: &App, headers: &HeaderMap) -> Result<Credential, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing credential"))?;
    if let Some(admin) = &app.config.admin_token {
        if constant_time_eq(presented.as_bytes(), admin.expose().as_bytes()) {
            return Ok(Credential::Admin);
        }
    }
    if let Some(key) = &app.config.api_key {
        if constant_time_eq(presented.as_bytes(), key.expose().as_bytes()) {
            return Ok(Credential::Server);
        }
    }
    if app.auth.is_off() {
        return Ok(Credential::Token(app.auth.anonymous(None)));
    }
    match app.auth.verify(presented) {
        Ok(identity) => Ok(Credential::Token(identity)),
        Err(AuthError::Forbidden(m)) => Err(ApiError::forbidden(m)),
        Err(e) => Err(ApiError::unauthorized(e.to_string())),
    }
}

/// Server API key or admin token.
pub(crate) fn require_server(app: &App, headers: &HeaderMap) -> Result<Credential, ApiError> {
    match credential(app, headers)? {
        c @ (Credential::Server | Credential::Admin) => Ok(c),
        Credential::Token(_) => Err(ApiError::forbidden("this route needs the server API key")),
    }
}

/// Admin token only.
pub(crate) fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match credential(app, headers)? {
        Credential::Admin => Ok(()),
        _ => Err(ApiError::forbidden("this route needs the admin token")),
    }
}

/// A credential for one session: server key, admin token, or a JWT whose `sessions` claim
/// lists it. `write` also refuses observer-only tokens.
pub(crate) fn require_session(
    app: &App,
    headers: &HeaderMap,
    session: &str,
    write: bool,
) -> Result<Credential, ApiError> {
    let credential = credential(app, headers)?;
    if let Credential::Token(identity) = &credential {
        let listed = identity
            .sessions
            .as_ref()
            .is_some_and(|s: &HashSet<String>| s.contains(session));
        if !listed && !app.auth.is_off() {
            return Err(ApiError::forbidden("the token does not list this session"));
        }
        if write && !identity.roles.iter().any(|r| r.can_write()) {
            return Err(ApiError::forbidden("observer tokens are read-only"));
        }
    }
    Ok(credential)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

/// Property tests of REST body parsing: any JSON gives a body or a `bad_request`, never a
/// panic, and only objects (or `null`, "no body") are accepted.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let key = prop_oneof![
                Just("metadata".to_string()),
                Just("max_lifetime_s".to_string()),
                Just("code".to_string()),
                Just("name".to_string()),
                Just("role".to_string()),
                Just("state".to_string()),
                Just("data".to_string()),
                Just("from".to_string()),
                Just("client_id".to_string()),
                Just("user".to_string()),
                Just("notes".to_string()),
                "[a-z]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    fn check<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), TestCaseError> {
        let bytes = serde_json::to_vec(value).unwrap();
        match parse_object::<T>(&bytes) {
            Ok(Some(_)) => prop_assert!(value.is_object()),
            Ok(None) => prop_assert!(value.is_null()),
            Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn every_body_type_parses_or_is_a_bad_request(value in json_value()) {
            check::<sessions::CreateSession>(&value)?;
            check::<sessions::JoinByCode>(&value)?;
            check::<sessions::PatchSession>(&value)?;
            check::<sessions::ResolveSession>(&value)?;
            check::<presence::PresenceJoin>(&value)?;
            check::<presence::PresenceClient>(&value)?;
            check::<messages::ServerMessage>(&value)?;
            check::<messages::DirectMessage>(&value)?;
        }

        #[test]
        fn arbitrary_bytes_are_a_bad_request(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = parse_object::<sessions::CreateSession>(&bytes) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }
    }
}
