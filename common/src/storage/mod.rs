//! The jobs table, on SQLite (default, embedded) or PostgreSQL (by URL).
//!
//! One row per job for its whole life (`jobs`, migration `20261208000000_jobs.sql`): the
//! ingress writes it `queued` when the broker confirmed the job (with the acceptance, see
//! [`acceptance`]), workers may mark it `running` or `retrying` ([`lifecycle`]), and the
//! worker's outcome turns it `succeeded` or `dead` — two writes per job on the happy path,
//! each batched with other jobs'. A redelivered job (the worker died after committing but
//! before acking) finds its row finished: the outcome write skips it, and only its
//! delivery count changes — so results are effectively-once even though delivery is
//! at-least-once.
//!
//! The statements every job pays for (its row at acceptance, its outcome, the check before
//! an attempt, stage marks) go through a [`driver::Driver`]: multi-row `VALUES` (SQLite's,
//! and PostgreSQL's by default) or, opted into, PostgreSQL's arrays and `unnest`. Everything else goes through
//! sqlx's `Any` driver with portable SQL, so there is one set of those queries and one set
//! of embedded migrations. Placeholders are the one difference:
//! PostgreSQL needs `$n`; SQLite accepts them too, but sqlx then binds each `$n` by name
//! with a linear search, so a 500-row insert spends most of its time finding parameters —
//! SQLite gets positional `?` (`Storage::placeholders`).
//!
//! A job whose publish failed (the client got a 503) may still have reached the broker, and
//! a worker may finish a job before the ingress knows whether its publish succeeded. So the
//! ingress records each job it published accepted or refused, and a result of a job that
//! awaits that decision commits only once the job is accepted (see [`acceptance`]): a job
//! refused to its client never gets a result.
//!
//! Writes come one at a time ([`Storage::record`]) or many per statement and commit
//! ([`Storage::record_many`]); [`batch::ResultWriter`] gathers concurrent workers' rows
//! into such batches (group commit).
//!
//! Over 500 lines on purpose: this is the `Storage` type's public API (connect, record,
//! lifecycle reads, replay) with the SQL it runs; the specialised parts (acceptance, batching,
//! heartbeats, idempotency, lifecycle) are modules of their own.

pub mod acceptance;
pub mod batch;
pub mod callbacks;
pub mod cancel;
pub mod dispatch_keys;
pub mod driver;
pub mod flow;
mod flow_store;
pub mod heartbeat;
pub mod idempotency;
pub mod lifecycle;
pub mod listing;
pub mod pauses;
pub mod recurring;
pub mod replay;
pub mod retention;
pub mod schedule;
pub mod totals;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::Any;
use sqlx::{AnyPool, Row};
use uuid::Uuid;

/// Errors from the results store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database refused or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer Surge than this process: its schema may lack
    /// what this build writes to, so the process does not start (see README, "Upgrades").
    #[error(
        "the results database was upgraded by a newer Surge (its migration {version} is not \
         in this build): run this process's newer version; old and new processes must not \
         share a database (README, \"Upgrades\")"
    )]
    NewerSchema {
        /// The applied migration this build does not know.
        version: i64,
    },
    /// A stored row did not decode.
    #[error("corrupt row for job {job_id}: {message}")]
    Corrupt {
        /// The row's job id.
        job_id: String,
        /// What did not decode.
        message: String,
    },
}

impl StorageError {
    /// Whether the database is (temporarily) out of reach rather than a query being wrong:
    /// I/O and pool errors, PostgreSQL's connection (08), rollback (40, e.g. deadlock),
    /// resource (53) and operator intervention (57, e.g. a restart) classes, SQLite
    /// busy/locked. Callers answer such errors with "retry later".
    pub fn is_unavailable(&self) -> bool {
        let StorageError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || matches!(code.as_ref(), "5" | "6" | "261" | "517")
            }),
            _ => false,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// The handler returned a result.
    Succeeded,
    /// The job failed permanently or ran out of attempts.
    Dead,
    /// An operator cancelled it (`DELETE /jobs/{id}`) before it finished: it never gets a
    /// result (see [`listing`]).
    Cancelled,
}

