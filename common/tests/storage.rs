//! The results table on SQLite and PostgreSQL: one row per job id, repeats counted, batches
//! all-or-nothing per commit, the group-commit writer answering every caller.

use serde_json::json;
use surge_common::storage::acceptance::ACCEPTANCE_OVERDUE;
use surge_common::storage::batch::ResultWriter;
use surge_common::storage::driver::DriverChoice;
use surge_common::storage::{
    JobResult, JobStatus, PendingResult, Recorded, Storage, StorageOptions,
};
use surge_common::testing::{self};
use uuid::Uuid;

fn row(id: Uuid, worker: &str) -> JobResult {
    JobResult {
        job_id: id,
        kind: "echo".into(),
        status: JobStatus::Succeeded,
        result: Some(json!({ "worker": worker })),
        error: None,
        attempts: 1,
        deliveries: 1,
        worker: worker.into(),
        enqueued_at_us: 1,
        started_at_us: 2,
        finished_at_us: 3,
        job: None,
    }
}

async fn behaves(storage: Storage) {
    // Single writes: a repeat keeps the first result and counts the delivery.
    let id = Uuid::now_v7();
    assert_eq!(storage.record(&row(id, "a")).await.unwrap(), Recorded::New);
    assert_eq!(
        storage.record(&row(id, "b")).await.unwrap(),
        Recorded::Duplicate
    );
    let stored = storage.get(id).await.unwrap().unwrap();
    assert_eq!(stored.worker, "a");
    assert_eq!(stored.result, Some(json!({"worker": "a"})));
    assert_eq!(stored.deliveries, 2);
    assert_eq!(storage.get(Uuid::now_v7()).await.unwrap(), None);

    // A batch larger than one statement, with one id already stored and one repeated.
    let mut ids: Vec<Uuid> = (0..1200).map(|_| Uuid::now_v7()).collect();
    let mut rows: Vec<JobResult> = ids.iter().map(|&id| row(id, "batch")).collect();
    rows.push(row(id, "batch"));
    rows.push(row(ids[7], "batch-again"));
    let outcome = storage.record_many(&rows).await.unwrap();
    assert!(outcome[..1200].iter().all(|r| *r == Recorded::New));
    assert_eq!(outcome[1200..], [Recorded::Duplicate, Recorded::Duplicate]);
    assert_eq!(storage.count().await.unwrap(), 1201);
    assert_eq!(storage.get(id).await.unwrap().unwrap().deliveries, 3);
    assert_eq!(storage.get(ids[7]).await.unwrap().unwrap().deliveries, 2);
    ids.push(id);
    assert_eq!(storage.get_many(&ids).await.unwrap().len(), 1201);

    // The group-commit writer: many concurrent callers, each answered for its own row.
    let writer = ResultWriter::spawn(storage.clone(), 64);
    let fresh: Vec<Uuid> = (0..500).map(|_| Uuid::now_v7()).collect();
    let answers = futures::future::join_all(fresh.iter().map(|&id| {
        let writer = writer.clone();
        async move { writer.record(row(id, "writer")).await }
    }))
    .await;
    assert!(answers.iter().all(|a| matches!(a, Ok(Recorded::New))));
    assert_eq!(storage.count().await.unwrap(), 1701);
    let repeat = writer.record(row(fresh[0], "writer")).await.unwrap();
    assert_eq!(repeat, Recorded::Duplicate);

    cancellation(&storage).await;
    acceptance(&storage).await;
    stages_and_settled(&storage).await;
}

