//! The OpenAPI 3 document, generated from the handlers' annotations and served at
//! `GET /api/v1/openapi.json`.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi};

use super::{history, limits, listing, messages, presence, sessions, webhooks};

/// Responses every route can give, added to each operation here rather than repeated in
/// every annotation: bad input, credentials, rate limits, Redis down.
const COMMON_PROBLEMS: [(&str, &str); 5] = [
    ("400", "Invalid input"),
    ("401", "Missing or invalid credential"),
    ("403", "The credential does not allow this"),
    (
        "429",
        "Rate limited (Retry-After, RateLimit-Policy, RateLimit headers)",
    ),
    ("503", "Storage unavailable (Retry-After)"),
];

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in COMMON_PROBLEMS {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(problem_response(description)));
                }
            }
        }
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
        Errors are RFC 9457 problem+json with a `code`. WebSocket protocol: docs/PROTOCOL.md in the Roomcast repository."),
    servers((url = "/api/v1")),
    security(("bearer" = [])),
    modifiers(&BearerAuth),
    paths(
        sessions::create, sessions::join, sessions::get, sessions::patch, sessions::end,
        sessions::resolve, sessions::resume, listing::of_user, listing::stats,
        history::list, history::latest, history::search, history::stats, history::clear,
        presence::summary, presence::users, presence::join, presence::activity, presence::leave,
        presence::cleanup,
        messages::publish, messages::direct,
        limits::show, limits::reset,
        webhooks::status, webhooks::list, webhooks::replay, webhooks::replay_all,
    ),
    components(schemas(crate::problem::Problem, roomcast_shared::ErrorCode,
        crate::webhooks::event::EventBody, roomcast_shared::HistoryMessage)),
    tags((name = "sessions"), (name = "history"), (name = "presence"), (name = "messages"), (name = "admin"))
)]
pub(crate) struct ApiDoc;

/// The served document, built once. Kept as JSON because utoipa 5.5 serialises a link's
/// fields in snake_case (`operation_id`), which no OpenAPI tool reads: the links are added
/// to the JSON instead.
static DOCUMENT: LazyLock<serde_json::Value> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    add_presence_links(&mut doc);
    add_webhooks(&mut doc);
    doc
});

/// Links from a REST presence join to the routes its `client_id` is for, so a client (or
/// schemathesis' stateful phase) can follow them instead of guessing a member. The body's
/// `client_id` is a runtime expression inside a literal body; tools that do not evaluate
/// such expressions read it as a plain example.
fn add_presence_links(doc: &mut serde_json::Value) {
    let joined = doc
        .pointer_mut("/paths/~1sessions~1{id}~1presence~1join/post/responses/200")
        .and_then(serde_json::Value::as_object_mut);
    let Some(joined) = joined else {
        return;
    };
    let link = |operation: &str, description: &str| {
        serde_json::json!({
            "operationId": operation,
            "parameters": { "id": "$request.path.id" },
            "requestBody": { "client_id": "$response.body#/client_id" },
            "description": description,
        })
    };
    joined.insert(
        "links".to_string(),
        serde_json::json!({
            "activity": link("markPresenceActive", "Refresh the member just joined"),
            "leave": link("leavePresence", "Remove the member just joined"),
        }),
    );
}

