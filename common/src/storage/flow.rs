//! Cross-replica flow control state for HTTP kinds: concurrency slots and a rate row, in the
//! results database every worker replica shares.
//!
//! **Slots** (table `dispatch_slots`): a kind with `concurrency = N` has N rows. Sending a
//! request takes one: a single `UPDATE … WHERE slot = (SELECT … LIMIT 1)` claims a slot that
//! is free or whose lease ran out, writing a random holder token and a lease end. On
//! PostgreSQL the inner select carries `FOR UPDATE SKIP LOCKED`, so concurrent claimers
//! pick different rows instead of queueing on one; the outer `WHERE` re-checks that the row
//! is still free, so two claimers can never both win one slot (the loser gets no row and
//! polls again). On SQLite the statement is atomic by itself (one writer at a time). A
//! release clears the row only if it still carries the caller's token, so a release that
//! comes after the lease ran out (and someone else took the slot) frees nothing.
//!
//! **Rate** (table `dispatch_rate`): GCRA without burst. `tat_us` is the earliest start of
//! the next request; a reservation moves it one interval on, atomically, only if the caller
//! would not wait longer than it is willing to.
//!
//! Times are the replicas' wall clocks (µs since the epoch): replicas whose clocks disagree
//! by more than the lease margin may see a slot expire early or late.

use sqlx::Row;

use super::{Storage, StorageError, MAX_ROWS_PER_STATEMENT};

/// What a rate reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateReservation {
    /// The request may start at this time (µs since the epoch; now or a little later).
    StartAt(i64),
    /// Too busy: the earliest start is this time, later than the caller would wait.
    Busy(i64),
}

impl Storage {
    /// Makes `kind` have exactly `slots` slot rows (0..slots): adds missing ones, drops
    /// those beyond (a replica started with a lower `concurrency` shrinks the cap for all).
    /// Safe to run from several replicas at once.
    pub async fn ensure_dispatch_slots(&self, kind: &str, slots: u32) -> Result<(), StorageError> {
        let all: Vec<i64> = (0..i64::from(slots)).collect();
        for chunk in all.chunks(MAX_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO dispatch_slots (kind, slot, lease_until_us) VALUES {} \
                 ON CONFLICT (kind, slot) DO NOTHING",
                self.placeholders(1, chunk.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for slot in chunk {
                query = query.bind(kind.to_owned()).bind(*slot).bind(0_i64);
            }
            query.execute(&self.pool).await?;
        }
        sqlx::query("DELETE FROM dispatch_slots WHERE kind = $1 AND slot >= $2")
            .bind(kind.to_owned())
            .bind(i64::from(slots))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claims one free (or lease-expired) slot of `kind` for `holder` until
    /// `lease_until_us`; `None` when every slot is taken. `now_us` decides expiry.
    pub async fn try_acquire_dispatch_slot(
        &self,
        kind: &str,
        holder: &str,
        now_us: i64,
        lease_until_us: i64,
    ) -> Result<Option<u32>, StorageError> {
        let lock = if self.sqlite {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        let sql = format!(
            "UPDATE dispatch_slots SET holder = $1, lease_until_us = $2 \
             WHERE kind = $3 AND (holder IS NULL OR lease_until_us < $4) AND slot = \
             (SELECT slot FROM dispatch_slots WHERE kind = $5 \
              AND (holder IS NULL OR lease_until_us < $6) ORDER BY slot LIMIT 1{lock}) \
             RETURNING slot"
        );
        let row = sqlx::query(&sql)
            .bind(holder.to_owned())
            .bind(lease_until_us)
            .bind(kind.to_owned())
            .bind(now_us)
            .bind(kind.to_owned())
            .bind(now_us)
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

    /// Frees `slot` of `kind` if `holder` still holds it; whether it did.
    pub async fn release_dispatch_slot(
        &self,
        kind: &str,
        slot: u32,
        holder: &str,
    ) -> Result<bool, StorageError> {
        let done = sqlx::query(
            "UPDATE dispatch_slots SET holder = NULL, lease_until_us = 0 \
             WHERE kind = $1 AND slot = $2 AND holder = $3",
        )
        .bind(kind.to_owned())
        .bind(i64::from(slot))
        .bind(holder.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many slots of `kind` are held (lease not run out) at `now_us`, and how many
    /// exist.
    pub async fn dispatch_slots_in_use(
        &self,
        kind: &str,
        now_us: i64,
    ) -> Result<(u32, u32), StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN holder IS NOT NULL AND lease_until_us >= $1 \
                          THEN 1 ELSE 0 END), 0) AS held \
             FROM dispatch_slots WHERE kind = $2",
        )
        .bind(now_us)
        .bind(kind.to_owned())
        .fetch_one(&self.pool)
        .await?;
        let total: i64 = row.try_get("total")?;
        let held: i64 = row.try_get("held")?;
        Ok((
            u32::try_from(held).unwrap_or(0),
            u32::try_from(total).unwrap_or(0),
        ))
    }

    /// Reserves the next start of a request of `kind`, one per `interval_us` across all
    /// replicas, if it is at most `max_wait_us` after `now_us`.
    pub async fn reserve_dispatch_start(
        &self,
        kind: &str,
        interval_us: i64,
        now_us: i64,
        max_wait_us: i64,
    ) -> Result<RateReservation, StorageError> {
        sqlx::query(
            "INSERT INTO dispatch_rate (kind, tat_us) VALUES ($1, $2) \
             ON CONFLICT (kind) DO NOTHING",
        )
        .bind(kind.to_owned())
        .bind(0_i64)
        .execute(&self.pool)
        .await?;
        let interval_us = interval_us.max(1);
        let row = sqlx::query(
            "UPDATE dispatch_rate \
             SET tat_us = (CASE WHEN tat_us > $1 THEN tat_us ELSE $2 END) + $3 \
             WHERE kind = $4 AND tat_us <= $5 RETURNING tat_us",
        )
        .bind(now_us)
        .bind(now_us)
        .bind(interval_us)
        .bind(kind.to_owned())
        .bind(now_us.saturating_add(max_wait_us.max(0)))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let tat: i64 = row.try_get("tat_us")?;
            return Ok(RateReservation::StartAt(tat - interval_us));
        }
        let tat: Option<i64> =
            sqlx::query_scalar("SELECT tat_us FROM dispatch_rate WHERE kind = $1")
                .bind(kind.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(RateReservation::Busy(tat.unwrap_or(now_us)))
    }
}
