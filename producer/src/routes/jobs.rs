//! Job submission and lookup.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use surge_common::broker::BrokerError;
use surge_common::job::{InvalidJob, Job, JobRequest};
use surge_common::otlp::{Span, SpanKind};
use surge_common::retry::reconnect;
use surge_common::storage::acceptance::AcceptedJob;
use surge_common::storage::idempotency::Claim;
use surge_common::storage::lifecycle::Lifecycle;
use surge_common::storage::{JobResult, JobStatus};
use surge_common::trace::TraceContext;
use uuid::Uuid;

use super::operations::ClaimGuard;
use crate::admission::Refusal;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// How long the ingress waits for a write it answers after (accepted jobs' rows, held jobs'
/// release) before answering anyway.
const DB_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a refused request waits to cancel its jobs before answering anyway (the
/// cancel then continues in the background).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

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
        (status = 400, description = "Malformed Idempotency-Key header", body = crate::openapi::ErrorBody),
        (status = 401, description = "API keys are configured and none or a wrong one was sent", body = crate::openapi::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is still in progress", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid job; `field` names the culprit; or Idempotency-Key reused with another body", body = crate::openapi::ErrorBody),
        (status = 429, description = "This client is over its rate; see Retry-After", body = crate::openapi::ErrorBody),
        (status = 503, description = "Backlog full, shutting down, broker or database unavailable; nothing accepted; see Retry-After", body = crate::openapi::ErrorBody),
    ),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
        description = "Makes a client's retry of this POST safe: the same key with the same request (every field) from the same API key returns the same job; with another request, 422. 1 to 255 visible ASCII characters")))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(mut request): JsonBody<JobRequest>,
) -> Result<Response, ApiError> {
    key_from_header(&mut request, &state, &headers);
    let idempotency_key = idempotency_key(&headers)?;
    let request_span = request_span(&headers, "POST /jobs");
    let hashes = idempotency_key
        .as_ref()
        .map(|_| (request_hash(&request), legacy_request_hash(&request)));
    let mut job = request.into_job(&state.kinds)?;
    job.traceparent = Some(request_span.context().child().header());
    job.awaits_acceptance = true;
    admit(&state, &caller, 1).await?;
    if let (Some(key), Some((hash, legacy))) = (&idempotency_key, &hashes) {
        match state
            .storage
            .claim_idempotency_key(
                &caller.scope,
                key,
                hash,
                job.id,
                crate::scheduler::lease(state.limits.publish_timeout),
            )
            .await?
        {
            Claim::Claimed => {}
            // The first request's ingress died mid-publish: publish its job (same id) now.
            Claim::Resumed { job_id } => job.id = job_id,
            Claim::Existing {
                job_id,
                request_hash,
                done,
            } => {
                // A key stored before the hash covered every field is compared the way it
                // was made.
                let same = if request_hash.starts_with(HASH_VERSION) {
                    &request_hash == hash
                } else {
                    &request_hash == legacy
                };
                if !same {
                    return Err(ApiError::IdempotencyKeyReused);
                }
                if !done {
                    return Err(ApiError::IdempotencyKeyInProgress);
                }
                let mut response = accepted_response(job_id)?;
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return Ok(response);
            }
        }
    }
    let publish_spans = publish_spans(&request_span, std::slice::from_ref(&job));
    let published = enqueue(&state, std::slice::from_ref(&job)).await;
    end_publish_spans(publish_spans, &published);
    if let Some(key) = &idempotency_key {
        let settled = match published {
            Ok(()) => {
                state
                    .storage
                    .complete_idempotency_key(&caller.scope, key)
                    .await
            }
            Err(_) => {
                state
                    .storage
                    .release_idempotency_key(&caller.scope, key)
                    .await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, "idempotency key not updated");
        }
    }
    published?;
    accepted_response(job.id)
}

/// A request that names no `key`, of a kind whose `key_from` is a header: the key is
/// that header's value (when it is text; otherwise the job stays keyless).
fn key_from_header(request: &mut JobRequest, state: &AppState, headers: &HeaderMap) {
    request.take_key_from_header(&state.kinds, |name| {
        headers.get(name).and_then(|v| v.to_str().ok())
    });
}

