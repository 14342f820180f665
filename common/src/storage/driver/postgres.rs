//! The PostgreSQL driver: sqlx's native PostgreSQL connection, so a batch binds one array
//! per column and each statement has one text whatever the batch size (`unnest`,
//! `= ANY`): no padding, no 6,000-parameter statements to parse, one prepared statement
//! per connection for each write. Same conditions as the portable SQL (see
//! [`super::portable`]), so the same answers; `common/tests/storage.rs` runs the suite
//! against both on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::{counted, Classify, Driver, JobRow, Outcome, SettledRow};
use crate::storage::acceptance::AcceptedJob;
use crate::storage::lifecycle::StageUpdate;
use crate::storage::{Recorded, StorageError};

/// Most connections of the driver's own pool, taken from the process's budget (the `Any`
/// pool gets the rest). Each batched writer is one task writing one batch at a time: the
/// ingress's acceptances; a worker's outcomes, stage marks and checks before an attempt.
/// So a process keeps at most four busy.
pub const MAX_CONNECTIONS: u32 = 4;

/// Writes accepted jobs `queued` (or records the acceptance of a row a worker wrote first).
const ACCEPT: &str = "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, \
             enqueued_at_us, updated_at_us) \
             SELECT v.job_id, v.kind, 'queued', 1, 1, 0, v.enqueued_at_us, $4 \
             FROM unnest($1::text[], $2::text[], $3::int8[]) AS v(job_id, kind, enqueued_at_us) \
             ON CONFLICT (job_id) DO UPDATE SET accepted = 1, \
             enqueued_at_us = excluded.enqueued_at_us WHERE jobs.accepted IS NULL";

/// The outcome upsert: the portable one's conditions (see `portable::outcome_upsert`), over arrays.
const STORE_OUTCOMES: &str = concat!(
    "INSERT INTO jobs (job_id, kind, state, accepted, attempts, result, error, \
             deliveries, worker, enqueued_at_us, started_at_us, finished_at_us, updated_at_us, \
             job) \
             SELECT v.job_id, v.kind, v.state, v.accepted, v.attempts, v.result, v.error, 1, \
             v.worker, v.enqueued_at_us, v.started_at_us, v.finished_at_us, v.finished_at_us, \
             v.job \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
             $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], \
             $12::text[]) AS v(job_id, kind, state, accepted, attempts, result, error, worker, \
             enqueued_at_us, started_at_us, finished_at_us, job) \
             WHERE v.accepted = 1 OR EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = v.job_id) ",
    super::outcome_on_conflict!()
);

/// The states of the rows the upsert skipped.
const STATES: &str = "SELECT job_id, state FROM jobs WHERE job_id = ANY($1)";

/// Counts repeated deliveries of finished jobs.
const COUNT_REPEATS: &str = "UPDATE jobs SET deliveries = deliveries + r.count \
                 FROM unnest($1::text[], $2::int8[]) AS r(job_id, count) \
                 WHERE jobs.job_id = r.job_id";

/// Stage marks (see [`Driver::record_stages`]).
const RECORD_STAGES: &str =
    "INSERT INTO jobs (job_id, kind, state, attempts, error, updated_at_us) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], \
             $6::int8[]) \
             ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, \
             attempts = excluded.attempts, error = excluded.error, \
             updated_at_us = excluded.updated_at_us \
             WHERE excluded.state <> 'queued' AND jobs.finished_at_us IS NULL \
             AND jobs.state <> 'refused' AND jobs.updated_at_us <= excluded.updated_at_us";

/// The rows the check before an attempt reads.
const SETTLED: &str =
    "SELECT job_id, state, error, replaying_since_us FROM jobs WHERE job_id = ANY($1)";

/// Every statement this driver prepares, with its number of parameters (for the test that
/// checks their cached plans).
pub const STATEMENTS: [(&str, usize); 6] = [
    (ACCEPT, 4),
    (STORE_OUTCOMES, 12),
    (STATES, 1),
    (COUNT_REPEATS, 2),
    (RECORD_STAGES, 6),
    (SETTLED, 1),
];

/// Settings of the driver's sessions, all measured:
/// - `plan_cache_mode = force_generic_plan`: with the default (`auto`), the server kept
///   planning the `unnest` statements anew for every execution (its generic plan's
///   estimate, for arrays of unknown length, never looked cheaper than a plan for the one
///   row at hand), which cost 0.1–0.15 ms of PostgreSQL CPU per batch of one; one plan per
///   statement and connection, made once, is what the arrays are for.
/// - `enable_seqscan = off`: every statement here finds rows by key, but a plan made
///   while the table is small (a fresh deployment's first minute, analyzed by autovacuum at
///   100 rows) reads it whole, and a cached plan stays until the next `ANALYZE`: the check
///   before an attempt cost 0.26 ms instead of 0.02 at 3,000 rows. Off, the planner takes
///   the primary key whatever the statistics say.
pub const SESSION_SETTINGS: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

/// The PostgreSQL implementation of [`Driver`] (see the module docs).
#[derive(Debug, Clone)]
pub struct PostgresDriver {
    pool: PgPool,
}

