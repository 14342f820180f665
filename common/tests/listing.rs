//! Operating on jobs through the storage, on SQLite and PostgreSQL: listing by status,
//! kind and time in keyset pages, served by the indexes (the plan names them); replay
//! claims that are exclusive and expire; cancelled rows that a worker's result cannot
//! replace. `measure_listing_at_a_million_rows` (ignored; run by hand) prints the plans
//! and timings quoted in the notes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use surge_common::job::Job;
use surge_common::storage::cancel::{CancelOutcome, Settled};
use surge_common::storage::lifecycle::{Stage, REPLAY_CLAIM_EXPIRY};
use surge_common::storage::listing::{Cursor, ListFilter, StatusFilter};
use surge_common::storage::replay::ReplayFilter;
use surge_common::storage::{JobResult, JobStatus, Recorded, Storage};
use surge_common::testing::{self, POSTGRES_URL_VAR};
use uuid::Uuid;

async fn sqlite() -> Storage {
    Storage::connect(&testing::temp_sqlite_url()).await.unwrap()
}

async fn postgres() -> Option<Storage> {
    let base = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    let url = testing::fresh_postgres_database(&base).await.unwrap();
    Some(Storage::connect(&url).await.unwrap())
}

fn is_postgres(storage: &Storage) -> bool {
    storage.pool().connect_options().database_url.scheme() == "postgres"
        || storage.pool().connect_options().database_url.scheme() == "postgresql"
}

/// A finished row of `kind` with `status`, finished at `at_us`, keeping its job.
fn row(kind: &str, status: JobStatus, at_us: i64) -> JobResult {
    let job = Job::new(kind, json!({"n": at_us}), None);
    JobResult {
        job_id: job.id,
        kind: kind.into(),
        status,
        result: (status == JobStatus::Succeeded).then(|| json!("ok")),
        error: (status == JobStatus::Dead).then(|| "boom".to_owned()),
        attempts: 3,
        deliveries: 1,
        worker: "w".into(),
        enqueued_at_us: at_us - 10,
        started_at_us: at_us - 5,
        finished_at_us: at_us,
        job: (status == JobStatus::Dead).then_some(job),
    }
}

/// Every page of `filter`, following the cursors.
async fn all_pages(storage: &Storage, mut filter: ListFilter) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    loop {
        let page = storage.list_jobs(&filter).await.unwrap();
        pages.push(page.jobs.iter().map(|j| j.job_id).collect());
        match page.next {
            Some(next) => filter.after = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 100, "the pages never end");
    }
}