/// `202 Accepted` with the job's id, status URL and `Location`.
fn accepted_response(id: Uuid) -> Result<Response, ApiError> {
    let accepted = Accepted {
        id,
        status_url: format!("/jobs/{id}"),
    };
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
        (status = 401, description = "API keys are configured and none or a wrong one was sent", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid job, e.g. `field` = `[3].kind`; none accepted", body = crate::openapi::ErrorBody),
        (status = 429, description = "This client is over its rate; see Retry-After", body = crate::openapi::ErrorBody),
        (status = 503, description = "Backlog full, shutting down, or broker unavailable; none accepted", body = crate::openapi::ErrorBody),
    ))]
pub async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(requests): JsonBody<Vec<JobRequest>>,
) -> Result<Response, ApiError> {
    let request_span = request_span(&headers, "POST /jobs/batch");
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
        .map(|(i, mut request)| {
            key_from_header(&mut request, &state, &headers);
            let mut job = request
                .into_job(&state.kinds)
                .map_err(|e| e.under(&format!("[{i}]")))?;
            job.traceparent = Some(request_span.context().child().header());
            job.awaits_acceptance = true;
            Ok(job)
        })
        .collect::<Result<Vec<Job>, InvalidJob>>()?;
    let count = u32::try_from(jobs.len()).unwrap_or(u32::MAX);
    admit(&state, &caller, count).await?;
    let publish_spans = publish_spans(&request_span, &jobs);
    let published = enqueue(&state, &jobs).await;
    end_publish_spans(publish_spans, &published);
    published?;
    let accepted = BatchAccepted {
        jobs: jobs.iter().map(Accepted::of).collect(),
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// The request's span: in the client's trace when the request carries a valid
/// `traceparent` (as its child), else the root of a new trace. Its trace id is recorded on
/// the request's log span, so the request line carries the `trace_id`; each job's
/// `traceparent` names a `publish` span under it ([`publish_spans`]).
fn request_span(headers: &HeaderMap, name: &str) -> Span {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let (context, parent) = match incoming {
        Some(client) => (client.child(), Some((client, true))),
        None => (TraceContext::new_root(), None),
    };
    tracing::Span::current().record("trace_id", context.trace_id());
    Span::start(name, SpanKind::Server, context, parent)
}

/// One `publish` span per job, child of the request's span, with the ids of the job's
/// `traceparent`: the worker's span for the job is its child.
fn publish_spans(request: &Span, jobs: &[Job]) -> Vec<Span> {
    if !surge_common::otlp::enabled() {
        return Vec::new();
    }
    jobs.iter()
        .filter_map(|job| {
            let context = TraceContext::parse(job.traceparent.as_deref()?)?;
            let mut span = Span::start(
                "publish",
                SpanKind::Producer,
                context,
                Some((request.context(), false)),
            );
            span.attribute("surge.job.id", job.id);
            span.attribute("surge.job.kind", &job.kind);
            Some(span)
        })
        .collect()
}

/// Ends the `publish` spans, failed when the jobs were refused.
fn end_publish_spans(spans: Vec<Span>, outcome: &Result<(), ApiError>) {
    for mut span in spans {
        if let Err(e) = outcome {
            span.fail(e);
        }
        span.end();
    }
}

/// The `Idempotency-Key` header, validated: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = |message: &str| ApiError::BadHeader {
        field: "Idempotency-Key",
        message: message.to_owned(),
    };
    let key = value.to_str().map_err(|_| bad("must be visible ASCII"))?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be 1 to 255 visible ASCII characters"));
    }
    Ok(Some(key.to_owned()))
}

/// Marks a request hash that covers every field of the request ([`request_hash`]); one
/// without it was stored before, by [`legacy_request_hash`].
const HASH_VERSION: &str = "v2:";

