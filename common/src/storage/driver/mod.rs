//! What each database does its own way: the statements every job pays for.
//!
//! A job's happy path costs the same few statements on every run: its row written at
//! acceptance, its outcome, the check before an attempt and, for long jobs, a stage mark.
//! Those are behind one trait, [`Driver`], with one implementation per database, as the
//! brokers are behind `Broker` (and as River keeps a driver per database):
//!
//! - [`postgres::PostgresDriver`] (PostgreSQL, opt-in: [`DriverChoice::Native`]): sqlx's
//!   native PostgreSQL driver, so a batch binds one array per column and runs one
//!   statement text (`INSERT … SELECT … FROM unnest($1::text[], …)`, `WHERE job_id =
//!   ANY($1)`), whatever its size;
//! - [`portable::PortableDriver`] (SQLite's, and PostgreSQL's by default): portable SQL
//!   through sqlx's `Any` driver, multi-row `VALUES` padded to a power of two (SQLite has
//!   no arrays). The conformance suite (`common/tests/storage.rs`) runs it on both
//!   databases and the native one on PostgreSQL, so both drivers give the same answers on
//!   the same database.
//!
//! Everything else (listing, operations, flow control, retention) is portable SQL on the
//! `Any` pool, shared by both databases: those statements run per request or per second,
//! not per job.
//!
//! The conditions that make results effectively-once (a finished row is never
//! overwritten, an awaiting job's outcome waits for its acceptance, rows are locked in id
//! order) are the same in both drivers' SQL; the Rust around them (dedup, ordering, which
//! skipped row was what) is shared, in [`super::Storage`].

pub mod portable;
pub mod postgres;

/// The outcome upsert's conflict clause, the same in both drivers: an existing row takes
/// the outcome only where it is accepted (or the outcome brings the acceptance) and not
/// finished, or finished dead and being replayed. A macro so each driver's statement stays
/// one literal (`concat!`).
macro_rules! outcome_on_conflict {
    () => {
        "ON CONFLICT (job_id) DO UPDATE SET kind = excluded.kind, state = excluded.state, \
         accepted = 1, attempts = excluded.attempts, result = excluded.result, \
         error = excluded.error, deliveries = 1, worker = excluded.worker, \
         enqueued_at_us = excluded.enqueued_at_us, started_at_us = excluded.started_at_us, \
         finished_at_us = excluded.finished_at_us, updated_at_us = excluded.updated_at_us, \
         job = excluded.job, replaying_since_us = NULL \
         WHERE (jobs.accepted = 1 OR (jobs.accepted IS NULL AND excluded.accepted = 1)) \
         AND (jobs.finished_at_us IS NULL OR jobs.replaying_since_us IS NOT NULL) \
         RETURNING job_id"
    };
}
pub(crate) use outcome_on_conflict;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use uuid::Uuid;

use super::acceptance::AcceptedJob;
use super::lifecycle::StageUpdate;
use super::{JobResult, Recorded, StorageError};

/// Which implementation of the hot path a [`Storage`](super::Storage) uses
/// (`--database-driver`).
///
/// The portable one is the default, by measurement: on PostgreSQL the native driver
/// accepts 1.6–1.7× the jobs/s at half the database CPU and sustained one ramp step more
/// in `surge-bench --scenarios rate`, but in `--scenarios fairness` the big tenant's drain
/// was 1.55–1.79× ideal on 3 workers against 1.23–1.29× (same build, both drivers), for a
/// reason not yet found. Until it is, PostgreSQL's driver is opt-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DriverChoice {
    /// The database's own: PostgreSQL's native driver (arrays, `unnest`); on SQLite, the
    /// portable one.
    Native,
    /// The portable SQL on any database (SQLite's driver, and PostgreSQL's by default).
    #[default]
    Portable,
}

/// A job's outcome to store, in the order the driver locks rows (by job id).
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The row.
    pub row: &'a JobResult,
    /// Whether the outcome records the job accepted: it does not await the ingress's
    /// decision, or that decision is overdue. Otherwise a job with no row, or whose row
    /// has no decision yet, is skipped.
    pub brings_acceptance: bool,
}

