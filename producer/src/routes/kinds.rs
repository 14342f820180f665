//! The job kinds over HTTP: `GET /kinds` (each kind and whether it is paused), and
//! `POST /kinds/{name}/pause`, `/resume`. Guarded by the API keys like the job endpoints.
//! A pause is a database row shared by every replica
//! ([`surge_common::storage::pauses`]); the workers learn it within about a second and
//! hand the kind's jobs back to the broker, no attempt used, until it ends.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use surge_common::clock::now_micros;
use surge_common::job::InvalidJob;
use surge_common::storage::pauses::{KindPause, PauseSource};

use super::jobs::authenticate;
use crate::error::ApiError;
use crate::state::AppState;

/// Longest pause an operator may set with `for_s` (30 days); without `for_s` a pause lasts
/// until resumed.
pub const MAX_PAUSE_SECS: u64 = 30 * 24 * 3600;
/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// `GET /kinds`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindList {
    /// Every kind this ingress knows, by name.
    pub kinds: Vec<KindView>,
}

/// One kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KindView {
    /// Its name.
    pub name: String,
    /// `http` (declared in the config file), `builtin` (the examples) or `code`
    /// (registered in Rust).
    #[serde(rename = "type")]
    pub kind_type: String,
    /// One line about it.
    pub description: String,
    /// Its pause, for every replica; `null` while it runs.
    pub paused: Option<PauseView>,
}

/// A kind's pause.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PauseView {
    /// When it ends (RFC 3339, UTC); `null`: when resumed.
    pub until: Option<String>,
    /// Why.
    pub reason: String,
    /// `target` (it answered 429/503 with `Retry-After`) or `operator` (this API).
    pub source: String,
    /// When it was set (RFC 3339, UTC).
    pub set_at: String,
}

/// The optional body of `POST /kinds/{name}/pause`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// How long (seconds, 1 to 2592000); absent: until resumed.
    #[schema(minimum = 1, maximum = 2592000)]
    pub for_s: Option<u64>,
    /// Why, shown with the pause (at most 200 characters).
    #[schema(max_length = 200)]
    pub reason: Option<String>,
}

fn rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn pause_view(pause: &KindPause) -> PauseView {
    PauseView {
        until: pause.until_us.map(rfc3339),
        reason: pause.reason.clone(),
        source: pause.source.as_str().to_owned(),
        set_at: rfc3339(pause.set_at_us),
    }
}

/// The kind `name`, or a 404 naming it and the known ones.
fn find(state: &AppState, name: &str) -> Result<String, ApiError> {
    if state.kinds.get(name).is_some() {
        return Ok(name.to_owned());
    }
    let names: Vec<&str> = state.kinds.names().collect();
    Err(ApiError::UnknownKind {
        name: name.chars().take(100).collect(),
        known: if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        },
    })
}

async fn view_of(state: &AppState, name: &str) -> Result<KindView, ApiError> {
    let pauses = state.storage.kind_pauses(now_micros()).await?;
    let pause = pauses.iter().find(|p| p.kind == name);
    Ok(view(state, name, pause))
}

fn view(state: &AppState, name: &str, pause: Option<&KindPause>) -> KindView {
    let kind = state.kinds.get(name);
    KindView {
        name: name.to_owned(),
        kind_type: kind.map_or("code", |k| k.kind_type()).to_owned(),
        description: kind.map(|k| k.description()).unwrap_or_default(),
        paused: pause.map(pause_view),
    }
}

/// `GET /kinds`: every kind and its pause.
#[utoipa::path(get, path = "/kinds", tag = "kinds",
    responses(
        (status = 200, description = "Every kind this ingress knows, by name", body = KindList),
        (status = 401, description = "API keys are configured and none or a wrong one was sent", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KindList>, ApiError> {
    authenticate(&state, &headers)?;
    let pauses = state.storage.kind_pauses(now_micros()).await?;
    let kinds = state
        .kinds
        .names()
        .map(|name| view(&state, name, pauses.iter().find(|p| p.kind == name)))
        .collect();
    Ok(Json(KindList { kinds }))
}

/// Reads the optional pause body: empty is no `for_s` and no `reason`.
async fn pause_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<PauseRequest, ApiError> {
    let limit = state.limits.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::BodyTooLarge { limit })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PauseRequest::default());
    }
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::body::is_json);
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let request: PauseRequest = crate::body::decode(&bytes).map_err(|e| match e {
        ApiError::Invalid(invalid) => ApiError::InvalidRequest(invalid),
        other => other,
    })?;
    if let Some(secs) = request.for_s {
        if !(1..=MAX_PAUSE_SECS).contains(&secs) {
            return Err(ApiError::InvalidRequest(InvalidJob::new(
                "for_s",
                format!("must be between 1 and {MAX_PAUSE_SECS} seconds; omit it to pause until resumed"),
            )));
        }
    }
    if let Some(reason) = &request.reason {
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ApiError::InvalidRequest(InvalidJob::new(
                "reason",
                format!("at most {MAX_REASON_CHARS} characters"),
            )));
        }
    }
    Ok(request)
}

/// `POST /kinds/{name}/pause`: no job of the kind is dispatched, by any worker replica,
/// until `for_s` seconds pass or it is resumed; its jobs wait in the broker, no attempt
/// used. Replaces any pause the kind had (the target's too).
#[utoipa::path(post, path = "/kinds/{name}/pause", tag = "kinds",
    params(("name" = String, Path, description = "The kind's name")),
    request_body(content = Option<PauseRequest>, content_type = "application/json",
        description = "Optional: `for_s` (absent: until resumed) and `reason`"),
    responses(
        (status = 200, description = "Paused; the kind with its pause", body = KindView),
        (status = 400, description = "The body is not JSON", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such kind (`field`: `name`)", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "A body that is not declared as JSON", body = crate::openapi::ErrorBody),
        (status = 422, description = "`for_s` or `reason` out of range, or an unknown field (`field` names it)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<KindView>, ApiError> {
    authenticate(&state, &headers)?;
    let name = find(&state, &name)?;
    let request = pause_request(&state, &headers, body).await?;
    let now = now_micros();
    let reason = request
        .reason
        .map(|r| {
            r.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "paused by an operator".to_owned());
    let until_us = request.for_s.map(|secs| {
        now.saturating_add(
            i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        )
    });
    state
        .storage
        .pause_kind(&KindPause {
            kind: name.clone(),
            until_us,
            reason,
            source: PauseSource::Operator,
            set_at_us: now,
        })
        .await?;
    tracing::info!(kind = %name, for_s = ?request.for_s, "kind paused by an operator");
    Ok(Json(view_of(&state, &name).await?))
}

/// `POST /kinds/{name}/resume`: the kind's jobs are dispatched again (within about a
/// second on every worker), whoever paused it.
#[utoipa::path(post, path = "/kinds/{name}/resume", tag = "kinds",
    params(("name" = String, Path, description = "The kind's name")),
    responses(
        (status = 200, description = "Running (also when it was already); the kind", body = KindView),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such kind (`field`: `name`)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<KindView>, ApiError> {
    authenticate(&state, &headers)?;
    let name = find(&state, &name)?;
    let had = state.storage.resume_kind(&name).await?;
    tracing::info!(kind = %name, was_paused = had, "kind resumed");
    Ok(Json(view_of(&state, &name).await?))
}
