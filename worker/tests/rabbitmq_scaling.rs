//! Two `surge-worker` processes on one RabbitMQ queue split a batch: every job persisted
//! exactly once, and both replicas did part of the work.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{assert_exactly_once, rows_by_worker, spawn_worker, wait_for_results};
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};

const JOBS: usize = 1200;

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn two_worker_processes_split_a_batch_exactly_once() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let queue = testing::unique_name("split");
    let broker = RabbitMqBroker::connect(&amqp, &queue).await.unwrap();

    let jobs: Vec<Job> = (0..JOBS)
        .map(|i| Job::new(BuiltinKind::Sleep, json!({ "ms": 2 + (i % 5) }), None))
        .collect();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    for chunk in jobs.chunks(200) {
        broker.publish(chunk).await.unwrap();
    }

    let args = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp,
        "--queue",
        &queue,
        "--capacity",
        "20",
        "--builtin-kinds",
        "true",
    ];
    let mut first = spawn_worker("replica-a", &database, &args);
    let mut second = spawn_worker("replica-b", &database, &args);

    let rows = wait_for_results(&storage, &ids, Duration::from_secs(120)).await;
    assert_exactly_once(&storage, &ids, &rows).await;
    let by_worker = rows_by_worker(&rows);
    assert_eq!(
        by_worker.len(),
        2,
        "both replicas processed jobs: {by_worker:?}"
    );
    assert!(by_worker.values().all(|&n| n > 0), "{by_worker:?}");

    first.kill().await.unwrap();
    second.kill().await.unwrap();
    broker.delete_topology().await.unwrap();
}