impl PostgresDriver {
    /// Connects to `url` with a pool of `connections` (at least 1, at most
    /// [`MAX_CONNECTIONS`]); the schema must be migrated already.
    pub async fn connect(url: &str, connections: u32) -> Result<PostgresDriver, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections.clamp(1, MAX_CONNECTIONS))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(PostgresDriver::connect_options(url)?)
            .await?;
        Ok(PostgresDriver { pool })
    }

    /// How the driver's connections are opened: `url` with [`SESSION_SETTINGS`].
    pub fn connect_options(url: &str) -> Result<PgConnectOptions, StorageError> {
        Ok(PgConnectOptions::from_str(url)?.options(SESSION_SETTINGS))
    }
}

/// Text ids of `ids`, as the `job_id` column stores them.
fn texts(ids: impl Iterator<Item = Uuid>) -> Vec<String> {
    ids.map(|id| id.to_string()).collect()
}

#[async_trait]
impl Driver for PostgresDriver {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn accept(&self, jobs: &[&AcceptedJob], at_us: i64) -> Result<(), StorageError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids = texts(jobs.iter().map(|job| job.job_id));
        let kinds: Vec<&str> = jobs.iter().map(|job| job.kind.as_str()).collect();
        let stamps: Vec<i64> = jobs.iter().map(|job| job.enqueued_at_us).collect();
        // One statement, so no explicit transaction: it commits on its own.
        sqlx::query(ACCEPT)
            .bind(&ids)
            .bind(&kinds)
            .bind(&stamps)
            .bind(at_us)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn store_outcomes(
        &self,
        outcomes: &[Outcome<'_>],
        classify: &Classify<'_>,
    ) -> Result<Vec<Recorded>, StorageError> {
        let ids = texts(outcomes.iter().map(|o| o.row.job_id));
        let kinds: Vec<&str> = outcomes.iter().map(|o| o.row.kind.as_str()).collect();
        let states: Vec<&str> = outcomes.iter().map(|o| o.row.status.as_str()).collect();
        let accepted: Vec<Option<i64>> = outcomes
            .iter()
            .map(|o| o.brings_acceptance.then_some(1))
            .collect();
        let attempts: Vec<i64> = outcomes.iter().map(|o| i64::from(o.row.attempts)).collect();
        let results: Vec<Option<String>> = outcomes
            .iter()
            .map(|o| o.row.result.as_ref().map(|v| v.to_string()))
            .collect();
        let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.row.error.as_deref()).collect();
        let workers: Vec<&str> = outcomes.iter().map(|o| o.row.worker.as_str()).collect();
        let enqueued: Vec<i64> = outcomes.iter().map(|o| o.row.enqueued_at_us).collect();
        let started: Vec<i64> = outcomes.iter().map(|o| o.row.started_at_us).collect();
        let finished: Vec<i64> = outcomes.iter().map(|o| o.row.finished_at_us).collect();
        let jobs: Vec<Option<String>> = outcomes
            .iter()
            .map(|o| {
                o.row
                    .job
                    .as_ref()
                    .map(|j| String::from_utf8_lossy(&j.encode()).into_owned())
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let stored: Vec<String> = sqlx::query_scalar(STORE_OUTCOMES)
            .bind(&ids)
            .bind(&kinds)
            .bind(&states)
            .bind(&accepted)
            .bind(&attempts)
            .bind(&results)
            .bind(&errors)
            .bind(&workers)
            .bind(&enqueued)
            .bind(&started)
            .bind(&finished)
            .bind(&jobs)
            .fetch_all(&mut *tx)
            .await?;
        let inserted: HashSet<Uuid> = stored
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        // Why each skipped row was skipped, read after the upsert (see the portable driver).
        let skipped = texts(
            outcomes
                .iter()
                .map(|o| o.row.job_id)
                .filter(|id| !inserted.contains(id)),
        );
        let mut found = HashMap::new();
        if !skipped.is_empty() {
            for row in sqlx::query(STATES)
                .bind(&skipped)
                .fetch_all(&mut *tx)
                .await?
            {
                found.extend(row.id_and_state()?);
            }
        }
        let classified = classify(&inserted, &found);
        if !classified.repeated.is_empty() {
            let (ids, counts): (Vec<Uuid>, Vec<i64>) =
                counted(&classified.repeated).into_iter().unzip();
            sqlx::query(COUNT_REPEATS)
                .bind(texts(ids.into_iter()))
                .bind(&counts)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(classified.outcome)
    }

    async fn record_stages(&self, latest: &[&StageUpdate]) -> Result<(), StorageError> {
        if latest.is_empty() {
            return Ok(());
        }
        let ids = texts(latest.iter().map(|u| u.job_id));
        let kinds: Vec<&str> = latest.iter().map(|u| u.kind.as_str()).collect();
        let stages: Vec<&str> = latest.iter().map(|u| u.stage.as_str()).collect();
        let attempts: Vec<i64> = latest.iter().map(|u| i64::from(u.attempt)).collect();
        let errors: Vec<Option<&str>> = latest.iter().map(|u| u.error.as_deref()).collect();
        let at: Vec<i64> = latest.iter().map(|u| u.at_us).collect();
        sqlx::query(RECORD_STAGES)
            .bind(&ids)
            .bind(&kinds)
            .bind(&stages)
            .bind(&attempts)
            .bind(&errors)
            .bind(&at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn settled_rows(&self, ids: &[Uuid]) -> Result<Vec<SettledRow>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(SETTLED)
            .bind(texts(ids.iter().copied()))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(row.settled_row()?);
        }
        Ok(out)
    }
}
