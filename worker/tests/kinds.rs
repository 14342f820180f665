//! Kinds from the registry, on real brokers: a job of a kind a worker does not know (a
//! rolling deploy) waits in the broker, handed back without consuming an attempt, until a
//! worker that knows the kind runs it; a handler that panics ends its job dead with the
//! panic message, never in a redelivery loop.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::eventually;
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::kinds::{handler_fn, JobError, KindRegistry};
use surge_common::storage::{JobResult, JobStatus, Storage};
use surge_worker::{WorkerOptions, WorkerService, WorkerStats};
use uuid::Uuid;

/// A running in-process worker with `kinds`; stop it with the returned sender.
fn start_worker(
    broker: Arc<dyn Broker>,
    storage: Storage,
    kinds: KindRegistry,
    name: &str,
) -> (
    Arc<WorkerStats>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let options = WorkerOptions {
        capacity: 8,
        worker_id: name.to_owned(),
        group: "kinds-test".into(),
        unknown_kind_delay: Duration::from_millis(200),
        ..WorkerOptions::default()
    };
    let service = WorkerService::embedded(broker, storage, kinds, options);
    let stats = service.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        service
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("the worker runs");
    });
    (stats, stop, task)
}

async fn result(storage: &Storage, id: Uuid) -> Option<JobResult> {
    storage.get(id).await.expect("the database answers")
}

/// The scenario on one broker: see the module docs.
async fn unknown_kind_waits_then_runs(broker: Arc<dyn Broker>, storage: Storage) {
    let job = Job::new("word_count", json!({"text": "to be or not"}), None);
    broker.publish(std::slice::from_ref(&job)).await.unwrap();

    // An old worker: the built-in kinds only.
    let (old_stats, stop_old, old) = start_worker(
        broker.clone(),
        storage.clone(),
        KindRegistry::builtin(),
        "old",
    );
    // It got the job, handed it back, got it again and handed it back again.
    eventually("the old worker to hand the job back twice", || {
        let deferred = old_stats.snapshot().deferred;
        async move { (deferred >= 2).then_some(()) }
    })
    .await;
    assert_eq!(result(&storage, job.id).await, None, "no result, not dead");
    assert_eq!(old_stats.snapshot().dead, 0);
    stop_old.send(()).unwrap();
    old.await.unwrap();

    // The new worker knows the kind: the job runs, on its first attempt.
    let kinds = KindRegistry::builder()
        .with_builtins()
        .register(
            "word_count",
            handler_fn(|job: Job, _attempt| async move {
                let text = job.payload["text"]
                    .as_str()
                    .ok_or_else(|| JobError::permanent("text must be a string"))?;
                Ok(json!({"words": text.split_whitespace().count()}))
            }),
        )
        .try_build()
        .unwrap();
    let (_, stop_new, new) = start_worker(broker.clone(), storage.clone(), kinds, "new");
    let row = eventually("the new worker's result", || {
        let storage = storage.clone();
        async move { result(&storage, job.id).await }
    })
    .await;
    assert_eq!(row.status, JobStatus::Succeeded, "{row:?}");
    assert_eq!(row.result, Some(json!({"words": 4})));
    assert_eq!(row.attempts, 1, "waiting consumed no attempt: {row:?}");
    assert_eq!(row.worker, "new");

    // A panicking handler: dead after one attempt with the message, not redelivered.
    let panicking = Job::new("poison", json!({"panic": true}), None);
    broker
        .publish(std::slice::from_ref(&panicking))
        .await
        .unwrap();
    let row = eventually("the panicking job's row", || {
        let storage = storage.clone();
        async move { result(&storage, panicking.id).await }
    })
    .await;
    assert_eq!(row.status, JobStatus::Dead, "{row:?}");
    assert!(
        row.error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked"),
        "{row:?}"
    );
    stop_new.send(()).unwrap();
    new.await.unwrap();
    let _ = broker.delete_topology().await;
    broker.close().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_an_unknown_kind_waits_for_a_worker_that_knows_it() {
    let Some((broker, storage)) = support::rabbitmq_and_postgres("kinds").await else {
        return;
    };
    unknown_kind_waits_then_runs(broker, storage).await;
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_an_unknown_kind_waits_for_a_worker_that_knows_it() {
    let Some((broker, storage)) = support::kafka_and_postgres("kinds").await else {
        return;
    };
    unknown_kind_waits_then_runs(broker, storage).await;
}