/// What the outcome upsert left out, and why: built by the caller from the ids the upsert
/// stored and the states of the others, inside the driver's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// Per input row, in order.
    pub outcome: Vec<Recorded>,
    /// Ids whose delivery count grows by one per entry (repeats of a finished job).
    pub repeated: Vec<Uuid>,
}

/// Turns the ids the upsert stored and the states of the skipped ones into the answers.
pub type Classify<'a> =
    dyn Fn(&HashSet<Uuid>, &HashMap<Uuid, String>) -> Classified + Send + Sync + 'a;

/// A job's row as the check before an attempt reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledRow {
    /// The job.
    pub job_id: Uuid,
    /// Its stored state.
    pub state: String,
    /// Its last error.
    pub error: Option<String>,
    /// Whether a replay of this dead job is being published.
    pub replaying: bool,
}

/// The per-job statements, one implementation per database (see the module docs). Every
/// method takes a batch, writes it with a bounded number of statements and one commit, and
/// touches rows in job id order.
#[async_trait]
pub trait Driver: Send + Sync + std::fmt::Debug {
    /// A short name for logs and reports (`postgres`, `portable`).
    fn name(&self) -> &'static str;

    /// Writes each job's row as `queued`, or, where a worker wrote it first, records the
    /// acceptance alone (a refused job stays refused). `jobs` are distinct and in id order.
    async fn accept(&self, jobs: &[&AcceptedJob], at_us: i64) -> Result<(), StorageError>;

    /// In one transaction: stores every outcome whose row is not finished (or is dead and
    /// being replayed) and is accepted or brought its acceptance; reads the state of the
    /// skipped ones; asks `classify` for the answers; counts the repeats' deliveries.
    /// `outcomes` are distinct and in id order.
    async fn store_outcomes(
        &self,
        outcomes: &[Outcome<'_>],
        classify: &Classify<'_>,
    ) -> Result<Vec<Recorded>, StorageError>;

    /// Writes stage marks (the last per job, in id order): never over a finished or
    /// refused row, never older than the row's last change; a `queued` mark only fills a
    /// missing row.
    async fn record_stages(&self, latest: &[&StageUpdate]) -> Result<(), StorageError>;

    /// The rows of `ids` that exist, for the check before an attempt.
    async fn settled_rows(&self, ids: &[Uuid]) -> Result<Vec<SettledRow>, StorageError>;
}

/// What both drivers read back from their own row types: the columns are the same.
pub(crate) trait JobRow: sqlx::Row
where
    for<'a> &'a str: sqlx::ColumnIndex<Self>,
    String: for<'r> sqlx::Decode<'r, Self::Database> + sqlx::Type<Self::Database>,
    i64: for<'r> sqlx::Decode<'r, Self::Database> + sqlx::Type<Self::Database>,
{
    /// The row's `job_id`, or `None` when it is not a uuid (never written by Surge).
    fn job_id(&self) -> Result<Option<Uuid>, StorageError> {
        let id: String = self.try_get("job_id")?;
        Ok(Uuid::parse_str(&id).ok())
    }

    /// The row's `job_id` and `state`.
    fn id_and_state(&self) -> Result<Option<(Uuid, String)>, StorageError> {
        let Some(id) = self.job_id()? else {
            return Ok(None);
        };
        Ok(Some((id, self.try_get("state")?)))
    }

    /// The row as the check before an attempt reads it.
    fn settled_row(&self) -> Result<Option<SettledRow>, StorageError> {
        let Some(job_id) = self.job_id()? else {
            return Ok(None);
        };
        Ok(Some(SettledRow {
            job_id,
            state: self.try_get("state")?,
            error: self.try_get("error")?,
            replaying: self
                .try_get::<Option<i64>, _>("replaying_since_us")?
                .is_some(),
        }))
    }
}

impl JobRow for sqlx::any::AnyRow {}
impl JobRow for sqlx::postgres::PgRow {}

/// Counts of each id in `ids`, sorted by id: the deliveries a batch of repeats adds.
pub(crate) fn counted(ids: &[Uuid]) -> Vec<(Uuid, i64)> {
    let mut counts: std::collections::BTreeMap<Uuid, i64> = std::collections::BTreeMap::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    counts.into_iter().collect()
}
