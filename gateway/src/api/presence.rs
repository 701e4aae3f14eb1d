//! Presence routes: summary, member list, join/leave/activity for clients without a
//! socket, and the admin sweep.
//!
//! REST members live in the same ZSET/HASH as WebSocket members and are announced the same
//! way; their entries expire after `ROOMCAST_REST_PRESENCE_TTL` unless refreshed, and a
//! session holds at most `ROOMCAST_REST_PRESENCE_MAX` of them. The member list is paged.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use roomcast_shared::{Member, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::view::{acts_for, load, load_open};
use super::{
    parse_role, Admin, ApiError, ApiJson, ApiQuery, Credential, MaybeJson, SessionPath,
    SessionRead, SessionWrite,
};
use crate::envelope::{kind, MemberInfo};
use crate::ids::{valid_id, ID_CHARSET};
use crate::util::{now_ms, random_id};
use crate::webhooks::hook::{JoinHook, JoinQuestion};
use crate::App;

async fn members(app: &App, id: &str) -> Result<Vec<Member>, ApiError> {
    load(app, id).await?;
    let now = now_ms();
    let idle_after = app.config.idle_after.as_millis() as u64;
    Ok(app
        .store
        .presence_members(id, now)
        .await?
        .iter()
        .filter_map(|b| MemberInfo::decode(b).ok())
        .map(|i| i.to_member(now, idle_after))
        .collect())
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct ByRole {
    pub controller: u64,
    pub display: u64,
    pub observer: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Summary {
    pub total: u64,
    pub by_role: ByRole,
    /// Members without activity for `ROOMCAST_IDLE_AFTER`.
    pub idle: u64,
}

/// `GET /sessions/{id}/presence`
#[utoipa::path(get, path = "/sessions/{id}/presence", operation_id = "getPresence", tag = "presence", params(super::SessionPath),
    responses((status = 200, body = Summary),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn summary(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
) -> Result<Json<Summary>, ApiError> {
    let all = members(&app, &id).await?;
    let mut by_role = ByRole::default();
    for m in &all {
        match m.role {
            Role::Controller => by_role.controller += 1,
            Role::Display => by_role.display += 1,
            Role::Observer => by_role.observer += 1,
        }
    }
    Ok(Json(Summary {
        total: all.len() as u64,
        idle: all.iter().filter(|m| m.idle).count() as u64,
        by_role,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MemberList {
    /// Ordered by `client_id`.
    pub members: Vec<Member>,
    /// The `after` of the next page; `null` on the last one.
    pub next_after: Option<String>,
}

/// Most members one page lists.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MemberPage {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only members whose `client_id` sorts after this (the previous page's `next_after`).
    pub after: Option<String>,
}

/// `GET /sessions/{id}/presence/users`: the members present, a page at a time in
/// `client_id` order (a member that joins or leaves meanwhile may or may not be listed).
#[utoipa::path(get, path = "/sessions/{id}/presence/users", operation_id = "listPresenceUsers", tag = "presence", params(super::SessionPath, MemberPage),
    responses((status = 200, body = MemberList),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn users(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
    params: ApiQuery<MemberPage>,
) -> Result<Json<MemberList>, ApiError> {
    let params = params.value()?;
    let limit = match params.limit {
        None => 100,
        Some(n @ 1..) if n as usize <= MAX_PAGE => n as usize,
        Some(_) => return Err(ApiError::bad_request(format!("`limit` is 1 to {MAX_PAGE}"))),
    };
    load(&app, &id).await?;
    let now = now_ms();
    let mut ids = app.store.presence_ids(&id, now).await?;
    ids.sort_unstable();
    if let Some(after) = &params.after {
        ids.retain(|c| c > after);
    }
    let more = ids.len() > limit;
    ids.truncate(limit);
    let next_after = if more { ids.last().cloned() } else { None };
    let idle_after = app.config.idle_after.as_millis() as u64;
    let mut members: Vec<Member> = app
        .store
        .presence_infos(&id, ids)
        .await?
        .iter()
        .filter_map(|b| MemberInfo::decode(b).ok())
        .map(|i| i.to_member(now, idle_after))
        .collect();
    members.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(Json(MemberList {
        members,
        next_after,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceJoin {
    /// Reuse an id this API gave out (to re-join); a new one is made when absent.
    #[serde(default)]
    #[schema(pattern = "^rest-[A-Za-z0-9_.:-]{1,123}$")]
    pub client_id: Option<String>,
    /// With the server key: the member's user (default: its `client_id`). With a token:
    /// the token's own user (another one is refused).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:@+|-]{1,128}$")]
    pub user: Option<String>,
    #[serde(default)]
    #[schema(pattern = "^(controller|display|observer)$")]
    pub role: Option<String>,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F\\u061C\\u200E\\u200F\\u2028-\\u202E\\u2066-\\u2069]{1,64}$"
    )]
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PresenceEntry {
    pub client_id: String,
    /// When the entry expires unless `activity` refreshes it (ms).
    pub expires_at: u64,
}

/// `POST /sessions/{id}/presence/join`
#[utoipa::path(post, path = "/sessions/{id}/presence/join", operation_id = "joinPresence", tag = "presence", params(super::SessionPath),
    request_body(content = Option<PresenceJoin>),
    responses((status = 200, body = PresenceEntry),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn join(
    State(app): State<Arc<App>>,
    SessionWrite { id, credential }: SessionWrite,
    body: MaybeJson<PresenceJoin>,
) -> Result<Json<PresenceEntry>, ApiError> {
    let body = body.value().await?.unwrap_or_default();
    load_open(&app, &id).await?;
    // REST members have `rest-` ids, so a caller can never take over a WebSocket
    // member's entry by naming its client id.
    let client_id = match body.client_id.clone() {
        Some(c) if valid_id(&c) && c.starts_with("rest-") => c,
        Some(_) => {
            return Err(ApiError::bad_request(
                "`client_id` must be an id this API gave out (rest-…), up to 128 characters",
            ))
        }
        None => format!("rest-{}", random_id(12)),
    };
    let (user, default_role, token_name) = match &credential {
        Credential::Token(identity) => (
            identity.user.to_string(),
            identity.default_role().unwrap_or(Role::Observer),
            identity.name.clone(),
        ),
        // The server key may name the member's user; without one the member is its own
        // user (its client id), as the OpenAPI document says.
        _ => (
            body.user.clone().unwrap_or_else(|| client_id.clone()),
            Role::Controller,
            None,
        ),
    };
    let user = super::checked_user(&user)?;
    if body.user.as_ref().is_some_and(|u| u != &user) {
        return Err(ApiError::forbidden("a token joins as its own user"));
    }
    let role = parse_role(body.role.as_deref(), default_role)?;
    if let Credential::Token(identity) = &credential {
        if !identity.roles.contains(&role) {
            return Err(ApiError::forbidden(format!(
                "the token does not allow the role {}",
                role.as_str()
            )));
        }
    }
    let name = body.name.or(token_name);
    super::checked_name(name.as_deref())?;
    // Re-joining an id is for its own user only.
    if let Some(existing) = app.store.presence_info(&id, &client_id).await? {
        if MemberInfo::decode(&existing).is_ok_and(|i| i.user != user) {
            return Err(ApiError::forbidden("that member belongs to another user"));
        }
    }
    // The join hook asks the application about token holders; the server key is the
    // application's own backend and is not asked about itself.
    let hook = match &credential {
        Credential::Token(_) => app.join_hook.as_ref(),
        _ => None,
    };
    let question = JoinQuestion {
        user: user.as_str(),
        client_id: &client_id,
        session: &id,
        role,
        name: name.as_deref(),
    };
    let (name, extra) = JoinHook::decide(hook, &question, name.clone())
        .await
        .map_err(ApiError::forbidden)?;
    let now = now_ms();
    let info = MemberInfo {
        client_id: client_id.clone(),
        user: user.into(),
        role,
        name,
        node: "rest".into(),
        joined_at: now,
        active_at: now,
        info: extra,
    };
    let expires_at = now + app.config.rest_presence_ttl.as_millis() as u64;
    rest_presence_set(&app, &id, &client_id, expires_at, &info, kind::JOIN, now).await?;
    Ok(Json(PresenceEntry {
        client_id,
        expires_at,
    }))
}

/// Writes a REST member, within `ROOMCAST_REST_PRESENCE_MAX` per session.
async fn rest_presence_set(
    app: &App,
    id: &str,
    client_id: &str,
    expires_at: u64,
    info: &MemberInfo,
    kind: u8,
    now: u64,
) -> Result<(), ApiError> {
    let max = app.config.rest_presence_max;
    match app
        .store
        .rest_presence_set(id, client_id, expires_at, &info.encode(), kind, now, max)
        .await?
    {
        Ok(()) => Ok(()),
        Err(frees_at) => Err(ApiError::too_many(
            format!("the session holds its {max} REST presence members (ROOMCAST_REST_PRESENCE_MAX); one frees when it leaves or expires"),
            frees_at.saturating_sub(now).div_ceil(1000),
        )),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceClient {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub client_id: String,
}

/// Looks up a REST member the caller may act for.
async fn own_member(
    app: &App,
    id: &str,
    credential: &Credential,
    client_id: &str,
) -> Result<MemberInfo, ApiError> {
    if !valid_id(client_id) {
        return Err(ApiError::bad_request(format!(
            "`client_id` must be {ID_CHARSET}"
        )));
    }
    let info = app
        .store
        .presence_info(id, client_id)
        .await?
        .and_then(|b| MemberInfo::decode(&b).ok())
        .ok_or_else(|| ApiError::not_found("no such member"))?;
    if !acts_for(credential, &info.user) {
        return Err(ApiError::forbidden("that member belongs to another user"));
    }
    Ok(info)
}

/// `POST /sessions/{id}/presence/activity`: refreshes the entry and marks it active.
#[utoipa::path(post, path = "/sessions/{id}/presence/activity", operation_id = "markPresenceActive", tag = "presence", params(super::SessionPath),
    request_body = PresenceClient,
    responses((status = 200, body = PresenceEntry),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn activity(
    State(app): State<Arc<App>>,
    SessionWrite { id, credential }: SessionWrite,
    body: ApiJson<PresenceClient>,
) -> Result<Json<PresenceEntry>, ApiError> {
    let body = body.value().await?;
    load_open(&app, &id).await?;
    let mut info = own_member(&app, &id, &credential, &body.client_id).await?;
    let now = now_ms();
    let was_idle = now.saturating_sub(info.active_at) > app.config.idle_after.as_millis() as u64;
    info.active_at = now;
    let expires_at = now + app.config.rest_presence_ttl.as_millis() as u64;
    let announce = if was_idle { kind::UPDATE } else { 0 };
    rest_presence_set(&app, &id, &body.client_id, expires_at, &info, announce, now).await?;
    Ok(Json(PresenceEntry {
        client_id: body.client_id,
        expires_at,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Left {
    pub left: bool,
}

/// `POST /sessions/{id}/presence/leave`
#[utoipa::path(post, path = "/sessions/{id}/presence/leave", operation_id = "leavePresence", tag = "presence", params(super::SessionPath),
    request_body = PresenceClient,
    responses((status = 200, body = Left),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 413, body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 415, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn leave(
    State(app): State<Arc<App>>,
    SessionWrite { id, credential }: SessionWrite,
    body: ApiJson<PresenceClient>,
) -> Result<Json<Left>, ApiError> {
    let body = body.value().await?;
    load_open(&app, &id).await?;
    own_member(&app, &id, &credential, &body.client_id).await?;
    let left = app.store.leave(&id, &body.client_id).await?;
    Ok(Json(Left { left }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cleanup {
    /// Expired entries removed (and announced as leaves).
    pub removed: u64,
}

/// `POST /sessions/{id}/presence/cleanup` (admin): sweeps expired entries now.
#[utoipa::path(post, path = "/sessions/{id}/presence/cleanup", operation_id = "cleanupPresence", tag = "presence", params(super::SessionPath),
    responses((status = 200, body = Cleanup),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn cleanup(
    State(app): State<Arc<App>>,
    SessionPath(id): SessionPath,
    _: Admin,
) -> Result<Json<Cleanup>, ApiError> {
    load(&app, &id).await?;
    let now = now_ms();
    let (_, removed) = app
        .store
        .refresh_presence(&id, now, now, std::iter::empty())
        .await?;
    Ok(Json(Cleanup { removed }))
}
