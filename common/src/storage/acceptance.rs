//! Whether a job the ingress published stands: accepted (its client got a 202) or
//! cancelled (its client got an error and may resubmit it as a new job).
//!
//! A publish can fail after the broker already stored the message: the connection drops
//! between the broker's write and its confirm, or a Kafka delivery report times out while
//! the record sits in the log. Such a job may reach a worker although its client was told
//! it was not accepted, so it must never get a result. And a worker may finish a job before
//! the ingress has even heard the broker's answer.
//!
//! So the ingress records one decision per job, in the job's row of `jobs` (its `accepted`
//! column), after the publish: accepted ([`Storage::accept`], which also writes the row as
//! `queued`: the one write of the ingress per job) or refused ([`Storage::cancel`], state
//! `refused`). The first decision wins and never changes. Jobs the ingress publishes carry
//! [`Job::awaits_acceptance`](crate::job::Job::awaits_acceptance); their result commits
//! ([`Storage::record_pending`](super::Storage::record_pending)) only once the job is
//! accepted. Until then the outcome's upsert skips the row and answers
//! [`Recorded::Unaccepted`](super::Recorded::Unaccepted): the worker keeps the delivery and
//! tries again shortly. A decision that is still missing [`ACCEPTANCE_OVERDUE`] after the
//! job was stamped (the ingress crashed between the confirm and its write, or could not
//! reach the database) is taken by the worker: its outcome records the job accepted
//! itself, in the same statement, so a late refusal loses. The promise: **a job answered
//! with an error never gets a result, provided its cancel is recorded within
//! `ACCEPTANCE_OVERDUE` of the job's stamp** (the ingress tries for about three minutes).
//!
//! A refused job's delivery is acked without a result ([`Recorded::Cancelled`]), and
//! `GET /jobs/{id}` answers 404. Jobs published by other means (benchmarks, tests) do not
//! await acceptance; only a cancel keeps their result out.
//!
//! [`Recorded::Cancelled`]: super::Recorded::Cancelled

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use super::{padded, Storage, StorageError, MAX_ROWS_PER_STATEMENT};
use crate::clock::now_micros;
use crate::job::Job;

/// How long after its stamp (`enqueued_at_us`, set by the ingress just before publishing)
/// a job awaiting acceptance may still be cancelled. Past it, a worker holding its result
/// records it accepted itself. It bounds both how long a refused job's cancel may take and
/// how long the result of a job whose acceptance was never written waits.
pub const ACCEPTANCE_OVERDUE: Duration = Duration::from_secs(300);

/// The stamp before which a job awaiting acceptance counts as overdue, now.
pub(crate) fn overdue_before() -> i64 {
    let overdue = i64::try_from(ACCEPTANCE_OVERDUE.as_micros()).unwrap_or(i64::MAX);
    now_micros().saturating_sub(overdue)
}

/// What the ingress records of a job it published and its client got a 202 for: the row
/// that job keeps for its whole life (without the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedJob {
    /// The job.
    pub job_id: Uuid,
    /// Its kind's wire name.
    pub kind: String,
    /// The ingress's stamp, µs since the epoch.
    pub enqueued_at_us: i64,
}

impl AcceptedJob {
    /// The acceptances of `jobs`.
    pub fn of(jobs: &[Job]) -> Vec<AcceptedJob> {
        jobs.iter()
            .map(|job| AcceptedJob {
                job_id: job.id,
                kind: job.kind.clone(),
                enqueued_at_us: job.enqueued_at_us,
            })
            .collect()
    }
}

impl Storage {
    /// Records `jobs` accepted (the broker confirmed them; their clients get a 202): writes
    /// each job's row as `queued`, or, where a worker already wrote it (it got the job
    /// first), records the decision alone. A job refused already stays refused. One
    /// commit (see [`super::driver::Driver::accept`]).
    pub async fn accept(&self, jobs: &[AcceptedJob]) -> Result<(), StorageError> {
        let at_us = now_micros();
        // Rows in id order, as every multi-row write here takes them: statements that lock
        // the same rows in different orders deadlock on PostgreSQL.
        let mut jobs: Vec<&AcceptedJob> = jobs.iter().collect();
        jobs.sort_by_key(|job| job.job_id);
        // And once each: PostgreSQL refuses an upsert touching a row twice.
        jobs.dedup_by_key(|job| job.job_id);
        self.driver.accept(&jobs, at_us).await
    }

    /// Records `ids` refused (their publish failed; their clients get an error), unless a
    /// decision exists already. Returns the ids that turned out accepted after all: a
    /// worker took an overdue decision, or (for jobs that do not await acceptance) already
    /// stored a result. When that is every id, nothing is refused.
    pub async fn cancel(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StorageError> {
        let distinct: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
        let mut distinct: Vec<String> = distinct.into_iter().collect();
        distinct.sort_unstable();
        let at_us = now_micros();
        let mut tx = self.pool().begin().await?;
        for chunk in distinct.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, \
                 updated_at_us) \
                 SELECT v.column1, '', 'refused', 0, 1, 0, v.column2 \
                 FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                 ON CONFLICT (job_id) DO UPDATE SET state = 'refused', accepted = 0, \
                 updated_at_us = excluded.updated_at_us \
                 WHERE jobs.accepted IS NULL AND jobs.finished_at_us IS NULL",
                self.placeholders(1, rows, 2)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.clone()).bind(at_us);
            }
            for _ in chunk.len()..rows {
                query = query.bind(None::<String>).bind(None::<i64>);
            }
            query.execute(&mut *tx).await?;
        }
        let decided = self.decisions(&mut tx, &distinct).await?;
        tx.commit().await?;
        Ok(distinct
            .iter()
            .filter(|id| decided.get(*id) == Some(&true))
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect())
    }

    /// Whether `id` was refused at the ingress.
    pub async fn is_cancelled(&self, id: Uuid) -> Result<bool, StorageError> {
        let found = sqlx::query(&format!(
            "SELECT job_id FROM jobs WHERE job_id = {} AND state = 'refused'",
            self.list(1, 1)
        ))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// The decisions recorded for `ids` (accepted or not; absent when none), inside a
    /// running transaction.
    pub(crate) async fn decisions(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[String],
    ) -> Result<HashMap<String, bool>, StorageError> {
        let mut out = HashMap::new();
        for row in self
            .rows_for_ids(Some(tx), "job_id, accepted FROM jobs", ids)
            .await?
        {
            if let Some(accepted) = row.try_get::<Option<i64>, _>("accepted")? {
                out.insert(row.try_get::<String, _>("job_id")?, accepted != 0);
            }
        }
        Ok(out)
    }

    /// `SELECT <columns_from> WHERE job_id IN (ids)`, in padded chunks (so the server and
    /// sqlx cache a few statement texts), inside a running transaction, or on the pool
    /// when `tx` is `None`.
    pub(crate) async fn rows_for_ids(
        &self,
        tx: Option<&mut Transaction<'static, Any>>,
        columns_from: &str,
        ids: &[String],
    ) -> Result<Vec<AnyRow>, StorageError> {
        self.portable.rows_for_ids(tx, columns_from, ids).await
    }
}
