//! Retention on SQLite and PostgreSQL: a pass deletes exactly what is past its window
//! (finished jobs, refused decisions, idempotency keys, sent callbacks), oldest first and at most `limit` of each, keeps
//! everything else (fresh rows, replays in progress, unfinished jobs, callbacks still to
//! send); one lease holder at a time; a pending idempotency claim of a dead ingress is
//! resumed with its job id.

use std::time::Duration;

use surge_common::clock::now_micros;
use surge_common::storage::idempotency::Claim;
use surge_common::storage::retention::RetentionPolicy;
use surge_common::storage::{JobResult, JobStatus, Storage};
use surge_common::testing::{self};
use uuid::Uuid;

const MINUTE: i64 = 60_000_000;

fn result(status: JobStatus, finished_at_us: i64) -> JobResult {
    testing::finished_row(status, finished_at_us)
}

async fn exec(storage: &Storage, sql: &str, binds: &[&str]) {
    let mut query = sqlx::query(sql);
    for b in binds {
        query = query.bind(b.to_string());
    }
    query.execute(storage.pool()).await.unwrap();
}

/// A job the ingress decided on at `at_us` and that has not finished: accepted (1, it waits
/// `queued`) or refused (0).
async fn decided(storage: &Storage, id: Uuid, accepted: i64, at_us: i64) {
    sqlx::query(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, updated_at_us) \
         VALUES ($1, 'echo', CASE WHEN $2 = 1 THEN 'queued' ELSE 'refused' END, $2, 1, 0, $3)",
    )
    .bind(id.to_string())
    .bind(accepted)
    .bind(at_us)
    .execute(storage.pool())
    .await
    .unwrap();
}

async fn count(storage: &Storage, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(storage.pool())
        .await
        .unwrap()
}

async fn callback(storage: &Storage, job: Uuid, delivered_at: Option<i64>, next_at: i64) {
    sqlx::query(
        "INSERT INTO callback_outbox (idempotency_key, job_id, seq, url, body, next_at_us, \
         delivered_at_us) VALUES ($1, $2, 1, 'https://example.com/hook', '{}', $3, $4)",
    )
    .bind(format!("{job}:1"))
    .bind(job.to_string())
    .bind(next_at)
    .bind(delivered_at)
    .execute(storage.pool())
    .await
    .unwrap();
}

/// A job a worker is running since `updated_at_us`.
async fn running(storage: &Storage, job: Uuid, updated_at_us: i64) {
    sqlx::query(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, updated_at_us) \
         VALUES ($1, 'echo', 'running', 1, 1, 0, $2)",
    )
    .bind(job.to_string())
    .bind(updated_at_us)
    .execute(storage.pool())
    .await
    .unwrap();
}

