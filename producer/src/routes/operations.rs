//! Operating Surge after a bad deploy: list jobs (`GET /jobs`), replay the dead ones in
//! bulk (`POST /jobs/replay`), cancel one that has not finished (`DELETE /jobs/{id}`).
//!
//! The storage side (indexes, keyset pages, claims, the `cancelled` row) is in
//! `surge_common::storage::{listing, replay, cancel}`; this module parses and answers.
//! Query parameters are parsed by hand rather than by axum's `Query`, so that a bad one is
//! refused like every other bad input: `400 bad_query` with the parameter as `field`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use surge_common::storage::cancel::CancelOutcome;
use surge_common::storage::listing::{Cursor, JobPage, ListFilter, ListedJob, StatusFilter};
use surge_common::storage::replay::{ReplayFilter, MAX_BULK_REPLAY};
use surge_common::storage::{JobStatus, Storage};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use super::jobs::{
    accept, authenticate, describe, parse_id, publish_within, replay_publish_timeout,
};
use crate::error::ApiError;
use crate::state::AppState;

/// Jobs per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// Most jobs per page.
pub const MAX_LIMIT: u32 = surge_common::storage::listing::MAX_PAGE;
/// Jobs one bulk replay publishes when `max` is not given.
pub const DEFAULT_REPLAY_MAX: u32 = 100;
/// Longest `kind` accepted as a filter (kinds are short names).
const MAX_KIND_LEN: usize = 256;

/// A job's status, wherever statuses are listed: not finished (`scheduled`, `queued`,
/// `running`, `retrying`, `waiting`) or finished (`succeeded`, `dead`, `cancelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusName {
    /// Accepted for later (`delay_ms` / `run_at`): waits in the database until due.
    Scheduled,
    /// Accepted, not picked up yet.
    Queued,
    /// A worker is running it.
    Running,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Back in the broker without using an attempt (its target's circuit is open or at
    /// its cap).
    Waiting,
    /// Finished with a result.
    Succeeded,
    /// Failed permanently or ran out of attempts; can be replayed.
    Dead,
    /// Cancelled by `DELETE /jobs/{id}` before it finished: it never gets a result.
    Cancelled,
}

impl StatusName {
    fn of(name: &str) -> Option<StatusName> {
        Some(match name {
            "scheduled" => StatusName::Scheduled,
            "queued" => StatusName::Queued,
            "running" => StatusName::Running,
            "retrying" => StatusName::Retrying,
            "waiting" => StatusName::Waiting,
            "succeeded" => StatusName::Succeeded,
            "dead" => StatusName::Dead,
            "cancelled" => StatusName::Cancelled,
            _ => return None,
        })
    }
}

/// The statuses `POST /jobs/replay` takes: only `dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayStatus {
    /// Dead jobs (the only ones that can be replayed).
    Dead,
}

/// One job in `GET /jobs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    /// The job's id.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its status.
    pub status: StatusName,
    /// Attempts made (finished jobs), or the attempt running or next.
    pub attempts: u32,
    /// The last error, if any.
    pub error: Option<String>,
    /// When it finished (not finished: when its status last changed), RFC 3339.
    pub at: String,
    /// The same time in µs since the epoch.
    pub at_us: i64,
    /// Whether `POST /jobs/{id}/replay` can publish it again.
    pub replayable: bool,
    /// Where to read its full status.
    pub status_url: String,
}

/// `GET /jobs`: one page, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /jobs/replay`: what was replayed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// Dead jobs published again (each as a fresh first attempt, same id).
    pub replayed: usize,
    /// Their ids.
    pub ids: Vec<Uuid>,
}

