//! The portable driver: SQL both SQLite and PostgreSQL run, through sqlx's `Any` driver.
//!
//! `Any` binds no arrays, so a batch is a multi-row `VALUES` list, padded to a power of two
//! rows with NULLs (see [`padded`]) so each statement has a few texts the connections
//! cache, and split every [`MAX_ROWS_PER_STATEMENT`] rows.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Transaction};
use uuid::Uuid;

use super::{counted, Classify, Driver, JobRow, Outcome, SettledRow};
use crate::storage::acceptance::AcceptedJob;
use crate::storage::lifecycle::StageUpdate;
use crate::storage::{
    bind_nulls, padded, placeholders, Recorded, StorageError, MAX_ROWS_PER_STATEMENT,
};

/// Parameters per row of the outcome upsert.
const OUTCOME_PARAMS: usize = 12;

/// The portable implementation of [`Driver`] (SQLite's; see the module docs).
#[derive(Debug, Clone)]
pub struct PortableDriver {
    pool: AnyPool,
    sqlite: bool,
}

impl PortableDriver {
    /// The driver on `pool`; `sqlite` picks SQLite's positional placeholders.
    pub fn new(pool: AnyPool, sqlite: bool) -> PortableDriver {
        PortableDriver { pool, sqlite }
    }

    fn placeholders(&self, rows: usize, columns: usize) -> String {
        placeholders(self.sqlite, 1, rows, columns)
    }

    /// `SELECT <columns_from> WHERE job_id IN (ids)`, in padded chunks, inside `tx` or on
    /// the pool when it is `None`.
    pub(crate) async fn rows_for_ids(
        &self,
        mut tx: Option<&mut Transaction<'static, Any>>,
        columns_from: &str,
        ids: &[String],
    ) -> Result<Vec<AnyRow>, StorageError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let list = self.placeholders(1, rows);
            let sql = format!(
                "SELECT {columns_from} WHERE job_id IN ({})",
                &list[1..list.len() - 1]
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.clone());
            }
            query = bind_nulls(query, rows - chunk.len());
            out.extend(match tx.as_deref_mut() {
                Some(tx) => query.fetch_all(&mut **tx).await?,
                None => query.fetch_all(&self.pool).await?,
            });
        }
        Ok(out)
    }
}

/// The outcome upsert for `rows` rows. Column 4 is the acceptance the outcome brings: 1
/// when the job does not await the ingress's decision or that decision is overdue, NULL
/// otherwise. A job with no row is inserted only in the first case (without a row, an
/// awaiting job's acceptance is not recorded yet); an existing row takes the outcome only
/// where it is accepted (or the outcome brings the acceptance) and not finished, or
/// finished dead and being replayed.
fn outcome_upsert(placeholders: &str) -> String {
    format!(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, result, error, deliveries, \
         worker, enqueued_at_us, started_at_us, finished_at_us, updated_at_us, job) \
         SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, 1, \
         v.column8, v.column9, v.column10, v.column11, v.column11, v.column12 \
         FROM (VALUES {placeholders}) AS v WHERE v.column1 IS NOT NULL \
         AND (v.column4 = 1 OR EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = v.column1)) \
         {}",
        super::outcome_on_conflict!()
    )
}

fn bind_stages<'q>(
    sql: &'q str,
    updates: &[&StageUpdate],
    padding: usize,
) -> Query<'q, Any, AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for u in updates {
        query = query
            .bind(u.job_id.to_string())
            .bind(u.kind.clone())
            .bind(u.stage.as_str())
            .bind(i64::from(u.attempt))
            .bind(u.error.clone())
            .bind(u.at_us);
    }
    for _ in 0..padding {
        let (text, int) = (None::<String>, None::<i64>);
        query = query.bind(text.clone()).bind(text.clone()).bind(text);
        query = query.bind(int).bind(None::<String>).bind(int);
    }
    query
}

