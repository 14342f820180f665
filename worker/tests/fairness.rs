//! Fair under bursts, on RabbitMQ with real `surge-worker` processes: a key's small batch
//! posted behind another key's big backlog finishes before half of that backlog (round
//! robin over keys, through the fairness lanes and the worker's fair queue), also with
//! three workers; a backlog's priority-5 jobs run before its priority-1 ones. Nothing is
//! lost and no job runs twice.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{spawn_worker, wait_for_results};
use surge_common::broker::rabbitmq::{lane_of, RabbitMqBroker};
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::storage::{JobResult, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use tokio::process::Child;
use uuid::Uuid;

/// A fresh queue, database, and `workers` worker processes of capacity 20 on them.
async fn stack(prefix: &str, workers: usize) -> Option<(RabbitMqBroker, Storage, Vec<Child>)> {
    let amqp = testing::service(AMQP_URL_VAR, "RabbitMQ")?;
    let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let queue = testing::unique_name(prefix);
    let broker = RabbitMqBroker::connect(&amqp, &queue).await.unwrap();
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

async fn publish(broker: &RabbitMqBroker, jobs: &[Job]) {
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

async fn a_small_key_overtakes_a_big_backlog(workers: usize) {
    let Some((broker, storage, mut children)) = stack("fair", workers).await else {
        return;
    };
    // Two tenants in different lanes (a shared lane is first in, first out between them).
    assert_ne!(lane_of("tenant-a"), lane_of("tenant-b"));
    // A: 20 ms jobs, 3 s of work at 20 × `workers` at once; B: 10 jobs posted just after.
    let a = sleeps(3000 * workers, 20, Some("tenant-a"), None);
    let b = sleeps(10, 20, Some("tenant-b"), None);
    publish(&broker, &a).await;
    publish(&broker, &b).await;
    let b_posted = surge_common::clock::now_micros();
    let a_ids: Vec<Uuid> = a.iter().map(|j| j.id).collect();
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
    a_small_key_overtakes_a_big_backlog(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_with_three_workers_a_small_key_overtakes_a_big_backlog() {
    a_small_key_overtakes_a_big_backlog(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_priorities_order_a_backlog() {
    let Some((broker, storage, mut children)) = stack("prio", 1).await else {
        return;
    };
    // One tenant's backlog of low-priority work, then urgent jobs of the same tenant.
    let low = sleeps(1000, 20, Some("tenant"), Some(1));
    let high = sleeps(20, 20, Some("tenant"), Some(5));
    publish(&broker, &low).await;
    publish(&broker, &high).await;
    let low_ids: Vec<Uuid> = low.iter().map(|j| j.id).collect();
    let high_ids: Vec<Uuid> = high.iter().map(|j| j.id).collect();
    let all: Vec<Uuid> = low_ids.iter().chain(&high_ids).copied().collect();
    let rows = wait_for_results(&storage, &all, Duration::from_secs(300)).await;
    exactly_once(&rows, all.len());
    let low_done = finished(&rows, &low_ids);
    let last_high = *finished(&rows, &high_ids).last().unwrap();
    let low_before = low_done.iter().filter(|at| **at < last_high).count();
    assert!(
        low_before < low_done.len() / 4,
        "the urgent jobs finished after {low_before} of {} low-priority ones",
        low_done.len()
    );
    for child in &mut children {
        let _ = child.kill().await;
    }
    broker.delete_topology().await.unwrap();
}
