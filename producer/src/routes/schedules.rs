//! The recurring jobs of the config file over HTTP: `GET /schedules`, and
//! `POST /schedules/{name}/pause`, `/resume`, `/trigger`. Guarded by the API keys like the
//! job endpoints; pausing is shared by every replica (a database row).

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use surge_common::clock::now_micros;
use surge_common::recurring::Schedule;
use surge_common::storage::recurring::ScheduleCursor;
use uuid::Uuid;

use super::jobs::authenticate;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /schedules`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    /// Every configured schedule, by name.
    pub schedules: Vec<ScheduleView>,
}

/// One schedule as configured, and where it is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// Its name (`[schedules.NAME]`).
    pub name: String,
    /// Its pattern as written: five cron fields, a nickname (`@daily`) or `@every 30s`.
    pub cron: String,
    /// The IANA time zone the pattern is read in.
    pub timezone: String,
    /// The kind of its jobs.
    pub kind: String,
    /// Their payload.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// How old a missed tick may be and still run (seconds); `null`: missed ticks are
    /// skipped.
    pub catch_up_secs: Option<u64>,
    /// Whether it is paused (for every replica).
    pub paused: bool,
    /// Its next tick (RFC 3339, UTC); `null` while paused.
    pub next_tick: Option<String>,
    /// Its latest tick recorded (RFC 3339, UTC), triggers not counted.
    pub last_tick: Option<String>,
    /// Its latest job, from a tick or a trigger.
    pub last_job: Option<LastJobView>,
}

/// A schedule's latest job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LastJobView {
    /// The job's id (derived from the schedule and its tick).
    pub id: Uuid,
    /// `scheduled`, `queued`, `running`, `retrying`, `waiting`, `succeeded`, `dead`,
    /// `cancelled`, or `unknown` once its result was pruned.
    pub status: String,
    /// Its tick, or when it was triggered (RFC 3339, UTC).
    pub tick: String,
    /// Whether it was triggered by hand (`POST /schedules/{name}/trigger`).
    pub triggered: bool,
    /// Where its status is.
    pub status_url: String,
}

/// `POST /schedules/{name}/trigger`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Triggered {
    /// The schedule.
    pub schedule: String,
    /// The new job's id.
    pub id: Uuid,
    /// Where to poll for its result.
    pub status_url: String,
}

fn rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The schedule `name`, or a 404 naming it and the configured ones.
fn find<'a>(state: &'a AppState, name: &str) -> Result<&'a Schedule, ApiError> {
    state.schedule(name).ok_or_else(|| {
        let names: Vec<&str> = state.schedules.iter().map(|s| s.name.as_str()).collect();
        ApiError::UnknownSchedule {
            name: name.chars().take(100).collect(),
            configured: if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        }
    })
}

async fn view(
    state: &AppState,
    schedule: &Schedule,
    cursor: &ScheduleCursor,
) -> Result<ScheduleView, ApiError> {
    let last_job = state
        .storage
        .last_schedule_job(&schedule.name)
        .await?
        .map(|job| LastJobView {
            status_url: format!("/jobs/{}", job.id),
            id: job.id,
            status: job.status,
            tick: rfc3339(job.tick_us),
            triggered: job.manual,
        });
    Ok(ScheduleView {
        name: schedule.name.clone(),
        cron: schedule.cron.clone(),
        timezone: schedule.timezone.clone(),
        kind: schedule.kind.clone(),
        payload: schedule.payload.clone(),
        catch_up_secs: schedule.catch_up.map(|w| w.as_secs()),
        paused: cursor.paused,
        next_tick: (!cursor.paused)
            .then(|| schedule.next_tick_after(now_micros()))
            .flatten()
            .map(rfc3339),
        last_tick: cursor.last_tick_us.map(rfc3339),
        last_job,
    })
}

async fn view_of(state: &AppState, schedule: &Schedule) -> Result<ScheduleView, ApiError> {
    let cursors = state.storage.schedule_cursors().await?;
    let cursor = cursors.get(&schedule.name).cloned().unwrap_or_default();
    view(state, schedule, &cursor).await
}

/// `GET /schedules`: every schedule with its next and last tick and its last job.
#[utoipa::path(get, path = "/schedules", tag = "schedules",
    responses(
        (status = 200, description = "Every schedule of the config file, by name", body = ScheduleList),
        (status = 401, description = "API keys are configured and none or a wrong one was sent", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<ScheduleList>, ApiError> {
    authenticate(&state, &headers)?;
    let cursors = state.storage.schedule_cursors().await?;
    let mut schedules = Vec::with_capacity(state.schedules.len());
    for schedule in state.schedules.iter() {
        let cursor = cursors.get(&schedule.name).cloned().unwrap_or_default();
        schedules.push(view(&state, schedule, &cursor).await?);
    }
    Ok(Json(ScheduleList { schedules }))
}

async fn set_paused(
    state: AppState,
    headers: &HeaderMap,
    name: &str,
    paused: bool,
) -> Result<Json<ScheduleView>, ApiError> {
    authenticate(&state, headers)?;
    let schedule = find(&state, name)?;
    state
        .storage
        .set_schedule_paused(&schedule.name, paused)
        .await?;
    tracing::info!(schedule = %schedule.name, paused, "schedule paused or resumed");
    Ok(Json(view_of(&state, schedule).await?))
}

/// `POST /schedules/{name}/pause`: no more ticks, on any replica, until resumed.
#[utoipa::path(post, path = "/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name (`[schedules.NAME]`)")),
    responses(
        (status = 200, description = "Paused (also when it was already); the schedule", body = ScheduleView),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such schedule (`field`: `name`)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(state, &headers, &name, true).await
}

/// `POST /schedules/{name}/resume`: ticks again from now (the ticks of the pause are not
/// caught up).
#[utoipa::path(post, path = "/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name (`[schedules.NAME]`)")),
    responses(
        (status = 200, description = "Running (also when it was already); the schedule", body = ScheduleView),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such schedule (`field`: `name`)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    set_paused(state, &headers, &name, false).await
}

/// `POST /schedules/{name}/trigger`: one job of the schedule now, besides its ticks (also
/// while paused).
#[utoipa::path(post, path = "/schedules/{name}/trigger", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name (`[schedules.NAME]`)")),
    responses(
        (status = 202, description = "The job is stored and published within a second", body = Triggered,
            headers(("location" = String, description = "The job's status URL"))),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "No such schedule (`field`: `name`)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Shutting down, or database unavailable; nothing stored; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let schedule = find(&state, &name)?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    // A microsecond another trigger of this schedule took is taken by the next one.
    let mut at = now_micros();
    let id = loop {
        match crate::recurring::fire(&state, schedule, at, true).await? {
            Some(id) => break id,
            None => at += 1,
        }
    };
    crate::scheduler::publish_due(&state).await;
    let status_url = format!("/jobs/{id}");
    let location = axum::http::HeaderValue::from_str(&status_url)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Triggered {
            schedule: schedule.name.clone(),
            id,
            status_url,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(axum::http::header::LOCATION, location);
    Ok(response)
}
