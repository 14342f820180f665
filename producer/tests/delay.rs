//! Scheduled jobs (`delay_ms` / `run_at`) on every broker: a delayed job says `scheduled`,
//! runs no earlier than asked, does not hold up a job posted after it, and survives a
//! restart of the ingress that accepted it (it waits in the database, not in a process).

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::storage::{JobResult, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;
use tokio::sync::watch;
use uuid::Uuid;

/// The delay asked for.
const DELAY_MS: u64 = 1500;

/// A running ingress: its base URL and how to stop it.
struct Running {
    base: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_ingress(broker_flags: &[String], database: &str) -> Running {
    let mut argv: Vec<String> = ["surge-producer", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    argv.extend(broker_flags.iter().cloned());
    argv.extend(["--database-url".into(), database.into()]);
    let args = ProducerArgs::try_parse_from(argv).unwrap();
    let ingress = Ingress::build(&args).await.unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        ingress
            .run_until_stopped(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    Running { base, stop, task }
}

async fn stop(running: Running) {
    running.stop.send(true).unwrap();
    running.task.await.unwrap();
}

async fn post(base: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn row(storage: &Storage, id: &str) -> JobResult {
    let id = Uuid::parse_str(id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(row) = storage.get(id).await.unwrap() {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no result for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(broker_flags: Vec<String>, database: String) {
    let storage = Storage::connect(&database).await.unwrap();
    let real_broker = !broker_flags.iter().any(|f| f == "memory");
    // Workers (a real broker) live across the ingress restart.
    let (stop_worker, mut worker_stopped) = watch::channel(false);
    let worker = if real_broker {
        let mut argv = vec!["surge-worker".to_owned()];
        argv.extend(broker_flags.iter().cloned());
        argv.extend(["--database-url".into(), database.clone()]);
        let args = WorkerArgs::try_parse_from(argv).unwrap();
        let service = WorkerService::build(&args).await.unwrap();
        Some(tokio::spawn(async move {
            service
                .run_until_stopped(async move {
                    let _ = worker_stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        }))
    } else {
        None
    };

    let ingress = start_ingress(&broker_flags, &database).await;
    // Bad schedules name their field and accept nothing.
    for (body, field) in [
        (
            json!({"kind": "echo", "delay_ms": 8 * 24 * 3_600_000u64}),
            "delay_ms",
        ),
        (json!({"kind": "echo", "run_at": "next tuesday"}), "run_at"),
        (
            json!({"kind": "echo", "run_at": "2999-01-01T00:00:00Z"}),
            "run_at",
        ),
    ] {
        let (status, answer) = post(&ingress.base, body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }

    let (status, delayed) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "later"}, "delay_ms": DELAY_MS}),
    )
    .await;
    assert_eq!(status, 202, "{delayed}");
    let delayed = delayed["id"].as_str().unwrap().to_owned();
    let state = get(&ingress.base, &format!("/jobs/{delayed}")).await;
    assert_eq!(state["status"], "scheduled", "{state}");

    // A job posted after it runs first.
    let (status, now) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "now"}}),
    )
    .await;
    assert_eq!(status, 202, "{now}");
    let now = row(&storage, now["id"].as_str().unwrap()).await;
    let delayed_row = row(&storage, &delayed).await;
    let due_us = delayed_row.enqueued_at_us + i64::try_from(DELAY_MS * 1000).unwrap();
    assert!(
        delayed_row.started_at_us >= due_us,
        "ran {} µs early",
        due_us - delayed_row.started_at_us
    );
    assert!(
        now.finished_at_us < delayed_row.started_at_us,
        "the later job waited"
    );
    assert_eq!(delayed_row.result, Some(json!({"n": "later"})));

    // Scheduled, then the ingress restarts before it is due: the next one publishes it.
    let (status, survivor) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "restart"}, "delay_ms": DELAY_MS}),
    )
    .await;
    assert_eq!(status, 202, "{survivor}");
    stop(ingress).await;
    let ingress = start_ingress(&broker_flags, &database).await;
    let survivor = row(&storage, survivor["id"].as_str().unwrap()).await;
    assert_eq!(survivor.result, Some(json!({"n": "restart"})));
    stop(ingress).await;

    stop_worker.send(true).unwrap();
    if let Some(worker) = worker {
        worker.await.unwrap();
    }
}

