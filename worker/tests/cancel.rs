//! Cancelling a job that has not finished (`DELETE /jobs/{id}`, here through the storage
//! call the route makes), on every broker: a job waiting behind another in a capacity-1
//! worker, and a job between two retries, end `cancelled` with no result; their deliveries
//! are acked (not dead-lettered, not redelivered forever) without running the handler.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use support::eventually;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::kinds::{handler_fn, JobError, KindRegistry};
use surge_common::retry::RetryPolicy;
use surge_common::storage::cancel::CancelOutcome;
use surge_common::storage::lifecycle::{Lifecycle, Stage};
use surge_common::storage::{JobStatus, Storage};
use surge_common::testing;
use surge_worker::{WorkerOptions, WorkerService};
use uuid::Uuid;

/// One run of a counting handler.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    attempt: u32,
    /// Whether the job's cancel had returned when this run started.
    after_cancel: bool,
}

/// Waits until `id`'s stage is `stage` (or it finished, when `stage` is `None`).
async fn wait_stage(storage: &Storage, id: Uuid, stage: Stage) {
    eventually(&format!("job {id} {}", stage.as_str()), || async move {
        match storage.lifecycle(id).await.unwrap() {
            Some(Lifecycle::Pending(update)) if update.stage == stage => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Publishes `job` as the ingress does (the broker holds it, then it is marked queued).
async fn submit(broker: &Arc<dyn Broker>, storage: &Storage, job: &Job) {
    broker.publish(std::slice::from_ref(job)).await.unwrap();
    storage
        .accept(&surge_common::storage::acceptance::AcceptedJob::of(
            std::slice::from_ref(job),
        ))
        .await
        .unwrap();
}

async fn cancel(storage: &Storage, id: Uuid) {
    match storage.cancel_job(id).await.unwrap() {
        CancelOutcome::Cancelled(row) => {
            assert_eq!(row.status, JobStatus::Cancelled, "{row:?}");
            assert_eq!(row.result, None);
        }
        other => panic!("job {id} was not cancelled: {other:?}"),
    }
}

/// The scenario on one broker: see the module docs.
async fn cancelled_jobs_never_run_and_are_acked(broker: Arc<dyn Broker>, storage: Storage) {
    let options = WorkerOptions {
        capacity: 1,
        worker_id: "cancel-test".into(),
        group: testing::unique_name("cancel"),
        // Long enough that the cancel lands between the two attempts.
        retry: RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(2),
        },
        ..WorkerOptions::default()
    };
    // Kinds that log their runs, each with whether the job's cancel had already returned
    // when the run started: a run after a cancel is the failure this test looks for. (A
    // run before it is legitimate: on a loaded machine the test may see the `retrying`
    // stage late, after the retry was delivered, and then the cancel catches the next one.)
    let runs = Arc::new(Mutex::new(HashMap::<Uuid, Vec<Run>>::new()));
    let cancelled = Arc::new(Mutex::new(HashSet::<Uuid>::new()));
    let counted = |fail: bool| {
        let runs = runs.clone();
        let cancelled = cancelled.clone();
        handler_fn(move |job: Job, attempt| {
            let after_cancel = cancelled.lock().unwrap().contains(&job.id);
            runs.lock().unwrap().entry(job.id).or_default().push(Run {
                attempt,
                after_cancel,
            });
            async move {
                if fail {
                    Err(JobError::retryable("not yet"))
                } else {
                    Ok(json!("ran"))
                }
            }
        })
    };
    let kinds = KindRegistry::builder()
        .with_builtins()
        .register("counted", counted(false))
        .register("counted_flaky", counted(true))
        .try_build()
        .unwrap();
    let ran = |id: Uuid| runs.lock().unwrap().get(&id).cloned().unwrap_or_default();
    let cancel = |id: Uuid| {
        let cancelled = cancelled.clone();
        let storage = storage.clone();
        async move {
            cancel(&storage, id).await;
            cancelled.lock().unwrap().insert(id);
        }
    };
    let service = WorkerService::embedded(broker.clone(), storage.clone(), kinds, options);
    let stats = service.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        service
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("the worker runs");
    });

    // A job waiting behind another: the worker runs one at a time.
    let blocker = Job::new("sleep", json!({"ms": 1500}), None);
    submit(&broker, &storage, &blocker).await;
    wait_stage(&storage, blocker.id, Stage::Running).await;
    let waiting = Job::new("counted", json!({}), None);
    submit(&broker, &storage, &waiting).await;
    cancel(waiting.id).await;
    // A second cancel answers the same; the blocker finishes normally.
    assert!(matches!(
        storage.cancel_job(waiting.id).await.unwrap(),
        CancelOutcome::AlreadyCancelled(_)
    ));
    let done = eventually("the blocker's result", || async {
        storage.get(blocker.id).await.unwrap()
    })
    .await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    // A finished job cannot be cancelled.
    assert!(matches!(
        storage.cancel_job(blocker.id).await.unwrap(),
        CancelOutcome::Finished(_)
    ));

    // A job between retries: its first attempt failed, the second is 2 s away.
    let flaky = Job::new("counted_flaky", json!({}), None);
    submit(&broker, &storage, &flaky).await;
    wait_stage(&storage, flaky.id, Stage::Retrying).await;
    cancel(flaky.id).await;

    // Both deliveries (the waiting job's, the flaky job's retry) are acked as cancelled:
    // their handlers did not run again, nothing was dead-lettered, nothing is left.
    eventually("both cancelled deliveries to be acked", || async {
        (stats.cancelled_total() >= 2).then_some(())
    })
    .await;
    assert_eq!(ran(waiting.id), vec![], "the cancelled waiting job ran");
    let flaky_runs = ran(flaky.id);
    assert!(
        !flaky_runs.is_empty() && flaky_runs.iter().all(|run| !run.after_cancel),
        "the flaky job ran after its cancel: {flaky_runs:?}"
    );
    eventually("the broker to be drained", || {
        let broker = broker.clone();
        async move {
            let s = broker.stats().await.ok()?;
            (s.backlog.unwrap_or(0) == 0 && s.in_flight.unwrap_or(0) == 0).then_some(())
        }
    })
    .await;
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.dead, 0, "nothing dead-lettered: {snapshot:?}");
    assert_eq!(
        snapshot.retried,
        flaky_runs.len() as u64,
        "one retry scheduled per failed run: {snapshot:?}"
    );
    assert_eq!(
        broker.stats().await.unwrap().dead_letters.unwrap_or(0),
        0,
        "no dead letters"
    );
    for id in [waiting.id, flaky.id] {
        let row = storage.get(id).await.unwrap().expect("a cancelled row");
        assert_eq!(row.status, JobStatus::Cancelled, "{row:?}");
        assert_eq!(row.result, None, "{row:?}");
        assert_eq!(row.deliveries, 1, "no result was written over it: {row:?}");
    }
    assert_eq!(stats.snapshot().succeeded, 1, "only the blocker succeeded");
    stop.send(()).unwrap();
    worker.await.unwrap();
    let _ = broker.delete_topology().await;
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_broker_a_cancelled_job_never_runs_and_is_acked() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    cancelled_jobs_never_run_and_are_acked(Arc::new(MemoryBroker::new()), storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_a_cancelled_job_never_runs_and_is_acked() {
    let Some((broker, storage)) = support::rabbitmq_and_postgres("cancel").await else {
        return;
    };
    cancelled_jobs_never_run_and_are_acked(broker, storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_a_cancelled_job_never_runs_and_is_acked() {
    let Some((broker, storage)) = support::kafka_and_postgres("cancel").await else {
        return;
    };
    cancelled_jobs_never_run_and_are_acked(broker, storage).await;
}
