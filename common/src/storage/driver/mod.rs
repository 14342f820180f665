//! What each database does its own way: the statements every job pays for.
//!
//! A job's happy path costs the same few statements on every run: its row written at
//! acceptance, its outcome, the check before an attempt and, for long jobs, a stage mark.
//! Those are behind one trait, [`Driver`], with one implementation per database, as the
//! brokers are behind `Broker` (and as River keeps a driver per database):
//!
//! - [`postgres::PostgresDriver`] (PostgreSQL): sqlx's native PostgreSQL driver, so a batch
//!   binds one array per column and runs one statement text (`INSERT … SELECT … FROM
//!   unnest($1::text[], …)`, `WHERE job_id = ANY($1)`), whatever its size;
//! - [`portable::PortableDriver`] (SQLite, the embedded default): portable SQL through
//!   sqlx's `Any` driver, multi-row `VALUES` padded to a power of two (SQLite has no
//!   arrays). It runs on PostgreSQL too ([`DriverChoice::Portable`]), which is how the
//!   conformance suite (`common/tests/storage.rs`) checks that both drivers give the same
//!   answers on the same database.
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

/// Counts of each id in `ids`, sorted by id: the deliveries a batch of repeats adds.
pub(crate) fn counted(ids: &[Uuid]) -> Vec<(Uuid, i64)> {
    let mut counts: std::collections::BTreeMap<Uuid, i64> = std::collections::BTreeMap::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    counts.into_iter().collect()
}
