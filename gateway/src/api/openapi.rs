//! The OpenAPI 3 document, generated from the handlers' annotations and served at
//! `GET /api/v1/openapi.json`.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{history, limits, messages, presence, sessions};

/// RFC 9457 problem details, as every error response carries them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// One of: bad_request, unknown_type, too_large, not_joined, forbidden, not_found,
    /// session_ended, rate_limited, unavailable, internal.
    pub code: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        // PATCH needs at least one field. Set here because utoipa-gen 5.5 emits
        // `#[schema(min_properties)]` as `maxProperties`.
        if let Some(RefOr::T(Schema::Object(patch))) = components.schemas.get_mut("PatchSession") {
            patch.min_properties = Some(1);
            patch.max_properties = None;
        }
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server API key, the admin token, or a session JWT, depending on the route",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Roomcast REST API", version = "1", description = "Sessions, history, presence and server publishing. \
        Errors are RFC 9457 problem+json with a `code`. WebSocket protocol: see SPEC.md."),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    paths(
        sessions::create, sessions::join, sessions::get, sessions::patch, sessions::end,
        sessions::resolve, sessions::resume, sessions::of_user, sessions::stats,
        history::list, history::latest, history::search, history::stats, history::clear,
        presence::summary, presence::users, presence::join, presence::activity, presence::leave,
        presence::cleanup,
        messages::publish, messages::direct,
        limits::show, limits::reset,
    ),
    components(schemas(Problem)),
    tags((name = "sessions"), (name = "history"), (name = "presence"), (name = "messages"), (name = "admin"))
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// `GET /api/v1/openapi.json`
pub async fn serve() -> Response {
    Json(&*DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_route() {
        let doc = serde_json::to_value(&*DOCUMENT).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/sessions",
            "/sessions/join",
            "/sessions/{id}",
            "/sessions/{id}/resolve",
            "/sessions/{id}/resume",
            "/sessions/{id}/history",
            "/sessions/{id}/history/latest",
            "/sessions/{id}/history/search",
            "/sessions/{id}/history/stats",
            "/sessions/{id}/presence",
            "/sessions/{id}/presence/users",
            "/sessions/{id}/presence/join",
            "/sessions/{id}/presence/leave",
            "/sessions/{id}/presence/activity",
            "/sessions/{id}/presence/cleanup",
            "/sessions/{id}/messages",
            "/users/{user}/messages",
            "/users/{user}/sessions",
            "/sessions/stats",
        ] {
            assert!(
                paths.contains_key(p),
                "{p} missing from the OpenAPI document"
            );
        }
        assert!(doc["components"]["schemas"]["Problem"].is_object());
        assert_eq!(
            doc["components"]["schemas"]["PatchSession"]["minProperties"],
            1
        );
        assert!(doc["components"]["schemas"]["PatchSession"]["maxProperties"].is_null());
    }
}