/// SHA-256 of the whole request in a canonical form (object keys sorted, `null` the same
/// as absent), so the same job written with other spacing or key order counts as the same
/// request, and a change to any field (payload, key, `delay_ms`, `run_at`,
/// `callback_url`) as another one. The fields are listed by destructuring: a field added
/// to [`JobRequest`] does not compile until it is hashed.
fn request_hash(request: &JobRequest) -> String {
    let JobRequest {
        kind,
        payload,
        key,
        delay_ms,
        callback_url,
        run_at,
        priority,
    } = request;
    let mut canonical = json!({
        "kind": kind,
        "payload": payload,
        "key": key,
        "delay_ms": delay_ms,
        "callback_url": callback_url,
        "run_at": run_at,
    });
    // Only when given: keys stored before priorities existed keep their hash.
    if let Some(priority) = priority {
        canonical["priority"] = json!(priority);
    }
    format!(
        "{HASH_VERSION}{}",
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    )
}

/// The hash keys were stored with before [`request_hash`] covered every field (kind,
/// payload and key only): compared only with such keys, so a retry across the upgrade still
/// finds its job.
fn legacy_request_hash(request: &JobRequest) -> String {
    let canonical = json!({ "kind": request.kind, "payload": request.payload, "key": request.key });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// A submitting client that passed the checks made before its body is read: the ingress
/// is not shutting down (503), the client is authenticated when keys are configured
/// (401), and it has at least one job's worth of its rate left (429). As an extractor
/// placed before the body's, it refuses such requests without reading or parsing their
/// body, so a malformed body from a client that would be refused anyway gets the refusal.
#[derive(Debug)]
pub struct Caller {
    /// Whom rate limits count against: the API key (hashed), else the client address.
    client: String,
    /// Whose `Idempotency-Key`s these are: the API key (hashed), or `""` (one scope shared
    /// by every client) when API keys are off.
    scope: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.draining.load(Ordering::Relaxed) {
            return Err(ApiError::ShuttingDown);
        }
        let key = state
            .api_keys
            .authenticate(&parts.headers)
            .map_err(ApiError::Unauthorized)?;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        let scope = key
            .as_ref()
            .map(|key| hex::encode(Sha256::digest(key.as_bytes())))
            .unwrap_or_default();
        let client = match (key, peer) {
            (Some(_), _) => format!("key:{scope}"),
            (None, Some(ConnectInfo(address))) => state
                .trusted_proxies
                .client(address.ip(), &parts.headers)
                .to_string(),
            (None, None) => "anonymous".to_owned(),
        };
        state.admission.admit_client(&client).map_err(refused)?;
        Ok(Caller { client, scope })
    }
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Overloaded(wait) => ApiError::Overloaded(wait),
        Refusal::RateLimited(wait) => ApiError::RateLimited(wait),
    }
}

/// The checks a parsed submission of `jobs` jobs passes before anything is published: the
/// rest of the client's rate (its first job was taken by [`Caller`]) and the backlog bound.
async fn admit(state: &AppState, caller: &Caller, jobs: u32) -> Result<(), ApiError> {
    state
        .admission
        .admit(state.broker.as_ref(), &caller.client, jobs)
        .await
        .map_err(refused)
}

/// Checks the API key on read-only job endpoints.
pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    state
        .api_keys
        .authenticate(headers)
        .map(drop)
        .map_err(ApiError::Unauthorized)
}

/// How long the later part of a batch is kept from the schedulers while the batch's jobs
/// for now are published (it is released as soon as they are): as long as a refused job's
/// cancel may take to be recorded
/// ([`ACCEPTANCE_OVERDUE`](surge_common::storage::acceptance::ACCEPTANCE_OVERDUE)). If
/// this ingress dies in between, both parts of the batch end up alike: each runs once
/// its hold, or its acceptance, is overdue.
const BATCH_HOLD: Duration = surge_common::storage::acceptance::ACCEPTANCE_OVERDUE;

