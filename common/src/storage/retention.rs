//! Retention: finished jobs, refused decisions, idempotency keys and sent callbacks are
//! deleted once they are older than their window, so no table grows without bound.
//!
//! What is pruned, and by which clock:
//!
//! | rows | older than | column |
//! |---|---|---|
//! | `succeeded` jobs | `succeeded` | `finished_at_us` |
//! | `dead` jobs | `dead` | `finished_at_us` |
//! | `cancelled` jobs, jobs refused at the ingress | `cancelled` | `finished_at_us`, `updated_at_us` (the refusal) |
//! | idempotency keys (`done`, or a `pending` claim of a crashed ingress) | `idempotency` | `created_at_us` |
//! | delivered callbacks | `succeeded` | `delivered_at_us` |
//! | given-up callbacks | once their job's result is gone | |
//! | per-key dispatch slots whose lease ran out, rate rows whose time passed, ended key pauses ([`super::dispatch_keys`]) | now (database clock) | `lease_until_us`, `tat_us`, `until_us` |
//!
//! Each job is one row of `jobs` (its acceptance, stage and outcome): pruning a finished
//! job removes all of it, and a job not finished is never pruned. A dead job being
//! replayed (`replaying_since_us` set) is kept until the replay ends.
//!
//! Each pass deletes at most a given number of rows of each kind, oldest first, every
//! statement served by an index (so a pass costs the same on a table of a thousand rows or
//! of a hundred million), and commits per statement: no long transaction, no lock held
//! across the table. One process prunes at a time ([`Storage::try_lease`]): the others find
//! the lease taken and skip the pass.
//!
//! What pruning gives up: a job whose result is pruned and that a broker delivers again
//! later (a consumer group reset to the beginning of a topic) runs again, and a refused job
//! delivered after its decision is pruned is taken as accepted. Both need a message to
//! outlive the window in the broker (24 hours by default).

use std::time::Duration;

use sqlx::Row;

use super::{Storage, StorageError};

/// How long each kind of row is kept; `None` keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Succeeded results, and delivered callbacks.
    pub succeeded: Option<Duration>,
    /// Dead results (replayable until pruned).
    pub dead: Option<Duration>,
    /// Cancelled results and refused decisions.
    pub cancelled: Option<Duration>,
    /// Idempotency keys, from their first use.
    pub idempotency: Option<Duration>,
}

impl Default for RetentionPolicy {
    /// 24 hours for succeeded, cancelled and idempotency keys, 7 days for dead (River's
    /// and Celery's defaults).
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        RetentionPolicy {
            succeeded: Some(DAY),
            dead: Some(DAY * 7),
            cancelled: Some(DAY),
            idempotency: Some(DAY),
        }
    }
}

/// Rows deleted by one [`Storage::prune`] pass, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Succeeded results.
    pub succeeded: u64,
    /// Dead results.
    pub dead: u64,
    /// Cancelled results.
    pub cancelled: u64,
    /// Jobs refused at the ingress (their decision).
    pub refused: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Delivered or given-up callbacks.
    pub callbacks: u64,
    /// Expired per-key dispatch rows (slots and rate), whatever the policy.
    pub dispatch_keys: u64,
}

