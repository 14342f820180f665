//! Cancelling jobs whose publish failed.
//!
//! A publish can fail after the broker already stored the message: the connection drops
//! between the broker's write and its confirm, or a Kafka delivery report times out while
//! the record sits in the log. The ingress answers such a request `503` (the client will
//! resubmit, as a new job), so the original must never produce a result. The ingress calls
//! [`Storage::cancel`] before it answers; [`Storage::record_many`] skips cancelled ids and
//! reports them as [`Recorded::Cancelled`](super::Recorded::Cancelled), so the worker acks
//! the delivery without a row and `GET /jobs/{id}` answers 404.

use std::collections::HashSet;

use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use super::{bind_nulls, padded, Storage, StorageError, MAX_ROWS_PER_STATEMENT};
use crate::clock::now_micros;

impl Storage {
    /// Marks `ids` cancelled, unless a result already exists. Returns the ids that already
    /// had a result (the job ran before the cancel arrived; it was accepted after all).
    pub async fn cancel(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StorageError> {
        let mut tx = self.pool().begin().await?;
        let at_us = now_micros();
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "INSERT INTO cancelled_jobs (job_id, cancelled_at_us) \
                 SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                 ON CONFLICT (job_id) DO NOTHING",
                self.placeholders(1, rows, 2)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string()).bind(at_us);
            }
            for _ in chunk.len()..rows {
                query = query.bind(None::<String>).bind(None::<i64>);
            }
            query.execute(&mut *tx).await?;
        }
        let distinct: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
        let distinct: Vec<String> = distinct.into_iter().collect();
        let finished: Vec<Uuid> = self
            .ids_in(&mut tx, "job_results", &distinct)
            .await?
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        if finished.len() == distinct.len() {
            // Every job already ran: keep no tombstones, the jobs stand.
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(finished)
    }

    /// Whether `id` was cancelled.
    pub async fn is_cancelled(&self, id: Uuid) -> Result<bool, StorageError> {
        let found = sqlx::query("SELECT job_id FROM cancelled_jobs WHERE job_id = $1")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }

    /// Which of `ids` are cancelled, inside a running transaction.
    pub(crate) async fn cancelled_among(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        self.ids_in(tx, "cancelled_jobs", ids).await
    }

    /// Which of `ids` have a row in `table` (keyed by `job_id`), inside a running
    /// transaction.
    async fn ids_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        table: &'static str,
        ids: &[String],
    ) -> Result<HashSet<String>, StorageError> {
        let mut out = HashSet::new();
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "SELECT job_id FROM {table} WHERE job_id IN ({})",
                self.list(1, rows)
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            query = bind_nulls(query, rows - chunk.len());
            for row in query.fetch_all(&mut **tx).await? {
                out.insert(row.try_get::<String, _>("job_id")?);
            }
        }
        Ok(out)
    }
}