/// The `webhooks` section (OpenAPI 3.1): what Roomcast POSTs to the application, one
/// entry per event type and one for the join hook, with the signature headers.
fn add_webhooks(doc: &mut serde_json::Value) {
    use serde_json::json;
    let headers = json!([
        {"name": "webhook-id", "in": "header", "required": true, "schema": {"type": "string"},
         "description": "The event's id: the same on every retry; dedupe by it."},
        {"name": "webhook-timestamp", "in": "header", "required": true, "schema": {"type": "integer"},
         "description": "Seconds since the epoch when this attempt was signed."},
        {"name": "webhook-signature", "in": "header", "required": true, "schema": {"type": "string"},
         "description": "Space-separated `v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per secret (Standard Webhooks)."},
    ]);
    let session_data = json!({"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["active", "inactive", "resolved", "ended"]},
        "reason": {"type": "string", "description": "api, activity, inactivity, max_lifetime"},
        "by": {"type": "string", "enum": ["api", "join", "publish"], "description": "session.created: what created it"},
        "expires_at": {"type": "integer", "description": "session.created: end of its lifetime (ms)"},
        "owner": {"type": "string"},
        "message": {"type": "string", "description": "session.ended by the API: the reason given"}}});
    let member_data = json!({"type": "object", "required": ["client_id", "user", "role", "node", "joined_at"], "properties": {
        "client_id": {"type": "string"}, "user": {"type": "string"},
        "role": {"type": "string", "enum": ["controller", "display", "observer"]},
        "name": {"type": ["string", "null"]}, "node": {"type": "string"}, "joined_at": {"type": "integer"},
        "info": {"type": "object", "description": "What the join hook attached"},
        "reason": {"type": "string", "enum": ["left", "expired"], "description": "member.left: left, or expired (its instance stopped refreshing it)"}}});
    let mut hooks = serde_json::Map::new();
    for kind in crate::config::webhooks::EVENT_TYPES {
        let data = match kind.split('.').next() {
            Some("session") => session_data.clone(),
            Some("member") => member_data.clone(),
            _ => json!({"$ref": "#/components/schemas/HistoryMessage"}),
        };
        hooks.insert(kind.to_string(), json!({"post": {
            "summary": format!("`{kind}`"),
            "operationId": format!("webhook.{kind}"),
            "parameters": headers,
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "allOf": [{"$ref": "#/components/schemas/EventBody"}],
                "properties": {"type": {"const": kind}, "data": data}}}}},
            "responses": {"2XX": {"description": "Acknowledged; anything else (or no answer in time) is retried, then dead-lettered."}}
        }}));
    }
    hooks.insert("join-hook".into(), json!({"post": {
        "summary": "The join hook: may this member join?",
        "operationId": "webhook.join-hook",
        "parameters": headers,
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "object", "required": ["user", "client_id", "session", "role"], "properties": {
                "user": {"type": "string"}, "client_id": {"type": "string"}, "session": {"type": "string"},
                "role": {"type": "string", "enum": ["controller", "display", "observer"]},
                "name": {"type": ["string", "null"]}}}}}},
        "responses": {"200": {"description": "The verdict", "content": {"application/json": {"schema": {
            "type": "object", "required": ["allow"], "properties": {
                "allow": {"type": "boolean"},
                "reason": {"type": "string", "description": "Shown to the client in a `forbidden` error when allow is false"},
                "member": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "info": {"type": "object", "description": "At most 4096 bytes of JSON; presence shows it"}}}}}}}}}
    }}));
    if let Some(root) = doc.as_object_mut() {
        root.insert("webhooks".into(), serde_json::Value::Object(hooks));
    }
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// `GET /api/v1/openapi.json`
pub(crate) async fn serve() -> Response {
    Json(&*DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_route() {
        let doc = &*DOCUMENT;
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
        for p in [
            "/admin/webhooks",
            "/admin/webhooks/dead-letters",
            "/admin/webhooks/dead-letters/{id}/replay",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        let hooks = doc["webhooks"].as_object().expect("a webhooks section");
        for kind in crate::config::webhooks::EVENT_TYPES {
            assert!(
                hooks[kind]["post"]["requestBody"].is_object(),
                "{kind} missing"
            );
        }
        assert!(hooks.contains_key("join-hook"));
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        // The served list of error codes is the one the code answers with.
        let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("the ErrorCode schema lists its values")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let all: Vec<&str> = roomcast_shared::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(codes, all);
        assert_eq!(
            doc["components"]["schemas"]["Problem"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
        // Every operation documents the common problems.
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                for status in ["400", "401", "403", "429", "503"] {
                    assert!(
                        op["responses"][status]["content"]["application/problem+json"].is_object(),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
        assert_eq!(
            doc["components"]["schemas"]["PatchSession"]["minProperties"],
            1
        );
        assert!(doc["components"]["schemas"]["PatchSession"]["maxProperties"].is_null());
    }

    /// Code generators and link resolution need each operation named once.
    #[test]
    fn operation_ids_are_unique_and_links_resolve() {
        let doc = &*DOCUMENT;
        let mut ids = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            }
        }
        let links =
            &doc["paths"]["/sessions/{id}/presence/join"]["post"]["responses"]["200"]["links"];
        for name in ["activity", "leave"] {
            let target = links[name]["operationId"].as_str().unwrap();
            assert!(ids.contains(target), "link {name} names no operation");
            assert_eq!(links[name]["parameters"]["id"], "$request.path.id");
            assert_eq!(
                links[name]["requestBody"]["client_id"],
                "$response.body#/client_id"
            );
        }
    }
}
