//! Cancelling a job that has not finished (`DELETE /jobs/{id}`), and the check a worker
//! makes before running an attempt.
//!
//! Cancelling turns the job's row in `jobs` into a finished `cancelled` one, only where it
//! is not finished yet. That condition settles the race with a worker committing the job's
//! result: whichever write commits first wins, and the other finds the row finished. A worker whose result
//! finds a `cancelled` row stores nothing and is told [`Recorded::Cancelled`]: it acks the
//! delivery, neither dead-lettering nor retrying it. Before running an attempt, a worker
//! asks [`Storage::settled`] whether the job already has a terminal row (cancelled, or a
//! result from an earlier delivery) and then settles the delivery without running it, so
//! a cancelled job's side effects do not happen. An attempt already running when the
//! cancel commits finishes, but its result is discarded.
//!
//! [`Recorded::Cancelled`]: super::Recorded::Cancelled

use std::collections::HashMap;

use uuid::Uuid;

use super::{JobResult, JobStatus, Storage, StorageError};
use crate::clock::now_micros;

/// The error stored on a cancelled job's row.
pub const CANCELLED_BY_REQUEST: &str = "cancelled by request";

/// What [`Storage::cancel_job`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// Cancelled now; the row it stored.
    Cancelled(JobResult),
    /// Cancelled before (by an earlier request); its row.
    AlreadyCancelled(JobResult),
    /// The job finished (succeeded or dead) first; its row.
    Finished(JobResult),
    /// No such job (or one refused at the ingress, which its client was told does not
    /// exist).
    Unknown,
}

/// A job's terminal state, as a worker about to run it needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// It has a result: this delivery is a repeat; ack it.
    Succeeded,
    /// It is dead (and not being replayed), with this error: dead-letter this delivery.
    Dead(String),
    /// It was cancelled (by an operator, or refused at the ingress): ack it, run nothing.
    Cancelled,
}

impl Storage {
    /// Cancels `job_id` unless it has finished (see the module docs).
    pub async fn cancel_job(&self, job_id: Uuid) -> Result<CancelOutcome, StorageError> {
        let now = now_micros();
        let cancelled = sqlx::query(
            "UPDATE jobs SET state = $1, error = $2, deliveries = 1, worker = 'api', \
             enqueued_at_us = $3, started_at_us = $3, finished_at_us = $3, updated_at_us = $3 \
             WHERE job_id = $4 AND finished_at_us IS NULL AND state <> 'refused' \
             RETURNING job_id",
        )
        .bind(JobStatus::Cancelled.as_str())
        .bind(CANCELLED_BY_REQUEST)
        .bind(now)
        .bind(job_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        if cancelled.is_some() {
            // A scheduled job's wait for its time is obsolete: it is never published
            // (should a scheduler have claimed it already, the worker acks it unrun).
            sqlx::query("DELETE FROM scheduled_jobs WHERE job_id = $1")
                .bind(job_id.to_string())
                .execute(self.pool())
                .await?;
        }
        // Cancelled now, or finished (a worker's result or another cancel came first), or
        // unknown (no row, or refused at the ingress).
        Ok(match self.get(job_id).await? {
            Some(row) if cancelled.is_some() => CancelOutcome::Cancelled(row),
            Some(row) => finished(row),
            None => CancelOutcome::Unknown,
        })
    }

    /// Which of `ids` already have a terminal state (see [`Settled`]); the others are
    /// absent. A dead job being replayed is not settled: its replay must run.
    pub async fn settled(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Settled>, StorageError> {
        let mut out = HashMap::new();
        for row in self.driver.settled_rows(ids).await? {
            let (id, state, replaying, error) = (row.job_id, row.state, row.replaying, row.error);
            let settled = match state.as_str() {
                "succeeded" => Settled::Succeeded,
                "cancelled" | "refused" => Settled::Cancelled,
                "dead" if !replaying => Settled::Dead(error.unwrap_or_default()),
                _ => continue,
            };
            out.insert(id, settled);
        }
        Ok(out)
    }
}

fn finished(row: JobResult) -> CancelOutcome {
    if row.status == JobStatus::Cancelled {
        CancelOutcome::AlreadyCancelled(row)
    } else {
        CancelOutcome::Finished(row)
    }
}
