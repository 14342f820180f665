//! Upgrading in place, on SQLite and PostgreSQL: a database built by the migrations of the
//! last landed release (those before [`FIRST_NEW_MIGRATION`]), holding a succeeded job, a
//! dead job, a scheduled job, a queued and a running job and a refused one, written as that
//! release wrote them (three tables: `job_results`, `job_status`, `job_acceptance`), is
//! opened by this build (which moves them into one row per job in `jobs`) and every row
//! still works: the result reads back, the dead job is listed and replayable with its job,
//! the scheduled job shows `scheduled` and is claimed when due, the queued job's result
//! commits (its acceptance came along), the running job is listed running, and the
//! refused job's result is refused. Move the constant forward at each release that adds
//! migrations.

use std::borrow::Cow;

use serde_json::json;
use sqlx::any::AnyPoolOptions;
use surge_common::job::Job;
use surge_common::storage::lifecycle::{Lifecycle, Stage};
use surge_common::storage::listing::{ListFilter, StatusFilter};
use surge_common::storage::replay::ReplayFilter;
use surge_common::storage::{JobResult, JobStatus, PendingResult, Recorded, Storage};
use surge_common::testing::{self};
use uuid::Uuid;

/// The first migration the last landed release did not have.
const FIRST_NEW_MIGRATION: i64 = 20261207120000;

/// Builds the last release's schema in the database at `url`.
async fn last_release_schema(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let mut migrator = sqlx::migrate!("./migrations");
    let older: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < FIRST_NEW_MIGRATION)
        .cloned()
        .collect();
    assert!(
        older.len() < migrator.migrations.len(),
        "this build adds migrations after the last release"
    );
    migrator.migrations = Cow::Owned(older);
    migrator.run(&pool).await.unwrap();
    pool
}

