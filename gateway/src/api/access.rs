//! Who may call a route, and the ids in its path, as extractors: each checks what it
//! names (the path's id first, 400; then the credential, 401 or 403), so a handler states
//! only what it does. The credentials are README "REST API"'s: the server API key, the
//! admin token, and session JWTs; keys are compared in constant time.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap};

use super::ApiError;
use crate::auth::{AuthError, Identity};
use crate::ids::{SessionId, UserId};
use crate::App;

/// `Path` whose rejections are problems.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// The `{id}` of a session route, checked: 400 unless it is a session id. It is also the
/// parameter as the OpenAPI document states it (`params(super::SessionPath)`).
#[derive(utoipa::IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
pub(crate) struct SessionPath(
    #[param(value_type = String, pattern = "^[A-Za-z0-9_.:-]{1,128}$")] pub(crate) SessionId,
);

impl FromRequestParts<Arc<App>> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, app).await?;
        checked_id(&id, "id").map(SessionPath)
    }
}

/// The session of the path and a credential that may read it: the server key, the admin
/// token, or a token whose `sessions` claim lists it. The id is checked first (400), then
/// the credential (401, 403).
pub(crate) struct SessionRead {
    pub(crate) id: SessionId,
}

/// As [`SessionRead`], for a change: observer-only tokens are refused (403).
pub(crate) struct SessionWrite {
    pub(crate) id: SessionId,
    pub(crate) credential: Credential,
}

/// The checked session id and the credential for it, read or write.
async fn session_access(
    parts: &mut axum::http::request::Parts,
    app: &Arc<App>,
    write: bool,
) -> Result<(SessionId, Credential), ApiError> {
    let SessionPath(id) = SessionPath::from_request_parts(parts, app).await?;
    let credential = require_session(app, &parts.headers, &id, write)?;
    Ok((id, credential))
}

impl FromRequestParts<Arc<App>> for SessionRead {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        let (id, _) = session_access(parts, app, false).await?;
        Ok(SessionRead { id })
    }
}

impl FromRequestParts<Arc<App>> for SessionWrite {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        let (id, credential) = session_access(parts, app, true).await?;
        Ok(SessionWrite { id, credential })
    }
}

/// The `{user}` of a user route, checked: 400 unless a token could carry it. Also its
/// OpenAPI parameter, as [`SessionPath`] is.
#[derive(utoipa::IntoParams)]
#[into_params(names("user"), parameter_in = Path)]
pub(crate) struct UserPath(
    #[param(value_type = String, pattern = "^[A-Za-z0-9_.:@+|-]{1,128}$")] pub(crate) UserId,
);

impl FromRequestParts<Arc<App>> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        let ApiPath(user) = ApiPath::<String>::from_request_parts(parts, app).await?;
        checked_user(&user).map(UserPath)
    }
}

/// A caller with the server API key or the admin token (401, 403).
pub(crate) struct Server;

impl FromRequestParts<Arc<App>> for Server {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        require_server(app, &parts.headers).map(|_| Server)
    }
}

/// A caller with the admin token (401, 403).
pub(crate) struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, ApiError> {
        require_admin(app, &parts.headers).map(|_| Admin)
    }
}

/// A validated id from the path.
pub(crate) fn checked_id(id: &str, what: &'static str) -> Result<SessionId, ApiError> {
    SessionId::parse(id, what).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A user id from a path or body: 400 unless it is one a token could carry.
pub(crate) fn checked_user(user: &str) -> Result<UserId, ApiError> {
    UserId::parse(user, "user").map_err(|e| ApiError::bad_request(e.to_string()))
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