#[async_trait]
impl Driver for PortableDriver {
    fn name(&self) -> &'static str {
        "portable"
    }

    async fn accept(&self, jobs: &[&AcceptedJob], at_us: i64) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        for chunk in jobs.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, \
                 enqueued_at_us, updated_at_us) \
                 SELECT v.column1, v.column2, 'queued', 1, 1, 0, v.column3, v.column4 \
                 FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                 ON CONFLICT (job_id) DO UPDATE SET accepted = 1, \
                 enqueued_at_us = excluded.enqueued_at_us WHERE jobs.accepted IS NULL",
                self.placeholders(rows, 4)
            );
            let mut query = sqlx::query(&sql);
            for job in chunk {
                query = query
                    .bind(job.job_id.to_string())
                    .bind(job.kind.clone())
                    .bind(job.enqueued_at_us)
                    .bind(at_us);
            }
            for _ in chunk.len()..rows {
                let (text, int) = (None::<String>, None::<i64>);
                query = query.bind(text.clone()).bind(text).bind(int).bind(int);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn store_outcomes(
        &self,
        outcomes: &[Outcome<'_>],
        classify: &Classify<'_>,
    ) -> Result<Vec<Recorded>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = HashSet::new();
        for chunk in outcomes.chunks(MAX_ROWS_PER_STATEMENT) {
            let sql = outcome_upsert(&self.placeholders(padded(chunk.len()), OUTCOME_PARAMS));
            let mut query = sqlx::query(&sql);
            for Outcome {
                row: r,
                brings_acceptance,
            } in chunk
            {
                query = query
                    .bind(r.job_id.to_string())
                    .bind(r.kind.clone())
                    .bind(r.status.as_str())
                    .bind(brings_acceptance.then_some(1_i64))
                    .bind(i64::from(r.attempts))
                    .bind(r.result.as_ref().map(|v| v.to_string()))
                    .bind(r.error.clone())
                    .bind(r.worker.clone())
                    .bind(r.enqueued_at_us)
                    .bind(r.started_at_us)
                    .bind(r.finished_at_us)
                    .bind(
                        r.job
                            .as_ref()
                            .map(|j| String::from_utf8_lossy(&j.encode()).into_owned()),
                    );
            }
            for _ in chunk.len()..padded(chunk.len()) {
                let (text, int) = (None::<String>, None::<i64>);
                query = query
                    .bind(text.clone())
                    .bind(text.clone())
                    .bind(text.clone());
                query = query
                    .bind(int)
                    .bind(int)
                    .bind(text.clone())
                    .bind(text.clone());
                query = query.bind(text.clone()).bind(int).bind(int).bind(int);
                query = query.bind(text);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.extend(row.job_id()?);
            }
        }
        // Why each skipped row was skipped, read after the upsert: a row committed in
        // between is visible here although the upsert did not see it.
        let skipped: Vec<String> = outcomes
            .iter()
            .filter(|o| !inserted.contains(&o.row.job_id))
            .map(|o| o.row.job_id.to_string())
            .collect();
        let mut found = HashMap::new();
        for row in self
            .rows_for_ids(Some(&mut tx), "job_id, state FROM jobs", &skipped)
            .await?
        {
            found.extend(row.id_and_state()?);
        }
        let classified = classify(&inserted, &found);
        for (id, count) in counted(&classified.repeated) {
            sqlx::query(&format!(
                "UPDATE jobs SET deliveries = deliveries + {} WHERE job_id = {}",
                placeholders(self.sqlite, 1, 1, 1).trim_matches(['(', ')']),
                placeholders(self.sqlite, 2, 1, 1).trim_matches(['(', ')']),
            ))
            .bind(count)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(classified.outcome)
    }

    async fn record_stages(&self, latest: &[&StageUpdate]) -> Result<(), StorageError> {
        // One upsert for every stage: a `queued` update only ever fills a missing row.
        for chunk in latest.chunks(MAX_ROWS_PER_STATEMENT) {
            let rows = padded(chunk.len());
            let sql = format!(
                "INSERT INTO jobs (job_id, kind, state, attempts, error, updated_at_us) \
                 SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                 ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, \
                 attempts = excluded.attempts, error = excluded.error, \
                 updated_at_us = excluded.updated_at_us \
                 WHERE excluded.state <> 'queued' AND jobs.finished_at_us IS NULL \
                 AND jobs.state <> 'refused' AND jobs.updated_at_us <= excluded.updated_at_us",
                self.placeholders(rows, 6)
            );
            bind_stages(&sql, chunk, rows - chunk.len())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn settled_rows(&self, ids: &[Uuid]) -> Result<Vec<SettledRow>, StorageError> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows = self
            .rows_for_ids(
                None,
                "job_id, state, error, replaying_since_us FROM jobs",
                &ids,
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(row.settled_row()?);
        }
        Ok(out)
    }
}
