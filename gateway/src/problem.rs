//! The one error shape of every HTTP answer: RFC 9457 `application/problem+json` with an
//! error `code` (docs/PROTOCOL.md). The REST API, the WebSocket admission and the rate
//! limits all render through it, so no module builds a problem body by hand, and the
//! struct the responses serialize is the schema the OpenAPI document serves.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use roomcast_shared::ErrorCode;
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 9457 problem details, as every error response carries them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The closed list of error codes, the same as WebSocket `error` frames carry.
    pub code: ErrorCode,
}

/// An RFC 9457 problem response with our `code`.
pub(crate) fn problem(status: StatusCode, code: ErrorCode, detail: &str) -> Response {
    let body = Problem {
        kind: format!("https://roomcast.dev/problems/{}", code.as_str()),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
        code,
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
