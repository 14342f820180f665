//! Whether a job the ingress published stands: accepted (its client got a 202) or
//! cancelled (its client got an error and may resubmit it as a new job).
//!
//! A publish can fail after the broker already stored the message: the connection drops
//! between the broker's write and its confirm, or a Kafka delivery report times out while
//! the record sits in the log. Such a job may reach a worker although its client was told
//! it was not accepted, so it must never get a result. And a worker may finish a job before
//! the ingress has even heard the broker's answer.
//!
//! So the ingress records one decision per job in `job_acceptance`, after the publish:
//! accepted ([`Storage::accept`]) or cancelled ([`Storage::cancel`]). The id is the key, so
//! the first decision wins and never changes. Jobs the ingress publishes carry
//! [`Job::awaits_acceptance`](crate::job::Job::awaits_acceptance); their result commits
//! ([`Storage::record_pending`](super::Storage::record_pending)) only once the job is
//! accepted. Until then the insert skips the row and answers
//! [`Recorded::Unaccepted`](super::Recorded::Unaccepted): the worker keeps the delivery and
//! tries again shortly. A decision that is still missing [`ACCEPTANCE_OVERDUE`] after the
//! job was stamped (the ingress crashed between the confirm and its write, or could not
//! reach the database) is taken by the worker: it records the job accepted itself, in the
//! same transaction as the result, so a late cancel loses. The promise: **a job answered
//! with an error never gets a result, provided its cancel is recorded within
//! `ACCEPTANCE_OVERDUE` of the job's stamp** (the ingress tries for about three minutes).
//!
//! A cancelled job's delivery is acked without a row ([`Recorded::Cancelled`]), and
//! `GET /jobs/{id}` answers 404. Jobs published by other means (benchmarks, tests) do not
//! await acceptance; only a cancel keeps their result out.
//!
//! [`Recorded::Cancelled`]: super::Recorded::Cancelled

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use super::{bind_nulls, padded, Storage, StorageError, MAX_ROWS_PER_STATEMENT};
use crate::clock::now_micros;

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

impl Storage {
    /// Records `ids` accepted (the broker confirmed them; their clients get a 202), unless
    /// a decision exists already.
    pub async fn accept(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.decide(&mut tx, &ids, true).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `ids` cancelled (their publish failed; their clients get an error), unless
    /// a decision exists already. Returns the ids that turned out accepted after all: a
    /// worker took an overdue decision, or (for jobs that do not await acceptance) already
    /// stored a result. When that is every id, nothing is cancelled.
    pub async fn cancel(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StorageError> {
        let mut tx = self.pool().begin().await?;
        let distinct: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
        let distinct: Vec<String> = distinct.into_iter().collect();
        self.decide(&mut tx, &distinct, false).await?;
        let decided = self.decisions(&mut tx, &distinct).await?;
        let finished = self.ids_in(&mut tx, "job_results", &distinct).await?;
        let accepted: Vec<Uuid> = distinct
            .iter()
            .filter(|id| decided.get(*id) == Some(&true) || finished.contains(*id))
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        if accepted.len() == distinct.len() {
            // Every job stands: keep no tombstones.
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(accepted)
    }

    /// Whether `id` was cancelled.
    pub async fn is_cancelled(&self, id: Uuid) -> Result<bool, StorageError> {
        let found = sqlx::query(&format!(
            "SELECT job_id FROM job_acceptance WHERE job_id = {} AND accepted = 0",
            self.list(1, 1)
        ))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Records one decision for each of `ids` that has none, inside a running transaction.
    pub(crate) async fn decide(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[String],
        accepted: bool,
    ) -> Result<(), StorageError> {
        let at_us = now_micros();
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "INSERT INTO job_acceptance (job_id, accepted, decided_at_us) \
                 SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                 ON CONFLICT (job_id) DO NOTHING",
                self.placeholders(1, rows, 3)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.clone()).bind(i64::from(accepted)).bind(at_us);
            }
            for _ in chunk.len()..rows {
                query = query
                    .bind(None::<String>)
                    .bind(None::<i64>)
                    .bind(None::<i64>);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The decisions recorded for `ids` (accepted or not), inside a running transaction.
    pub(crate) async fn decisions(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[String],
    ) -> Result<HashMap<String, bool>, StorageError> {
        let mut out = HashMap::new();
        for row in self
            .rows_for_ids(tx, "job_id, accepted FROM job_acceptance", ids)
            .await?
        {
            let accepted: i64 = row.try_get("accepted")?;
            out.insert(row.try_get::<String, _>("job_id")?, accepted != 0);
        }
        Ok(out)
    }

    /// Which of `ids` have a row in `table` (keyed by `job_id`), inside a running
    /// transaction.
    pub(crate) async fn ids_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &'static str,
        ids: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        let from = format!("job_id FROM {table}");
        let mut out = HashSet::new();
        for row in self.rows_for_ids(tx, &from, ids).await? {
            out.insert(row.try_get::<String, _>("job_id")?);
        }
        Ok(out)
    }

    /// The stored status (`succeeded`, `dead`, `cancelled`) of each of `ids` that has a row
    /// in `job_results`, inside a running transaction.
    pub(crate) async fn statuses_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[String],
    ) -> Result<HashMap<String, String>, StorageError> {
        let mut out = HashMap::new();
        for row in self
            .rows_for_ids(tx, "job_id, status FROM job_results", ids)
            .await?
        {
            out.insert(row.try_get("job_id")?, row.try_get("status")?);
        }
        Ok(out)
    }

    /// `SELECT <columns_from> WHERE job_id IN (ids)`, in padded chunks (so the server and
    /// sqlx cache a few statement texts), inside a running transaction.
    pub(crate) async fn rows_for_ids(
        &self,
        tx: &mut Transaction<'static, Any>,
        columns_from: &str,
        ids: &[String],
    ) -> Result<Vec<AnyRow>, StorageError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "SELECT {columns_from} WHERE job_id IN ({})",
                self.list(1, rows)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            query = bind_nulls(query, rows - chunk.len());
            out.extend(query.fetch_all(&mut **tx).await?);
        }
        Ok(out)
    }
}