async fn prunes_what_is_past_its_window(storage: Storage) {
    let now = now_micros();
    let policy = RetentionPolicy {
        succeeded: Some(Duration::from_secs(30 * 60)),
        dead: Some(Duration::from_secs(7 * 24 * 3600)),
        cancelled: Some(Duration::from_secs(30 * 60)),
        idempotency: Some(Duration::from_secs(30 * 60)),
    };
    let old_ok = result(JobStatus::Succeeded, now - 31 * MINUTE);
    let fresh_ok = result(JobStatus::Succeeded, now - 29 * MINUTE);
    let old_dead = result(JobStatus::Dead, now - 8 * 24 * 60 * MINUTE);
    let young_dead = result(JobStatus::Dead, now - 2 * 24 * 60 * MINUTE);
    let replaying = result(JobStatus::Dead, now - 9 * 24 * 60 * MINUTE);
    storage
        .record_many(&[
            old_ok.clone(),
            fresh_ok.clone(),
            old_dead.clone(),
            young_dead.clone(),
            replaying.clone(),
        ])
        .await
        .unwrap();
    exec(
        &storage,
        "UPDATE jobs SET replaying_since_us = 1 WHERE job_id = $1",
        &[&replaying.job_id.to_string()],
    )
    .await;
    let old_cancelled = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, worker, \
         enqueued_at_us, started_at_us, finished_at_us, updated_at_us) \
         VALUES ($1, 'echo', 'cancelled', 1, 0, 1, '', 0, 0, $2, $2)",
    )
    .bind(old_cancelled.to_string())
    .bind(now - 40 * MINUTE)
    .execute(storage.pool())
    .await
    .unwrap();
    // Jobs accepted long ago that have not finished (a long backlog): kept.
    let (unfinished, waiting) = (Uuid::now_v7(), Uuid::now_v7());
    running(&storage, unfinished, now - 60 * MINUTE).await;
    decided(&storage, waiting, 1, now - 60 * MINUTE).await;
    // Refused at the ingress (publish failed), old and fresh.
    let (old_refused, fresh_refused) = (Uuid::now_v7(), Uuid::now_v7());
    decided(&storage, old_refused, 0, now - 31 * MINUTE).await;
    decided(&storage, fresh_refused, 0, now - MINUTE).await;
    // Idempotency keys, old and fresh.
    for (key, at) in [("old", now - 31 * MINUTE), ("fresh", now - MINUTE)] {
        let claim = storage
            .claim_idempotency_key("", key, "h", Uuid::now_v7(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claim, Claim::Claimed);
        sqlx::query("UPDATE idempotency_keys SET created_at_us = $1 WHERE idem_key = $2")
            .bind(at)
            .bind(key)
            .execute(storage.pool())
            .await
            .unwrap();
    }
    // Callbacks: delivered long ago and just now; given up for a pruned job and for a kept
    // one; one still being retried.
    callback(&storage, old_ok.job_id, Some(now - 31 * MINUTE), now).await;
    callback(&storage, fresh_ok.job_id, Some(now - MINUTE), now).await;
    callback(&storage, old_dead.job_id, None, i64::MAX).await;
    callback(&storage, young_dead.job_id, None, i64::MAX).await;
    let retrying = Uuid::now_v7();
    callback(&storage, retrying, None, now + MINUTE).await;
    let report = storage.prune(&policy, now, 10_000).await.unwrap();
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert_eq!(report.dead, 1, "{report:?}");
    assert_eq!(report.cancelled, 1, "{report:?}");
    assert_eq!(report.refused, 1, "{report:?}");
    assert_eq!(report.idempotency_keys, 1, "{report:?}");
    assert_eq!(
        report.callbacks, 2,
        "one delivered, one given up: {report:?}"
    );

    let kept: Vec<Uuid> = storage
        .get_many(&[
            old_ok.job_id,
            fresh_ok.job_id,
            old_dead.job_id,
            young_dead.job_id,
            replaying.job_id,
            old_cancelled,
        ])
        .await
        .unwrap()
        .iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    for id in [fresh_ok.job_id, young_dead.job_id, replaying.job_id] {
        assert!(kept.contains(&id), "{id} was pruned");
    }
    let rows = count(&storage, "SELECT COUNT(*) FROM jobs").await;
    assert_eq!(
        rows, 6,
        "fresh_ok, young_dead, replaying, unfinished, waiting, fresh_refused"
    );
    assert_eq!(
        count(
            &storage,
            "SELECT COUNT(*) FROM jobs WHERE state = 'refused'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &storage,
            "SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = 'fresh'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&storage, "SELECT COUNT(*) FROM idempotency_keys").await,
        1
    );
    assert_eq!(
        count(&storage, "SELECT COUNT(*) FROM callback_outbox").await,
        3
    );

    // A second pass finds nothing more.
    let again = storage.prune(&policy, now, 10_000).await.unwrap();
    assert_eq!(again, Default::default());

    // Keep-forever windows prune nothing of their kind.
    let forever = RetentionPolicy {
        succeeded: None,
        dead: None,
        cancelled: None,
        idempotency: None,
    };
    let far_future = now + 365 * 24 * 60 * MINUTE;
    let report = storage.prune(&forever, far_future, 10_000).await.unwrap();
    assert_eq!(
        (
            report.succeeded,
            report.dead,
            report.cancelled,
            report.idempotency_keys
        ),
        (0, 0, 0, 0)
    );

    // Bounded passes, oldest first.
    let batch: Vec<JobResult> = (0..25)
        .map(|i| result(JobStatus::Succeeded, now - (100 + i) * MINUTE))
        .collect();
    storage.record_many(&batch).await.unwrap();
    let report = storage.prune(&policy, now, 10).await.unwrap();
    assert_eq!(report.succeeded, 10);
    assert!(report.hit(10));
    let left: Vec<Uuid> = storage
        .get_many(&batch.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .await
        .unwrap()
        .iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(left.len(), 15);
    for oldest in &batch[15..] {
        assert!(!left.contains(&oldest.job_id), "the oldest go first");
    }
}

async fn one_lease_holder_at_a_time(storage: Storage) {
    let long = Duration::from_secs(60);
    assert!(storage.try_lease("retention", "a", long).await.unwrap());
    assert!(!storage.try_lease("retention", "b", long).await.unwrap());
    assert!(
        storage.try_lease("retention", "a", long).await.unwrap(),
        "renewed"
    );
    assert!(
        storage.try_lease("other", "b", long).await.unwrap(),
        "leases are per name"
    );
    storage.release_lease("retention", "b").await.unwrap();
    assert!(
        !storage.try_lease("retention", "b", long).await.unwrap(),
        "not b's to give"
    );
    storage.release_lease("retention", "a").await.unwrap();
    assert!(storage
        .try_lease("retention", "b", Duration::ZERO)
        .await
        .unwrap());
    // b's lease ends at once: a takes over as soon as the clock moved on.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !storage.try_lease("retention", "a", long).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "an ended lease was never taken over"
        );
        tokio::task::yield_now().await;
    }
}

