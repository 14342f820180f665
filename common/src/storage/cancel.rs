//! Cancelling a job that has not finished (`DELETE /jobs/{id}`), and the check a worker
//! makes before running an attempt.
//!
//! Cancelling inserts a terminal `cancelled` row into `job_results`, keyed by the job id
//! like every result. The key settles the race with a worker committing the job's result:
//! whichever insert commits first wins, and the other finds the row. A worker whose result
//! finds a `cancelled` row stores nothing and is told [`Recorded::Cancelled`]: it acks the
//! delivery, neither dead-lettering nor retrying it. Before running an attempt, a worker
//! asks [`Storage::settled`] whether the job already has a terminal row (cancelled, or a
//! result from an earlier delivery) and then settles the delivery without running it, so
//! a cancelled job's side effects do not happen. An attempt already running when the
//! cancel commits finishes, but its result is discarded.
//!
//! [`Recorded::Cancelled`]: super::Recorded::Cancelled

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;

use super::{JobResult, JobStatus, Storage, StorageError, COLUMNS};
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
        if let Some(row) = self.get(job_id).await? {
            return Ok(finished(row));
        }
        if self.is_cancelled(job_id).await? {
            return Ok(CancelOutcome::Unknown);
        }
        let stage = sqlx::query("SELECT kind, attempt FROM job_status WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_optional(self.pool())
            .await?;
        let Some(stage) = stage else {
            return Ok(CancelOutcome::Unknown);
        };
        let kind: String = stage.try_get("kind")?;
        let attempt: i64 = stage.try_get("attempt")?;
        let now = now_micros();
        let inserted = sqlx::query(&format!(
            "INSERT INTO job_results ({COLUMNS}) VALUES \
             ($1, $2, $3, NULL, $4, $5, 1, $6, $7, $7, $7, NULL) \
             ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
        ))
        .bind(job_id.to_string())
        .bind(kind)
        .bind(JobStatus::Cancelled.as_str())
        .bind(CANCELLED_BY_REQUEST)
        .bind(attempt)
        .bind("api")
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        if inserted.is_some() {
            // Obsolete now: the stage row, as when a result is stored, and a scheduled
            // job's wait for its time (it is never published; should a scheduler have
            // claimed it already, the worker acks it unrun).
            for table in ["job_status", "scheduled_jobs"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                    .bind(job_id.to_string())
                    .execute(self.pool())
                    .await?;
            }
        }
        // Inserted, or a worker's result (or another cancel) committed first.
        let row = self
            .get(job_id)
            .await?
            .ok_or_else(|| StorageError::Corrupt {
                job_id: job_id.to_string(),
                message: "the cancelled row vanished".to_owned(),
            })?;
        Ok(if inserted.is_some() {
            CancelOutcome::Cancelled(row)
        } else {
            finished(row)
        })
    }

    /// Which of `ids` already have a terminal state (see [`Settled`]); the others are
    /// absent. A dead job being replayed is not settled: its replay must run.
    pub async fn settled(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Settled>, StorageError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut tx = self.pool().begin().await?;
        let rows = self
            .rows_for_ids(
                &mut tx,
                "job_id, status, error, replaying_since_us FROM job_results",
                &ids,
            )
            .await?;
        let refused = self.decisions(&mut tx, &ids).await?;
        tx.commit().await?;
        let mut out = HashMap::new();
        for (id, accepted) in refused {
            if !accepted {
                if let Ok(id) = Uuid::parse_str(&id) {
                    out.insert(id, Settled::Cancelled);
                }
            }
        }
        for row in rows {
            let id: String = row.try_get("job_id")?;
            let status: String = row.try_get("status")?;
            let replaying: Option<i64> = row.try_get("replaying_since_us")?;
            let error: Option<String> = row.try_get("error")?;
            let Ok(id) = Uuid::parse_str(&id) else {
                continue;
            };
            let settled = match JobStatus::parse(&status) {
                Some(JobStatus::Succeeded) => Settled::Succeeded,
                Some(JobStatus::Cancelled) => Settled::Cancelled,
                Some(JobStatus::Dead) if replaying.is_none() => {
                    Settled::Dead(error.unwrap_or_default())
                }
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