/// Stage marks (the newest wins, a `queued` mark only fills a missing row, nothing over a
/// finished row) and the check before an attempt (only terminal rows count).
async fn stages_and_settled(storage: &Storage) {
    use surge_common::storage::cancel::Settled;
    use surge_common::storage::lifecycle::{Lifecycle, Stage, StageUpdate};
    let mark = |id: Uuid, stage: Stage, attempt: u32, at_us: i64| StageUpdate {
        job_id: id,
        kind: "echo".into(),
        stage,
        attempt,
        error: (stage == Stage::Retrying).then(|| "boom".to_owned()),
        at_us,
    };
    let stage_of = |lifecycle: Option<Lifecycle>| match lifecycle {
        Some(Lifecycle::Pending(update)) => Some((update.stage, update.attempt)),
        other => panic!("expected a pending job, got {other:?}"),
    };
    let (running, finished, unknown) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    storage
        .record_stages(&[
            mark(running, Stage::Running, 1, 10),
            mark(finished, Stage::Running, 1, 10),
            // Of two marks for one job in a batch, the last wins.
            mark(running, Stage::Retrying, 1, 20),
        ])
        .await
        .unwrap();
    // Then: an older mark, and a `queued` one over a worker's mark, change nothing; a
    // newer one wins.
    let expected = [
        (None, (Stage::Retrying, 1)),
        (
            Some(mark(running, Stage::Running, 2, 15)),
            (Stage::Retrying, 1),
        ),
        (
            Some(mark(running, Stage::Queued, 1, 30)),
            (Stage::Retrying, 1),
        ),
        (
            Some(mark(running, Stage::Running, 2, 40)),
            (Stage::Running, 2),
        ),
    ];
    for (update, stage) in expected {
        if let Some(update) = update {
            storage.record_stages(&[update]).await.unwrap();
        }
        assert_eq!(
            stage_of(storage.lifecycle(running).await.unwrap()),
            Some(stage)
        );
    }
    // A finished row keeps its outcome whatever mark comes late.
    assert_eq!(
        storage.record(&row(finished, "w")).await.unwrap(),
        Recorded::New
    );
    storage
        .record_stages(&[mark(finished, Stage::Running, 3, i64::MAX)])
        .await
        .unwrap();
    assert!(matches!(
        storage.lifecycle(finished).await.unwrap(),
        Some(Lifecycle::Finished(_))
    ));
    let settled = storage
        .settled(&[running, finished, unknown])
        .await
        .unwrap();
    assert_eq!(settled.get(&finished), Some(&Settled::Succeeded));
    assert_eq!(
        settled.len(),
        1,
        "only the finished job is settled: {settled:?}"
    );
}

/// A result of a job awaiting acceptance, stamped `enqueued_at_us`.
fn pending(id: Uuid, enqueued_at_us: i64) -> PendingResult {
    let mut row = row(id, "w");
    row.enqueued_at_us = enqueued_at_us;
    PendingResult {
        row,
        awaits_acceptance: true,
    }
}