impl JobStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status stored under `name`, if any.
    pub fn parse(s: &str) -> Option<JobStatus> {
        match s {
            "succeeded" => Some(JobStatus::Succeeded),
            "dead" => Some(JobStatus::Dead),
            "cancelled" => Some(JobStatus::Cancelled),
            _ => None,
        }
    }
}

/// A job's final outcome, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The job.
    pub job_id: Uuid,
    /// Its kind's wire name.
    pub kind: String,
    /// How it ended.
    pub status: JobStatus,
    /// The handler's result, when it succeeded.
    pub result: Option<Value>,
    /// The last error, when dead.
    pub error: Option<String>,
    /// The attempt that settled it (1-based).
    pub attempts: u32,
    /// How many times a terminal result was written: more than 1 means redelivered.
    pub deliveries: u32,
    /// Which worker wrote it.
    pub worker: String,
    /// When the ingress accepted it (µs since the epoch).
    pub enqueued_at_us: i64,
    /// When the handler started (µs since the epoch).
    pub started_at_us: i64,
    /// When the handler finished (µs since the epoch).
    pub finished_at_us: i64,
    /// The job itself, kept on `dead` rows so it can be replayed.
    pub job: Option<crate::job::Job>,
}

/// Whether [`Storage::record`] wrote a new row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First result for this job.
    New,
    /// The job already had a result (a redelivery); only its delivery count changed.
    Duplicate,
    /// The job was cancelled: its publish failed (the client got a 503 and may resubmit),
    /// or an operator cancelled it (`DELETE /jobs/{id}`, a `cancelled` row). No result is
    /// stored; the delivery should be acked, not dead-lettered.
    Cancelled,
    /// The job awaits the ingress's decision, which is not recorded yet: nothing is
    /// stored; keep the delivery and try again shortly (see [`acceptance`]).
    Unaccepted,
}

/// A result to store, and whether its job awaits the ingress's acceptance
/// ([`Job::awaits_acceptance`](crate::job::Job::awaits_acceptance)).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingResult {
    /// The row.
    pub row: JobResult,
    /// Store it only once the ingress accepted the job (or the decision is overdue).
    pub awaits_acceptance: bool,
}

/// Connection pool to the results database.
#[derive(Debug, Clone)]
pub struct Storage {
    pool: AnyPool,
    sqlite: bool,
    /// The per-job statements (see [`driver`]).
    driver: Arc<dyn driver::Driver>,
    /// The portable SQL on `pool`, for the statements both databases share.
    portable: driver::portable::PortableDriver,
}

/// Connections one process keeps to PostgreSQL at most, all pools together, unless told
/// otherwise ([`StorageOptions::max_connections`], `--database-connections`): the `Any`
/// pool's 16 before the native driver had a pool of its own. Replicas share the server's
/// limit (100 by default).
pub const DEFAULT_POSTGRES_CONNECTIONS: u32 = 16;

/// How [`Storage::connect_with`] connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageOptions {
    /// Which driver runs the per-job statements.
    pub driver: driver::DriverChoice,
    /// Most connections to PostgreSQL, all pools together (at least 4; SQLite always has
    /// one). The native driver takes a quarter of them, at most 4: each of its batched
    /// writers writes one batch at a time.
    pub max_connections: u32,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            driver: driver::DriverChoice::Native,
            max_connections: DEFAULT_POSTGRES_CONNECTIONS,
        }
    }
}

/// Most rows per multi-row statement (a power of two): 12 parameters each stays far below
/// SQLite's and PostgreSQL's parameter limits.
pub(crate) const MAX_ROWS_PER_STATEMENT: usize = 512;

