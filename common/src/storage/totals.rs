//! Stored results per status without counting the whole table on every read.
//!
//! The retention pass (one ingress at a time, under its lease) counts the results that
//! finished before a mark a minute in the past into `result_counts`
//! ([`Storage::count_results_below`]). A read ([`Storage::results_per_status`]) adds a
//! range count of the rows at or after the mark, which the `finished_at_us` index bounds
//! to the last pass interval plus a minute. Before the first count (a new database) it
//! counts the table.
//!
//! What the split gives up: a dead job replayed to success moves from `dead` to
//! `succeeded` only at the next count (it is counted once as each until then), and a
//! result committed more than a minute after its handler finished with a finish time
//! before the mark is missed until the next count. Both last at most one pass (≤ 30 s).

use std::collections::BTreeMap;

use sqlx::Row;

use super::heartbeat::ResultTotals;
use super::{Storage, StorageError};

/// The final statuses counted.
const STATUSES: [&str; 3] = ["succeeded", "dead", "cancelled"];

impl Storage {
    /// Replaces `result_counts` with the results that finished before `below_us`, per
    /// status, in one transaction. One scan of the table; the retention pass calls it.
    pub async fn count_results_below(&self, below_us: i64) -> Result<(), StorageError> {
        let counted = sqlx::query(
            "SELECT state AS status, COUNT(*) AS n FROM jobs WHERE finished_at_us < $1 \
             GROUP BY state",
        )
        .bind(below_us)
        .fetch_all(self.pool())
        .await?;
        let mut rows: BTreeMap<&str, i64> = STATUSES.iter().map(|s| (*s, 0)).collect();
        for row in &counted {
            let status: String = row.try_get("status")?;
            if let Some(n) = STATUSES.iter().find(|s| **s == status) {
                rows.insert(n, row.try_get("n")?);
            }
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM result_counts")
            .execute(&mut *tx)
            .await?;
        for (status, n) in rows {
            sqlx::query("INSERT INTO result_counts (status, rows, below_us) VALUES ($1, $2, $3)")
                .bind(status)
                .bind(n)
                .bind(below_us)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stored results per final status (`succeeded`, `dead`, `cancelled`; absent when
    /// none): the last count plus the rows finished since its mark (see the module docs).
    pub async fn results_per_status(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let counted = sqlx::query("SELECT status, rows, below_us FROM result_counts")
            .fetch_all(self.pool())
            .await?;
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        let recent = match counted.first() {
            Some(first) => {
                let below_us: i64 = first.try_get("below_us")?;
                for row in &counted {
                    *totals.entry(row.try_get("status")?).or_default() +=
                        row.try_get::<i64, _>("rows")?;
                }
                sqlx::query(
                    "SELECT state AS status, COUNT(*) AS n FROM jobs WHERE finished_at_us >= $1 \
                     GROUP BY state",
                )
                .bind(below_us)
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT state AS status, COUNT(*) AS n FROM jobs \
                     WHERE finished_at_us IS NOT NULL GROUP BY state",
                )
                .fetch_all(self.pool())
                .await?
            }
        };
        for row in &recent {
            *totals.entry(row.try_get("status")?).or_default() += row.try_get::<i64, _>("n")?;
        }
        Ok(totals
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(status, n)| (status, super::from_db(n)))
            .collect())
    }

    /// Stored results by outcome, for the dashboard ([`Storage::results_per_status`]).
    pub async fn result_totals(&self) -> Result<ResultTotals, StorageError> {
        let mut totals = ResultTotals::default();
        for (status, n) in self.results_per_status().await? {
            match status.as_str() {
                "succeeded" => totals.succeeded = n,
                "dead" => totals.dead = n,
                _ => {}
            }
        }
        Ok(totals)
    }
}