/// Accepts new jobs, all or none: those scheduled for later are stored until due (the
/// scheduler publishes them), the others published now ([`publish_new`]). In a batch of
/// both, the later ones are stored *held* first, so no scheduler publishes them before the
/// jobs for now are published (however soon they are due); released after, dropped if
/// those were refused. So no job of a refused batch ever runs.
async fn enqueue(state: &AppState, jobs: &[Job]) -> Result<(), ApiError> {
    let (mut later, now): (Vec<Job>, Vec<Job>) = jobs
        .iter()
        .cloned()
        .partition(|job| job.run_at_us.is_some());
    // Stored, they are accepted: nothing awaits a publish outcome.
    for job in &mut later {
        job.awaits_acceptance = false;
    }
    if later.is_empty() {
        return publish_new(state, &now).await;
    }
    if now.is_empty() {
        state.storage.schedule(&later).await?;
        state.record_accepted(&later, Duration::ZERO);
        return Ok(());
    }
    let hold_us = i64::try_from(BATCH_HOLD.as_micros()).unwrap_or(i64::MAX);
    let held_until = surge_common::clock::now_micros().saturating_add(hold_us);
    state.storage.schedule_held(&later, held_until).await?;
    let ids: Vec<Uuid> = later.iter().map(|job| job.id).collect();
    match publish_new(state, &now).await {
        Ok(()) => {
            settle_held(state, ids, held_until, Settle::Release).await;
            state.record_accepted(&later, Duration::ZERO);
            Ok(())
        }
        Err(refused) => {
            settle_held(state, ids, held_until, Settle::Drop).await;
            Err(refused)
        }
    }
}

/// What becomes of a batch's held jobs for later.
#[derive(Debug, Clone, Copy)]
enum Settle {
    /// The batch was accepted: the schedulers may take them when due.
    Release,
    /// The batch was refused: they never run.
    Drop,
}

/// Releases or drops held jobs; waits at most [`DB_WRITE_TIMEOUT`], then keeps trying
/// in the background for about three minutes, within their hold ([`BATCH_HOLD`]). Should
/// that fail, released jobs run late (when the hold ends) and dropped ones run although
/// refused: logged as an error naming them.
async fn settle_held(state: &AppState, ids: Vec<Uuid>, held_until: i64, settle: Settle) {
    use backon::Retryable;
    let once = {
        let storage = state.storage.clone();
        let ids = ids.clone();
        move || {
            let (storage, ids) = (storage.clone(), ids.clone());
            async move {
                match settle {
                    Settle::Release => storage.release_scheduled(&ids, held_until).await,
                    Settle::Drop => storage.drop_scheduled(&ids).await,
                }
            }
        }
    };
    let failure = match tokio::time::timeout(DB_WRITE_TIMEOUT, once()).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    tracing::warn!(error = %failure, jobs = ids.len(), ?settle, "settling a batch's held jobs failed; retrying in the background");
    tokio::spawn(async move {
        if let Err(e) = once.retry(reconnect(24)).await {
            tracing::error!(error = %e, jobs = ?ids, ?settle, "a batch's held jobs could not be settled; they are taken when their hold ends");
        }
    });
}

