//! The benchmark's database counts every result, also after retention deleted it: a soak
//! with a short `--retain-succeeded` must not report pruned results as lost jobs.

use std::time::Duration;

use surge_benches::db::{BenchDb, Engine};
use surge_common::clock::now_micros;
use surge_common::storage::retention::RetentionPolicy;
use surge_common::storage::{JobResult, JobStatus};
use surge_common::testing::{self, POSTGRES_URL_VAR};

const MINUTE: i64 = 60_000_000;

async fn pruned_results_still_count(engine: Engine) {
    let db = BenchDb::create(&engine)
        .await
        .expect("a benchmark database");
    let now = now_micros();
    let rows: Vec<JobResult> = [90, 80, 70, 1]
        .iter()
        .map(|minutes_ago| testing::finished_row(JobStatus::Succeeded, now - minutes_ago * MINUTE))
        .collect();
    db.storage().record_many(&rows).await.unwrap();
    assert_eq!(db.count().await.unwrap(), 4);

    let policy = RetentionPolicy {
        succeeded: Some(Duration::from_secs(30 * 60)),
        ..RetentionPolicy::default()
    };
    let report = db.storage().prune(&policy, now, 10_000).await.unwrap();
    assert_eq!(report.succeeded, 3, "{report:?}");
    assert_eq!(db.storage().count().await.unwrap(), 1, "one row is left");
    assert_eq!(db.pruned().await.unwrap(), 3);
    assert_eq!(db.count().await.unwrap(), 4, "pruned results are not lost");
    db.remove().await;
}

#[tokio::test]
async fn pruned_results_still_count_on_sqlite() {
    pruned_results_still_count(Engine::Sqlite).await;
}

#[tokio::test]
async fn pruned_results_still_count_on_postgres() {
    let Some(url) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    pruned_results_still_count(Engine::Postgres(url)).await;
}
