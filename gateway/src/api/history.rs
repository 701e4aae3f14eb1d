//! History routes: cursor pages newest first, latest, search, stats, clear.
//!
//! They read the same capped list WebSocket recovery reads (`rc:{s:ID}:hist`), so REST and
//! `join` with `since` always agree. The list is small (the cap), so filtering happens here.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use roomcast_shared::HistoryMessage;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::view::{load, load_open};
use super::{ApiError, ApiQuery, SessionRead, SessionWrite};
use crate::envelope::{decode_entry, Entry};
use crate::App;

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// Stored messages, newest first.
async fn entries(app: &App, id: &str) -> Result<Vec<Entry>, ApiError> {
    load(app, id).await?;
    Ok(app
        .store
        .history_all(id)
        .await?
        .iter()
        .filter_map(|b| decode_entry(b).ok())
        .collect())
}

fn limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        l @ 1..=MAX_LIMIT => Ok(l as usize),
        _ => Err(ApiError::bad_request(format!(
            "`limit` is 1 to {MAX_LIMIT}"
        ))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Only messages with a seq below this (the previous page's `next_before`).
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page {
    /// Newest first.
    pub messages: Vec<HistoryMessage>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<u64>,
}

/// `GET /sessions/{id}/history`
#[utoipa::path(get, path = "/sessions/{id}/history", operation_id = "listHistory", tag = "history", params(super::SessionPath, PageParams),
    responses((status = 200, body = Page),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
    params: ApiQuery<PageParams>,
) -> Result<Json<Page>, ApiError> {
    let params = params.value()?;
    let limit = limit(params.limit)?;
    let before = match params.before {
        Some(b) if b < 1 => return Err(ApiError::bad_request("`before` is a seq, at least 1")),
        b => b.map(|b| b as u64),
    };
    let mut older: Vec<Entry> = entries(&app, &id)
        .await?
        .into_iter()
        .filter(|e| before.is_none_or(|b| e.seq < b))
        .collect();
    let more = older.len() > limit;
    older.truncate(limit);
    let next_before = if more {
        older.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(Json(Page {
        messages: older.into_iter().map(Entry::into_history).collect(),
        next_before,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LatestParams {
    /// How many, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Messages {
    /// Newest first.
    pub messages: Vec<HistoryMessage>,
}

/// `GET /sessions/{id}/history/latest`
#[utoipa::path(get, path = "/sessions/{id}/history/latest", operation_id = "getLatestMessage", tag = "history", params(super::SessionPath, LatestParams),
    responses((status = 200, body = Messages),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn latest(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
    params: ApiQuery<LatestParams>,
) -> Result<Json<Messages>, ApiError> {
    let params = params.value()?;
    let limit = limit(params.limit)?;
    let messages = entries(&app, &id)
        .await?
        .into_iter()
        .take(limit)
        .map(Entry::into_history)
        .collect();
    Ok(Json(Messages { messages }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchParams {
    /// Case-insensitive substring, 1 to 200 characters.
    #[param(min_length = 1, max_length = 200)]
    pub q: String,
    /// At most this many, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// The searchable text of a message: the string itself, or its JSON.
fn text_of(data: &serde_json::Value) -> String {
    match data {
        serde_json::Value::String(s) => s.to_lowercase(),
        other => other.to_string().to_lowercase(),
    }
}

/// `GET /sessions/{id}/history/search`
#[utoipa::path(get, path = "/sessions/{id}/history/search", operation_id = "searchHistory", tag = "history", params(super::SessionPath, SearchParams),
    responses((status = 200, body = Messages),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn search(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
    params: ApiQuery<SearchParams>,
) -> Result<Json<Messages>, ApiError> {
    let params = params.value()?;
    let limit = limit(params.limit)?;
    let count = params.q.chars().count();
    if count == 0 || count > 200 {
        return Err(ApiError::bad_request("`q` is 1 to 200 characters"));
    }
    let needle = params.q.to_lowercase();
    let messages = entries(&app, &id)
        .await?
        .into_iter()
        .filter(|e| text_of(&e.data).contains(&needle))
        .take(limit)
        .map(Entry::into_history)
        .collect();
    Ok(Json(Messages { messages }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryStats {
    pub count: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    /// `last_ts - first_ts`.
    pub duration_ms: Option<u64>,
}

/// `GET /sessions/{id}/history/stats`
#[utoipa::path(get, path = "/sessions/{id}/history/stats", operation_id = "getHistoryStats", tag = "history", params(super::SessionPath),
    responses((status = 200, body = HistoryStats),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn stats(
    State(app): State<Arc<App>>,
    SessionRead { id }: SessionRead,
) -> Result<Json<HistoryStats>, ApiError> {
    let all = entries(&app, &id).await?;
    let (newest, oldest) = (all.first(), all.last());
    Ok(Json(HistoryStats {
        count: all.len() as u64,
        first_seq: oldest.map(|e| e.seq),
        last_seq: newest.map(|e| e.seq),
        first_ts: oldest.map(|e| e.ts),
        last_ts: newest.map(|e| e.ts),
        duration_ms: oldest.zip(newest).map(|(o, n)| n.ts.saturating_sub(o.ts)),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cleared {
    pub cleared: bool,
}

/// `DELETE /sessions/{id}/history`: forgets stored messages; seq numbering continues.
#[utoipa::path(delete, path = "/sessions/{id}/history", operation_id = "clearHistory", tag = "history", params(super::SessionPath),
    responses((status = 200, body = Cleared),
        (status = 404, body = crate::problem::Problem, content_type = "application/problem+json"), (status = 409, body = crate::problem::Problem, content_type = "application/problem+json")))]
pub(crate) async fn clear(
    State(app): State<Arc<App>>,
    SessionWrite { id, .. }: SessionWrite,
) -> Result<Json<Cleared>, ApiError> {
    load_open(&app, &id).await?;
    let removed = app.store.history_clear(&id).await?;
    Ok(Json(Cleared {
        cleared: removed > 0,
    }))
}