fn queue_flags(broker: &str, flag: &str, url: &str) -> Vec<String> {
    vec![
        "--broker".into(),
        broker.into(),
        flag.into(),
        url.into(),
        "--queue".into(),
        testing::unique_name("delay"),
        "--builtin-kinds".into(),
        "true".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_broker_a_delayed_job_runs_when_due() {
    scenario(
        vec!["--broker".into(), "memory".into()],
        testing::temp_sqlite_url(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_a_delayed_job_runs_when_due() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    scenario(queue_flags("rabbitmq", "--amqp-url", &amqp), database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_a_delayed_job_runs_when_due() {
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let mut flags = queue_flags("kafka", "--kafka-brokers", &brokers);
    flags.extend(["--kafka-partitions".into(), "2".into()]);
    scenario(flags, database).await;
}

// --- All or nothing, and no double publish (issue 18) --------------------------------

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use surge_common::clock::now_micros;
use surge_producer::{app, scheduler, AppState, Limits};
use tower::ServiceExt;

/// A broker whose publish waits, once `entered` is notified, until `open` is notified,
/// then refuses: a publish that stalls a while and fails.
struct GatedBroker {
    inner: MemoryBroker,
    entered: Arc<tokio::sync::Notify>,
    open: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl Broker for GatedBroker {
    async fn publish(&self, _jobs: &[surge_common::job::Job]) -> Result<(), BrokerError> {
        self.entered.notify_one();
        self.open.notified().await;
        Err(BrokerError::Unavailable("the broker refuses".into()))
    }
    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        self.inner.consume(options).await
    }
    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        self.inner.stats().await
    }
    fn name(&self) -> &'static str {
        "gated"
    }
}

async fn send(state: &AppState, request: Request<Body>) -> (u16, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn post_json(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Waits until the clock has passed `at_us` (µs since the epoch).
async fn clock_past(at_us: i64) {
    while now_micros() <= at_us {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn scheduled_rows(storage: &Storage) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM scheduled_jobs")
        .fetch_one(storage.pool())
        .await
        .unwrap()
}

/// A batch of a job due in 1 ms and a job for now, whose publish stalls and then fails
/// (503): while it stalls, a scheduler (another ingress, its broker working) finds the
/// delayed job due and must not publish it; after the 503 it is gone. Before the fix the
/// delayed row was committed, claimable, first: the scheduler published it, and it ran
/// although its batch was refused.
async fn a_refused_batch_never_runs_its_delayed_job(storage: Storage) {
    let entered = Arc::new(tokio::sync::Notify::new());
    let open = Arc::new(tokio::sync::Notify::new());
    let gated = Arc::new(GatedBroker {
        inner: MemoryBroker::new(),
        entered: entered.clone(),
        open: open.clone(),
    });
    let state = AppState::new(gated, storage.clone(), Limits::default());
    let other_broker = Arc::new(MemoryBroker::new());
    let other = AppState::new(other_broker.clone(), storage.clone(), Limits::default());

    let sent_at = now_micros();
    let batch = json!([
        {"kind": "echo", "payload": {"n": "later"}, "delay_ms": 1},
        {"kind": "echo", "payload": {"n": "now"}},
    ]);
    let request = tokio::spawn({
        let state = state.clone();
        async move { send(&state, post_json("/jobs/batch", batch)).await }
    });
    entered.notified().await;
    clock_past(sent_at + 5_000).await;
    assert_eq!(
        scheduler::publish_due(&other).await,
        0,
        "a scheduler published a job of a batch still being decided"
    );
    open.notify_one();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(scheduler::publish_due(&other).await, 0);
    assert_eq!(
        scheduled_rows(&storage).await,
        0,
        "the refused delayed job is still scheduled"
    );
    assert_eq!(other_broker.stats().await.unwrap().backlog, Some(0));

    // The same batch accepted: the delayed job is released and published when due.
    let working = Arc::new(MemoryBroker::new());
    let state = AppState::new(working.clone(), storage.clone(), Limits::default());
    let sent_at = now_micros();
    let batch = json!([
        {"kind": "echo", "payload": {"n": "later"}, "delay_ms": 1},
        {"kind": "echo", "payload": {"n": "now"}},
    ]);
    let (status, body) = send(&state, post_json("/jobs/batch", batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(working.stats().await.unwrap().backlog, Some(1));
    clock_past(sent_at + 5_000).await;
    assert_eq!(scheduler::publish_due(&state).await, 1);
    assert_eq!(working.stats().await.unwrap().backlog, Some(2));
    assert_eq!(scheduled_rows(&storage).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_never_runs_its_delayed_job_sqlite() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    a_refused_batch_never_runs_its_delayed_job(storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn a_refused_batch_never_runs_its_delayed_job_postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    a_refused_batch_never_runs_its_delayed_job(Storage::connect(&url).await.unwrap()).await;
}

/// A worker for `state`'s broker and database, until the sender is used.
fn start_worker(
    state: &AppState,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let worker = surge_worker::WorkerService::embedded(
        state.broker.clone(),
        state.storage.clone(),
        state.kinds.clone(),
        surge_worker::WorkerOptions {
            capacity: 4,
            ..surge_worker::WorkerOptions::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
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

/// The scheduler publishes a due job, then cannot forget it (the database refuses the
/// delete): it keeps trying while its lease holds, so once the database takes writes
/// again the job is forgotten and never claimed again. And should the ingress die right
/// after the publish (nothing forgotten at all), a scheduler whose lease ran out finds the
/// job already run and forgets it instead of publishing it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_job_the_scheduler_could_not_forget_is_not_published_again() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let state = AppState::new(broker.clone(), storage.clone(), Limits::default());
    let lease_us =
        i64::try_from(scheduler::lease(state.limits.publish_timeout).as_micros()).unwrap();
    assert!(
        scheduler::lease(Duration::from_secs(120))
            > Duration::from_secs(120) + scheduler::MARK_WINDOW
    );

    // 1. The delete fails after the publish; it is retried and succeeds once possible.
    let sent_at = now_micros();
    let (status, first) = send(
        &state,
        post_json(
            "/jobs",
            json!({"kind": "echo", "payload": {"n": 1}, "delay_ms": 1}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    sqlx::query(
        "CREATE TRIGGER injected_fault BEFORE DELETE ON scheduled_jobs \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    )
    .execute(storage.pool())
    .await
    .unwrap();
    clock_past(sent_at + 5_000).await;
    assert_eq!(scheduler::publish_due(&state).await, 1);
    assert_eq!(scheduled_rows(&storage).await, 1, "the fault did not bite");
    sqlx::query("DROP TRIGGER injected_fault")
        .execute(storage.pool())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while scheduled_rows(&storage).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the published job was never forgotten: it is published again when its lease ends"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(storage
        .claim_due_at(lease_us, 200, now_micros() + lease_us + 1)
        .await
        .unwrap()
        .is_empty());

    // 2. The ingress dies between the broker's confirm and the delete.
    let sent_at = now_micros();
    let (status, second) = send(
        &state,
        post_json(
            "/jobs",
            json!({"kind": "echo", "payload": {"n": 2}, "delay_ms": 1}),
        ),
    )
    .await;
    assert_eq!(status, 202, "{second}");
    clock_past(sent_at + 5_000).await;
    let claimed = storage.claim_due(lease_us, 200).await.unwrap();
    assert_eq!(claimed.len(), 1);
    broker.publish(&claimed).await.unwrap();
    // (no unschedule: the ingress is gone)
    let (stop, worker) = start_worker(&state);
    let done = row(&storage, second["id"].as_str().unwrap()).await;
    assert_eq!(done.result, Some(json!({"n": 2})));
    let again = storage
        .claim_due_at(lease_us, 200, now_micros() + lease_us + 1)
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "a job that already ran was claimed to be published again: {again:?}"
    );
    assert_eq!(scheduled_rows(&storage).await, 0);
    let _ = stop.send(());
    worker.await.unwrap();
    let first = row(&storage, first["id"].as_str().unwrap()).await;
    assert_eq!((first.deliveries, done.deliveries), (1, 1));
}
