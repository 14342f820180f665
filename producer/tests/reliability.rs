//! Job lifecycle, dead-letter replay, idempotency keys, admission control (503 / 429),
//! API keys and draining — through the HTTP API.
//!
//! Over 500 lines on purpose: these tests share one router harness (state, broker double,
//! worker) and read as one story of a job's life; splitting them would copy the harness.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use surge_common::retry::RetryPolicy;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::admission::AdmissionConfig;
use surge_producer::auth::ApiKeys;
use surge_producer::{app, AppState, Limits};
use surge_worker::{WorkerOptions, WorkerService};
use tokio::sync::oneshot;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn send(state: &AppState, request: Request<Body>) -> Answer {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn post(path: &str, body: Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn memory_state() -> (AppState, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    (
        AppState::new(broker.clone(), storage, Limits::default()),
        broker,
    )
}

/// Runs a worker until the returned sender is used (or dropped).
fn start_worker(
    state: &AppState,
    retry: RetryPolicy,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let options = WorkerOptions {
        capacity: 10,
        retry,
        ..WorkerOptions::default()
    };
    let worker = WorkerService::embedded(
        state.broker.clone(),
        state.storage.clone(),
        state.kinds.clone(),
        options,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, handle)
}

/// Polls `GET /jobs/{id}` until its status is `status` (30 s at most).
async fn wait_for_status(state: &AppState, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = send(state, get(&format!("/jobs/{id}"))).await;
        if answer.body["status"] == status {
            return answer.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never reached {status}; last: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A broker that stores every job and then reports the publish as failed: the confirm
/// was lost on the way back (a connection dropped between the broker's write and its ack).
struct ConfirmLosingBroker(MemoryBroker);

#[async_trait::async_trait]
impl Broker for ConfirmLosingBroker {
    async fn publish(&self, jobs: &[surge_common::job::Job]) -> Result<(), BrokerError> {
        self.0.publish(jobs).await?;
        Err(BrokerError::Unavailable(
            "connection lost before the confirm".into(),
        ))
    }
    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        self.0.consume(options).await
    }
    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        self.0.stats().await
    }
    fn name(&self) -> &'static str {
        "confirm-losing"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_refused_with_503_never_runs_to_a_result_even_if_the_broker_kept_it() {
    let broker = Arc::new(ConfirmLosingBroker(MemoryBroker::new()));
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let state = AppState::new(broker.clone(), storage.clone(), Limits::default());

    let job = json!({"kind": "echo", "payload": {"n": 1}});
    let refused = send(&state, post("/jobs", job.clone(), &[])).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["error"]["code"], "broker_unavailable");
    let batch = send(&state, post("/jobs/batch", json!([job, job]), &[])).await;
    assert_eq!(
        batch.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        batch.body
    );
    assert_eq!(
        broker.stats().await.unwrap().backlog,
        Some(3),
        "the broker kept them"
    );

    // A worker started now consumes all three stored jobs and acks them without a result.
    let (stop, worker) = start_worker(&state, RetryPolicy::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = broker.stats().await.unwrap();
        if stats.backlog == Some(0) && stats.in_flight.unwrap_or(0) == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs not consumed: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        storage.count().await.unwrap(),
        0,
        "no refused job has a result"
    );
    let _ = stop.send(());
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_from_queued_through_retrying_to_succeeded() {
    let (state, _) = memory_state().await;
    let accepted = send(
        &state,
        post(
            "/jobs",
            json!({"kind": "flaky", "payload": {"failures": 1}}),
            &[],
        ),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    // Accepted, nobody consuming yet: queued, not 404.
    let queued = send(&state, get(&format!("/jobs/{id}"))).await;
    assert_eq!(queued.status, StatusCode::OK);
    assert_eq!(queued.body["status"], "queued", "{}", queued.body);

    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1500),
        max_delay: Duration::from_secs(2),
    };
    let (stop, worker) = start_worker(&state, retry);
    let retrying = wait_for_status(&state, &id, "retrying").await;
    assert_eq!(retrying["attempt"], 2, "{retrying}");
    assert!(
        retrying["error"].as_str().unwrap().contains("flaky"),
        "{retrying}"
    );
    let done = wait_for_status(&state, &id, "succeeded").await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"], json!({"succeeded_on_attempt": 2}));
    let _ = stop.send(());
    worker.await.unwrap();

    let unknown = send(&state, get(&format!("/jobs/{}", uuid::Uuid::now_v7()))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_show_their_error_and_replay() {
    let (state, broker) = memory_state().await;
    let once = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
    };
    let (stop, worker) = start_worker(&state, once);
    let flaky = send(
        &state,
        post(
            "/jobs",
            json!({"kind": "flaky", "payload": {"failures": 1}}),
            &[],
        ),
    )
    .await;
    let id = flaky.body["id"].as_str().unwrap().to_owned();
    let dead = wait_for_status(&state, &id, "dead").await;
    assert!(dead["error"].as_str().unwrap().contains("flaky"), "{dead}");
    assert_eq!(broker.dead_letters().len(), 1);
    let _ = stop.send(());
    worker.await.unwrap();

    // A job that is not dead cannot be replayed; an unknown one is 404.
    let echo = send(&state, post("/jobs", json!({"kind": "echo"}), &[])).await;
    let echo_id = echo.body["id"].as_str().unwrap();
    let not_dead = send(
        &state,
        post(&format!("/jobs/{echo_id}/replay"), json!({}), &[]),
    )
    .await;
    assert_eq!(not_dead.status, StatusCode::CONFLICT, "{}", not_dead.body);
    let unknown = send(
        &state,
        post(
            &format!("/jobs/{}/replay", uuid::Uuid::now_v7()),
            json!({}),
            &[],
        ),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Replayed, it is queued again, and with attempts to spare it now succeeds.
    let replay = send(&state, post(&format!("/jobs/{id}/replay"), json!({}), &[])).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.body);
    assert_eq!(replay.body["id"], id.as_str());
    assert_eq!(wait_for_status(&state, &id, "queued").await["attempt"], 1);
    let (stop, worker) = start_worker(
        &state,
        RetryPolicy {
            max_attempts: 3,
            ..once
        },
    );
    let done = wait_for_status(&state, &id, "succeeded").await;
    assert_eq!(done["attempts"], 2, "{done}");
    let _ = stop.send(());
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_ends_the_job_dead_at_once_with_the_panic_message() {
    let (state, broker) = memory_state().await;
    let (stop, worker) = start_worker(&state, RetryPolicy::default());
    let answer = send(
        &state,
        post(
            "/jobs",
            json!({"kind": "poison", "payload": {"panic": true}}),
            &[],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["id"].as_str().unwrap().to_owned();
    // Before the fix the panic released the delivery with the same attempt count: the job
    // was redelivered forever and never reached `dead`.
    let dead = wait_for_status(&state, &id, "dead").await;
    let error = dead["error"].as_str().unwrap();
    assert!(error.contains("handler panicked"), "{dead}");
    assert!(error.contains("poison job panicking on purpose"), "{dead}");
    assert_eq!(dead["attempts"], 1, "a panic is not retried: {dead}");
    // The delivery is dead-lettered right after the row commits (the row comes first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.dead_letters().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the delivery was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(broker.dead_letters().len(), 1);
    let stats = broker.stats().await.unwrap();
    assert_eq!(stats.backlog, Some(0), "{stats:?}");
    let _ = stop.send(());
    worker.await.unwrap();
}

#[tokio::test]
async fn idempotency_keys_return_the_original_job() {
    let (state, broker) = memory_state().await;
    let body = json!({"kind": "sleep", "payload": {"ms": 5}});
    let first = send(
        &state,
        post("/jobs", body.clone(), &[("idempotency-key", "order-42")]),
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // Same key, same request written differently: the same job, nothing new published.
    let same = json!({"payload": {"ms": 5}, "kind": "sleep"});
    let again = send(
        &state,
        post("/jobs", same, &[("idempotency-key", "order-42")]),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(broker.stats().await.unwrap().backlog, Some(1));
    // Same key, another request: refused, nothing published.
    let other = json!({"kind": "sleep", "payload": {"ms": 6}});
    let reused = send(
        &state,
        post("/jobs", other, &[("idempotency-key", "order-42")]),
    )
    .await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["error"]["field"], "Idempotency-Key");
    for bad in ["", &"k".repeat(256), "has space"] {
        let answer = send(
            &state,
            post("/jobs", body.clone(), &[("idempotency-key", bad)]),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(answer.body["error"]["field"], "Idempotency-Key");
    }
    assert_eq!(broker.stats().await.unwrap().backlog, Some(1));
}

/// The key covers the whole request: a retry that changes `callback_url`, `delay_ms` or
/// `run_at` (not only the payload) is refused with 422, never silently given the old job;
/// `null` counts as absent. And keys are per API key: two clients using the same key get
/// two jobs, each its own on retry.
async fn idempotency_keys_cover_every_field_and_belong_to_one_api_key(storage: Storage) {
    let broker = Arc::new(MemoryBroker::new());
    // Callbacks can be signed (an ingress with --callback-secret), so jobs may name one.
    let signed = surge_common::job::CallbackPolicy {
        signed: true,
        ..Default::default()
    };
    let kinds = surge_common::kinds::KindRegistry::builder()
        .with_builtins()
        .with_callback_policy(signed)
        .try_build()
        .unwrap();
    let state = AppState::new(broker.clone(), storage, Limits::default())
        .with_api_keys(ApiKeys::parse("alpha,beta"))
        .with_kinds(kinds);
    let as_alpha = [("idempotency-key", "order-7"), ("x-api-key", "alpha")];
    let first = json!({"kind": "echo", "payload": {"n": 1}, "delay_ms": 60_000,
        "callback_url": "https://hooks.example.com/a", "run_at": "2026-01-01T00:00:00Z"});
    let answer = send(&state, post("/jobs", first.clone(), &as_alpha)).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["id"].clone();
    for (field, value) in [
        ("callback_url", json!("https://hooks.example.com/b")),
        ("callback_url", Value::Null),
        ("delay_ms", json!(60_001)),
        ("delay_ms", Value::Null),
        ("run_at", json!("2026-01-01T00:00:01Z")),
        ("run_at", Value::Null),
        ("key", json!("k")),
    ] {
        let mut changed = first.clone();
        changed[field] = value.clone();
        let answer = send(&state, post("/jobs", changed, &as_alpha)).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} = {value}: {}",
            answer.body
        );
        assert_eq!(answer.body["error"]["field"], "Idempotency-Key");
    }
    // The same request again, with `null` for an absent field: the same job.
    let mut same = first.clone();
    same["key"] = Value::Null;
    let again = send(&state, post("/jobs", same, &as_alpha)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    assert_eq!(again.body["id"], id);

    // Another API key, the same Idempotency-Key and request: another job, its own.
    let as_beta = [("idempotency-key", "order-7"), ("x-api-key", "beta")];
    let theirs = send(&state, post("/jobs", first.clone(), &as_beta)).await;
    assert_eq!(theirs.status, StatusCode::ACCEPTED, "{}", theirs.body);
    assert_ne!(theirs.body["id"], id, "beta got alpha's job");
    assert!(theirs.headers.get("idempotent-replayed").is_none());
    let retried = send(&state, post("/jobs", first.clone(), &as_beta)).await;
    assert_eq!(retried.body["id"], theirs.body["id"]);
    assert_eq!(retried.headers["idempotent-replayed"], "true");
    // Two jobs scheduled, nothing for now; nothing published twice.
    assert_eq!(broker.stats().await.unwrap().backlog, Some(0));
    for job in [&id, &theirs.body["id"]] {
        let seen = send(
            &state,
            Request::get(format!("/jobs/{}", job.as_str().unwrap()))
                .header("x-api-key", "alpha")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(seen.body["status"], "scheduled", "{}", seen.body);
    }
}

#[tokio::test]
async fn idempotency_keys_cover_every_field_and_belong_to_one_api_key_sqlite() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    idempotency_keys_cover_every_field_and_belong_to_one_api_key(storage).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn idempotency_keys_cover_every_field_and_belong_to_one_api_key_postgres() {
    let Some(base) = testing::service(testing::POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let url = testing::fresh_postgres_database(&base).await.unwrap();
    idempotency_keys_cover_every_field_and_belong_to_one_api_key(
        Storage::connect(&url).await.unwrap(),
    )
    .await;
}

/// A key stored before the hash covered every field (by an older ingress, in the shared
/// scope) still returns its job to a retry of the same request.
#[tokio::test]
async fn an_idempotency_key_stored_before_the_upgrade_still_finds_its_job() {
    use sha2::Digest;
    let (state, broker) = memory_state().await;
    let old_job = uuid::Uuid::now_v7();
    let legacy = hex::encode(sha2::Sha256::digest(
        json!({"kind": "echo", "payload": {"n": 2}, "key": null})
            .to_string()
            .as_bytes(),
    ));
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, job_id, state, created_at_us) \
         VALUES ('', 'old-key', $1, $2, 'done', 0)",
    )
    .bind(legacy)
    .bind(old_job.to_string())
    .execute(state.storage.pool())
    .await
    .unwrap();
    let retry = json!({"kind": "echo", "payload": {"n": 2}});
    let answer = send(
        &state,
        post("/jobs", retry, &[("idempotency-key", "old-key")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["id"], old_job.to_string());
    let other = json!({"kind": "echo", "payload": {"n": 3}});
    let answer = send(
        &state,
        post("/jobs", other, &[("idempotency-key", "old-key")]),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert_eq!(broker.stats().await.unwrap().backlog, Some(0));
}

#[tokio::test]
async fn a_full_backlog_answers_503_with_retry_after() {
    let (state, broker) = memory_state().await;
    let state = state.with_admission(AdmissionConfig {
        max_backlog: Some(10),
        ..AdmissionConfig::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let answer = send(&state, post("/jobs", json!({"kind": "echo"}), &[])).await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(answer.body["error"]["code"], "overloaded");
            let wait: u64 = answer.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait));
        }
        statuses.push(answer.status);
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(accepted, 10, "{statuses:?}");
    // Everything accepted is in the broker; nothing refused is.
    assert_eq!(broker.stats().await.unwrap().backlog, Some(10));
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429() {
    let (state, broker) = memory_state().await;
    let state = state.with_admission(AdmissionConfig {
        client_rate: NonZeroU32::new(1),
        client_burst: NonZeroU32::new(5),
        ..AdmissionConfig::default()
    });
    let mut limited = 0;
    for _ in 0..8 {
        let answer = send(&state, post("/jobs", json!({"kind": "echo"}), &[])).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert_eq!(answer.body["error"]["code"], "rate_limited");
            assert!(answer.headers.contains_key("retry-after"));
        }
    }
    assert_eq!(limited, 3);
    assert_eq!(broker.stats().await.unwrap().backlog, Some(5));
}

#[tokio::test]
async fn api_keys_guard_the_job_endpoints_only() {
    let (state, broker) = memory_state().await;
    let state = state.with_api_keys(ApiKeys::parse("s3cret"));
    let none = send(&state, post("/jobs", json!({"kind": "echo"}), &[])).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    let wrong = send(
        &state,
        post("/jobs", json!({"kind": "echo"}), &[("x-api-key", "guess")]),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        !wrong.body.to_string().contains("guess"),
        "keys are never echoed"
    );
    assert_eq!(broker.stats().await.unwrap().backlog, Some(0));
    let ok = send(
        &state,
        post(
            "/jobs",
            json!({"kind": "echo"}),
            &[("authorization", "Bearer s3cret")],
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED);
    let id = ok.body["id"].as_str().unwrap();
    assert_eq!(
        send(&state, get(&format!("/jobs/{id}"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(&state, get("/healthz")).await.status, StatusCode::OK);
    assert_eq!(send(&state, get("/readyz")).await.status, StatusCode::OK);
}

/// A request whose body is not read as JSON: `body` verbatim, with `content_type`.
fn raw_post(path: &str, content_type: &str, body: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", content_type);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn refusals_come_before_the_body_is_read() {
    let (state, broker) = memory_state().await;
    let state = state
        .with_api_keys(ApiKeys::parse("s3cret"))
        .with_admission(AdmissionConfig {
            client_rate: NonZeroU32::new(1),
            client_burst: NonZeroU32::new(1),
            ..AdmissionConfig::default()
        });
    // Unauthenticated: 401 whatever the body, never the body's own 400 / 413 / 415.
    let too_big = format!("{{\"kind\": \"{}\"}}", "x".repeat(300 * 1024));
    for (path, content_type, body) in [
        ("/jobs", "application/json", "{\"kind\": "),
        ("/jobs/batch", "application/json", "[{]"),
        ("/jobs", "text/plain", "hello"),
        ("/jobs", "application/json", too_big.as_str()),
    ] {
        let answer = send(&state, raw_post(path, content_type, body, &[])).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{path} {content_type}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["error"]["code"], "unauthorized",
            "{}",
            answer.body
        );
    }
    // Authenticated, the malformed body is the problem.
    let auth = [("x-api-key", "s3cret")];
    let first = send(
        &state,
        raw_post("/jobs", "application/json", "{\"kind\": ", &auth),
    )
    .await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST, "{}", first.body);
    // That request used the client's only token: over its rate, the next one is 429 before
    // its malformed body is looked at.
    for body in ["{\"kind\": ", "{\"kind\": \"echo\"}"] {
        let answer = send(&state, raw_post("/jobs", "application/json", body, &auth)).await;
        assert_eq!(
            answer.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{body}: {}",
            answer.body
        );
        assert!(answer.headers.contains_key("retry-after"));
    }
    assert_eq!(broker.stats().await.unwrap().backlog, Some(0));
}

#[tokio::test]
async fn a_batch_counts_every_job_against_the_rate() {
    let (state, broker) = memory_state().await;
    let state = state.with_admission(AdmissionConfig {
        client_rate: NonZeroU32::new(1),
        client_burst: NonZeroU32::new(3),
        ..AdmissionConfig::default()
    });
    let job = json!({"kind": "echo"});
    let never = send(
        &state,
        post("/jobs/batch", json!([job, job, job, job]), &[]),
    )
    .await;
    assert_eq!(
        never.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        never.body
    );
    let fits = send(&state, post("/jobs/batch", json!([job, job]), &[])).await;
    assert_eq!(fits.status, StatusCode::ACCEPTED, "{}", fits.body);
    let over = send(&state, post("/jobs/batch", json!([job, job]), &[])).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", over.body);
    assert_eq!(broker.stats().await.unwrap().backlog, Some(2));
}

#[tokio::test]
async fn draining_refuses_new_jobs_and_reports_not_ready() {
    let (state, broker) = memory_state().await;
    state.draining.store(true, Ordering::Relaxed);
    let refused = send(&state, post("/jobs", json!({"kind": "echo"}), &[])).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.body["error"]["code"], "shutting_down");
    assert_eq!(
        send(&state, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(broker.stats().await.unwrap().backlog, Some(0));
}

/// A broker whose publish fails (`stall: false`), or never answers (`stall: true`; the
/// request then ends without an answer, as when the ingress crashes or the client hangs
/// up). `entered` is notified when a stalling publish starts.
struct BrokenBroker {
    inner: MemoryBroker,
    stall: bool,
    entered: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Broker for BrokenBroker {
    async fn publish(&self, _jobs: &[surge_common::job::Job]) -> Result<(), BrokerError> {
        if self.stall {
            self.entered.notify_one();
            std::future::pending::<()>().await;
        }
        Err(BrokerError::Unavailable("the broker refuses".into()))
    }
    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        self.inner.consume(options).await
    }
    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        self.inner.stats().await
    }
    fn name(&self) -> &'static str {
        "broken"
    }
}

/// Stores a dead job (with its body, so it can be replayed) and returns its id.
async fn dead_job(storage: &Storage) -> String {
    use surge_common::job::Job;
    use surge_common::kinds::builtin::BuiltinKind;
    use surge_common::storage::{JobResult, JobStatus};
    let mut job = Job::new(BuiltinKind::Echo, json!({"n": 1}), None);
    job.awaits_acceptance = true;
    storage
        .accept(&surge_common::storage::acceptance::AcceptedJob::of(
            std::slice::from_ref(&job),
        ))
        .await
        .unwrap();
    let row = JobResult {
        job_id: job.id,
        kind: "echo".into(),
        status: JobStatus::Dead,
        result: None,
        error: Some("gave up".into()),
        attempts: 3,
        deliveries: 1,
        worker: "w".into(),
        enqueued_at_us: job.enqueued_at_us,
        started_at_us: job.enqueued_at_us,
        finished_at_us: job.enqueued_at_us,
        job: Some(job.clone()),
    };
    storage.record(&row).await.unwrap();
    job.id.to_string()
}

/// A replay whose publish fails, or that ends before its publish answered, leaves the job
/// dead and replayable (it used to delete the dead row first: a crash in between lost it).
async fn a_replay_that_never_published_loses_nothing(storage: Storage) {
    let entered = Arc::new(tokio::sync::Notify::new());
    let broken = |stall: bool| {
        let broker = Arc::new(BrokenBroker {
            inner: MemoryBroker::new(),
            stall,
            entered: entered.clone(),
        });
        AppState::new(broker, storage.clone(), Limits::default())
    };
    let id = dead_job(&storage).await;
    let path = format!("/jobs/{id}/replay");
    let replay = move || post(&path, json!({}), &[]);

    // The broker refuses: 503, and the job is still dead.
    let refused = send(&broken(false), replay()).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    let seen = send(&broken(false), get(&format!("/jobs/{id}"))).await;
    assert_eq!(seen.body["status"], "dead", "{}", seen.body);

    // The request ends while publishing (the ingress crashed, the client hung up).
    let stalled = broken(true);
    let request = tokio::spawn({
        let (stalled, request) = (stalled.clone(), replay());
        async move { send(&stalled, request).await }
    });
    entered.notified().await;
    request.abort();
    assert!(request.await.is_err_and(|e| e.is_cancelled()));
    let seen = send(&stalled, get(&format!("/jobs/{id}"))).await;
    assert_eq!(
        seen.body["status"], "dead",
        "the job was lost: {}",
        seen.body
    );
    assert_eq!(seen.body["error"], "gave up");

    // With a working broker the job can still be replayed, and runs to a result.
    let working = Arc::new(MemoryBroker::new());
    let state = AppState::new(working.clone(), storage.clone(), Limits::default());
    // The aborted request's claim is released in the background as it is dropped (a
    // crash would leave it to expire): until then the job answers 409 replay_in_progress.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let replayed = loop {
        let answer = send(&state, replay()).await;
        if answer.body["error"]["code"] != "replay_in_progress" {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(replayed.status, StatusCode::ACCEPTED, "{}", replayed.body);
    assert_eq!(working.stats().await.unwrap().backlog, Some(1));
    assert_eq!(wait_for_status(&state, &id, "queued").await["attempt"], 1);
    let (stop, worker) = start_worker(&state, RetryPolicy::default());
    let done = wait_for_status(&state, &id, "succeeded").await;
    assert_eq!(done["result"], json!({"n": 1}), "{done}");
    let _ = stop.send(());
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_never_published_loses_nothing_sqlite() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    a_replay_that_never_published_loses_nothing(storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn a_replay_that_never_published_loses_nothing_postgres() {
    let Some(base) = testing::service(testing::POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let url = testing::fresh_postgres_database(&base).await.unwrap();
    a_replay_that_never_published_loses_nothing(Storage::connect(&url).await.unwrap()).await;
}

/// Replays whose publish succeeded but whose mark (removing the dead rows) fails: the
/// client is told the truth (202: the job is published, not 503 "the job stays dead"),
/// a retry cannot publish it again (409 while its claim holds), and the replayed run
/// replaces the dead row whatever became of the mark: one run, one row. Single and bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_whose_mark_fails_after_the_publish_is_published_once() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let state = AppState::new(broker.clone(), storage.clone(), Limits::default());
    let single = dead_job(&storage).await;
    let bulk = dead_job(&storage).await;
    sqlx::query(
        "CREATE TRIGGER injected_fault BEFORE UPDATE ON jobs \
         WHEN OLD.state = 'dead' AND NEW.state = 'queued' \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .execute(storage.pool())
    .await
    .unwrap();

    let replayed = send(
        &state,
        post(&format!("/jobs/{single}/replay"), json!({}), &[]),
    )
    .await;
    assert_eq!(replayed.status, StatusCode::ACCEPTED, "{}", replayed.body);
    let again = send(
        &state,
        post(&format!("/jobs/{single}/replay"), json!({}), &[]),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(again.body["error"]["code"], "replay_in_progress");

    let replayed = send(&state, post("/jobs/replay", json!({}), &[])).await;
    assert_eq!(replayed.status, StatusCode::ACCEPTED, "{}", replayed.body);
    assert_eq!(replayed.body["ids"], json!([bulk]));
    let again = send(&state, post("/jobs/replay", json!({}), &[])).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["replayed"], 0);
    assert_eq!(broker.stats().await.unwrap().backlog, Some(2));

    let (stop, worker) = start_worker(&state, RetryPolicy::default());
    for id in [&single, &bulk] {
        let done = wait_for_status(&state, id, "succeeded").await;
        assert_eq!(done["result"], json!({"n": 1}), "{done}");
        let row = storage
            .get(uuid::Uuid::parse_str(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.deliveries, 1, "{row:?}");
        // Once its claim has expired, nothing is left to replay.
        let later = surge_common::clock::now_micros() + 10 * 60 * 1_000_000;
        let claimed = storage
            .claim_replay_at(uuid::Uuid::parse_str(id).unwrap(), later)
            .await
            .unwrap();
        assert!(claimed.is_none(), "{claimed:?}");
    }
    sqlx::query("DROP TRIGGER injected_fault")
        .execute(storage.pool())
        .await
        .unwrap();
    let _ = stop.send(());
    worker.await.unwrap();
}
