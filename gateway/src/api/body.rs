//! Request bodies and query strings, read lazily: a handler checks its credentials (its
//! extractors) first and reads the body after, within `ROOMCAST_BODY_TIMEOUT` and
//! [`MAX_BODY`], so a request without credentials is answered at once and never
//! buffered. Their failures are problems (400, 413, 415, 408).

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{header, StatusCode};
use roomcast_shared::ErrorCode;

use super::{ApiError, MAX_BODY};
use crate::App;

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

/// Property tests of REST body parsing: any JSON gives a body or a `bad_request`, never a
/// panic, and only objects (or `null`, "no body") are accepted.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::api::{messages, presence, sessions};
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