/// Publishes new jobs (which await acceptance) and records them accepted. If the publish
/// fails, the broker may still hold them (it stored a message whose confirm was lost):
/// they are cancelled instead, so a refused job never gets a result (see
/// `surge_common::storage::acceptance`). If every job turns out accepted already (a worker
/// found its acceptance overdue), the answer is success.
async fn publish_new(state: &AppState, jobs: &[Job]) -> Result<(), ApiError> {
    let Err(error) = publish(state, jobs).await else {
        accept(state, jobs).await;
        return Ok(());
    };
    let ids: Vec<Uuid> = jobs.iter().map(|job| job.id).collect();
    match tokio::time::timeout(CANCEL_TIMEOUT, state.storage.cancel(&ids)).await {
        Ok(Ok(accepted)) if !ids.is_empty() && accepted.len() == ids.len() => {
            tracing::warn!(error = %error, "publish reported failure but the jobs were accepted already; accepting");
            state.record_accepted(jobs, std::time::Duration::ZERO);
            return Ok(());
        }
        Ok(Ok(accepted)) if !accepted.is_empty() => {
            tracing::error!(
                error = %error,
                accepted = accepted.len(),
                jobs = ids.len(),
                "publish failed and some of the refused jobs were taken as accepted after \
                 the acceptance deadline; they may run although their client is refused"
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => cancel_later(state, ids, e.to_string()),
        Err(_) => cancel_later(state, ids, "timed out".to_owned()),
    }
    Err(error)
}

/// Records freshly published `jobs` accepted, so their results may commit. Waits at most
/// [`DB_WRITE_TIMEOUT`]; after that, or a failed write (the database is struggling),
/// keeps trying in the background. Should it never succeed, the results still commit
/// once the acceptance is overdue.
pub(crate) async fn accept(state: &AppState, jobs: &[Job]) {
    use backon::Retryable;
    let failure = match tokio::time::timeout(DB_WRITE_TIMEOUT, state.accepts.accept(jobs)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    tracing::warn!(error = %failure, jobs = jobs.len(), "recording jobs accepted failed; retrying in the background");
    let storage = state.storage.clone();
    let accepted = AcceptedJob::of(jobs);
    tokio::spawn(async move {
        if let Err(e) = (|| storage.accept(&accepted)).retry(reconnect(24)).await {
            tracing::error!(error = %e, jobs = accepted.len(), "jobs could not be recorded accepted; their results wait until the acceptance is overdue");
        }
    });
}

/// Keeps trying to cancel `ids` in the background (the database is struggling; the
/// client gets its 503 now) for about three minutes, well within the acceptance deadline
/// (`surge_common::storage::acceptance::ACCEPTANCE_OVERDUE`). Logged loudly if it never
/// succeeds.
fn cancel_later(state: &AppState, ids: Vec<Uuid>, first_error: String) {
    use backon::Retryable;
    tracing::warn!(error = %first_error, jobs = ids.len(), "cancelling refused jobs failed; retrying in the background");
    let storage = state.storage.clone();
    tokio::spawn(async move {
        if let Err(e) = (|| storage.cancel(&ids)).retry(reconnect(24)).await {
            tracing::error!(error = %e, jobs = ?ids, "refused jobs could not be cancelled; they may still run");
        }
    });
}

/// Publishes `jobs` within the publish timeout. On success records metrics and counts the
/// jobs for admission control; the caller records what the publish means (new jobs:
/// [`accept`], which writes each job's `queued` row; replays: their rows go back to
/// `queued`).
pub(crate) async fn publish(state: &AppState, jobs: &[Job]) -> Result<(), ApiError> {
    publish_within(state, jobs, state.limits.publish_timeout).await
}

/// The longest a replay waits for the broker's confirm: the publish timeout, but at most a
/// quarter of a replay's claim
/// ([`REPLAY_CLAIM_EXPIRY`](surge_common::storage::lifecycle::REPLAY_CLAIM_EXPIRY)), so
/// the claim outlives the publish and the mark after it, and no other replay can take the
/// job meanwhile.
pub(crate) fn replay_publish_timeout(state: &AppState) -> Duration {
    state
        .limits
        .publish_timeout
        .min(surge_common::storage::lifecycle::REPLAY_CLAIM_EXPIRY / 4)
}

/// [`publish`] with its own bound on the broker's confirm.
pub(crate) async fn publish_within(
    state: &AppState,
    jobs: &[Job],
    timeout: Duration,
) -> Result<(), ApiError> {
    let started = std::time::Instant::now();
    tokio::time::timeout(timeout, state.broker.publish(jobs))
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!(
                "the broker did not confirm the publish within {} ms",
                timeout.as_millis()
            ))
        })??;
    state.record_accepted(jobs, started.elapsed());
    Ok(())
}

/// `?wait=N` on `GET /jobs/{id}`.
#[derive(Debug, serde::Deserialize)]
pub struct StatusQuery {
    /// Seconds to wait for the job to finish before answering (0 to the state's
    /// `max_wait`).
    wait: Option<String>,
}