async fn listing_pages_newest_first(storage: Storage) {
    // 30 rows: echo/sleep alternating, every third dead, finishing 1 ms apart; two share
    // a time (the id breaks the tie).
    let base = 1_800_000_000_000_000;
    let mut rows: Vec<JobResult> = (0..30)
        .map(|i| {
            let kind = if i % 2 == 0 { "echo" } else { "sleep" };
            let status = if i % 3 == 0 {
                JobStatus::Dead
            } else {
                JobStatus::Succeeded
            };
            row(kind, status, base + i * 1000)
        })
        .collect();
    rows[1].finished_at_us = rows[0].finished_at_us;
    storage.record_many(&rows).await.unwrap();
    let newest_first = |pick: &dyn Fn(&JobResult) -> bool| {
        let mut picked: Vec<&JobResult> = rows.iter().filter(|r| pick(r)).collect();
        picked.sort_by_key(|r| std::cmp::Reverse((r.finished_at_us, r.job_id.to_string())));
        picked.iter().map(|r| r.job_id).collect::<Vec<Uuid>>()
    };

    // Dead echo jobs, two per page.
    let filter = ListFilter {
        status: Some(StatusFilter::Finished(JobStatus::Dead)),
        kind: Some("echo".into()),
        limit: 2,
        ..ListFilter::default()
    };
    let pages = all_pages(&storage, filter).await;
    let expected = newest_first(&|r| r.status == JobStatus::Dead && r.kind == "echo");
    assert_eq!(expected.len(), 5);
    assert_eq!(pages.concat(), expected, "pages: {pages:?}");
    assert!(pages.iter().all(|p| p.len() <= 2));

    // Every finished job, 7 per page: none repeated, none skipped, the tie included.
    let filter = ListFilter {
        limit: 7,
        ..ListFilter::default()
    };
    let listed = all_pages(&storage, filter).await.concat();
    assert_eq!(listed, newest_first(&|_| true));

    // Since a time: only jobs finished at or after it.
    let since = base + 20 * 1000;
    let page = storage
        .list_jobs(&ListFilter {
            since_us: Some(since),
            kind: Some("sleep".into()),
            limit: 500,
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<Uuid> = page.jobs.iter().map(|j| j.job_id).collect();
    assert_eq!(
        ids,
        newest_first(&|r| r.kind == "sleep" && r.finished_at_us >= since)
    );
    assert_eq!(page.next, None);
    let dead = page.jobs.iter().find(|j| j.status == "dead").unwrap();
    assert!(dead.replayable, "{dead:?}");
    assert_eq!(dead.error.as_deref(), Some("boom"));

    // Not finished: a running job is listed; once it has a result it is not.
    let running = Job::new("echo", json!({}), None);
    let finishing = Job::new("echo", json!({}), None);
    storage
        .accept(&surge_common::storage::acceptance::AcceptedJob::of(&[
            running.clone(),
            finishing.clone(),
        ]))
        .await
        .unwrap();
    let stage = |job: &Job, at_us| surge_common::storage::lifecycle::StageUpdate {
        job_id: job.id,
        kind: "echo".into(),
        stage: Stage::Running,
        attempt: 1,
        error: None,
        at_us,
    };
    storage
        .record_stages(&[stage(&running, base), stage(&finishing, base + 1)])
        .await
        .unwrap();
    let mut done = row("echo", JobStatus::Succeeded, base + 2);
    done.job_id = finishing.id;
    storage.record(&done).await.unwrap();
    // A late stage update of the finished job does not bring it back.
    storage
        .record_stages(&[stage(&finishing, base + 3)])
        .await
        .unwrap();
    // Nor do jobs whose `running` mark lands after their result, even when they would
    // fill a whole page.
    for at in [base + 10, base + 11] {
        let late = row("echo", JobStatus::Succeeded, at);
        storage.record(&late).await.unwrap();
        let mut mark = stage(&finishing, at + 1);
        mark.job_id = late.job_id;
        storage.record_stages(&[mark]).await.unwrap();
    }
    for limit in [1, 50] {
        let page = storage
            .list_jobs(&ListFilter {
                status: Some(StatusFilter::Pending(Stage::Running)),
                limit,
                ..ListFilter::default()
            })
            .await
            .unwrap();
        let ids: Vec<Uuid> = page.jobs.iter().map(|j| j.job_id).collect();
        assert_eq!(ids, vec![running.id], "limit {limit}");
        assert_eq!(page.next, None);
    }

    // A cursor past everything: an empty last page.
    let page = storage
        .list_jobs(&ListFilter {
            after: Some(Cursor {
                at_us: 0,
                job_id: Uuid::nil(),
            }),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.is_empty() && page.next.is_none());

    // Counts per kind and status.
    let counts = storage.counts_by_kind().await.unwrap();
    let count = |kind: &str, status: &str| {
        counts
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("echo", "dead"), 5);
    assert_eq!(count("echo", "succeeded"), 13);
    assert_eq!(count("echo", "running"), 1);
}

#[tokio::test]
async fn listing_pages_newest_first_sqlite() {
    listing_pages_newest_first(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn listing_pages_newest_first_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    listing_pages_newest_first(storage).await;
}

/// Fills `jobs` with `n` finished rows (every tenth dead, four kinds, 1 ms apart) and
/// `n / 5` running jobs, all accepted, in SQL, then refreshes the statistics.
async fn fill(storage: &Storage, n: u64) {
    let generate = |body: &str| {
        format!(
            "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) {body}"
        )
    };
    let id = "'00000000-0000-4000-8000-' || substr(CAST(1000000000000 + i AS TEXT), 2, 12)";
    // One kind in fifty is `thumbnail`: a rare kind, where reading the time index and
    // filtering would cost most.
    let kind = "CASE WHEN i % 50 = 0 THEN 'thumbnail' ELSE CASE i % 3 WHEN 0 THEN 'echo' \
                WHEN 1 THEN 'sleep' ELSE 'hash' END END";
    let sql = generate(&format!(
        "INSERT INTO jobs (job_id, kind, state, accepted, result, error, attempts, deliveries, \
         worker, enqueued_at_us, started_at_us, finished_at_us, updated_at_us, job) \
         SELECT {id}, {kind}, CASE WHEN i % 10 = 0 THEN 'dead' ELSE 'succeeded' END, 1, NULL, \
         CASE WHEN i % 10 = 0 THEN 'boom' ELSE NULL END, 1, 1, 'w', \
         1700000000000000 + i * 1000, 1700000000000000 + i * 1000, \
         1700000000000000 + i * 1000, 1700000000000000 + i * 1000, NULL FROM g"
    ));
    sqlx::query(&sql).execute(storage.pool()).await.unwrap();
    let running = "'00000000-0000-4000-9000-' || substr(CAST(1000000000000 + i AS TEXT), 2, 12)";
    let sql = generate(&format!(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, error, updated_at_us) \
         SELECT {running}, {kind}, 'running', 1, 1, NULL, 1700000000000000 + i * 1000 \
         FROM g WHERE i % 5 = 1"
    ));
    sqlx::query(&sql).execute(storage.pool()).await.unwrap();
    sqlx::query("ANALYZE")
        .execute(storage.pool())
        .await
        .unwrap();
}

/// The listing filters an operator uses, each with the index that must serve it.
/// `rows` is the table's size: the cursor is a page or two from the newest end.
fn filters(rows: i64) -> Vec<(&'static str, ListFilter, &'static [&'static str])> {
    let dead = Some(StatusFilter::Finished(JobStatus::Dead));
    let page_two = Some(Cursor {
        at_us: 1_700_000_000_000_000 + (rows - 1_000) * 1000,
        job_id: Uuid::max(),
    });
    vec![
        (
            "status=dead",
            ListFilter {
                status: dead,
                ..ListFilter::default()
            },
            &["jobs_state"],
        ),
        (
            "status=dead&kind=echo&since=…",
            ListFilter {
                status: dead,
                kind: Some("echo".into()),
                since_us: Some(1_700_000_000_000_000 + 1000),
                ..ListFilter::default()
            },
            &["jobs_state_kind"],
        ),
        (
            "status=dead&kind=echo&cursor=…",
            ListFilter {
                status: dead,
                kind: Some("echo".into()),
                after: page_two.clone(),
                ..ListFilter::default()
            },
            &["jobs_state_kind"],
        ),
        (
            "kind=thumbnail",
            ListFilter {
                kind: Some("thumbnail".into()),
                ..ListFilter::default()
            },
            // PostgreSQL may rather read the time index and filter when the kind is
            // common enough (here one row in fifty): still a bounded index read.
            &["jobs_kind_finished", "jobs_finished"],
        ),
        (
            "status=running&kind=echo",
            ListFilter {
                status: Some(StatusFilter::Pending(Stage::Running)),
                kind: Some("echo".into()),
                ..ListFilter::default()
            },
            &["jobs_state_kind"],
        ),
        (
            "status=running",
            ListFilter {
                status: Some(StatusFilter::Pending(Stage::Running)),
                ..ListFilter::default()
            },
            &["jobs_state"],
        ),
    ]
}

/// Asserts that `plan` reads one of `indexes` in order: no full scan of the table, no
/// full sort (PostgreSQL's incremental sort of rows sharing a time is fine).
fn assert_plan_uses(plan: &str, indexes: &[&str], what: &str) {
    assert!(
        indexes.iter().any(|index| plan.contains(index)),
        "{what}: plan uses none of {indexes:?}:\n{plan}"
    );
    for line in plan.lines() {
        let step = line.trim_start().trim_start_matches("->").trim_start();
        assert!(
            !step.starts_with("Seq Scan") && !step.starts_with("Sort  ("),
            "{what}: a table scan or a full sort:\n{plan}"
        );
        assert!(
            !step.contains("TEMP B-TREE FOR ORDER BY"),
            "{what}: a full sort:\n{plan}"
        );
        let scan = step.trim_start_matches("--");
        assert!(
            !(scan.starts_with("SCAN jobs") || scan.starts_with("SCAN s"))
                || scan.contains("INDEX"),
            "{what}: a table scan:\n{plan}"
        );
    }
}

async fn listing_plans_use_the_indexes(storage: Storage) {
    fill(&storage, 20_000).await;
    for (what, filter, index) in filters(20_000) {
        let plan = storage.explain_listing(&filter).await.unwrap();
        assert_plan_uses(&plan, index, what);
        // And the query answers.
        let page = storage.list_jobs(&filter).await.unwrap();
        assert!(!page.jobs.is_empty(), "{what}");
    }
}

#[tokio::test]
async fn listing_plans_use_the_indexes_sqlite() {
    listing_plans_use_the_indexes(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn listing_plans_use_the_indexes_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    listing_plans_use_the_indexes(storage).await;
}

async fn replay_claims_are_exclusive_and_expire(storage: Storage) {
    let now = 1_800_000_000_000_000;
    let dead = row("echo", JobStatus::Dead, now - 1);
    storage.record(&dead).await.unwrap();

    // One claim at a time; the second sees the job held, until the claim expires.
    assert!(storage
        .claim_replay_at(dead.job_id, now)
        .await
        .unwrap()
        .is_some());
    assert!(storage
        .claim_replay_at(dead.job_id, now + 1)
        .await
        .unwrap()
        .is_none());
    let filter = ReplayFilter {
        kind: None,
        since_us: None,
        max: 10,
    };
    assert!(storage
        .claim_dead_matching_at(&filter, now + 1)
        .await
        .unwrap()
        .is_empty());
    let expiry = i64::try_from(REPLAY_CLAIM_EXPIRY.as_micros()).unwrap();
    let again = storage
        .claim_dead_matching_at(&filter, now + expiry + 1)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "an interrupted replay's claim expires");
    assert_eq!(again[0].job.as_ref().map(|j| j.id), Some(dead.job_id));
    // Released at once when its publish failed.
    storage.abandon_replays(&[dead.job_id]).await.unwrap();
    assert!(storage
        .claim_replay_at(dead.job_id, now + expiry + 2)
        .await
        .unwrap()
        .is_some());

    // Many concurrent bulk claims over 60 dead jobs: each job is claimed exactly once.
    let rows: Vec<JobResult> = (0..60)
        .map(|i| {
            row(
                if i % 2 == 0 { "echo" } else { "hash" },
                JobStatus::Dead,
                now + i,
            )
        })
        .collect();
    storage.record_many(&rows).await.unwrap();
    let claims = (0..6).map(|_| {
        let storage = storage.clone();
        tokio::spawn(async move {
            storage
                .claim_dead_matching(&ReplayFilter {
                    kind: None,
                    since_us: Some(now),
                    max: 25,
                })
                .await
                .unwrap()
        })
    });
    let mut claimed = Vec::new();
    for claim in claims {
        claimed.extend(claim.await.unwrap().into_iter().map(|r| r.job_id));
    }
    let distinct: HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(distinct.len(), 60, "every dead job was claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_claims_are_exclusive_and_expire_sqlite() {
    replay_claims_are_exclusive_and_expire(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn replay_claims_are_exclusive_and_expire_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    replay_claims_are_exclusive_and_expire(storage).await;
}

async fn a_cancelled_row_is_never_replaced_by_a_result(storage: Storage) {
    let job = Job::new("echo", json!({}), None);
    assert_eq!(
        storage.cancel_job(job.id).await.unwrap(),
        CancelOutcome::Unknown,
        "an unknown job"
    );
    storage
        .accept(&surge_common::storage::acceptance::AcceptedJob::of(
            std::slice::from_ref(&job),
        ))
        .await
        .unwrap();
    let CancelOutcome::Cancelled(cancelled) = storage.cancel_job(job.id).await.unwrap() else {
        panic!("not cancelled");
    };
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    // The worker's result, and its dead row, meet the cancelled row: Cancelled, nothing stored.
    let mut result = row("echo", JobStatus::Succeeded, 5);
    result.job_id = job.id;
    assert_eq!(storage.record(&result).await.unwrap(), Recorded::Cancelled);
    result.status = JobStatus::Dead;
    assert_eq!(
        storage
            .record_many(&[result.clone(), result])
            .await
            .unwrap(),
        vec![Recorded::Cancelled, Recorded::Cancelled]
    );
    let stored = storage.get(job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Cancelled);
    assert_eq!((stored.result, stored.deliveries), (None, 1));
    assert_eq!(
        storage.settled(&[job.id]).await.unwrap().get(&job.id),
        Some(&Settled::Cancelled)
    );

    // The other way round: a result first, then the cancel finds it finished.
    let finished = row("echo", JobStatus::Succeeded, 6);
    storage.record(&finished).await.unwrap();
    assert!(matches!(
        storage.cancel_job(finished.job_id).await.unwrap(),
        CancelOutcome::Finished(r) if r.status == JobStatus::Succeeded
    ));
    assert_eq!(
        storage
            .settled(&[finished.job_id])
            .await
            .unwrap()
            .get(&finished.job_id),
        Some(&Settled::Succeeded)
    );
}

#[tokio::test]
async fn a_cancelled_row_is_never_replaced_by_a_result_sqlite() {
    a_cancelled_row_is_never_replaced_by_a_result(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn a_cancelled_row_is_never_replaced_by_a_result_postgres() {
    let Some(storage) = postgres().await else {
        return;
    };
    a_cancelled_row_is_never_replaced_by_a_result(storage).await;
}

/// Prints, for each filter at 1,000,000 rows, the plan and the time of the first page and
/// of a page 20 cursors deep (median of 5). A measurement, not a test: run by hand with
/// `cargo test -p surge-common --release --test listing -- --ignored --nocapture measure`.
async fn measure(storage: Storage, database: &str) {
    let started = Instant::now();
    fill(&storage, 1_000_000).await;
    println!(
        "\n## {database}: 1,000,000 finished jobs (+200,000 running) filled in {:.1?}",
        started.elapsed()
    );
    for (what, filter, index) in filters(1_000_000) {
        let plan = storage.explain_listing(&filter).await.unwrap();
        assert_plan_uses(&plan, index, what);
        let time = |filter: ListFilter| {
            let storage = storage.clone();
            async move {
                let mut times = Vec::new();
                for _ in 0..5 {
                    let started = Instant::now();
                    storage.list_jobs(&filter).await.unwrap();
                    times.push(started.elapsed());
                }
                times.sort();
                times[2]
            }
        };
        let first = time(filter.clone()).await;
        let mut deep = filter.clone();
        for _ in 0..20 {
            match storage.list_jobs(&deep).await.unwrap().next {
                Some(next) => deep.after = Some(next),
                None => break,
            }
        }
        let deep = time(deep).await;
        println!("\n### {what}: first page {first:.2?}, page 21 {deep:.2?}\n```\n{plan}\n```");
    }
    let started = Instant::now();
    let counts = storage.counts_by_kind().await.unwrap();
    println!(
        "\ncounts_by_kind ({} rows): {:.2?}",
        counts.len(),
        started.elapsed()
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (1,000,000 rows, minutes): run by hand, see the notes"]
async fn measure_listing_at_a_million_rows() {
    measure(sqlite().await, "SQLite").await;
    if let Some(storage) = postgres().await {
        assert!(is_postgres(&storage));
        measure(storage, "PostgreSQL").await;
    }
}