/// Inserts a job-results row the way the last release's worker wrote it.
async fn old_result(pool: &sqlx::AnyPool, job: &Job, status: &str, at_us: i64) {
    let text = String::from_utf8(job.encode()).unwrap();
    let (result, error, kept) = match status {
        "succeeded" => (Some(r#"{"n":1}"#), None, None),
        _ => (None, Some("boom"), Some(text)),
    };
    sqlx::query(
        "INSERT INTO job_results (job_id, kind, status, result, error, attempts, deliveries, \
         worker, enqueued_at_us, started_at_us, finished_at_us, job) \
         VALUES ($1, $2, $3, $4, $5, 1, 1, 'old-worker', $6, $7, $8, $9)",
    )
    .bind(job.id.to_string())
    .bind(job.kind.to_string())
    .bind(status)
    .bind(result)
    .bind(error)
    .bind(at_us - 20)
    .bind(at_us - 10)
    .bind(at_us)
    .bind(kept)
    .execute(pool)
    .await
    .unwrap();
}

/// Inserts a stage row (and the ingress's decision, when given) the way the last release
/// wrote them.
async fn old_stage(pool: &sqlx::AnyPool, job: &Job, stage: &str, accepted: Option<i64>) {
    sqlx::query(
        "INSERT INTO job_status (job_id, kind, status, attempt, error, updated_at_us) \
         VALUES ($1, $2, $3, 1, NULL, $4)",
    )
    .bind(job.id.to_string())
    .bind(job.kind.to_string())
    .bind(stage)
    .bind(job.enqueued_at_us)
    .execute(pool)
    .await
    .unwrap();
    if let Some(accepted) = accepted {
        old_decision(pool, job.id, accepted).await;
    }
}

/// Inserts the ingress's decision the way the last release wrote it.
async fn old_decision(pool: &sqlx::AnyPool, id: Uuid, accepted: i64) {
    sqlx::query("INSERT INTO job_acceptance (job_id, accepted, decided_at_us) VALUES ($1, $2, $3)")
        .bind(id.to_string())
        .bind(accepted)
        .bind(surge_common::clock::now_micros())
        .execute(pool)
        .await
        .unwrap();
}

/// A worker's fresh result of `job`, which awaits the ingress's acceptance.
fn result_of(job: &Job) -> PendingResult {
    let now = surge_common::clock::now_micros();
    PendingResult {
        row: JobResult {
            job_id: job.id,
            kind: job.kind.clone(),
            status: JobStatus::Succeeded,
            result: Some(json!({"ok": true})),
            error: None,
            attempts: 1,
            deliveries: 1,
            worker: "new-worker".into(),
            enqueued_at_us: job.enqueued_at_us,
            started_at_us: now,
            finished_at_us: now,
            job: None,
        },
        awaits_acceptance: true,
    }
}

async fn upgrades_in_place(url: &str) {
    let now = surge_common::clock::now_micros();
    let succeeded = Job::new("echo", json!({"n": 1}), None);
    let dead = Job::new("echo", json!({"n": 2}), Some("tenant".into()));
    let scheduled = Job::new("echo", json!({"n": 3}), None);
    let pool = last_release_schema(url).await;
    old_result(&pool, &succeeded, "succeeded", now - 1_000).await;
    old_result(&pool, &dead, "dead", now - 500).await;
    sqlx::query("INSERT INTO scheduled_jobs (job_id, due_at_us, job) VALUES ($1, $2, $3)")
        .bind(scheduled.id.to_string())
        .bind(now - 100)
        .bind(String::from_utf8(scheduled.encode()).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    old_stage(&pool, &scheduled, "scheduled", None).await;
    let (queued, running, refused) = (
        Job::new("echo", json!({"n": 4}), None),
        Job::new("sleep", json!({"ms": 1}), None),
        Job::new("echo", json!({"n": 5}), None),
    );
    old_stage(&pool, &queued, "queued", Some(1)).await;
    old_stage(&pool, &running, "running", Some(1)).await;
    old_decision(&pool, refused.id, 0).await;
    pool.close().await;

    let storage = Storage::connect(url)
        .await
        .expect("this build opens and migrates the last release's database");
    let row = storage
        .get(succeeded.id)
        .await
        .unwrap()
        .expect("the result");
    assert_eq!(row.status, JobStatus::Succeeded);
    assert_eq!(row.result, Some(json!({"n": 1})));

    let page = storage
        .list_jobs(&ListFilter {
            status: StatusFilter::parse("dead"),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let listed: Vec<Uuid> = page.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(listed, [dead.id], "the dead job is listed");
    let claimed = storage
        .claim_dead_matching(&ReplayFilter {
            kind: None,
            since_us: None,
            max: 10,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the dead job is replayable");
    assert_eq!(
        claimed[0].job.as_ref(),
        Some(&dead),
        "with its job as it was kept"
    );

    match storage.lifecycle(scheduled.id).await.unwrap() {
        Some(Lifecycle::Pending(stage)) => assert_eq!(stage.stage, Stage::Scheduled),
        other => panic!("the scheduled job: {other:?}"),
    }
    let due = storage.claim_due(30_000_000, 10).await.unwrap();
    assert_eq!(due, [scheduled], "the scheduled job is claimed when due");

    let page = storage
        .list_jobs(&ListFilter {
            status: StatusFilter::parse("running"),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let listed: Vec<Uuid> = page.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(listed, [running.id], "the running job is listed");
    let outcome = storage
        .record_pending(&[result_of(&queued), result_of(&refused)])
        .await
        .unwrap();
    assert_eq!(
        outcome,
        [Recorded::New, Recorded::Cancelled],
        "the queued job's acceptance and the refusal came along"
    );
    assert_eq!(storage.lifecycle(refused.id).await.unwrap(), None);
}

#[tokio::test]
async fn sqlite() {
    let url = testing::temp_sqlite_url();
    // Created empty first (`Storage::connect` does this for its own pool).
    std::fs::File::create(url.trim_start_matches("sqlite://")).unwrap();
    upgrades_in_place(&url).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    upgrades_in_place(&url).await;
}
