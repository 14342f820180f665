//! Per-key flow control state for HTTP kinds (`concurrency_per_key`, `rate_per_key`), in the
//! results database every worker replica shares, on the database clock like
//! [`super::flow`].
//!
//! Keys are stored as [`key_hash`] (SHA-256, hex): 64 characters whatever the key.
//!
//! **Slots** (table `dispatch_key_slots`): unlike the per-kind slots, a row exists only
//! while its slot is held. Taking a slot of a key with `concurrency_per_key = N` is one
//! statement: it inserts the lowest slot number below N that has no live row, or takes over
//! a row whose lease ran out (`INSERT … SELECT … ON CONFLICT DO UPDATE … WHERE lease ran
//! out`). Two claimers can never both hold one slot: the primary key `(kind, key_hash,
//! slot)` admits one row, and the takeover re-checks the lease on the row it locked. On
//! PostgreSQL two claimers racing for the same slot number may leave the loser with nothing
//! although a higher slot was free: a refusal that errs on the safe side (the caller asks
//! again). A release deletes the row only if it still carries the caller's holder token.
//! So the table holds at most the slots in use plus rows of crashed holders whose lease
//! ran out and that nobody has taken over or swept yet ([`Storage::sweep_dispatch_keys`]).
//!
//! **Rate** (table `dispatch_key_rate`): GCRA without burst, as the per-kind
//! `dispatch_rate`, one row per (kind, key) while its theoretical arrival time `tat_us` is
//! ahead. A row whose time has passed means the same as no row (the next reservation starts
//! at once either way) and is deleted by the sweep: the table holds the keys that started
//! a request within the last `1 / rate_per_key` seconds, plus those awaiting a sweep.
//!
//! **Pauses** (table `dispatch_key_pauses`): a key whose target answered `429`/`503` with
//! `Retry-After` is paused until then, one row per key while the pause runs (a later
//! pause only ever extends it); an ended pause is deleted by the sweep.

use std::time::Duration;

use sqlx::Row;

use super::{Storage, StorageError};
use crate::kinds::flow_store::RateReservation;
pub use crate::kinds::flow_store::{key_hash, KeySweep};

/// Rows in the per-key tables, live or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyRows {
    /// `dispatch_key_slots`.
    pub slots: u64,
    /// `dispatch_key_rate`.
    pub rates: u64,
    /// `dispatch_key_pauses`.
    pub pauses: u64,
}