/// `GET /jobs/{id}`: where a job is in its life; with `?wait=N`, answered as soon as the
/// job is finished (succeeded, dead, cancelled) or after N seconds, whichever first.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job id returned by POST /jobs"),
        ("wait" = Option<u64>, Query, minimum = 0, maximum = 50,
            description = "Seconds to wait for the job to finish before answering (long polling); 0 or absent: answer at once. At most 50, and below the server's connection idle timeout (`maximum` says this server's bound)"),
    ),
    responses(
        (status = 200, description = "status: scheduled | queued | running | retrying | waiting (with attempt and last error) | succeeded (with result) | dead (with error) | cancelled (by DELETE /jobs/{id}; never a result)",
            content_type = "application/json"),
        (status = 400, description = "Not a UUID", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 400, description = "`wait` is not a whole number of seconds from 0 to the documented maximum", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown job id (or a job refused with 503 whose message the broker kept)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Database unavailable, or too many requests waiting already; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?;
    let id = parse_id(&id)?;
    let wait = parse_wait(query, state.max_wait)?;
    let mut lifecycle = state.storage.lifecycle(id).await?;
    if let (Some(wait), Some(Lifecycle::Pending(_))) = (wait, &lifecycle) {
        state.waiters.wait(id, wait).await?;
        lifecycle = state.storage.lifecycle(id).await?;
    }
    match lifecycle {
        Some(Lifecycle::Finished(result)) => Ok(Json(describe(&result))),
        Some(Lifecycle::Pending(stage)) => Ok(Json(json!({
            "id": stage.job_id,
            "kind": stage.kind,
            "status": stage.stage.as_str(),
            "attempt": stage.attempt,
            "error": stage.error,
            "updated_at_us": stage.at_us,
        }))),
        None => Err(ApiError::NotFound(format!("no job {id}"))),
    }
}

/// The `wait` query parameter: `None` for no wait.
fn parse_wait(
    query: Result<axum::extract::Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
    max_wait: Duration,
) -> Result<Option<Duration>, ApiError> {
    let bad = |message: String| ApiError::BadQuery {
        field: "wait".to_owned(),
        message,
    };
    let query = query.map_err(|e| bad(e.body_text()))?;
    let Some(wait) = query.0.wait else {
        return Ok(None);
    };
    let max = max_wait.as_secs();
    match wait.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(seconds) if seconds <= max => Ok(Some(Duration::from_secs(seconds))),
        _ => Err(bad(format!(
            "must be a whole number of seconds from 0 to {max}, not {wait:?}"
        ))),
    }
}

/// `POST /jobs/{id}/replay`: publish a dead job again, as a fresh first attempt.
#[utoipa::path(post, path = "/jobs/{id}/replay", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "A dead job's id")),
    responses(
        (status = 202, description = "Published again; its status is queued", body = Accepted),
        (status = 400, description = "Not a UUID", body = crate::openapi::ErrorBody),
        (status = 401, description = "API key missing or wrong", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown job id", body = crate::openapi::ErrorBody),
        (status = 409, description = "The job is not dead (`not_dead`), or another replay is publishing it (`replay_in_progress`)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Broker or database unavailable; the job stays dead", body = crate::openapi::ErrorBody),
    ))]
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::ShuttingDown);
    }
    let id = parse_id(&id)?;
    let Some(dead) = state.storage.claim_replay(id).await? else {
        return match state.storage.lifecycle(id).await? {
            None => Err(ApiError::NotFound(format!("no job {id}"))),
            Some(Lifecycle::Finished(r)) if r.status == JobStatus::Dead => {
                Err(ApiError::ReplayInProgress(format!(
                    "job {id} is being replayed by another request; see its status"
                )))
            }
            Some(_) => Err(ApiError::NotDead(format!(
                "job {id} is not dead; only dead jobs can be replayed"
            ))),
        };
    };
    let guard = ClaimGuard::new(state.storage.clone(), vec![id]);
    let Some(mut job) = dead.job.clone() else {
        guard.release().await;
        return Err(ApiError::NotDead(format!(
            "job {id} died before replay was possible (its body was not kept)"
        )));
    };
    job.enqueued_at_us = surge_common::clock::now_micros();
    // The dead row stays until the publish succeeded: if this request ends before (a
    // crash, a client hanging up), the job is still dead and replayable (the guard
    // releases the claim; after a crash it expires).
    if let Err(e) = publish_within(
        &state,
        std::slice::from_ref(&job),
        replay_publish_timeout(&state),
    )
    .await
    {
        guard.release().await;
        return Err(e);
    }
    guard.disarm();
    if job.awaits_acceptance {
        // Accepted when it first ran; a no-op unless that record was lost.
        accept(&state, std::slice::from_ref(&job)).await;
    }
    // Published: the answer is 202 whatever happens to the mark (see `finish_replays`).
    super::operations::finish_replays(&state, vec![id]).await;
    accepted_response(id)
}

pub(crate) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|e| ApiError::BadPath {
        field: "id",
        message: format!("not a job id (UUID): {e}"),
    })
}

pub(crate) fn describe(r: &JobResult) -> Value {
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