impl PruneReport {
    /// The counts with their metric label.
    pub fn by_label(&self) -> [(&'static str, u64); 7] {
        [
            ("succeeded", self.succeeded),
            ("dead", self.dead),
            ("cancelled", self.cancelled),
            ("refused", self.refused),
            ("idempotency_keys", self.idempotency_keys),
            ("callbacks", self.callbacks),
            ("dispatch_keys", self.dispatch_keys),
        ]
    }

    /// Whether some kind hit the per-pass `limit` (more may be waiting).
    pub fn hit(&self, limit: u32) -> bool {
        let limit = u64::from(limit);
        self.by_label().iter().any(|(_, n)| *n >= limit)
    }
}

/// Microseconds in `d`, saturating.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The cutoff `window` before `now_us`, or `None` to keep forever.
fn cutoff(now_us: i64, window: Option<Duration>) -> Option<i64> {
    window.map(|w| now_us.saturating_sub(micros(w)))
}

impl Storage {
    /// Takes (or renews) the lease `name` for `holder` until `for_` from now, unless
    /// another holder's lease is still running. Returns whether `holder` has it.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        for_: Duration,
    ) -> Result<bool, StorageError> {
        let now = crate::clock::now_micros();
        let taken = sqlx::query(
            "INSERT INTO maintenance_leases (name, holder, until_us) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             until_us = excluded.until_us \
             WHERE maintenance_leases.holder = excluded.holder \
             OR maintenance_leases.until_us < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(micros(for_)))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives the lease `name` up if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM maintenance_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// One pruning pass at `now_us`: deletes at most `limit` rows of each kind that
    /// `policy` no longer keeps, oldest first (see the module docs).
    pub async fn prune(
        &self,
        policy: &RetentionPolicy,
        now_us: i64,
        limit: u32,
    ) -> Result<PruneReport, StorageError> {
        let mut report = PruneReport::default();
        let limit_param = i64::from(limit);
        for (status, window, counter) in [
            ("succeeded", policy.succeeded, &mut report.succeeded),
            ("dead", policy.dead, &mut report.dead),
            ("cancelled", policy.cancelled, &mut report.cancelled),
            ("refused", policy.cancelled, &mut report.refused),
        ] {
            let Some(before) = cutoff(now_us, window) else {
                continue;
            };
            *counter = sqlx::query(
                "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs \
                 WHERE state = $1 AND updated_at_us < $2 AND replaying_since_us IS NULL \
                 ORDER BY updated_at_us LIMIT $3)",
            )
            .bind(status)
            .bind(before)
            .bind(limit_param)
            .execute(self.pool())
            .await?
            .rows_affected();
        }
        if let Some(before) = cutoff(now_us, policy.idempotency) {
            report.idempotency_keys = sqlx::query(
                "DELETE FROM idempotency_keys WHERE (scope, idem_key) IN (SELECT scope, idem_key \
                 FROM idempotency_keys WHERE created_at_us < $1 ORDER BY created_at_us LIMIT $2)",
            )
            .bind(before)
            .bind(limit_param)
            .execute(self.pool())
            .await?
            .rows_affected();
        }
        if let Some(before) = cutoff(now_us, policy.succeeded) {
            report.callbacks += sqlx::query(
                "DELETE FROM callback_outbox WHERE idempotency_key IN (SELECT idempotency_key \
                 FROM callback_outbox WHERE delivered_at_us IS NOT NULL AND delivered_at_us < $1 \
                 ORDER BY delivered_at_us LIMIT $2)",
            )
            .bind(before)
            .bind(limit_param)
            .execute(self.pool())
            .await?
            .rows_affected();
        }
        // Given up (never to be sent again) and its job's result already pruned.
        report.callbacks += sqlx::query(
            "DELETE FROM callback_outbox WHERE idempotency_key IN (SELECT c.idempotency_key \
             FROM callback_outbox c WHERE c.delivered_at_us IS NULL AND c.next_at_us = $1 \
             AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.job_id = c.job_id) LIMIT $2)",
        )
        .bind(i64::MAX)
        .bind(limit_param)
        .execute(self.pool())
        .await?
        .rows_affected();
        // Expired per-key dispatch rows: no window, they mean nothing once expired (the
        // workers sweep them too; this covers kinds no worker runs any more).
        let swept = self.sweep_dispatch_keys(limit).await?;
        report.dispatch_keys = swept.total();
        Ok(report)
    }

    /// Stored jobs per state: `scheduled` (waiting to be published), the unfinished
    /// stages (`queued`, `running`, `retrying`, `waiting`) and the final statuses
    /// (`succeeded`, `dead`, `cancelled`, from [`Storage::results_per_status`]). Counts the
    /// small tables whole; the retention pass calls it, not every request.
    pub async fn rows_per_state(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM jobs \
             WHERE state IN ('scheduled', 'queued', 'running', 'retrying', 'waiting') \
             GROUP BY state",
        )
        .fetch_all(self.pool())
        .await?;
        let mut counts = rows
            .iter()
            .map(|row| {
                let n: i64 = row.try_get("n")?;
                Ok((row.try_get("state")?, super::from_db(n)))
            })
            .collect::<Result<Vec<(String, u64)>, StorageError>>()?;
        counts.extend(self.results_per_status().await?);
        Ok(counts)
    }

    /// When the oldest stored result of each final status finished (µs since the epoch),
    /// by `status`; absent when there is none. One index lookup per status.
    pub async fn oldest_results(&self) -> Result<Vec<(&'static str, i64)>, StorageError> {
        let mut out = Vec::new();
        for status in ["succeeded", "dead", "cancelled"] {
            let row = sqlx::query("SELECT MIN(updated_at_us) AS oldest FROM jobs WHERE state = $1")
                .bind(status)
                .fetch_one(self.pool())
                .await?;
            if let Some(oldest) = row.try_get::<Option<i64>, _>("oldest")? {
                out.push((status, oldest));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_window_keeps_forever_and_huge_windows_do_not_overflow() {
        assert_eq!(cutoff(1_000, None), None);
        assert_eq!(cutoff(1_000, Some(Duration::from_micros(400))), Some(600));
        assert_eq!(cutoff(0, Some(Duration::MAX)), Some(-i64::MAX));
    }

    #[test]
    fn a_pass_that_hit_its_limit_says_so() {
        let report = PruneReport {
            dead: 10,
            ..PruneReport::default()
        };
        assert!(report.hit(10));
        assert!(!report.hit(11));
    }
}
