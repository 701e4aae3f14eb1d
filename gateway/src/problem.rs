//! The one error shape of every HTTP answer: RFC 9457 `application/problem+json` with an
//! error `code` (docs/PROTOCOL.md). The REST API, the WebSocket admission and the rate
//! limits all render through it, so no module builds a problem body by hand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use roomcast_shared::ErrorCode;
use serde_json::json;

/// An RFC 9457 problem response with our `code`.
pub(crate) fn problem(status: StatusCode, code: ErrorCode, detail: &str) -> Response {
    let body = json!({
        "type": format!("https://roomcast.dev/problems/{}", code.as_str()),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code.as_str(),
    });
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
