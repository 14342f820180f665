//! Job submission and lookup.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use surge_common::job::{InvalidJob, Job, JobRequest};
use surge_common::metrics as m;
use surge_common::storage::JobResult;
use surge_common::trace::TraceContext;
use uuid::Uuid;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

const TRACEPARENT: &str = "traceparent";

/// What `202 Accepted` returns for each job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The job's id.
    pub id: Uuid,
    /// Where to poll for its result.
    pub status_url: String,
}

impl Accepted {
    fn of(job: &Job) -> Accepted {
        Accepted {
            id: job.id,
            status_url: format!("/jobs/{}", job.id),
        }
    }
}

/// `POST /jobs` answer for a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    /// One entry per job, in request order.
    pub jobs: Vec<Accepted>,
}

/// `POST /jobs`: validate, publish, answer 202 once the broker holds the job.
#[utoipa::path(post, path = "/jobs", tag = "jobs",
    request_body(content = crate::openapi::JobRequestDoc, content_type = "application/json"),
    responses(
        (status = 202, description = "The broker holds the job durably", body = Accepted,
            headers(("location" = String, description = "The job's status URL"))),
        (status = 400, description = "Malformed JSON", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid job; `field` names the culprit", body = crate::openapi::ErrorBody),
        (status = 503, description = "Broker unavailable; nothing accepted; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<Response, ApiError> {
    let trace = trace_context(&headers);
    let mut job = request.into_job()?;
    job.traceparent = Some(trace.child().header());
    publish(&state, std::slice::from_ref(&job)).await?;
    let accepted = Accepted::of(&job);
    let location = HeaderValue::from_str(&accepted.status_url)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// `POST /jobs/batch`: all jobs valid and published, or none accepted.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs",
    request_body(content = Vec<crate::openapi::JobRequestDoc>, content_type = "application/json"),
    responses(
        (status = 202, description = "The broker holds every job durably", body = BatchAccepted),
        (status = 400, description = "Malformed JSON", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body or batch too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid job, e.g. `field` = `[3].kind`; none accepted", body = crate::openapi::ErrorBody),
        (status = 503, description = "Broker unavailable; none accepted", body = crate::openapi::ErrorBody),
    ))]
pub async fn submit_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(requests): JsonBody<Vec<JobRequest>>,
) -> Result<Response, ApiError> {
    let trace = trace_context(&headers);
    let limit = state.limits.max_batch;
    if requests.len() > limit {
        return Err(ApiError::BatchTooLarge {
            size: requests.len(),
            limit,
        });
    }
    if requests.is_empty() {
        return Err(InvalidJob::new("", "a batch needs at least one job").into());
    }
    let jobs = requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let mut job = request.into_job().map_err(|e| e.under(&format!("[{i}]")))?;
            job.traceparent = Some(trace.child().header());
            Ok(job)
        })
        .collect::<Result<Vec<Job>, InvalidJob>>()?;
    publish(&state, &jobs).await?;
    let accepted = BatchAccepted {
        jobs: jobs.iter().map(Accepted::of).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// The request's trace context (a new trace when it has none or an invalid one), also
/// recorded on the request's log span so the request line carries the `trace_id`.
fn trace_context(headers: &HeaderMap) -> TraceContext {
    let trace = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root);
    tracing::Span::current().record("trace_id", trace.trace_id());
    trace
}

/// Publishes and records the publish latency and the accepted count.
async fn publish(state: &AppState, jobs: &[Job]) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    state.broker.publish(jobs).await?;
    metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::JOBS_ACCEPTED).increment(jobs.len() as u64);
    state.live.accepted(jobs.len(), started.elapsed());
    Ok(())
}

/// `GET /jobs/{id}`: the stored outcome of a job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job id returned by POST /jobs")),
    responses(
        (status = 200, description = "The job's outcome: status succeeded or dead, result, error, attempts",
            content_type = "application/json"),
        (status = 400, description = "Not a UUID", body = crate::openapi::ErrorBody),
        (status = 404, description = "No result yet (queued or running) or unknown id", body = crate::openapi::ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|e| ApiError::BadPath {
        field: "id",
        message: format!("not a job id (UUID): {e}"),
    })?;
    match state.storage.get(id).await? {
        Some(result) => Ok(Json(describe(&result))),
        None => Err(ApiError::NotFound(format!(
            "no result for job {id}: it is still queued or running, or the id is unknown"
        ))),
    }
}

fn describe(r: &JobResult) -> Value {
    json!({
        "id": r.job_id,
        "kind": r.kind,
        "status": r.status.as_str(),
        "result": r.result,
        "error": r.error,
        "attempts": r.attempts,
        "worker": r.worker,
        "enqueued_at_us": r.enqueued_at_us,
        "started_at_us": r.started_at_us,
        "finished_at_us": r.finished_at_us,
    })
}
