//! The HTTP surface: the router, operational endpoints, request ids and HTTP metrics.
//!
//! Owns `router(app)` (so tests need no socket for plain HTTP) and `ops_router(app)` (the
//! operational endpoints alone, for their own listener), the health endpoints of
//! docs/OPERATIONS.md "Probes", `/metrics`, the `X-Request-Id` convention and the one problem+json
//! error shape (RFC 9457) every HTTP error uses, and CORS on the REST API.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use roomcast_shared::ErrorCode;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::metrics as m;
use crate::problem::problem;
use crate::util::random_id;
use crate::{conn, App};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application.
pub(crate) fn router(app: Arc<App>) -> Router {
    let demo = if app.config.demo {
        crate::demo::router()
    } else {
        Router::new()
    };
    Router::new()
        .route("/ws", get(conn::upgrade))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/ping", get(|| async { "pong" }))
        .route("/metrics", get(metrics))
        .nest(
            "/api/v1",
            crate::api::router()
                .layer(middleware::from_fn_with_state(
                    app.clone(),
                    crate::api::limits::enforce,
                ))
                // Outside the limits: a preflight is answered without costing a request.
                .layer(cors(&app.config.allowed_origins)),
        )
        .merge(demo)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// CORS for the REST API, from the allow-list the WebSocket `Origin` check uses: a page
/// that may open the socket may call the API (`POST /sessions/join` from a phone's page),
/// and an empty list allows every origin on both. Credentials travel in the
/// `Authorization` header, never in cookies, so no `Access-Control-Allow-Credentials`.
fn cors(allowed: &[String]) -> CorsLayer {
    let origin = if allowed.is_empty() || allowed.iter().any(|a| a == "*") {
        AllowOrigin::any()
    } else {
        let allowed = allowed.to_vec();
        AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin
                .to_str()
                .is_ok_and(|o| conn::origin_listed(&allowed, o))
        })
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            REQUEST_ID.clone(),
        ])
        .expose_headers([
            REQUEST_ID.clone(),
            header::RETRY_AFTER,
            crate::ratelimit::RATELIMIT_POLICY.clone(),
            crate::ratelimit::RATELIMIT.clone(),
        ])
        .max_age(Duration::from_secs(600))
}

/// The operational endpoints alone, for `ROOMCAST_OPS_LISTEN`: probes and scrapes on a
/// listener that client traffic cannot saturate.
pub(crate) fn ops_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/ping", get(|| async { "pong" }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
}

/// A route that exists, called with another method (axum adds the `Allow` header).
async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::BadRequest,
        "this route does not take that method (see Allow)",
    )
}

/// Request id, span and metrics for every request.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Echo a sane caller id; anything else is replaced, never logged raw.
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| random_id(20));
    let span =
        tracing::info_span!("http", request_id = %request_id, method = %method, route = %route);
    let mut response = next.run(req).instrument(span.clone()).await;
    // The access log line, in the request's span (so it carries the request id).
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "request"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    m::http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    match app.not_ready_reason() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let redis_ok = app.redis_ok();
    let pubsub_ok = app.bus.is_up();
    let draining = app.is_draining();
    let status = health_status(redis_ok, pubsub_ok, draining);
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "node": app.node_id,
        "uptime_s": app.started.elapsed().as_secs(),
        "draining": draining,
        "checks": {
            "redis": {"status": ok(redis_ok), "latency_ms": app.redis_latency_ms()},
            "pubsub": {"status": ok(pubsub_ok)},
            "memory": {"status": "ok", "rss_bytes": rss_bytes()},
            "connections": {"status": "ok", "count": app.hub.client_count()},
            "sessions": {"status": "ok", "local": app.hub.session_count()},
            // Tasks alive in this process (connections, pumps, background work): a
            // number that only grows is a leak; `make soak` watches it.
            "runtime": {"status": "ok", "tasks": tokio::runtime::Handle::current().metrics().num_alive_tasks()},
        },
    });
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// `/health`'s verdict: without Redis nothing works; without pub/sub, or while draining,
/// the node serves but should not get new clients.
fn health_status(redis_ok: bool, pubsub_ok: bool, draining: bool) -> &'static str {
    if !redis_ok {
        "unhealthy"
    } else if !pubsub_ok || draining {
        "degraded"
    } else {
        "healthy"
    }
}

fn ok(up: bool) -> &'static str {
    if up {
        "ok"
    } else {
        "down"
    }
}

/// Resident memory from /proc (Linux); 0 elsewhere. Read from `status` (`VmRSS`, in
/// kB) rather than `statm`, whose unit is the page size: 4 KiB here, 64 KiB on some
/// arm64 and ppc64 kernels.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_bytes(&s))
        .unwrap_or(0)
}

/// The `VmRSS:   1234 kB` line of /proc/self/status, in bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// The REST API through the whole router, in process (`oneshot`).
#[cfg(test)]
mod router_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_in_kilobytes() {
        let status = "Name:\troomcast\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(vm_rss_bytes(status), Some(1234 * 1024));
        assert_eq!(vm_rss_bytes("Name: x\n"), None);
        assert!(
            rss_bytes() > 1 << 20,
            "this process has a resident set of more than a MiB"
        );
    }

    #[test]
    fn health_is_unhealthy_without_redis_and_degraded_without_pubsub_or_draining() {
        for pubsub in [true, false] {
            for draining in [true, false] {
                assert_eq!(health_status(false, pubsub, draining), "unhealthy");
            }
        }
        assert_eq!(health_status(true, true, false), "healthy");
        assert_eq!(health_status(true, false, false), "degraded");
        assert_eq!(health_status(true, true, true), "degraded");
        assert_eq!(health_status(true, false, true), "degraded");
    }
}
