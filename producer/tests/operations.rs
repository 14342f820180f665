//! Operating Surge after a bad deploy, through the HTTP API: listing jobs
//! (`GET /jobs`), replaying the dead ones in bulk (`POST /jobs/replay`) — safely repeated
//! and safely interrupted — and cancelling one (`DELETE /jobs/{id}`); bad parameters are
//! refused naming the parameter.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use surge_common::job::Job;
use surge_common::retry::RetryPolicy;
use surge_common::storage::{JobResult, JobStatus, Storage};
use surge_common::testing;
use surge_producer::{app, AppState, Limits};
use surge_worker::{WorkerOptions, WorkerService};
use tower::ServiceExt;
use uuid::Uuid;

async fn send(state: &AppState, method: Method, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn sqlite() -> Storage {
    Storage::connect(&testing::temp_sqlite_url()).await.unwrap()
}

async fn postgres() -> Option<Storage> {
    let base = testing::service(testing::POSTGRES_URL_VAR, "PostgreSQL")?;
    let url = testing::fresh_postgres_database(&base).await.unwrap();
    Some(Storage::connect(&url).await.unwrap())
}

/// Stores `n` dead jobs of `kind` (bodies kept, acceptance recorded, finished 1 ms apart
/// from `at_us`) and returns their ids.
async fn dead_jobs(storage: &Storage, kind: &str, n: usize, at_us: i64) -> Vec<Uuid> {
    let rows: Vec<JobResult> = (0..n)
        .map(|i| {
            let mut job = Job::new(kind, json!({"n": i}), None);
            job.awaits_acceptance = true;
            JobResult {
                job_id: job.id,
                kind: kind.into(),
                status: JobStatus::Dead,
                result: None,
                error: Some("bad deploy".into()),
                attempts: 5,
                deliveries: 1,
                worker: "w".into(),
                enqueued_at_us: at_us,
                started_at_us: at_us,
                finished_at_us: at_us + i as i64 * 1000,
                job: Some(job),
            }
        })
        .collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
    storage
        .accept(&surge_common::testing::accepted(&ids))
        .await
        .unwrap();
    storage.record_many(&rows).await.unwrap();
    ids
}

#[tokio::test]
async fn bad_parameters_are_refused_naming_them() {
    let state = AppState::new(
        Arc::new(MemoryBroker::new()),
        sqlite().await,
        Limits::default(),
    );
    let cases: &[(Method, &str, StatusCode, &str)] = &[
        (
            Method::GET,
            "/jobs?status=failed",
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            Method::GET,
            "/jobs?limit=0",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/jobs?limit=501",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/jobs?limit=-1",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/jobs?limit=99999999999999999999",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/jobs?since=yesterday",
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            Method::GET,
            "/jobs?since=2026-13-01T00:00:00Z",
            StatusCode::BAD_REQUEST,
            "since",
        ),
        (
            Method::GET,
            "/jobs?cursor=abc",
            StatusCode::BAD_REQUEST,
            "cursor",
        ),
        (Method::GET, "/jobs?kind=", StatusCode::BAD_REQUEST, "kind"),
        (
            Method::GET,
            "/jobs?kind=a%00b",
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            Method::GET,
            "/jobs?status=dead&status=dead",
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            Method::GET,
            "/jobs?sort=asc",
            StatusCode::BAD_REQUEST,
            "sort",
        ),
        (
            Method::GET,
            "/jobs?%FF=1",
            StatusCode::BAD_REQUEST,
            "\u{FFFD}",
        ),
        (
            Method::POST,
            "/jobs/replay?status=running",
            StatusCode::BAD_REQUEST,
            "status",
        ),
        (
            Method::POST,
            "/jobs/replay?max=0",
            StatusCode::BAD_REQUEST,
            "max",
        ),
        (
            Method::POST,
            "/jobs/replay?max=1001",
            StatusCode::BAD_REQUEST,
            "max",
        ),
        (
            Method::POST,
            "/jobs/replay?limit=5",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::DELETE,
            "/jobs/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "id",
        ),
    ];
    for (method, path, status, field) in cases {
        let (got, body) = send(&state, method.clone(), path).await;
        assert_eq!(got, *status, "{method} {path}: {body}");
        assert_eq!(body["error"]["field"], *field, "{method} {path}: {body}");
    }
    let (status, body) = send(&state, Method::DELETE, &format!("/jobs/{}", Uuid::now_v7())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Good ones: an empty first page, an empty replay.
    let (status, body) = send(
        &state,
        Method::GET,
        "/jobs?status=dead&kind=echo&since=2026-12-03T10:00:00%2B01:00&limit=500",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"jobs": [], "next_cursor": null}));
    let (status, body) = send(&state, Method::POST, "/jobs/replay?status=dead&max=1000").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], 0);
}