/// A job answered with an error never has a result, even when the worker's result insert
/// comes before the ingress's cancel (the race that let a job answered 503 run to a result
/// in the RabbitMQ restart test). Drives the storage calls in that order.
async fn acceptance(storage: &Storage) {
    let before = storage.count().await.unwrap();
    let now = surge_common::clock::now_micros();

    // The racy order: the worker commits first, then the ingress cancels.
    let refused = Uuid::now_v7();
    assert_eq!(
        storage
            .record_pending(&[pending(refused, now)])
            .await
            .unwrap(),
        [Recorded::Unaccepted],
        "no result before the ingress decided"
    );
    assert_eq!(storage.get(refused).await.unwrap(), None);
    assert_eq!(
        storage.cancel(&[refused]).await.unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(
        storage
            .record_pending(&[pending(refused, now)])
            .await
            .unwrap(),
        [Recorded::Cancelled]
    );
    assert_eq!(storage.get(refused).await.unwrap(), None);
    assert_eq!(storage.lifecycle(refused).await.unwrap(), None);

    // The same order for a job whose publish succeeded: the result waits, then commits.
    let accepted = Uuid::now_v7();
    assert_eq!(
        storage
            .record_pending(&[pending(accepted, now)])
            .await
            .unwrap(),
        [Recorded::Unaccepted]
    );
    storage
        .accept(&surge_common::testing::accepted(&[accepted]))
        .await
        .unwrap();
    assert_eq!(
        storage
            .record_pending(&[pending(accepted, now)])
            .await
            .unwrap(),
        [Recorded::New]
    );
    // A cancel after the acceptance changes nothing and reports the job accepted.
    assert_eq!(storage.cancel(&[accepted]).await.unwrap(), vec![accepted]);
    assert!(!storage.is_cancelled(accepted).await.unwrap());

    // Never decided (the ingress crashed after the confirm): once overdue, the worker takes
    // the job as accepted, and a cancel arriving later loses.
    let overdue = i64::try_from(ACCEPTANCE_OVERDUE.as_micros()).unwrap() + 1_000_000;
    let stranded = Uuid::now_v7();
    assert_eq!(
        storage
            .record_pending(&[pending(stranded, now - overdue)])
            .await
            .unwrap(),
        [Recorded::New]
    );
    assert_eq!(storage.cancel(&[stranded]).await.unwrap(), vec![stranded]);
    // But an overdue job that was cancelled in time stays cancelled.
    let late = Uuid::now_v7();
    storage.cancel(&[late]).await.unwrap();
    assert_eq!(
        storage
            .record_pending(&[pending(late, now - overdue)])
            .await
            .unwrap(),
        [Recorded::Cancelled]
    );

    // One batch mixing them all, with a repeat of a row written in the same batch.
    let (fresh, waiting, plain) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    storage
        .accept(&surge_common::testing::accepted(&[fresh]))
        .await
        .unwrap();
    let mut ungated = pending(plain, now);
    ungated.awaits_acceptance = false;
    let outcome = storage
        .record_pending(&[
            pending(fresh, now),
            pending(refused, now),
            pending(waiting, now),
            ungated,
            pending(fresh, now),
            pending(accepted, now),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcome,
        [
            Recorded::New,
            Recorded::Cancelled,
            Recorded::Unaccepted,
            Recorded::New,
            Recorded::Duplicate,
            Recorded::Duplicate,
        ]
    );
    assert_eq!(storage.count().await.unwrap(), before + 4);

    // The acceptance committing while the result is inserted: a row is only ever reported
    // stored (new or a repeat) when it is, and every job ends with its result.
    let racing: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let accepts = futures::future::join_all(racing.iter().map(|&id| {
        let storage = storage.clone();
        async move {
            storage
                .accept(&surge_common::testing::accepted(&[id]))
                .await
                .unwrap()
        }
    }));
    let writes = futures::future::join_all(racing.iter().map(|&id| {
        let storage = storage.clone();
        async move {
            loop {
                match storage.record_pending(&[pending(id, now)]).await.unwrap()[0] {
                    Recorded::Unaccepted => tokio::task::yield_now().await,
                    recorded => {
                        assert_eq!(recorded, Recorded::New, "job {id}");
                        break;
                    }
                }
            }
        }
    }));
    tokio::join!(accepts, writes);
    assert_eq!(storage.get_many(&racing).await.unwrap().len(), racing.len());

    // Both orders at once, many times: whatever the interleaving, a job the cancel did not
    // report accepted has no result.
    let ids: Vec<Uuid> = (0..200).map(|_| Uuid::now_v7()).collect();
    let (halves, _) = ids.split_at(100);
    storage
        .accept(&surge_common::testing::accepted(&ids[100..]))
        .await
        .unwrap();
    let cancels = futures::future::join_all(ids.iter().map(|&id| {
        let storage = storage.clone();
        async move { (id, storage.cancel(&[id]).await.unwrap()) }
    }));
    let results = futures::future::join_all(ids.iter().map(|&id| {
        let storage = storage.clone();
        async move { storage.record_pending(&[pending(id, now)]).await.unwrap() }
    }));
    let (cancels, _) = tokio::join!(cancels, results);
    for (id, accepted) in cancels {
        let stored = storage.get(id).await.unwrap();
        if accepted.is_empty() {
            assert_eq!(stored, None, "job {id} was cancelled but has a result");
            assert!(halves.contains(&id));
        } else {
            assert!(
                !halves.contains(&id),
                "job {id} was accepted though never accepted"
            );
        }
    }
}

/// A job cancelled because its publish failed never gets a result; cancelling a job that
/// already ran reports it and leaves it alone.
async fn cancellation(storage: &Storage) {
    let before = storage.count().await.unwrap();
    let refused = Uuid::now_v7();
    let finished = Uuid::now_v7();
    assert_eq!(
        storage.record(&row(finished, "early")).await.unwrap(),
        Recorded::New
    );
    assert_eq!(
        storage.cancel(&[refused]).await.unwrap(),
        Vec::<Uuid>::new()
    );
    assert_eq!(storage.cancel(&[finished]).await.unwrap(), vec![finished]);

    let kept = Uuid::now_v7();
    let outcome = storage
        .record_many(&[
            row(refused, "late"),
            row(kept, "late"),
            row(finished, "late"),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcome,
        [Recorded::Cancelled, Recorded::New, Recorded::Duplicate]
    );
    assert_eq!(storage.get(refused).await.unwrap(), None);
    assert_eq!(
        storage.lifecycle(refused).await.unwrap(),
        None,
        "a cancelled job is unknown"
    );
    assert!(storage.is_cancelled(refused).await.unwrap());
    assert!(
        !storage.is_cancelled(finished).await.unwrap(),
        "a job that ran stays"
    );
    assert_eq!(storage.count().await.unwrap(), before + 2);
}

#[tokio::test]
async fn sqlite() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    assert_eq!(storage.driver_name(), "portable");
    behaves(storage).await;
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
    let options = StorageOptions {
        driver: DriverChoice::Native,
        ..Default::default()
    };
    let storage = Storage::connect_with(&url, options).await.unwrap();
    assert_eq!(storage.driver_name(), "postgres", "PostgreSQL's own driver");
    behaves(storage).await;
}

/// The conformance check of the two drivers: the portable one (SQLite's) gives the same
/// answers on PostgreSQL as PostgreSQL's own driver above.
#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_with_the_portable_driver() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let options = StorageOptions {
        driver: DriverChoice::Portable,
        ..Default::default()
    };
    let storage = Storage::connect_with(&url, options).await.unwrap();
    assert_eq!(storage.driver_name(), "portable");
    behaves(storage).await;
}

