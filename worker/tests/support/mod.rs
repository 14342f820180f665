//! Shared by the worker process tests: spawning `surge-worker` replicas and waiting for
//! results to land.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashSet;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use surge_common::storage::{JobResult, Storage};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Starts a `surge-worker` process with `args`; killed when the handle is dropped.
pub fn spawn_worker(name: &str, database_url: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_surge-worker"))
        .args(args)
        .args(["--worker-id", name])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the surge-worker binary starts")
}

/// Waits until every id in `ids` has a stored result, failing after `timeout`.
/// Returns the rows. Polls the database every 100 ms: the condition is the data itself.
pub async fn wait_for_results(
    storage: &Storage,
    ids: &[Uuid],
    timeout: Duration,
) -> Vec<JobResult> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = storage.get_many(ids).await.expect("results are readable");
        if rows.len() == ids.len() {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} jobs have results after {timeout:?}",
            rows.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts one row per id, each written once, and nothing else in the table.
pub async fn assert_exactly_once(storage: &Storage, ids: &[Uuid], rows: &[JobResult]) {
    let unique: HashSet<Uuid> = rows.iter().map(|r| r.job_id).collect();
    assert_eq!(unique.len(), ids.len(), "one row per job");
    assert_eq!(
        storage.count().await.unwrap(),
        ids.len() as u64,
        "no rows beyond the jobs published"
    );
    let rewritten = rows.iter().filter(|r| r.deliveries != 1).count();
    assert_eq!(rewritten, 0, "no job was processed twice");
}

/// Rows per worker name.
pub fn rows_by_worker(rows: &[JobResult]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for row in rows {
        *counts.entry(row.worker.clone()).or_default() += 1;
    }
    counts
}

/// Longest wait for any one condition in [`eventually`].
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `check` every 50 ms until it yields a value, or fails the test after
/// [`PATIENCE`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh PostgreSQL database and a RabbitMQ queue of its own (named after `prefix`), or
/// `None` when a service is not configured (outside CI; in CI a missing one fails).
#[cfg(feature = "rabbitmq")]
pub async fn rabbitmq_and_postgres(
    prefix: &str,
) -> Option<(std::sync::Arc<dyn surge_common::broker::Broker>, Storage)> {
    use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
    let amqp = testing::service(AMQP_URL_VAR, "RabbitMQ")?;
    let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let queue = testing::unique_name(prefix);
    let broker = surge_common::broker::rabbitmq::RabbitMqBroker::connect(&amqp, &queue)
        .await
        .unwrap();
    Some((std::sync::Arc::new(broker), storage))
}

/// A fresh PostgreSQL database and a two-partition Kafka topic of its own (named after
/// `prefix`), or `None` as for [`rabbitmq_and_postgres`].
#[cfg(feature = "kafka")]
pub async fn kafka_and_postgres(
    prefix: &str,
) -> Option<(std::sync::Arc<dyn surge_common::broker::Broker>, Storage)> {
    use surge_common::testing::{self, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
    let brokers = testing::service(KAFKA_BROKERS_VAR, "Kafka")?;
    let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let topic = testing::unique_name(prefix);
    let broker = surge_common::broker::kafka::KafkaBroker::connect_with(
        &brokers,
        &topic,
        2,
        testing::kafka_tuning(),
    )
    .await
    .unwrap();
    Some((std::sync::Arc::new(broker), storage))
}
