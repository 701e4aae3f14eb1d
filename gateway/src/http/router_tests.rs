//! The REST API in process: the whole router ([`super::router`], with the limits middleware
//! and CORS) driven with `oneshot` over an [`App`] built and connected against a private
//! redis-server. No gateway process, no socket: the order in which a route checks what
//! it is given (the path's id, then the credential, then the body) is checked here
//! directly, beside the process tests of `tests/it/rest.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use roomcast_shared::{ErrorCode, Role};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::{Config, TokenArgs};
use crate::test_redis::Redis;
use crate::App;

const KEY: &str = "in-process-server-key-0123456789";
const ADMIN: &str = "in-process-admin-token-0123456789";

/// A connected instance on `redis`, ready, and its router.
async fn gateway(redis: &Redis) -> (Arc<App>, Router) {
    let config = Config::from_pairs(&[
        ("redis-url", &redis.url()),
        ("jwt-secret", "in-process-jwt-secret-0123456789"),
        ("api-key", KEY),
        ("admin-token", ADMIN),
        // One peer sends every request here; the limits have tests of their own.
        ("rate-burst", "0"),
    ])
    .unwrap();
    let app = App::build(config).unwrap();
    app.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.not_ready_reason().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let router = super::router(app.clone());
    (app, router)
}

fn token(app: &App, roles: &[Role], sessions: &[&str]) -> String {
    app.auth
        .mint(&TokenArgs {
            sub: "in-process".into(),
            roles: roles.to_vec(),
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            name: None,
            ttl: Duration::from_secs(600),
        })
        .unwrap()
}

/// One request through the router, as the accept loop hands it over (with the peer).
async fn call(
    router: &Router,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Body,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let mut req = req
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let answer = tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(req))
        .await
        .expect("answered")
        .unwrap();
    let status = answer.status();
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn json_body(v: Value) -> Body {
    Body::from(v.to_string())
}

/// The `code` of a problem answer, as the shared enum reads it.
fn code(problem: &Value) -> ErrorCode {
    serde_json::from_value(problem["code"].clone()).expect("a known code")
}

#[tokio::test]
async fn a_route_checks_the_id_then_the_credential_then_the_body() {
    let redis = Redis::start();
    let (app, router) = gateway(&redis).await;
    let get = |path: &'static str, bearer: Option<String>| {
        let router = router.clone();
        async move { call(&router, Method::GET, path, bearer.as_deref(), Body::empty()).await }
    };

    // An id that is none: 400, before any credential is looked at.
    let (status, problem) = get("/api/v1/sessions/not%20an%20id", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&problem), ErrorCode::BadRequest);
    // A good id without a credential: 401; with a token that does not list it: 403.
    let (status, problem) = get("/api/v1/sessions/room-1", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&problem), ErrorCode::Unauthorized);
    let other = token(&app, &[Role::Display], &["room-2"]);
    let (status, problem) = get("/api/v1/sessions/room-1", Some(other)).await;
    assert_eq!(
        (status, code(&problem)),
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );

    // A body that never arrives is not waited for when the credential is missing or
    // read-only: the answer comes at once, and nothing is written.
    for bearer in [None, Some(token(&app, &[Role::Observer], &["room-1"]))] {
        let never = Body::from_stream(futures_util::stream::pending::<
            Result<axum::body::Bytes, std::io::Error>,
        >());
        let (status, _) = call(
            &router,
            Method::PATCH,
            "/api/v1/sessions/room-1",
            bearer.as_deref(),
            never,
        )
        .await;
        let want = if bearer.is_some() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, want);
    }
    assert!(redis
        .cmd(&["KEYS", "rc:{s:room-1}*"])
        .unwrap()
        .starts_with("*0"));

    // The server key creates, publishes and reads; the admin routes stay the admin's.
    let (status, created) = call(
        &router,
        Method::POST,
        "/api/v1/sessions",
        Some(KEY),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = |tail: &str| format!("/api/v1/sessions/{id}{tail}");
    let (status, published) = call(
        &router,
        Method::POST,
        &path("/messages"),
        Some(KEY),
        json_body(json!({"data": {"slide": 2}})),
    )
    .await;
    assert_eq!(
        (status, published["seq"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    let (status, page) = call(
        &router,
        Method::GET,
        &path("/history"),
        Some(KEY),
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"][0]["data"], json!({"slide": 2}));
    let reader = token(&app, &[Role::Display], &[&id]);
    let (status, view) = call(
        &router,
        Method::GET,
        &path(""),
        Some(&reader),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (status, view["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let cleanup = path("/presence/cleanup");
    let (status, problem) = call(&router, Method::POST, &cleanup, Some(KEY), Body::empty()).await;
    assert_eq!(
        (status, code(&problem)),
        (StatusCode::FORBIDDEN, ErrorCode::Forbidden)
    );
    let (status, _) = call(&router, Method::POST, &cleanup, Some(ADMIN), Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    app.shutdown.cancel();
}
