//! Worker heartbeats, and the live figures the ingress dashboard reads from the database.
//!
//! Every worker upserts one [`Heartbeat`] row a second (table `worker_heartbeats`), so the
//! dashboard sees the workers of every process, not only those embedded in the ingress.
//! The processed rate and end-to-end latency percentiles come from finished `jobs` rows, with
//! queries bounded by an index on `finished_at_us` and a row limit; the processed totals
//! from [`super::totals`].
//!
//! Same portable SQL as the rest of the storage layer (`$n` placeholders, `ON CONFLICT`),
//! on SQLite and PostgreSQL.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{from_db, Storage, StorageError};

/// What a worker reports about itself, once a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    /// The worker's name (`WorkerOptions::worker_id`), unique per process.
    pub worker_id: String,
    /// The most jobs it runs at once.
    pub capacity: u64,
    /// Jobs it was running when it sent this heartbeat.
    pub in_flight: u64,
    /// Jobs it settled as succeeded since it started.
    pub succeeded: u64,
    /// Jobs it dead-lettered since it started.
    pub dead: u64,
    /// When it started (µs since the epoch).
    pub started_at_us: i64,
    /// When it sent this heartbeat (µs since the epoch).
    pub last_seen_us: i64,
    /// Flow-control state per HTTP kind (`{"kind": {"limit", "in_flight",
    /// "breaker_open", "concurrency", "concurrency_per_key", "rate_per_key"}}`, the last
    /// two `null` when not set), `null` when it has none.
    pub kinds: serde_json::Value,
    /// The fairness keys it started most jobs of lately, busiest first (a handful; see
    /// `surge-worker`'s `busy_keys`).
    pub busy_keys: Vec<KeyLoad>,
}

/// Jobs of one fairness key a worker started lately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLoad {
    /// The key (a job's `key`, or what its kind's `key_from` took).
    pub key: String,
    /// Jobs of it started in the window.
    pub started: u64,
}

impl KeyLoad {
    /// Sums `counts` (key, jobs started) by key and returns the `most` busiest keys, most
    /// jobs first, ties by key.
    pub fn busiest<'a>(
        counts: impl IntoIterator<Item = (&'a str, u64)>,
        most: usize,
    ) -> Vec<KeyLoad> {
        let mut totals: std::collections::HashMap<&str, u64> = Default::default();
        for (key, started) in counts {
            *totals.entry(key).or_default() += started;
        }
        let mut loads: Vec<KeyLoad> = totals
            .into_iter()
            .map(|(key, started)| KeyLoad {
                key: key.to_owned(),
                started,
            })
            .collect();
        loads.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| a.key.cmp(&b.key)));
        loads.truncate(most);
        loads
    }
}

/// Stored results, counted by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ResultTotals {
    /// Rows with status `succeeded`.
    pub succeeded: u64,
    /// Rows with status `dead`.
    pub dead: u64,
}

/// End-to-end latency (accepted at the ingress → handler finished) of recent results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RecentLatency {
    /// How many results the percentiles are computed from.
    pub samples: usize,
    /// Median, in µs; `None` without samples.
    pub p50_us: Option<i64>,
    /// 99th percentile, in µs; `None` without samples.
    pub p99_us: Option<i64>,
}

