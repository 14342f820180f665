//! Three `surge-worker` processes run an HTTP kind (`--config`, `concurrency = 20`)
//! against a test server that records its peak number of requests in flight: on RabbitMQ
//! and on Kafka, the server never sees a 21st concurrent request (the cap holds across
//! processes: slots leased in the shared database), and every job gets its result.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use support::{spawn_worker, wait_for_results};
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::storage::{JobStatus, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use tokio::process::Child;

const CAP: u32 = 20;
const JOBS: usize = 600;
/// Jobs each worker runs at once: three workers could send 96 requests at a time.
const CAPACITY: &str = "32";

#[derive(Default)]
struct Target {
    requests: AtomicU32,
    in_flight: AtomicU32,
    peak: AtomicU32,
}

async fn handle(State(target): State<Arc<Target>>, body: Bytes) -> axum::Json<Value> {
    target.requests.fetch_add(1, Ordering::SeqCst);
    let now = target.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    target.peak.fetch_max(now, Ordering::SeqCst);
    // The target's own work: long enough for requests to pile up against the cap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    target.in_flight.fetch_sub(1, Ordering::SeqCst);
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({ "echo": payload }))
}

/// Starts the target; returns its URL and what it saw.
async fn start_target() -> (String, Arc<Target>) {
    let target = Arc::new(Target::default());
    let app = Router::new()
        .route("/work", post(handle))
        .with_state(target.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/work"), target)
}

/// A configuration file declaring the HTTP kind `target`.
fn config_file(url: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("config")));
    std::fs::write(
        &path,
        format!("[kinds.target]\nurl = \"{url}\"\nconcurrency = {CAP}\ntimeout_ms = 10000\n"),
    )
    .unwrap();
    path
}

/// Publishes the jobs, starts three workers with `args` (plus `--config`), and checks the
/// peak and the results.
async fn cap_holds(broker: &dyn Broker, database: &str, args: &[&str]) {
    let storage = Storage::connect(database).await.unwrap();
    let (url, target) = start_target().await;
    let config = config_file(&url);
    let jobs: Vec<Job> = (0..JOBS)
        .map(|i| Job::new("target", json!({ "i": i }), None))
        .collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    for chunk in jobs.chunks(200) {
        broker.publish(chunk).await.unwrap();
    }
    let mut args: Vec<&str> = args.to_vec();
    let config_arg = config.display().to_string();
    args.extend(["--config", &config_arg, "--capacity", CAPACITY]);
    let mut workers: Vec<Child> = ["http-a", "http-b", "http-c"]
        .iter()
        .map(|name| spawn_worker(name, database, &args))
        .collect();

    let rows = wait_for_results(&storage, &ids, Duration::from_secs(180)).await;
    for row in &rows {
        assert_eq!(row.status, JobStatus::Succeeded, "{row:?}");
        let i = jobs.iter().position(|j| j.id == row.job_id).unwrap();
        assert_eq!(row.result, Some(json!({ "echo": { "i": i } })));
    }
    let peak = target.peak.load(Ordering::SeqCst);
    eprintln!(
        "peak in flight {peak} (cap {CAP}), {} requests for {JOBS} jobs",
        target.requests.load(Ordering::SeqCst)
    );
    assert!(peak <= CAP, "the target saw {peak} concurrent requests");
    for worker in &mut workers {
        worker.kill().await.unwrap();
    }
    let _ = std::fs::remove_file(config);
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn three_rabbitmq_workers_never_exceed_the_cap() {
    use surge_common::broker::rabbitmq::RabbitMqBroker;
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let queue = testing::unique_name("http-cap");
    let broker = RabbitMqBroker::connect(&amqp, &queue).await.unwrap();
    let args = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp,
        "--queue",
        &queue,
    ];
    cap_holds(&broker, &database, &args).await;
    broker.delete_topology().await.unwrap();
}

#[cfg(feature = "kafka")]
#[tokio::test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn three_kafka_workers_never_exceed_the_cap() {
    use surge_common::broker::kafka::KafkaBroker;
    use surge_common::testing::KAFKA_BROKERS_VAR;
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let topic = testing::unique_name("http-cap");
    let group = testing::unique_name("group");
    let broker = KafkaBroker::connect(&brokers, &topic, 6).await.unwrap();
    let args = [
        "--broker",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--queue",
        &topic,
        "--kafka-partitions",
        "6",
        "--group",
        &group,
    ];
    cap_holds(&broker, &database, &args).await;
}

/// A worker writes its HTTP kinds' slots when it is built, before its first job; a worker
/// configured with another `concurrency` than the one in use is refused at start-up, with
/// the kind and both values named, and frees nothing. SQLite, memory broker: the set-up
/// does not depend on either.
#[tokio::test]
async fn slots_exist_at_start_up_and_another_concurrency_is_refused() {
    use clap::Parser;
    use surge_common::broker::memory::MemoryBroker;
    use surge_worker::config::WorkerArgs;
    use surge_worker::WorkerService;

    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let worker = |concurrency: u32| {
        let path = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("config")));
        std::fs::write(
            &path,
            format!(
                "[kinds.target]\nurl = \"http://127.0.0.1:1/work\"\nconcurrency = {concurrency}\n"
            ),
        )
        .unwrap();
        let args = WorkerArgs::try_parse_from([
            "surge-worker".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ])
        .unwrap();
        let (broker, storage) = (broker.clone(), storage.clone());
        async move {
            let built = WorkerService::build_with(&args, broker, storage).await;
            let _ = std::fs::remove_file(path);
            built
        }
    };
    let _first = worker(CAP).await.unwrap();
    assert_eq!(
        storage.dispatch_slots_in_use("target").await.unwrap(),
        (0, CAP),
        "the slots exist before any job"
    );
    let held = storage
        .acquire_dispatch_slots("target", "in-use", 3, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    let Err(refused) = worker(CAP / 2).await else {
        panic!("a worker with another concurrency started");
    };
    let message = refused.to_string();
    assert!(
        message.contains("kinds.target")
            && message.contains(&format!("concurrency = {} here", CAP / 2))
            && message.contains(&format!("records concurrency = {CAP}")),
        "{message}"
    );
    assert_eq!(
        storage.dispatch_slots_in_use("target").await.unwrap(),
        (3, CAP)
    );
}