/// Lists the dead jobs of one kind since a time, page by page, over HTTP.
async fn listing_over_http(storage: Storage) {
    let state = AppState::new(
        Arc::new(MemoryBroker::new()),
        storage.clone(),
        Limits::default(),
    );
    // 2026-12-03T10:00:00Z
    let at = 1_796_292_000_000_000;
    let echo = dead_jobs(&storage, "echo", 7, at).await;
    dead_jobs(&storage, "hash", 3, at).await;
    let mut path = "/jobs?status=dead&kind=echo&since=2026-12-03T10:00:00.001Z&limit=4".to_owned();
    let mut listed = Vec::new();
    loop {
        let (status, body) = send(&state, Method::GET, &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for job in body["jobs"].as_array().unwrap() {
            assert_eq!(job["kind"], "echo", "{job}");
            assert_eq!(job["status"], "dead", "{job}");
            assert_eq!(job["error"], "bad deploy", "{job}");
            assert_eq!(job["attempts"], 5, "{job}");
            assert_eq!(job["replayable"], true, "{job}");
            assert!(
                job["at"]
                    .as_str()
                    .unwrap()
                    .starts_with("2026-12-03T10:00:00.0"),
                "{job}"
            );
            listed.push(job["id"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/jobs?status=dead&kind=echo&since=2026-12-03T10:00:00.001Z&limit=4&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    // Newest first, the first one (at exactly 10:00:00.000) left out by `since`.
    let expected: Vec<String> = echo[1..].iter().rev().map(Uuid::to_string).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn listing_over_http_sqlite() {
    listing_over_http(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn listing_over_http_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    listing_over_http(storage).await;
}

/// A memory broker whose publishes take a while (so that concurrent replays overlap) or,
/// stalling, never finish (a request interrupted mid-publish).
struct SlowBroker {
    inner: MemoryBroker,
    delay: Duration,
    stall: bool,
    entered: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Broker for SlowBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        self.entered.notify_one();
        if self.stall {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.inner.publish(jobs).await
    }
    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        self.inner.consume(options).await
    }
    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        self.inner.stats().await
    }
    fn name(&self) -> &'static str {
        "slow"
    }
}

/// Two overlapping bulk replays publish each dead job once; a replay interrupted while
/// publishing leaves its jobs dead and replayable; replayed jobs run to a result.
async fn bulk_replay_is_safe_to_repeat_and_to_interrupt(storage: Storage) {
    let at = 1_796_292_000_000_000;
    let dead = dead_jobs(&storage, "echo", 40, at).await;
    let other = dead_jobs(&storage, "hash", 5, at).await;
    let entered = Arc::new(tokio::sync::Notify::new());
    let broker = |stall: bool| {
        Arc::new(SlowBroker {
            inner: MemoryBroker::new(),
            delay: Duration::from_millis(300),
            stall,
            entered: entered.clone(),
        })
    };

    // Interrupted: the request ends while its publish is under way.
    let stalled = AppState::new(broker(true), storage.clone(), Limits::default());
    let request = tokio::spawn({
        let stalled = stalled.clone();
        async move { send(&stalled, Method::POST, "/jobs/replay?kind=echo&max=1000").await }
    });
    entered.notified().await;
    request.abort();
    assert!(request.await.is_err_and(|e| e.is_cancelled()));
    // Every job is still dead (listed as such, with its error), none lost.
    let (_, body) = send(
        &stalled,
        Method::GET,
        "/jobs?status=dead&kind=echo&limit=500",
    )
    .await;
    let still_dead: HashSet<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(still_dead.len(), 40, "{body}");

    // Two overlapping replays of the same dead set: each job is published exactly once.
    let working = broker(false);
    let state = AppState::new(working.clone(), storage.clone(), Limits::default());
    // The interrupted request's claims are released as it is dropped (in the background;
    // a crash would leave them to expire, see the storage tests): wait for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let claimed = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM jobs WHERE replaying_since_us IS NOT NULL",
        )
        .fetch_one(storage.pool())
        .await
        .unwrap();
        if claimed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "claims never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = || {
        let state = state.clone();
        tokio::spawn(
            async move { send(&state, Method::POST, "/jobs/replay?kind=echo&max=1000").await },
        )
    };
    let (first, second) = (replay(), replay());
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let mut published = Vec::new();
    for (status, body) in [&first, &second] {
        assert!(
            *status == StatusCode::ACCEPTED || *status == StatusCode::OK,
            "{status}: {body}"
        );
        assert_eq!(
            body["replayed"].as_u64().unwrap() as usize,
            body["ids"].as_array().unwrap().len()
        );
        published.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned()),
        );
    }
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "a job was published twice: {first:?} {second:?}"
    );
    let expected: HashSet<String> = dead.iter().map(Uuid::to_string).collect();
    assert_eq!(
        distinct,
        expected.iter().collect(),
        "every dead echo job, and only those"
    );
    assert_eq!(
        working.stats().await.unwrap().backlog,
        Some(40),
        "40 messages in the broker"
    );
    // Repeating the call finds nothing left to replay; the other kind is untouched.
    let (status, body) = send(&state, Method::POST, "/jobs/replay?kind=echo").await;
    assert_eq!(
        (status, &body["replayed"]),
        (StatusCode::OK, &json!(0)),
        "{body}"
    );
    let (_, body) = send(&state, Method::GET, "/jobs?status=dead").await;
    let left: HashSet<String> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, other.iter().map(Uuid::to_string).collect());

    // The replayed jobs run to a result, each once.
    let worker = WorkerService::embedded(
        state.broker.clone(),
        storage.clone(),
        state.kinds.clone(),
        WorkerOptions {
            capacity: 8,
            retry: RetryPolicy::default(),
            ..WorkerOptions::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = storage.get_many(&dead).await.unwrap();
        if rows.iter().all(|r| r.status == JobStatus::Succeeded) {
            assert!(
                rows.iter().all(|r| r.deliveries == 1 && r.attempts == 1),
                "{rows:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replayed jobs never succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_is_safe_to_repeat_and_to_interrupt_sqlite() {
    bulk_replay_is_safe_to_repeat_and_to_interrupt(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn bulk_replay_is_safe_to_repeat_and_to_interrupt_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    bulk_replay_is_safe_to_repeat_and_to_interrupt(storage).await;
}

/// `DELETE /jobs/{id}` on a queued job: 200 `cancelled`, and `GET` says so; again: 200;
/// on a finished job: 409 naming its status.
#[tokio::test]
async fn cancelling_over_http() {
    let broker = Arc::new(MemoryBroker::new());
    let state = AppState::new(broker.clone(), sqlite().await, Limits::default());
    let request = Request::post("/jobs")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"kind": "echo", "payload": {}}).to_string(),
        ))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let id = serde_json::from_slice::<Value>(&bytes).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = send(&state, Method::DELETE, &format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["result"], Value::Null, "{body}");
    let (_, body) = send(&state, Method::GET, &format!("/jobs/{id}")).await;
    assert_eq!(body["status"], "cancelled", "{body}");
    let (status, _) = send(&state, Method::DELETE, &format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = send(&state, Method::GET, "/jobs?status=cancelled").await;
    assert_eq!(body["jobs"][0]["id"], id.as_str(), "{body}");

    let dead = dead_jobs(&state.storage, "echo", 1, 1).await[0];
    let (status, body) = send(&state, Method::DELETE, &format!("/jobs/{dead}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_finished", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("dead"),
        "{body}"
    );
}