/// `count` NULL text parameters: the padding of an `IN (…)` list (see [`padded`]).
pub(crate) fn bind_nulls<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    count: usize,
) -> Query<'q, Any, AnyArguments<'q>> {
    for _ in 0..count {
        query = query.bind(None::<String>);
    }
    query
}

/// How many rows a multi-row statement carries for `rows` real ones (at most
/// [`MAX_ROWS_PER_STATEMENT`]): the next power of two. The extra rows are bound as NULLs,
/// which the statement filters out (`WHERE v.column1 IS NOT NULL`) or which match nothing
/// (`IN (…, NULL)`).
///
/// Every statement text is prepared and cached per pooled connection (up to 100 each, 16
/// connections) and on the server. Sized exactly, batches produced a text for every batch
/// size met, the largest with 6,000 parameters, and a busy worker's memory grew with their
/// variety (12 to 30 MiB between 25 % and 100 % of the max rate). Padded, there are ten
/// sizes per statement, all reused. Not caching them cost a third of PostgreSQL's group
/// commit ceiling (it re-parses thousands of parameters per batch); splitting a batch into
/// power-of-two statements doubled the accept latency the ingress's `queued` marks add.
pub(crate) fn padded(rows: usize) -> usize {
    rows.next_power_of_two()
}

/// The columns of a finished job's row, as [`decode`] reads them.
pub(crate) const COLUMNS: &str =
    "job_id, kind, state AS status, result, error, attempts, deliveries, worker, \
     enqueued_at_us, started_at_us, finished_at_us, job";

