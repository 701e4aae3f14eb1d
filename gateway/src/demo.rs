//! The demo app at `/demo` (with `ROOMCAST_DEMO=true`; `make run` turns it on): a display
//! page that creates a session and renders it, and a phone controller page that joins it
//! by code. Both are static files embedded in the binary (`gateway/demo/`) and use only
//! the public REST API and the TypeScript SDK, whose compiled modules are embedded as
//! `gateway/demo/sdk/` (a copy of `clients/js/dist` that `make sdk-test` keeps in step).
//! Owns the file table, their headers, `/demo/qr.svg`, and (while the demo is on) the root
//! page at `/`, which links the demo, the OpenAPI document and the health routes.

use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use roomcast_shared::ErrorCode;
use serde::Deserialize;

use crate::problem::problem;
use crate::App;

/// (path under `/demo/`, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    ("", HTML, include_str!("../demo/display.html")),
    ("index", HTML, include_str!("../demo/index.html")),
    ("favicon.svg", SVG, include_str!("../demo/favicon.svg")),
    ("remote", HTML, include_str!("../demo/remote.html")),
    ("demo.css", CSS, include_str!("../demo/demo.css")),
    ("display.js", JS, include_str!("../demo/display.js")),
    ("remote.js", JS, include_str!("../demo/remote.js")),
    ("sdk/index.js", JS, include_str!("../demo/sdk/index.js")),
    ("sdk/client.js", JS, include_str!("../demo/sdk/client.js")),
    ("sdk/session.js", JS, include_str!("../demo/sdk/session.js")),
    ("sdk/emitter.js", JS, include_str!("../demo/sdk/emitter.js")),
    ("sdk/errors.js", JS, include_str!("../demo/sdk/errors.js")),
    ("sdk/backoff.js", JS, include_str!("../demo/sdk/backoff.js")),
    ("sdk/codec.js", JS, include_str!("../demo/sdk/codec.js")),
    (
        "sdk/protocol.js",
        JS,
        include_str!("../demo/sdk/protocol.js"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// Same-origin scripts, styles and images only; sockets to any gateway (the display may
/// be given several URLs).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The longest text `/demo/qr.svg` encodes: a controller URL, with room to spare.
const QR_MAX: usize = 512;

pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| file("index".into())))
        .route(
            "/favicon.ico",
            get(|| async { Redirect::permanent("/demo/favicon.svg") }),
        )
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| file(String::new())))
        .route("/demo/qr.svg", get(qr))
        .route("/demo/{*path}", get(|Path(path): Path<String>| file(path)))
}

async fn file(path: String) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return problem(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such demo file",
        );
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A rebuilt binary serves new files: never let a stale module pair with a new page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Deserialize)]
struct QrQuery {
    text: String,
}

/// `GET /demo/qr.svg?text=…`: the QR code of `text` (the controller URL), as SVG.
async fn qr(query: Result<Query<QrQuery>, axum::extract::rejection::QueryRejection>) -> Response {
    let Ok(Query(QrQuery { text })) = query else {
        return problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "`text` is required",
        );
    };
    if text.is_empty() || text.len() > QR_MAX {
        return problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            &format!("`text` is 1 to {QR_MAX} bytes"),
        );
    }
    let Ok(code) = qrcode::QrCode::new(text.as_bytes()) else {
        return problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "`text` does not fit a QR code",
        );
    };
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    let mut response = svg.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}