/// Heartbeats upsert per worker; the dashboard's queries count, rate and rank results.
async fn heartbeats_and_live_figures(storage: Storage) {
    use surge_common::storage::heartbeat::{Heartbeat, RecentLatency, ResultTotals};

    let beat = |id: &str, in_flight: u64, last_seen_us: i64| Heartbeat {
        worker_id: id.into(),
        capacity: 50,
        in_flight,
        succeeded: 7,
        dead: 1,
        started_at_us: 1_000,
        last_seen_us,
        kinds: serde_json::Value::Null,
        busy_keys: vec![surge_common::storage::heartbeat::KeyLoad {
            key: format!("tenant-of-{id}"),
            started: in_flight,
        }],
    };
    storage
        .upsert_heartbeat(&beat("a", 3, 10_000))
        .await
        .unwrap();
    storage
        .upsert_heartbeat(&beat("b", 1, 20_000))
        .await
        .unwrap();
    storage
        .upsert_heartbeat(&beat("a", 5, 30_000))
        .await
        .unwrap();
    storage
        .upsert_heartbeat(&beat("old", 0, 100))
        .await
        .unwrap();
    let listed = storage.heartbeats(5_000, 10).await.unwrap();
    assert_eq!(listed, vec![beat("a", 5, 30_000), beat("b", 1, 20_000)]);
    assert_eq!(storage.heartbeats(0, 1).await.unwrap().len(), 1);
    assert_eq!(storage.prune_heartbeats(5_000).await.unwrap(), 1);
    assert_eq!(storage.heartbeats(0, 10).await.unwrap().len(), 2);

    assert_eq!(
        storage.result_totals().await.unwrap(),
        ResultTotals::default()
    );
    assert_eq!(
        storage.recent_latency(0, 10).await.unwrap(),
        RecentLatency::default()
    );
    // 100 results finished at 1..=100 s, each taking i ms end to end; one dead.
    let rows: Vec<JobResult> = (1..=100i64)
        .map(|i| {
            let mut r = row(Uuid::now_v7(), "w");
            r.finished_at_us = i * 1_000_000;
            r.started_at_us = r.finished_at_us - 10;
            r.enqueued_at_us = r.finished_at_us - i * 1_000;
            if i == 100 {
                r.status = JobStatus::Dead;
            }
            r
        })
        .collect();
    storage.record_many(&rows).await.unwrap();
    assert_eq!(
        storage.result_totals().await.unwrap(),
        ResultTotals {
            succeeded: 99,
            dead: 1
        }
    );
    assert_eq!(storage.finished_since(91_000_000).await.unwrap(), 10);
    let all = storage.recent_latency(0, 1000).await.unwrap();
    assert_eq!(
        (all.samples, all.p50_us, all.p99_us),
        (100, Some(50_000), Some(99_000))
    );
    // Bounded to the latest rows: results 91..=100.
    let latest = storage.recent_latency(0, 10).await.unwrap();
    assert_eq!(
        (latest.samples, latest.p50_us, latest.p99_us),
        (10, Some(95_000), Some(100_000))
    );
}

