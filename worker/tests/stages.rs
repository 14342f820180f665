//! The `running` stage is written only for jobs still running after
//! [`RUNNING_STAGE_AFTER`]: a short job goes from `queued` to its result with no stage
//! write in between, a long one is shown `running` while it runs. A trigger on the stage
//! table records every `running` write, so the test sees writes that a later delete hid.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::eventually;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::kinds::KindRegistry;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_worker::runner::RUNNING_STAGE_AFTER;
use surge_worker::{WorkerOptions, WorkerService};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_jobs_running_past_the_threshold_write_running() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    for statement in [
        "CREATE TABLE running_writes (job_id TEXT NOT NULL)",
        "CREATE TRIGGER running_inserted AFTER INSERT ON jobs WHEN NEW.state = 'running' \
         BEGIN INSERT INTO running_writes VALUES (NEW.job_id); END",
        "CREATE TRIGGER running_updated AFTER UPDATE ON jobs WHEN NEW.state = 'running' \
         BEGIN INSERT INTO running_writes VALUES (NEW.job_id); END",
    ] {
        sqlx::query(statement)
            .execute(storage.pool())
            .await
            .unwrap();
    }
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let kinds = KindRegistry::builder().with_builtins().try_build().unwrap();
    let options = WorkerOptions {
        capacity: 20,
        worker_id: "stages-test".into(),
        ..WorkerOptions::default()
    };
    let service = WorkerService::embedded(broker.clone(), storage.clone(), kinds, options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        service
            .run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("the worker runs");
    });

    let long_ms = u64::try_from((RUNNING_STAGE_AFTER * 4).as_millis()).unwrap();
    let long = Job::new("sleep", json!({ "ms": long_ms }), None);
    let short: Vec<Job> = (0..50)
        .map(|_| Job::new("sleep", json!({ "ms": 1 }), None))
        .collect();
    let mut all = short.clone();
    all.push(long.clone());
    broker.publish(&all).await.unwrap();
    storage
        .accept(&surge_common::storage::acceptance::AcceptedJob::of(&all))
        .await
        .unwrap();
    let ids: Vec<Uuid> = all.iter().map(|j| j.id).collect();
    eventually("every result", || {
        let storage = storage.clone();
        let ids = ids.clone();
        async move { (storage.get_many(&ids).await.unwrap().len() == ids.len()).then_some(()) }
    })
    .await;

    let written: Vec<String> = sqlx::query_scalar("SELECT job_id FROM running_writes")
        .fetch_all(storage.pool())
        .await
        .unwrap();
    assert_eq!(
        written,
        vec![long.id.to_string()],
        "only the job that ran {long_ms} ms was recorded running"
    );
    let _ = stop.send(());
    worker.await.unwrap();
}
