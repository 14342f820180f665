//! Job submission and lookup.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use surge_common::job::{InvalidJob, Job, JobRequest};
use surge_common::metrics as m;
use surge_common::storage::JobResult;
use uuid::Uuid;

use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// What `202 Accepted` returns for each job.
#[derive(Debug, Serialize)]
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

/// `POST /jobs`: validate, publish, answer 202 once the broker holds the job.
pub async fn submit(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<JobRequest>,
) -> Result<Response, ApiError> {
    let job = request.into_job()?;
    publish(&state, std::slice::from_ref(&job)).await?;
    let accepted = Accepted::of(&job);
    let location = HeaderValue::from_str(&accepted.status_url)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// `POST /jobs/batch`: all jobs valid and published, or none accepted.
pub async fn submit_batch(
    State(state): State<AppState>,
    JsonBody(requests): JsonBody<Vec<JobRequest>>,
) -> Result<Response, ApiError> {
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
        .map(|(i, request)| request.into_job().map_err(|e| e.under(&format!("[{i}]"))))
        .collect::<Result<Vec<Job>, InvalidJob>>()?;
    publish(&state, &jobs).await?;
    let accepted: Vec<Accepted> = jobs.iter().map(Accepted::of).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "jobs": accepted }))).into_response())
}

/// Publishes and records the publish latency and the accepted count.
async fn publish(state: &AppState, jobs: &[Job]) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    state.broker.publish(jobs).await?;
    metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(m::JOBS_ACCEPTED).increment(jobs.len() as u64);
    Ok(())
}

/// `GET /jobs/{id}`: the stored outcome of a job.
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