#[tokio::test]
async fn heartbeats_sqlite() {
    heartbeats_and_live_figures(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn heartbeats_postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    heartbeats_and_live_figures(Storage::connect(&url).await.unwrap()).await;
}

/// The acceptance commits between the result insert (which does not see it and skips the
/// row) and the read that explains the skip (which does). The skipped row must not be
/// reported stored (it used to be a `Duplicate`, acked without a row). A statement trigger
/// on PostgreSQL, which fires even when the insert skipped every row, records the
/// acceptance at exactly that point.
#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_acceptance_landing_between_insert_and_its_explanation() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let storage = Storage::connect(&url).await.unwrap();
    let id = Uuid::now_v7();
    let function = format!(
        "CREATE FUNCTION accept_meanwhile() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF pg_trigger_depth() > 1 THEN RETURN NULL; END IF; \
         INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, updated_at_us) \
         VALUES ('{id}', 'echo', 'queued', 1, 1, 0, 0) \
         ON CONFLICT (job_id) DO NOTHING; RETURN NULL; END $$"
    );
    sqlx::query(&function)
        .execute(storage.pool())
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER accept_meanwhile AFTER INSERT ON jobs \
         FOR EACH STATEMENT EXECUTE FUNCTION accept_meanwhile()",
    )
    .execute(storage.pool())
    .await
    .unwrap();
    let now = surge_common::clock::now_micros();
    assert_eq!(
        storage.record_pending(&[pending(id, now)]).await.unwrap(),
        [Recorded::Unaccepted],
        "a skipped row is not stored"
    );
    assert_eq!(storage.get(id).await.unwrap(), None);
    // Tried again, now that the acceptance is committed, the result is stored.
    assert_eq!(
        storage.record_pending(&[pending(id, now)]).await.unwrap(),
        [Recorded::New]
    );
}

/// A result commit (which removes the jobs' stage rows) and a batch of stage updates for
/// the same jobs, at the same time, never deadlock. They did: the stage upsert locks rows
/// in id order, the commit's `DELETE` in the order the rows lie on disk, and each deadlock
/// cost PostgreSQL's `deadlock_timeout` (1 s) before one side failed and was retried —
/// the 1 s end-to-end tail of a benchmark run. Stage rows are written in reverse id order
/// here, so disk order and id order disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_result_commits_and_stage_updates_do_not_deadlock() {
    use surge_common::storage::lifecycle::{Stage, StageUpdate};
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let storage = Storage::connect(&url).await.unwrap();
    let stage = |id: Uuid, attempt: u32, at_us: i64| StageUpdate {
        job_id: id,
        kind: "echo".into(),
        stage: Stage::Running,
        attempt,
        error: None,
        at_us,
    };
    for round in 0..20 {
        let mut ids: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
        ids.sort_unstable();
        for id in ids.iter().rev() {
            storage.record_stages(&[stage(*id, 1, 1)]).await.unwrap();
        }
        let updates: Vec<StageUpdate> = ids.iter().map(|id| stage(*id, 2, 2)).collect();
        let rows: Vec<JobResult> = ids.iter().map(|id| row(*id, "w")).collect();
        let (staged, recorded) =
            tokio::join!(storage.record_stages(&updates), storage.record_many(&rows));
        staged.unwrap_or_else(|e| panic!("round {round}: stage updates failed: {e}"));
        let recorded =
            recorded.unwrap_or_else(|e| panic!("round {round}: result commit failed: {e}"));
        assert!(
            recorded.iter().all(|r| *r == Recorded::New),
            "round {round}: {recorded:?}"
        );
    }
}

/// A job read at the moment its result commits is found, finished or not: never "no such
/// job". The lookup reads the result, then the stage row; the commit inserts the one and
/// deletes the other in one transaction, so a commit landing between the two reads left
/// neither visible (a `GET /jobs/{id}` answering 404 for a job that had just succeeded,
/// seen as a flaky `producer/tests/http.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_a_job_finishing_while_it_is_read_is_never_missing() {
    use surge_common::storage::lifecycle::{Stage, StageUpdate};
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let storage = Storage::connect(&url).await.unwrap();
    let mut missing = 0;
    for _ in 0..30 {
        let ids: Vec<Uuid> = (0..32).map(|_| Uuid::new_v4()).collect();
        let stages: Vec<StageUpdate> = ids
            .iter()
            .map(|id| StageUpdate {
                job_id: *id,
                kind: "echo".into(),
                stage: Stage::Running,
                attempt: 1,
                error: None,
                at_us: 1,
            })
            .collect();
        storage.record_stages(&stages).await.unwrap();
        let reader = {
            let storage = storage.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut missing = 0;
                let mut finished = vec![false; ids.len()];
                while finished.iter().any(|done| !done) {
                    for (i, id) in ids.iter().enumerate() {
                        match storage.lifecycle(*id).await.unwrap() {
                            None => missing += 1,
                            Some(surge_common::storage::lifecycle::Lifecycle::Finished(_)) => {
                                finished[i] = true
                            }
                            Some(_) => {}
                        }
                    }
                }
                missing
            })
        };
        for id in &ids {
            storage.record_many(&[row(*id, "w")]).await.unwrap();
        }
        missing += reader.await.unwrap();
    }
    assert_eq!(
        missing, 0,
        "lookups of running or finished jobs found nothing"
    );
}