/// `GET /jobs`: jobs by status, kind and time, newest first, a page at a time.
#[utoipa::path(get, path = "/jobs", tag = "operations",
    params(
        ("status" = Option<StatusName>, Query, description = "Only jobs with this status; default: every finished job (succeeded, dead, cancelled)"),
        ("kind" = Option<String>, Query, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$",
            description = "Only jobs of this kind (any name: a kind no longer configured still lists); 1 to 256 bytes of UTF-8 (any 64 characters fit), no control characters"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339 time: only jobs that finished (not finished: last changed) at or after it, e.g. 2026-12-03T10:00:00Z"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Jobs per page, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, pattern = "^[0-7][0-9A-Fa-f]{47}$", description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobList),
        (status = 400, description = "A bad, out-of-range or unknown query parameter; `field` names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<JobList>, ApiError> {
    authenticate(&state, &headers)?;
    let mut params = Params::parse(
        query.as_deref(),
        &["status", "kind", "since", "limit", "cursor"],
    )?;
    let filter = ListFilter {
        status: params.status()?,
        kind: params.kind()?,
        since_us: params.since()?,
        limit: params.bounded("limit", DEFAULT_LIMIT, MAX_LIMIT)?,
        after: params.cursor()?,
    };
    let JobPage { jobs, next } = state.storage.list_jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(summary).collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

/// `POST /jobs/replay`: replay the dead jobs matching the filters, in one call.
#[utoipa::path(post, path = "/jobs/replay", tag = "operations",
    params(
        ("status" = Option<ReplayStatus>, Query, description = "Only `dead` (the default): only dead jobs are replayed"),
        ("kind" = Option<String>, Query, min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]+$",
            description = "Only dead jobs of this kind; 1 to 256 bytes of UTF-8 (any 64 characters fit), no control characters"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339 time: only jobs that died at or after it"),
        ("max" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most jobs to replay, newest deaths first, 1 to 1000 (default 100); call again for more"),
    ),
    responses(
        (status = 202, description = "These dead jobs are published again (the broker holds them); each is queued", body = ReplayReport),
        (status = 200, description = "No dead job matched (or every match is being replayed by another call)", body = ReplayReport),
        (status = 400, description = "A bad, out-of-range or unknown query parameter; `field` names it", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 503, description = "Broker or database unavailable, or shutting down; the jobs stay dead", body = crate::openapi::ErrorBody),
    ))]
pub async fn replay_many(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let mut params = Params::parse(query.as_deref(), &["status", "kind", "since", "max"])?;
    match params.take("status") {
        None => {}
        Some(status) if status == "dead" => {}
        Some(_) => {
            return Err(bad(
                "status",
                "only dead jobs can be replayed: use status=dead",
            ))
        }
    }
    let filter = ReplayFilter {
        kind: params.kind()?,
        since_us: params.since()?,
        max: params.bounded("max", DEFAULT_REPLAY_MAX, MAX_BULK_REPLAY)?,
    };
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    let claimed = state.storage.claim_dead_matching(&filter).await?;
    let ids: Vec<Uuid> = claimed.iter().map(|row| row.job_id).collect();
    if claimed.is_empty() {
        return Ok((StatusCode::OK, Json(ReplayReport { replayed: 0, ids })).into_response());
    }
    let guard = ClaimGuard::new(state.storage.clone(), ids.clone());
    let now = surge_common::clock::now_micros();
    let jobs: Vec<_> = claimed
        .into_iter()
        .filter_map(|row| row.job)
        .map(|mut job| {
            job.enqueued_at_us = now;
            job
        })
        .collect();
    if let Err(e) = publish_within(&state, &jobs, replay_publish_timeout(&state)).await {
        guard.release().await;
        return Err(e);
    }
    // Published: from here on the claims must stay (the replayed runs replace the dead
    // rows they mark), whatever happens to this request.
    guard.disarm();
    let accepting: Vec<_> = jobs
        .iter()
        .filter(|job| job.awaits_acceptance)
        .cloned()
        .collect();
    if !accepting.is_empty() {
        // Accepted when they first ran; a no-op unless that record was lost.
        accept(&state, &accepting).await;
    }
    // Published: the answer is 202 whatever happens to the mark (see `finish_replays`).
    finish_replays(&state, ids.clone()).await;
    let report = ReplayReport {
        replayed: ids.len(),
        ids,
    };
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// `DELETE /jobs/{id}`: cancel a job that has not finished.
#[utoipa::path(delete, path = "/jobs/{id}", tag = "operations",
    params(("id" = uuid::Uuid, Path, description = "The job id returned by POST /jobs")),
    responses(
        (status = 200, description = "Cancelled (now or before): status `cancelled`; the job never gets a result. An attempt already running finishes, but its result is discarded",
            content_type = "application/json"),
        (status = 400, description = "Not a UUID", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown job id", body = crate::openapi::ErrorBody),
        (status = 409, description = "The job already finished (succeeded or dead); the message says which", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?;
    let id = parse_id(&id)?;
    match state.storage.cancel_job(id).await? {
        CancelOutcome::Cancelled(row) | CancelOutcome::AlreadyCancelled(row) => {
            Ok(Json(describe(&row)))
        }
        CancelOutcome::Finished(row) => Err(ApiError::AlreadyFinished(format!(
            "job {id} already finished ({}); only unfinished jobs can be cancelled{}",
            row.status.as_str(),
            if row.status == JobStatus::Dead {
                "; a dead job can be replayed"
            } else {
                ""
            }
        ))),
        CancelOutcome::Unknown => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}

/// How long a published replay's mark ([`Storage::finish_replays`]) is tried: half of a
/// replay's claim, which outlives the publish before it ([`replay_publish_timeout`]); so
/// no other replay can take the job while the mark may still be written.
const FINISH_WINDOW: std::time::Duration = surge_common::storage::lifecycle::REPLAY_CLAIM_EXPIRY
    .saturating_sub(std::time::Duration::from_secs(60));

/// Marks published replays done: removes their dead rows (unless the replayed run has
/// replaced them already; the mark is safe to repeat). Waits for the first try; if it
/// fails (the database is struggling), keeps trying in the background within
/// [`FINISH_WINDOW`], and the caller answers 202 anyway: the jobs *are* published, and a
/// replayed run replaces its dead row when it commits whether or not the mark was
/// written. Only if the mark is never written and another replay is asked for after the
/// claim expired, before the replayed run finished, is a job published twice — same job
/// id, so still one result row (logged as an error naming the jobs).
pub(crate) async fn finish_replays(state: &AppState, ids: Vec<Uuid>) {
    use backon::Retryable;
    let first = match state.storage.finish_replays(&ids).await {
        Ok(()) => return,
        Err(e) => e,
    };
    tracing::warn!(error = %first, jobs = ids.len(), "marking published replays done failed; retrying in the background");
    let storage = state.storage.clone();
    tokio::spawn(async move {
        let retried = tokio::time::timeout(
            FINISH_WINDOW,
            (|| storage.finish_replays(&ids)).retry(surge_common::retry::reconnect(usize::MAX)),
        )
        .await;
        if !matches!(retried, Ok(Ok(()))) {
            tracing::error!(jobs = ?ids, "published replays could not be marked done; another replay after their claim expires publishes them again (one result row still)");
        }
    });
}

/// Claims on dead jobs held by a replay that has not published them yet. Dropped armed
/// (the request ended: the client hung up, the handler failed), it releases them in the
/// background so the jobs can be replayed again at once; a crash leaves them to expire
/// (`surge_common::storage::lifecycle::REPLAY_CLAIM_EXPIRY`).
pub(crate) struct ClaimGuard {
    storage: Storage,
    ids: Vec<Uuid>,
}

impl ClaimGuard {
    /// Guards the claims on `ids`.
    pub(crate) fn new(storage: Storage, ids: Vec<Uuid>) -> ClaimGuard {
        ClaimGuard { storage, ids }
    }

    /// The jobs were published: keep the claims.
    pub(crate) fn disarm(mut self) {
        self.ids.clear();
    }

    /// The publish failed: release the claims now (the jobs stay dead).
    pub(crate) async fn release(mut self) {
        let ids = std::mem::take(&mut self.ids);
        if let Err(e) = self.storage.abandon_replays(&ids).await {
            tracing::warn!(error = %e, jobs = ids.len(), "could not release replay claims; they expire");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let (storage, ids) = (self.storage.clone(), std::mem::take(&mut self.ids));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = storage.abandon_replays(&ids).await {
                    tracing::warn!(error = %e, jobs = ids.len(), "could not release replay claims; they expire");
                }
            });
        }
    }
}

fn summary(job: ListedJob) -> JobSummary {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(job.at_us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    JobSummary {
        status_url: format!("/jobs/{}", job.job_id),
        id: job.job_id,
        status: StatusName::of(&job.status).unwrap_or(StatusName::Dead),
        kind: job.kind,
        attempts: job.attempts,
        error: job.error,
        at,
        at_us: job.at_us,
        replayable: job.replayable,
    }
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadQuery {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A query string's parameters, each at most once and each one of those allowed.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(bad(
                    &name,
                    format!("unknown parameter; expected one of: {}", allowed.join(", ")),
                ));
            }
            if params
                .insert(name.clone().into_owned(), value.into_owned())
                .is_some()
            {
                return Err(bad(&name, "given more than once"));
            }
        }
        Ok(Params(params))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    fn status(&mut self) -> Result<Option<StatusFilter>, ApiError> {
        self.take("status")
            .map(|name| {
                StatusFilter::parse(&name).ok_or_else(|| {
                    bad(
                        "status",
                        format!("expected one of: {}", StatusFilter::NAMES.join(", ")),
                    )
                })
            })
            .transpose()
    }

    fn kind(&mut self) -> Result<Option<String>, ApiError> {
        match self.take("kind") {
            // PostgreSQL text cannot hold NUL: refused here, not as a database error.
            Some(kind)
                if kind.is_empty()
                    || kind.len() > MAX_KIND_LEN
                    || kind.chars().any(char::is_control) =>
            {
                Err(bad(
                    "kind",
                    format!("a kind name is 1 to {MAX_KIND_LEN} bytes, no control characters"),
                ))
            }
            kind => Ok(kind),
        }
    }

    fn since(&mut self) -> Result<Option<i64>, ApiError> {
        self.take("since")
            .map(|text| {
                let time = OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| {
                    bad(
                        "since",
                        format!("expected an RFC 3339 time such as 2026-12-03T10:00:00Z: {e}"),
                    )
                })?;
                i64::try_from(time.unix_timestamp_nanos() / 1000)
                    .map_err(|_| bad("since", "out of range"))
            })
            .transpose()
    }

    fn bounded(&mut self, name: &str, default: u32, max: u32) -> Result<u32, ApiError> {
        let Some(text) = self.take(name) else {
            return Ok(default);
        };
        match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(name, format!("expected an integer from 1 to {max}"))),
        }
    }

    fn cursor(&mut self) -> Result<Option<Cursor>, ApiError> {
        self.take("cursor")
            .map(|text| {
                Cursor::decode(&text)
                    .ok_or_else(|| bad("cursor", "not a cursor from a previous page"))
            })
            .transpose()
    }
}