/// A count read from the database (`BIGINT`) as `u64`; a negative one (never stored) is 0.
pub(crate) fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `rows` parenthesised groups of `columns` placeholders, numbered from `first`
/// (1-based): `($1, $2), ($3, $4)` on PostgreSQL, `(?, ?), (?, ?)` on SQLite (see the
/// module docs). Bind the values in the same order.
pub(crate) fn placeholders(sqlite: bool, first: usize, rows: usize, columns: usize) -> String {
    let group = |row: usize| {
        let params: Vec<String> = (0..columns)
            .map(|c| {
                if sqlite {
                    "?".to_owned()
                } else {
                    format!("${}", first + row * columns + c)
                }
            })
            .collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(group).collect::<Vec<_>>().join(", ")
}

impl Storage {
    /// Connects (creating a SQLite file if needed) and runs the embedded migrations, with
    /// [`StorageOptions::default`] (the portable driver, 16 connections at most).
    pub async fn connect(url: &str) -> Result<Storage, StorageError> {
        Storage::connect_with(url, StorageOptions::default()).await
    }

    /// [`Storage::connect`] with `options`: a connection budget, and the driver of the
    /// per-job statements (the conformance suite runs the portable one on PostgreSQL too).
    pub async fn connect_with(url: &str, options: StorageOptions) -> Result<Storage, StorageError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_owned()
        };
        // SQLite serialises writers anyway; one connection avoids SQLITE_BUSY storms. On
        // PostgreSQL the budget covers both pools: replicas share the server's limit.
        let native = options.driver == driver::DriverChoice::Native && !is_sqlite;
        let budget = options.max_connections.max(4);
        let native_connections = (budget / 4).min(driver::postgres::MAX_CONNECTIONS);
        let max_connections = match (is_sqlite, native) {
            (true, _) => 1,
            (false, true) => budget - native_connections,
            (false, false) => budget,
        };
        // Keeps sqlx's ping before each checkout: it costs a round trip, but after a
        // database restart it discards dead connections instead of failing a write on each.
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await?;
        if is_sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::VersionMissing(version) => {
                    StorageError::NewerSchema { version }
                }
                other => StorageError::Migration(other),
            })?;
        let portable = driver::portable::PortableDriver::new(pool.clone(), is_sqlite);
        let driver: Arc<dyn driver::Driver> = if native {
            Arc::new(driver::postgres::PostgresDriver::connect(&url, native_connections).await?)
        } else {
            Arc::new(portable.clone())
        };
        Ok(Storage {
            pool,
            sqlite: is_sqlite,
            driver,
            portable,
        })
    }

    /// The name of the driver the per-job statements use (`postgres`, `portable`).
    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// `rows` parenthesised groups of `columns` placeholders, numbered from `first`
    /// (1-based); see [`placeholders`].
    pub(crate) fn placeholders(&self, first: usize, rows: usize, columns: usize) -> String {
        placeholders(self.sqlite, first, rows, columns)
    }

    /// A comma-separated list of `count` placeholders from `first`, for `IN (…)`.
    pub(crate) fn list(&self, first: usize, count: usize) -> String {
        let all = self.placeholders(first, 1, count);
        all[1..all.len() - 1].to_owned()
    }

    /// The underlying pool, for tests and reports.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Stores a job's final result, once per job id (see the module docs).
    pub async fn record(&self, r: &JobResult) -> Result<Recorded, StorageError> {
        let outcome = self.record_many(std::slice::from_ref(r)).await?;
        Ok(outcome[0])
    }

    /// Stores many results of jobs that do not await acceptance; see
    /// [`Storage::record_pending`].
    pub async fn record_many(&self, rows: &[JobResult]) -> Result<Vec<Recorded>, StorageError> {
        let items: Vec<(&JobResult, bool)> = rows.iter().map(|r| (r, false)).collect();
        self.store(&items).await
    }

    /// Stores many results in one transaction: one multi-row upsert per 512 rows whose
    /// conditions alone skip jobs already finished, cancelled or refused, and jobs still
    /// awaiting acceptance; a dead row being replayed is replaced, and an overdue
    /// acceptance is recorded with the outcome (see [`acceptance`]). Only when some row was
    /// skipped, one read says why, and repeats get their delivery counted. Returns, per
    /// input row and in order, whether it was new, a repeat, cancelled or unaccepted. Rows
    /// for the same id in one call count as a first write and duplicates.
    pub async fn record_pending(
        &self,
        rows: &[PendingResult],
    ) -> Result<Vec<Recorded>, StorageError> {
        let items: Vec<(&JobResult, bool)> =
            rows.iter().map(|r| (&r.row, r.awaits_acceptance)).collect();
        self.store(&items).await
    }

    async fn store(&self, rows: &[(&JobResult, bool)]) -> Result<Vec<Recorded>, StorageError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // One row per id in the upsert: PostgreSQL refuses an upsert touching a row twice.
        let mut seen = std::collections::HashSet::new();
        let mut firsts: Vec<(&JobResult, bool)> = rows
            .iter()
            .filter(|(r, _)| seen.insert(r.job_id))
            .copied()
            .collect();
        // Rows in id order, as the stage writer and the ingress take them: multi-row
        // statements that lock the same rows in different orders deadlock on PostgreSQL
        // (each deadlock costs its `deadlock_timeout`, 1 s, before one side gives up).
        firsts.sort_by_key(|(r, _)| r.job_id);
        let cutoff = acceptance::overdue_before();
        let overdue = firsts
            .iter()
            .filter(|(r, awaits)| *awaits && r.enqueued_at_us < cutoff)
            .count();
        if overdue > 0 {
            tracing::warn!(
                jobs = overdue,
                "the ingress never recorded these jobs accepted; taking them as accepted"
            );
        }
        let outcomes: Vec<driver::Outcome<'_>> = firsts
            .iter()
            .map(|(r, awaits)| driver::Outcome {
                row: r,
                brings_acceptance: !*awaits || r.enqueued_at_us < cutoff,
            })
            .collect();
        let classify = |inserted: &HashSet<Uuid>, found: &HashMap<Uuid, String>| {
            classify(rows, inserted, found)
        };
        self.driver.store_outcomes(&outcomes, &classify).await
    }

    /// The stored result of one job.
    pub async fn get(&self, job_id: Uuid) -> Result<Option<JobResult>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE job_id = $1 AND finished_at_us IS NOT NULL"
        ))
        .bind(job_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| decode(&r)).transpose()
    }

    /// The stored results of the given jobs (missing ones are simply absent).
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<JobResult>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs WHERE finished_at_us IS NOT NULL AND job_id IN ({})",
                self.list(1, padded(chunk.len()))
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            query = bind_nulls(query, padded(chunk.len()) - chunk.len());
            for row in query.fetch_all(&self.pool).await? {
                out.push(decode(&row)?);
            }
        }
        Ok(out)
    }

    /// Number of stored results.
    pub async fn count(&self) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('succeeded', 'dead', 'cancelled')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(from_db(n))
    }
}

