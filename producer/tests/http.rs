//! The HTTP API end to end: bad input is refused with a JSON error naming the problem and
//! publishes nothing; a good job is persisted exactly once; 202 means the broker has it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use surge_producer::{app, AppState, Limits};
use surge_worker::{WorkerOptions, WorkerService};
use tower::ServiceExt;

const LIMITS: Limits = Limits {
    max_body_bytes: 4096,
    max_batch: 10,
    publish_timeout: std::time::Duration::from_secs(10),
};

struct Response {
    status: StatusCode,
    body: Value,
}

async fn call(state: &AppState, request: Request<Body>) -> Response {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    assert!(
        response.headers().contains_key("x-request-id"),
        "every response carries X-Request-Id"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{status}: body is not JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Response { status, body }
}

fn post(path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::post(path);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    builder.body(body.into()).unwrap()
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    post(path, Some("application/json"), body.to_string())
}

/// (name, request, expected status, expected `field` in the error, if any)
fn bad_requests() -> Vec<(
    &'static str,
    Request<Body>,
    StatusCode,
    Option<&'static str>,
)> {
    let json = Some("application/json");
    let huge = format!(
        "{{\"kind\":\"echo\",\"payload\":\"{}\"}}",
        "x".repeat(LIMITS.max_body_bytes)
    );
    let eleven: Vec<Value> = (0..11).map(|_| json!({"kind": "echo"})).collect();
    vec![
        (
            "malformed JSON",
            post("/jobs", json, "{kind: sleep}"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "truncated JSON",
            post("/jobs", json, "{\"kind\": \"sleep\", \"pay"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "invalid UTF-8",
            post("/jobs", json, &b"{\"kind\": \"\xff\xfe\"}"[..]),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "empty body",
            post("/jobs", json, ""),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "trailing garbage",
            post("/jobs", json, "{\"kind\":\"echo\"}{}"),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "no content type",
            post("/jobs", None, "{\"kind\":\"echo\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "wrong content type",
            post("/jobs", Some("text/plain"), "{\"kind\":\"echo\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
        ),
        (
            "missing kind",
            post_json("/jobs", &json!({"payload": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("kind"),
        ),
        (
            "mistyped kind",
            post_json("/jobs", &json!({"kind": 7})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("kind"),
        ),
        (
            "unknown kind",
            post_json("/jobs", &json!({"kind": "mine-bitcoin"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("kind"),
        ),
        (
            "missing payload field",
            post_json("/jobs", &json!({"kind": "sleep", "payload": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("payload"),
        ),
        (
            "mistyped payload field",
            post_json("/jobs", &json!({"kind": "sleep", "payload": {"ms": "10"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("payload"),
        ),
        (
            "out-of-range payload",
            post_json(
                "/jobs",
                &json!({"kind": "sleep", "payload": {"ms": 1_000_000_000u64}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("payload.ms"),
        ),
        (
            "negative number",
            post_json("/jobs", &json!({"kind": "hash", "payload": {"rounds": -1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("payload"),
        ),
        (
            "unknown field",
            post_json("/jobs", &json!({"kind": "echo", "urgency": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("urgency"),
        ),
        (
            "priority out of range",
            post_json("/jobs", &json!({"kind": "echo", "priority": 9})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("priority"),
        ),
        (
            "empty key",
            post_json("/jobs", &json!({"kind": "echo", "key": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("key"),
        ),
        (
            "not an object",
            post_json("/jobs", &json!([1, 2])),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "body over the limit",
            post("/jobs", json, huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "batch over the limit",
            post_json("/jobs/batch", &json!(eleven)),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "empty batch",
            post_json("/jobs/batch", &json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "batch with one bad job",
            post_json("/jobs/batch", &json!([{"kind": "echo"}, {"kind": "nope"}])),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("[1].kind"),
        ),
        (
            "batch not an array",
            post_json("/jobs/batch", &json!({"kind": "echo"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            "bad job id",
            Request::get("/jobs/not-a-uuid")
                .body(Body::empty())
                .unwrap(),
            StatusCode::BAD_REQUEST,
            Some("id"),
        ),
        (
            "unknown route",
            Request::get("/nope").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            None,
        ),
    ]
}

/// Every bad request gets its 4xx, a JSON error naming the problem, and publishes nothing.
async fn bad_input_publishes_nothing(state: AppState) {
    for (name, request, expected, field) in bad_requests() {
        let response = call(&state, request).await;
        assert_eq!(response.status, expected, "{name}: {}", response.body);
        let error = &response.body["error"];
        assert!(error["code"].is_string(), "{name}: {}", response.body);
        assert!(
            !error["message"].as_str().unwrap_or("").is_empty(),
            "{name}: {}",
            response.body
        );
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{name}: {}", response.body);
        }
    }
    let stats = state.broker.stats().await.unwrap();
    assert_eq!(stats.backlog, Some(0), "bad input must publish nothing");
    // The service is still up and accepts a good job afterwards.
    let ok = call(&state, post_json("/jobs", &json!({"kind": "echo"}))).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    assert_eq!(state.broker.stats().await.unwrap().backlog, Some(1));
}

#[tokio::test]
async fn bad_input_on_the_memory_broker() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let state = AppState::new(Arc::new(MemoryBroker::new()), storage, LIMITS);
    bad_input_publishes_nothing(state).await;
}

async fn rabbit_and_postgres(limits: Limits) -> Option<(AppState, Arc<RabbitMqBroker>, String)> {
    let amqp = testing::service(AMQP_URL_VAR, "RabbitMQ")?;
    let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let broker = Arc::new(
        RabbitMqBroker::connect(&amqp, &testing::unique_name("http"))
            .await
            .unwrap(),
    );
    let state = AppState::new(broker.clone(), storage, limits);
    Some((state, broker, amqp))
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn bad_input_on_rabbitmq() {
    let Some((state, broker, _)) = rabbit_and_postgres(LIMITS).await else {
        return;
    };
    bad_input_publishes_nothing(state).await;
    broker.delete_topology().await.unwrap();
}

/// Polls `GET /jobs/{id}` (200 from acceptance on: queued, running…) until the job has
/// its result (or 30 s pass).
async fn wait_for_result(state: &AppState, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = call(
            state,
            Request::get(format!("/jobs/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        if matches!(response.body["status"].as_str(), Some("succeeded" | "dead")) {
            return response.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never got a result"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn a_job_is_persisted_exactly_once_and_202_means_the_broker_has_it() {
    let Some((state, broker, amqp)) = rabbit_and_postgres(Limits::default()).await else {
        return;
    };
    // No consumer yet: the jobs can only be in RabbitMQ once 202 is answered.
    let single = call(
        &state,
        post_json("/jobs", &json!({"kind": "echo", "payload": {"n": 1}})),
    )
    .await;
    assert_eq!(single.status, StatusCode::ACCEPTED, "{}", single.body);
    let batch = call(
        &state,
        post_json("/jobs/batch", &json!([{"kind": "sleep", "payload": {"ms": 5}}, {"kind": "hash", "payload": {"rounds": 10}}])),
    )
    .await;
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.body);
    assert_eq!(broker.stats().await.unwrap().backlog, Some(3));

    // Drop the ingress's connection entirely; a worker on a new connection finds the jobs.
    let queue = broker.queue().to_owned();
    let storage = state.storage.clone();
    drop(state);
    drop(broker);
    let consumer_broker: Arc<dyn Broker> =
        Arc::new(RabbitMqBroker::connect(&amqp, &queue).await.unwrap());
    let worker = WorkerService::embedded(
        consumer_broker.clone(),
        storage.clone(),
        surge_common::kinds::KindRegistry::builtin(),
        WorkerOptions::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let state = AppState::new(consumer_broker.clone(), storage.clone(), Limits::default());
    let mut ids = vec![single.body["id"].as_str().unwrap().to_owned()];
    ids.extend(
        batch.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned()),
    );
    for id in &ids {
        let result = wait_for_result(&state, id).await;
        assert_eq!(result["status"], "succeeded", "{result}");
    }
    let echoed = wait_for_result(&state, &ids[0]).await;
    assert_eq!(echoed["result"], json!({"n": 1}));
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    // Exactly once: one row per job, each written once, and nothing else in the table.
    assert_eq!(storage.count().await.unwrap(), 3);
    let uuids: Vec<uuid::Uuid> = ids.iter().map(|s| s.parse().unwrap()).collect();
    for row in storage.get_many(&uuids).await.unwrap() {
        assert_eq!(row.deliveries, 1, "{row:?}");
    }
    assert_eq!(consumer_broker.stats().await.unwrap().backlog, Some(0));
    consumer_broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let state = AppState::new(Arc::new(MemoryBroker::new()), storage, LIMITS);
    let health = call(
        &state,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = call(&state, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["broker"]["backlog"], 0);
}