/// PostgreSQL's driver keeps one generic plan per statement and connection, made at first
/// use: on a fresh deployment, while the table is small. Such a plan must find rows by key
/// and keep doing so once the table is large, never read it whole (a plan made on an
/// analyzed 100-row table scanned the table on every check before an attempt, for as long
/// as the plan lived). Each of the driver's statements is prepared in a session with the
/// driver's settings, planned on a small analyzed table, and its cached plan read again
/// once the table holds 20,000 rows.
#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_driver_plans_find_rows_by_key_whatever_the_table_size() {
    use sqlx::Connection;
    use surge_common::storage::driver::postgres::{PostgresDriver, STATEMENTS};
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    drop(Storage::connect(&url).await.unwrap()); // the schema
    let options = PostgresDriver::connect_options(&url).unwrap();
    let mut session = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let fill = |rows: usize| {
        format!(
            "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, \
             updated_at_us) SELECT gen_random_uuid()::text, 'echo', 'queued', 1, 1, 0, 1 \
             FROM generate_series(1, {rows})"
        )
    };
    sqlx::raw_sql(&fill(100))
        .execute(&mut session)
        .await
        .unwrap();
    sqlx::raw_sql("ANALYZE jobs")
        .execute(&mut session)
        .await
        .unwrap();
    for (i, (sql, _)) in STATEMENTS.iter().enumerate() {
        sqlx::raw_sql(&format!("PREPARE s{i} AS {sql}"))
            .execute(&mut session)
            .await
            .unwrap();
    }
    let mut plans = Vec::new();
    for table in ["100 rows", "20,100 rows"] {
        if table != "100 rows" {
            // The table grows without an ANALYZE: the cached plans stay.
            sqlx::raw_sql(&fill(20_000))
                .execute(&mut session)
                .await
                .unwrap();
        }
        for (i, (sql, params)) in STATEMENTS.iter().enumerate() {
            let nulls = vec!["NULL"; *params].join(", ");
            let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE s{i}({nulls})"))
                .fetch_all(&mut session)
                .await
                .unwrap();
            let plan = plan.join("\n");
            assert!(
                !plan.contains("Seq Scan"),
                "at {table}, a cached plan reads the whole table for\n{sql}\n{plan}"
            );
            plans.push(plan);
        }
    }
    assert!(
        plans.iter().any(|plan| plan.contains("jobs_pkey")),
        "the statements find rows by the primary key: {plans:#?}"
    );
}

/// A process keeps to its connection budget (`--database-connections`), both pools
/// together, however many statements run at once: replicas share PostgreSQL's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres_connections_stay_within_the_budget() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let budget = 6;
    let options = StorageOptions {
        max_connections: budget,
        driver: DriverChoice::Native,
    };
    let storage = Storage::connect_with(&url, options).await.unwrap();
    // Many reads on the portable pool and many writes on the driver's, all at once.
    let reads = (0..40).map(|_| {
        let storage = storage.clone();
        tokio::spawn(async move { storage.count().await.map(|_| ()) })
    });
    let writes = (0..40).map(|_| {
        let storage = storage.clone();
        tokio::spawn(async move { storage.record(&row(Uuid::now_v7(), "w")).await.map(|_| ()) })
    });
    for task in reads.chain(writes).collect::<Vec<_>>() {
        task.await.unwrap().unwrap();
    }
    use sqlx::Connection;
    let mut counter = sqlx::PgConnection::connect(&url).await.unwrap();
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut counter)
    .await
    .unwrap();
    assert!(
        others <= i64::from(budget),
        "{others} connections to the database, budget {budget}"
    );
    assert!(others >= 2, "the load opened connections: {others}");
}