/// The nearest-rank `q` quantile (0.0..=1.0) of ascending `sorted` values; `None` when empty.
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Storage {
    /// Inserts or replaces the heartbeat row of `beat.worker_id`.
    pub async fn upsert_heartbeat(&self, beat: &Heartbeat) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO worker_heartbeats \
               (worker_id, capacity, in_flight, succeeded, dead, started_at_us, last_seen_us, \
                kinds, busy_keys) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (worker_id) DO UPDATE SET \
               capacity = excluded.capacity, in_flight = excluded.in_flight, \
               succeeded = excluded.succeeded, dead = excluded.dead, \
               started_at_us = excluded.started_at_us, last_seen_us = excluded.last_seen_us, \
               kinds = excluded.kinds, busy_keys = excluded.busy_keys",
        )
        .bind(beat.worker_id.clone())
        .bind(to_db(beat.capacity))
        .bind(to_db(beat.in_flight))
        .bind(to_db(beat.succeeded))
        .bind(to_db(beat.dead))
        .bind(beat.started_at_us)
        .bind(beat.last_seen_us)
        .bind((!beat.kinds.is_null()).then(|| beat.kinds.to_string()))
        .bind(
            (!beat.busy_keys.is_empty())
                .then(|| serde_json::to_string(&beat.busy_keys).ok())
                .flatten(),
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Heartbeats last seen at or after `since_us`, most recently seen first, at most `limit`.
    pub async fn heartbeats(
        &self,
        since_us: i64,
        limit: u32,
    ) -> Result<Vec<Heartbeat>, StorageError> {
        let rows = sqlx::query(
            "SELECT worker_id, capacity, in_flight, succeeded, dead, started_at_us, last_seen_us, \
             kinds, busy_keys FROM worker_heartbeats WHERE last_seen_us >= $1 \
             ORDER BY last_seen_us DESC, worker_id LIMIT $2",
        )
        .bind(since_us)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Heartbeat {
                    worker_id: row.try_get("worker_id")?,
                    capacity: from_db(row.try_get("capacity")?),
                    in_flight: from_db(row.try_get("in_flight")?),
                    succeeded: from_db(row.try_get("succeeded")?),
                    dead: from_db(row.try_get("dead")?),
                    started_at_us: row.try_get("started_at_us")?,
                    last_seen_us: row.try_get("last_seen_us")?,
                    kinds: row
                        .try_get::<Option<String>, _>("kinds")?
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or(serde_json::Value::Null),
                    busy_keys: row
                        .try_get::<Option<String>, _>("busy_keys")?
                        .and_then(|text| serde_json::from_str(&text).ok())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Deletes heartbeats last seen before `before_us` (workers long gone); returns how many.
    pub async fn prune_heartbeats(&self, before_us: i64) -> Result<u64, StorageError> {
        let done = sqlx::query("DELETE FROM worker_heartbeats WHERE last_seen_us < $1")
            .bind(before_us)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Results whose handler finished at or after `since_us` (an index range count).
    pub async fn finished_since(&self, since_us: i64) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE finished_at_us >= $1")
            .bind(since_us)
            .fetch_one(self.pool())
            .await?;
        Ok(from_db(n))
    }

    /// End-to-end latency percentiles of the (at most `limit`) latest results that finished
    /// at or after `since_us`.
    pub async fn recent_latency(
        &self,
        since_us: i64,
        limit: u32,
    ) -> Result<RecentLatency, StorageError> {
        let rows = sqlx::query(
            "SELECT enqueued_at_us, finished_at_us FROM jobs \
             WHERE finished_at_us >= $1 AND state <> 'cancelled' \
             ORDER BY finished_at_us DESC LIMIT $2",
        )
        .bind(since_us)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut latencies = rows
            .iter()
            .map(|row| {
                let enqueued: i64 = row.try_get("enqueued_at_us")?;
                let finished: i64 = row.try_get("finished_at_us")?;
                Ok(finished.saturating_sub(enqueued).max(0))
            })
            .collect::<Result<Vec<i64>, StorageError>>()?;
        latencies.sort_unstable();
        Ok(RecentLatency {
            samples: latencies.len(),
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.99), Some(7));
        let values: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.50), Some(50));
        assert_eq!(percentile(&values, 0.99), Some(99));
        assert_eq!(percentile(&values, 1.0), Some(100));
        assert_eq!(percentile(&values, 0.0), Some(1));
        assert_eq!(percentile(&values, f64::NAN), Some(50));
        assert_eq!(percentile(&values, 7.0), Some(100));
    }
}
