//! REST rate limits and their admin routes.
//!
//! The middleware runs before any handler, so limits are checked before credentials (a
//! flood of bad credentials is throttled like any other). Every `/api/v1` request counts
//! against `burst` and `api` for its client address; creating and joining sessions also
//! against `api_strict`. Refusals are 429 problems with `Retry-After`, `RateLimit-Policy`
//! and `RateLimit`; admitted requests carry the `api` scope's headers. When Redis cannot
//! answer, the check is skipped (fail open): the route itself will report the outage.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Admin, ApiError, ApiPath};
use crate::ids::valid_id;
use crate::ratelimit::{add_headers, check, ip_key, refusal, Scope};
use crate::util::now_ms;
use crate::App;

/// The client address of a request.
pub(crate) fn client_ip(app: &App, req: &Request) -> IpAddr {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    app.proxies.client_ip(peer, req.headers())
}

/// The `/api/v1` middleware.
pub(crate) async fn enforce(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let ip = ip_key(client_ip(&app, &req));
    let strict =
        req.method() == Method::POST && matches!(req.uri().path(), "/sessions" | "/sessions/join");
    if let Some(d) = check(&app, Scope::Burst, &ip).await.filter(|d| !d.admitted) {
        return refusal(&d, "too many requests in a burst");
    }
    if strict {
        if let Some(d) = check(&app, Scope::ApiStrict, &ip)
            .await
            .filter(|d| !d.admitted)
        {
            return refusal(&d, "too many sessions created or joined");
        }
    }
    let api = check(&app, Scope::Api, &ip).await;
    if let Some(d) = api.filter(|d| !d.admitted) {
        return refusal(&d, "too many API requests");
    }
    let mut response = next.run(req).await;
    if let Some(d) = api {
        add_headers(response.headers_mut(), &d);
    }
    response
}

/// A rate-limit key as the admin routes show it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LimitState {
    pub scope: String,
    pub key: String,
    /// Admissions allowed per window (0: the scope is disabled).
    pub limit: u32,
    pub window_ms: u64,
    /// Admissions counted in the current window.
    pub count: u64,
    pub remaining: u32,
    /// Until the oldest counted admission leaves the window.
    pub reset_ms: u64,
}

fn scope_and_key(scope: &str, key: &str) -> Result<Scope, ApiError> {
    let scope = Scope::parse(scope).ok_or_else(|| {
        ApiError::bad_request("`scope` is publish, publish_ip, connect, api, api_strict or burst")
    })?;
    // IPv6 keys are /64 prefixes ("2001:db8:1:2::/64").
    let plain = key
        .strip_suffix("/64")
        .filter(|k| k.ends_with("::"))
        .unwrap_or(key);
    if !valid_id(plain) {
        return Err(ApiError::bad_request(
            "`key` is a user id, an IPv4 address or an IPv6 /64",
        ));
    }
    Ok(scope)
}

/// `GET /admin/rate-limits/{scope}/{key}`
#[utoipa::path(get, path = "/admin/rate-limits/{scope}/{key}", operation_id = "getRateLimit", tag = "admin",
    params(("scope" = String, Path, pattern = "^(publish|publish_ip|connect|api|api_strict|burst)$"),
        ("key" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,128}(/64)?$")),
    responses((status = 200, body = LimitState)))]
pub(crate) async fn show(
    State(app): State<Arc<App>>,
    ApiPath((scope, key)): ApiPath<(String, String)>,
    _: Admin,
) -> Result<Json<LimitState>, ApiError> {
    let scope = scope_and_key(&scope, &key)?;
    let rate = scope.rate(&app.config);
    let d = if rate.is_disabled() {
        None
    } else {
        Some(app.store.rate_peek(scope, &key, rate, now_ms()).await?)
    };
    Ok(Json(LimitState {
        scope: scope.name().into(),
        key,
        limit: rate.count,
        window_ms: rate.window.as_millis() as u64,
        count: d.map(|d| u64::from(d.limit - d.remaining)).unwrap_or(0),
        remaining: d.map(|d| d.remaining).unwrap_or(0),
        reset_ms: d.map(|d| d.reset.as_millis() as u64).unwrap_or(0),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reset {
    /// Whether there was anything to forget.
    pub reset: bool,
}

/// `DELETE /admin/rate-limits/{scope}/{key}`: forgets the key's window.
#[utoipa::path(delete, path = "/admin/rate-limits/{scope}/{key}", operation_id = "resetRateLimit", tag = "admin",
    params(("scope" = String, Path, pattern = "^(publish|publish_ip|connect|api|api_strict|burst)$"),
        ("key" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,128}(/64)?$")),
    responses((status = 200, body = Reset)))]
pub(crate) async fn reset(
    State(app): State<Arc<App>>,
    ApiPath((scope, key)): ApiPath<(String, String)>,
    _: Admin,
) -> Result<Json<Reset>, ApiError> {
    let scope = scope_and_key(&scope, &key)?;
    let reset = app.store.rate_reset(scope, &key).await?;
    Ok(Json(Reset { reset }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        assert_eq!(ip_key("203.0.113.9".parse().unwrap()), "203.0.113.9");
        let a = ip_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ip_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b);
        assert!(scope_and_key("api", &a).is_ok());
        assert!(scope_and_key("api", "../etc").is_err());
        assert!(scope_and_key("api", "a/b").is_err());
    }
}