impl Storage {
    /// Takes one of the `per_key` slots of `key_hash` in `kind` for `holder`, leased for
    /// `lease` from now on the database clock: the slot number, or `None` when every slot
    /// is held (or, on PostgreSQL, a concurrent claimer won the slot this one aimed at).
    pub async fn acquire_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        holder: &str,
        per_key: u32,
        lease: Duration,
    ) -> Result<Option<u32>, StorageError> {
        if per_key == 0 {
            return Ok(None);
        }
        let now = self.now_sql();
        // The candidates 0..per_key are generated lazily: `LIMIT 1` stops at the first
        // slot number without a live row. The `WHERE` before `ON CONFLICT` is also what
        // SQLite's parser needs to read the upsert.
        let sql = format!(
            "WITH RECURSIVE idx(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM idx WHERE n + 1 < $1) \
             INSERT INTO dispatch_key_slots (kind, key_hash, slot, holder, lease_until_us) \
             SELECT $2, $3, n, $4, {now} + $5 FROM idx \
             WHERE NOT EXISTS (SELECT 1 FROM dispatch_key_slots d WHERE d.kind = $6 \
               AND d.key_hash = $7 AND d.slot = idx.n AND d.lease_until_us >= {now}) \
             LIMIT 1 \
             ON CONFLICT (kind, key_hash, slot) DO UPDATE SET holder = excluded.holder, \
               lease_until_us = excluded.lease_until_us \
             WHERE dispatch_key_slots.lease_until_us < {now} \
             RETURNING slot"
        );
        let row = sqlx::query(&sql)
            .bind(i64::from(per_key))
            .bind(kind.to_owned())
            .bind(key_hash.to_owned())
            .bind(holder.to_owned())
            .bind(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2))
            .bind(kind.to_owned())
            .bind(key_hash.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => {
                let slot: i64 = row.try_get("slot")?;
                Ok(Some(u32::try_from(slot).unwrap_or(u32::MAX)))
            }
            None => Ok(None),
        }
    }

    /// Frees `slot` of `key_hash` in `kind` (deletes its row) if `holder` still holds it;
    /// whether it did.
    pub async fn release_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        slot: u32,
        holder: &str,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "DELETE FROM dispatch_key_slots \
             WHERE kind = $1 AND key_hash = $2 AND slot = $3 AND holder = $4",
        )
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .bind(i64::from(slot))
        .bind(holder.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Slots of `key_hash` in `kind` held now (lease not run out, database clock).
    pub async fn key_slots_held(&self, kind: &str, key_hash: &str) -> Result<u32, StorageError> {
        let held: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM dispatch_key_slots WHERE kind = $1 AND key_hash = $2 \
             AND lease_until_us >= {}",
            self.now_sql()
        ))
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(held).unwrap_or(u32::MAX))
    }

    /// Reserves the next start of a request of `key_hash` in `kind`, one per `interval_us`
    /// across all replicas (database clock), if it is at most `max_wait` away.
    pub async fn reserve_key_start(
        &self,
        kind: &str,
        key_hash: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, StorageError> {
        let now = self.now_sql();
        let interval_us = interval_us.max(1);
        let max_wait_us = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX / 2);
        let wait: Option<i64> = sqlx::query_scalar(&format!(
            "INSERT INTO dispatch_key_rate (kind, key_hash, tat_us) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (kind, key_hash) DO UPDATE SET tat_us = \
               (CASE WHEN dispatch_key_rate.tat_us > {now} THEN dispatch_key_rate.tat_us \
                ELSE {now} END) + $4 \
             WHERE dispatch_key_rate.tat_us <= {now} + $5 \
             RETURNING tat_us - $6 - {now}"
        ))
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .bind(interval_us)
        .bind(interval_us)
        .bind(max_wait_us)
        .bind(interval_us)
        .fetch_optional(&self.pool)
        .await?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        if let Some(wait) = wait {
            return Ok(RateReservation::StartAfter(micros(wait)));
        }
        let busy: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT tat_us - {now} FROM dispatch_key_rate WHERE kind = $1 AND key_hash = $2"
        ))
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(RateReservation::Busy(micros(busy.unwrap_or(0))))
    }

    /// Deletes at most `limit` slot rows whose lease ran out and `limit` rate rows whose
    /// time has passed (database clock), oldest first, each statement served by an index.
    /// Safe beside claimers: each row is re-checked as it is deleted, so a row taken over
    /// or moved on meanwhile stays.
    pub async fn sweep_dispatch_keys(&self, limit: u32) -> Result<KeySweep, StorageError> {
        Ok(KeySweep {
            slots: self
                .sweep_expired(
                    "dispatch_key_slots",
                    "kind, key_hash, slot",
                    "lease_until_us",
                    limit,
                )
                .await?,
            rates: self
                .sweep_expired("dispatch_key_rate", "kind, key_hash", "tat_us", limit)
                .await?,
            pauses: self
                .sweep_expired("dispatch_key_pauses", "kind, key_hash", "until_us", limit)
                .await?,
        })
    }

    /// Deletes at most `limit` rows of `table` (primary key `key`) whose `until` column is
    /// past on the database clock, oldest first; each row is re-checked as it is deleted.
    async fn sweep_expired(
        &self,
        table: &str,
        key: &str,
        until: &str,
        limit: u32,
    ) -> Result<u64, StorageError> {
        let now = self.now_sql();
        let deleted = sqlx::query(&format!(
            "DELETE FROM {table} WHERE {until} < {now} \
             AND ({key}) IN (SELECT {key} FROM {table} \
               WHERE {until} < {now} ORDER BY {until} LIMIT $1)"
        ))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    /// Pauses `key_hash` in `kind` for `wait` from now (database clock); a pause already
    /// running longer is kept.
    pub async fn pause_key(
        &self,
        kind: &str,
        key_hash: &str,
        wait: Duration,
    ) -> Result<(), StorageError> {
        let now = self.now_sql();
        sqlx::query(&format!(
            "INSERT INTO dispatch_key_pauses (kind, key_hash, until_us) \
             VALUES ($1, $2, {now} + $3) \
             ON CONFLICT (kind, key_hash) DO UPDATE SET until_us = excluded.until_us \
             WHERE dispatch_key_pauses.until_us < excluded.until_us"
        ))
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .bind(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 2))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How much longer `key_hash` in `kind` is paused (database clock), if it is.
    pub async fn key_paused_for(
        &self,
        kind: &str,
        key_hash: &str,
    ) -> Result<Option<Duration>, StorageError> {
        let now = self.now_sql();
        let left: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT until_us - {now} FROM dispatch_key_pauses \
             WHERE kind = $1 AND key_hash = $2 AND until_us > {now}"
        ))
        .bind(kind.to_owned())
        .bind(key_hash.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(left.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }

    /// Rows in the per-key tables, live or not.
    pub async fn dispatch_key_rows(&self) -> Result<KeyRows, StorageError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM dispatch_key_slots) AS slots, \
             (SELECT COUNT(*) FROM dispatch_key_rate) AS rates, \
             (SELECT COUNT(*) FROM dispatch_key_pauses) AS pauses",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |name: &str| -> Result<u64, StorageError> {
            let n: i64 = row.try_get(name)?;
            Ok(super::from_db(n))
        };
        Ok(KeyRows {
            slots: count("slots")?,
            rates: count("rates")?,
            pauses: count("pauses")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::key_hash;

    #[test]
    fn keys_hash_to_fixed_length_hex() {
        let long = "k".repeat(10_000);
        for key in ["", "tenant-1", long.as_str(), "ünï"] {
            let hash = key_hash(key);
            assert_eq!(hash.len(), 64);
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(key_hash("a"), key_hash("b"));
        assert_eq!(key_hash("a"), key_hash("a"));
    }
}