async fn a_stale_pending_claim_is_resumed_with_its_job(storage: Storage) {
    let first = Uuid::now_v7();
    let pending_for = Duration::from_secs(60);
    let claim = |hash: &'static str, id: Uuid, pending_for: Duration| {
        let storage = storage.clone();
        async move {
            storage
                .claim_idempotency_key("", "order-7", hash, id, pending_for)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("h", first, pending_for).await, Claim::Claimed);
    // Still within the publish window: another request races it (409 at the ingress).
    assert!(matches!(
        claim("h", Uuid::now_v7(), pending_for).await,
        Claim::Existing { done: false, .. }
    ));
    // The ingress died: the claim is older than the window.
    sqlx::query("UPDATE idempotency_keys SET created_at_us = $1 WHERE idem_key = 'order-7'")
        .bind(now_micros() - 2 * MINUTE)
        .execute(storage.pool())
        .await
        .unwrap();
    // Another body under the same key never takes it over.
    assert!(matches!(
        claim("other", Uuid::now_v7(), pending_for).await,
        Claim::Existing { .. }
    ));
    assert_eq!(
        claim("h", Uuid::now_v7(), pending_for).await,
        Claim::Resumed { job_id: first },
        "the same request resumes the first job's id"
    );
    // Resumed means claimed afresh: a racing request is told to wait again.
    assert!(matches!(
        claim("h", Uuid::now_v7(), pending_for).await,
        Claim::Existing { done: false, .. }
    ));
}

/// `rows_per_state` counts the jobs in each state (run first, on an empty database).
async fn counts_rows_per_state(storage: Storage) {
    let now = now_micros();
    storage
        .record_many(&[
            result(JobStatus::Succeeded, now),
            result(JobStatus::Succeeded, now),
            result(JobStatus::Dead, now),
        ])
        .await
        .unwrap();
    running(&storage, Uuid::now_v7(), now).await;
    exec(
        &storage,
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, updated_at_us) \
         VALUES ($1, 'echo', 'scheduled', 1, 1, 1)",
        &[&Uuid::now_v7().to_string()],
    )
    .await;
    let mut counts = storage.rows_per_state().await.unwrap();
    counts.sort();
    assert_eq!(
        counts,
        [
            ("dead", 1),
            ("running", 1),
            ("scheduled", 1),
            ("succeeded", 2)
        ]
        .map(|(state, n)| (state.to_owned(), n))
        .to_vec()
    );

    // Once counted below a mark, a read adds only the rows finished at or after it: a row
    // slipped in below the mark shows at the next count, one above it at once.
    let mark = now + 1_000;
    storage.count_results_below(mark).await.unwrap();
    storage
        .record_many(&[
            result(JobStatus::Succeeded, mark - 500),
            result(JobStatus::Dead, mark + 500),
        ])
        .await
        .unwrap();
    let totals = storage.result_totals().await.unwrap();
    assert_eq!((totals.succeeded, totals.dead), (2, 2), "{totals:?}");
    storage.count_results_below(mark).await.unwrap();
    let totals = storage.result_totals().await.unwrap();
    assert_eq!((totals.succeeded, totals.dead), (3, 2), "{totals:?}");
    exec(&storage, "DELETE FROM jobs", &[]).await;
    exec(&storage, "DELETE FROM result_counts", &[]).await;
}

async fn all(storage: Storage) {
    counts_rows_per_state(storage.clone()).await;
    prunes_what_is_past_its_window(storage.clone()).await;
    one_lease_holder_at_a_time(storage.clone()).await;
    a_stale_pending_claim_is_resumed_with_its_job(storage).await;
}

#[tokio::test]
async fn sqlite() {
    all(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
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
    all(Storage::connect(&url).await.unwrap()).await;
}