/// The answer for each of `rows` (in order) once the outcome upsert stored `inserted`,
/// given the states `found` of the rows it skipped; and the repeats, whose deliveries
/// count. The first row of an id that was stored is new, any other a repeat; a skipped
/// row is cancelled (refused, or cancelled by an operator), a repeat (finished), or
/// unaccepted (not yet accepted, or accepted just after the upsert looked: try again).
fn classify(
    rows: &[(&JobResult, bool)],
    inserted: &HashSet<Uuid>,
    found: &HashMap<Uuid, String>,
) -> driver::Classified {
    let mut outcome = Vec::with_capacity(rows.len());
    let mut repeated = Vec::new();
    let mut written = HashSet::new();
    for (r, _) in rows {
        let id = r.job_id;
        if inserted.contains(&id) && written.insert(id) {
            outcome.push(Recorded::New);
            continue;
        }
        if written.contains(&id) {
            outcome.push(Recorded::Duplicate);
            repeated.push(id);
            continue;
        }
        match found.get(&id).map(String::as_str) {
            Some("refused" | "cancelled") => outcome.push(Recorded::Cancelled),
            Some("succeeded" | "dead") => {
                outcome.push(Recorded::Duplicate);
                repeated.push(id);
            }
            _ => outcome.push(Recorded::Unaccepted),
        }
    }
    driver::Classified { outcome, repeated }
}

pub(crate) fn decode(row: &AnyRow) -> Result<JobResult, StorageError> {
    let job_id: String = row.try_get("job_id")?;
    let corrupt = |message: String| StorageError::Corrupt {
        job_id: job_id.clone(),
        message,
    };
    let id = Uuid::parse_str(&job_id).map_err(|e| corrupt(e.to_string()))?;
    let status: String = row.try_get("status")?;
    let status = JobStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?;
    let result: Option<String> = row.try_get("result")?;
    let result = result
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    let attempts: i64 = row.try_get("attempts")?;
    let deliveries: i64 = row.try_get("deliveries")?;
    let job: Option<String> = row.try_get("job")?;
    Ok(JobResult {
        job_id: id,
        kind: row.try_get("kind")?,
        status,
        result,
        error: row.try_get("error")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        deliveries: u32::try_from(deliveries).unwrap_or(u32::MAX),
        worker: row.try_get("worker")?,
        enqueued_at_us: row.try_get("enqueued_at_us")?,
        started_at_us: row.try_get("started_at_us")?,
        finished_at_us: row.try_get("finished_at_us")?,
        job: job
            .map(|s| crate::job::Job::decode(s.as_bytes()))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
    })
}

#[cfg(test)]
mod padding_tests {
    use super::*;

    #[test]
    fn statements_carry_a_power_of_two_rows_never_fewer_than_given() {
        assert_eq!(padded(1), 1);
        assert_eq!(padded(3), 4);
        assert_eq!(padded(200), 256);
        assert_eq!(padded(MAX_ROWS_PER_STATEMENT), MAX_ROWS_PER_STATEMENT);
        assert!(MAX_ROWS_PER_STATEMENT.is_power_of_two());
        let sizes: std::collections::BTreeSet<usize> =
            (1..=MAX_ROWS_PER_STATEMENT).map(padded).collect();
        assert_eq!(sizes.len(), 10);
    }
}
