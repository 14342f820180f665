//! Fair under bursts, with real `surge-worker` processes: a key's small batch posted behind
//! another key's big backlog finishes before half of that backlog, on RabbitMQ (the
//! fairness lanes and the worker's fair queue) and on Kafka (partitions read in turn), also
//! with three workers; on RabbitMQ a backlog's priority-5 jobs run before its priority-1
//! ones. Nothing is lost and no job runs twice.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{eventually, spawn_worker, wait_for_results};
use surge_common::broker::kafka::KafkaBroker;
use surge_common::broker::rabbitmq::{lane_of, RabbitMqBroker};
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::storage::{JobResult, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
use tokio::process::Child;
use uuid::Uuid;

/// Partitions of the Kafka topics here.
const PARTITIONS: i32 = 6;

/// Which broker a test runs on.
#[derive(Clone, Copy)]
enum On {
    RabbitMq,
    Kafka,
}

/// A fresh queue (or topic), database, and `workers` worker processes of capacity 20 on
/// them.
async fn stack(
    on: On,
    prefix: &str,
    workers: usize,
    before_workers: &[Job],
) -> Option<(Box<dyn Broker>, Storage, Vec<Child>)> {
    let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let queue = testing::unique_name(prefix);
    let (broker, mut args): (Box<dyn Broker>, Vec<String>) = match on {
        On::RabbitMq => {
            let amqp = testing::service(AMQP_URL_VAR, "RabbitMQ")?;
            let broker = RabbitMqBroker::connect(&amqp, &queue).await.unwrap();
            let args = ["--broker", "rabbitmq", "--amqp-url", &amqp];
            (Box::new(broker), args.map(str::to_owned).to_vec())
        }
        On::Kafka => {
            let brokers = testing::service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)")?;
            let broker = KafkaBroker::connect(&brokers, &queue, PARTITIONS)
                .await
                .unwrap();
            let group = testing::unique_name("group");
            let partitions = PARTITIONS.to_string();
            let args = [
                "--broker",
                "kafka",
                "--kafka-brokers",
                &brokers,
                "--kafka-partitions",
                &partitions,
                "--group",
                &group,
            ];
            (Box::new(broker), args.map(str::to_owned).to_vec())
        }
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let common = [
        "--queue",
        &queue,
        "--capacity",
        "20",
        "--builtin-kinds",
        "true",
    ];
    args.extend(common.map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    publish(broker.as_ref(), before_workers).await;
    let children = (0..workers)
        .map(|i| spawn_worker(&format!("{prefix}-{i}"), &database, &args))
        .collect();
    Some((broker, storage, children))
}

fn sleeps(n: usize, ms: u64, key: Option<&str>, priority: Option<u8>) -> Vec<Job> {
    (0..n)
        .map(|_| {
            let mut job = Job::new("sleep", json!({ "ms": ms }), key.map(str::to_owned));
            job.priority = priority;
            job
        })
        .collect()
}

async fn publish(broker: &dyn Broker, jobs: &[Job]) {
    for chunk in jobs.chunks(500) {
        broker.publish(chunk).await.unwrap();
    }
}

fn finished(rows: &[JobResult], ids: &[Uuid]) -> Vec<i64> {
    let mut at: Vec<i64> = rows
        .iter()
        .filter(|r| ids.contains(&r.job_id))
        .map(|r| r.finished_at_us)
        .collect();
    at.sort_unstable();
    at
}

/// Every job stored once, none processed twice.
fn exactly_once(rows: &[JobResult], expected: usize) {
    let unique: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.job_id).collect();
    assert_eq!(unique.len(), expected, "one row per job");
    assert!(rows.iter().all(|r| r.deliveries == 1), "no job ran twice");
}

async fn a_small_key_overtakes_a_big_backlog(on: On, workers: usize) {
    // Two tenants in different lanes or partitions (keys that share one are first in,
    // first out between them). On Kafka a key's partition is CRC-32(key) % 6 (librdkafka's
    // `consistent_random`): "tenant-a" → 3, "tenant-d" → 4 ("tenant-b" would be 3 too).
    let (key_a, key_b) = match on {
        On::RabbitMq => {
            assert_ne!(lane_of("tenant-a"), lane_of("tenant-b"));
            ("tenant-a", "tenant-b")
        }
        On::Kafka => ("tenant-a", "tenant-d"),
    };
    // A: 20 ms jobs, 3 s of work at 20 × `workers` at once; B: 10 jobs posted just after.
    // A is all published before the workers start (publishing while they run let them
    // drain it as fast as it came on a loaded machine, leaving no backlog for B to pass).
    let a = sleeps(3000 * workers, 20, Some(key_a), None);
    let b = sleeps(10, 20, Some(key_b), None);
    let Some((broker, storage, mut children)) = stack(on, "fair", workers, &a).await else {
        return;
    };
    // B posts while the workers are busy with A (as in production), not before they start:
    // a consumer that joins with both backlogs waiting reads both in its first fetch.
    let a_ids: Vec<Uuid> = a.iter().map(|j| j.id).collect();
    eventually("the workers to run A's jobs", || async {
        let done = storage.get_many(&a_ids[..200]).await.unwrap();
        (done.len() >= 20).then_some(())
    })
    .await;
    publish(broker.as_ref(), &b).await;
    let b_posted = surge_common::clock::now_micros();
    let b_ids: Vec<Uuid> = b.iter().map(|j| j.id).collect();
    let all: Vec<Uuid> = a_ids.iter().chain(&b_ids).copied().collect();
    let rows = wait_for_results(&storage, &all, Duration::from_secs(300)).await;
    exactly_once(&rows, all.len());
    let a_done = finished(&rows, &a_ids);
    let last_b = *finished(&rows, &b_ids).last().unwrap();
    // A's backlog when B was posted, and how much of it ran before B's last job finished.
    let backlog = a_done.iter().filter(|at| **at > b_posted).count();
    let ahead = a_done
        .iter()
        .filter(|at| **at > b_posted && **at < last_b)
        .count();
    println!(
        "{workers} worker(s): B's last job done {} ms after it was posted, after {ahead} of \
         the {backlog} A jobs left then",
        (last_b - b_posted) / 1000
    );
    assert!(backlog > 0, "A's backlog was gone before B was posted");
    assert!(
        ahead < backlog / 2,
        "B's last job finished after {ahead} of A's {backlog} waiting jobs (must be under half)"
    );
    for child in &mut children {
        let _ = child.kill().await;
    }
    broker.delete_topology().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_a_small_key_overtakes_a_big_backlog() {
    a_small_key_overtakes_a_big_backlog(On::RabbitMq, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_with_three_workers_a_small_key_overtakes_a_big_backlog() {
    a_small_key_overtakes_a_big_backlog(On::RabbitMq, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_a_small_key_overtakes_a_big_backlog() {
    a_small_key_overtakes_a_big_backlog(On::Kafka, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_with_three_workers_a_small_key_overtakes_a_big_backlog() {
    a_small_key_overtakes_a_big_backlog(On::Kafka, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_priorities_order_a_backlog() {
    let Some((broker, storage, mut children)) = stack(On::RabbitMq, "prio", 1, &[]).await else {
        return;
    };
    // One tenant's backlog of low-priority work, then urgent jobs of the same tenant. The
    // worker runs while the backlog is published, so the claim is about the low jobs still
    // waiting when the urgent ones arrive: few of them finish before the urgent ones.
    let low = sleeps(2000, 20, Some("tenant"), Some(1));
    let high = sleeps(20, 20, Some("tenant"), Some(5));
    publish(broker.as_ref(), &low).await;
    let high_published = surge_common::clock::now_micros();
    publish(broker.as_ref(), &high).await;
    let low_ids: Vec<Uuid> = low.iter().map(|j| j.id).collect();
    let high_ids: Vec<Uuid> = high.iter().map(|j| j.id).collect();
    let all: Vec<Uuid> = low_ids.iter().chain(&high_ids).copied().collect();
    let rows = wait_for_results(&storage, &all, Duration::from_secs(300)).await;
    exactly_once(&rows, all.len());
    let low_waiting: Vec<i64> = finished(&rows, &low_ids)
        .into_iter()
        .filter(|at| *at > high_published)
        .collect();
    assert!(
        low_waiting.len() >= 500,
        "a backlog was still waiting when the urgent jobs came ({} low jobs)",
        low_waiting.len()
    );
    let last_high = *finished(&rows, &high_ids).last().unwrap();
    let low_before = low_waiting.iter().filter(|at| **at < last_high).count();
    assert!(
        low_before < low_waiting.len() / 4,
        "the urgent jobs finished after {low_before} of the {} low-priority ones waiting",
        low_waiting.len()
    );
    for child in &mut children {
        let _ = child.kill().await;
    }
    broker.delete_topology().await.unwrap();
}
