//! Cross-replica flow control state for HTTP kinds: concurrency slots and a rate row, in the
//! results database every worker replica shares.
//!
//! **Kinds** (table `dispatch_kinds`): the `concurrency` each kind was set up with, written by
//! the first replica. A replica configured differently is refused while any slot of the kind
//! is held ([`SlotsSetup::Mismatch`]); when none is held (every replica stopped or idle) its
//! value is adopted for all ([`SlotsSetup::Adopted`]). Slot rows in use are never deleted
//! and never re-inserted free.
//!
//! **Slots** (table `dispatch_slots`): a kind with `concurrency = N` has N rows, written at
//! worker start-up. Sending a request takes one: a single `WITH picked AS (SELECT … LIMIT n)
//! UPDATE …` claims up to n slots that are free or whose lease ran out, writing a holder token
//! and a lease end. On PostgreSQL the inner select carries `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers pick different rows instead of queueing on one; the outer `WHERE`
//! re-checks that the row is still free, so two claimers can never both win one slot. On
//! SQLite the statement is atomic by itself (one writer at a time). A release clears the row
//! only if it still carries the caller's token, so a release that comes after the lease ran
//! out (and someone else took the slot) frees nothing.
//!
//! **Rate** (table `dispatch_rate`): GCRA without burst. `tat_us` is the earliest start of
//! the next request; a reservation moves it one interval on, atomically, only if the caller
//! would not wait longer than it is willing to.
//!
//! **Time** is the database's clock, read inside each statement (PostgreSQL's
//! `statement_timestamp()`; on SQLite, `julianday('now')`, the clock of the machine that has
//! the file, which every process sharing it shares): a lease starts when the statement runs,
//! i.e. once the connection is held, and replicas whose own clocks disagree still agree on
//! when a lease ends. Stored values are µs since the epoch.

use std::time::Duration;

use sqlx::Row;

use super::{Storage, StorageError, MAX_ROWS_PER_STATEMENT};
pub use crate::kinds::flow_store::{RateReservation, SlotsSetup};

impl Storage {
    /// The database clock as a µs-since-the-epoch SQL expression, stable within a statement.
    pub(crate) fn now_sql(&self) -> &'static str {
        if self.sqlite {
            "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"
        } else {
            "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000 AS BIGINT)"
        }
    }

    /// The database's clock (µs since the epoch): the one leases are measured on.
    pub async fn dispatch_clock_us(&self) -> Result<i64, StorageError> {
        let now: i64 = sqlx::query_scalar(&format!("SELECT {}", self.now_sql()))
            .fetch_one(&self.pool)
            .await?;
        Ok(now)
    }

    /// Records `kind`'s `concurrency` (if it is the first) and makes its `concurrency` slot
    /// rows (0..concurrency) exist. A different recorded value is adopted only while no slot
    /// of the kind is held; otherwise nothing changes and [`SlotsSetup::Mismatch`] says so.
    /// A held slot row is never deleted or overwritten. Safe to run from several replicas at
    /// once (on PostgreSQL the kind's row is locked for the duration).
    pub async fn ensure_dispatch_slots(
        &self,
        kind: &str,
        concurrency: u32,
    ) -> Result<SlotsSetup, StorageError> {
        let now = self.now_sql();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO dispatch_kinds (kind, concurrency) VALUES ($1, $2) \
             ON CONFLICT (kind) DO NOTHING",
        )
        .bind(kind.to_owned())
        .bind(i64::from(concurrency))
        .execute(&mut *tx)
        .await?;
        let lock = if self.sqlite { "" } else { " FOR UPDATE" };
        let recorded: i64 = sqlx::query_scalar(&format!(
            "SELECT concurrency FROM dispatch_kinds WHERE kind = $1{lock}"
        ))
        .bind(kind.to_owned())
        .fetch_one(&mut *tx)
        .await?;
        let recorded = u32::try_from(recorded).unwrap_or(0);
        let mut setup = SlotsSetup::Ready;
        if recorded != concurrency {
            let held: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM dispatch_slots WHERE kind = $1 \
                 AND holder IS NOT NULL AND lease_until_us >= {now}"
            ))
            .bind(kind.to_owned())
            .fetch_one(&mut *tx)
            .await?;
            if held > 0 {
                tx.rollback().await?;
                return Ok(SlotsSetup::Mismatch {
                    recorded,
                    held: u32::try_from(held).unwrap_or(u32::MAX),
                });
            }
            setup = SlotsSetup::Adopted { previous: recorded };
        }
        // Rows beyond the size go, but only free ones; one taken meanwhile stays, and then
        // nothing is changed.
        sqlx::query(&format!(
            "DELETE FROM dispatch_slots WHERE kind = $1 AND slot >= $2 \
             AND (holder IS NULL OR lease_until_us < {now})"
        ))
        .bind(kind.to_owned())
        .bind(i64::from(concurrency))
        .execute(&mut *tx)
        .await?;
        let beyond: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dispatch_slots WHERE kind = $1 AND slot >= $2",
        )
        .bind(kind.to_owned())
        .bind(i64::from(concurrency))
        .fetch_one(&mut *tx)
        .await?;
        if beyond > 0 {
            tx.rollback().await?;
            return Ok(SlotsSetup::Mismatch {
                recorded,
                held: u32::try_from(beyond).unwrap_or(u32::MAX),
            });
        }
        let all: Vec<i64> = (0..i64::from(concurrency)).collect();
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
            query.execute(&mut *tx).await?;
        }
        if recorded != concurrency {
            sqlx::query("UPDATE dispatch_kinds SET concurrency = $1 WHERE kind = $2")
                .bind(i64::from(concurrency))
                .bind(kind.to_owned())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(setup)
    }

    /// Claims up to `want` free (or lease-expired) slots of `kind` for `holder`, each leased
    /// for `lease` from now on the database clock; the slots got (none when every slot is
    /// taken).
    pub async fn acquire_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        want: u32,
        lease: Duration,
    ) -> Result<Vec<u32>, StorageError> {
        if want == 0 {
            return Ok(Vec::new());
        }
        let now = self.now_sql();
        let lock = if self.sqlite {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        // The pick is materialised: as a plain `IN (subquery)`, PostgreSQL may rescan a
        // `LIMIT … SKIP LOCKED` subquery and claim more than `want` rows.
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT slot FROM dispatch_slots WHERE kind = $1 \
              AND (holder IS NULL OR lease_until_us < {now}) ORDER BY slot LIMIT $2{lock}) \
             UPDATE dispatch_slots SET holder = $3, lease_until_us = {now} + $4 \
             WHERE kind = $5 AND (holder IS NULL OR lease_until_us < {now}) \
             AND slot IN (SELECT slot FROM picked) \
             RETURNING slot"
        );
        let rows = sqlx::query(&sql)
            .bind(kind.to_owned())
            .bind(i64::from(want))
            .bind(holder.to_owned())
            .bind(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX / 2))
            .bind(kind.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let slot: i64 = row.try_get("slot")?;
                Ok(u32::try_from(slot).unwrap_or(u32::MAX))
            })
            .collect()
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

    /// Frees those of `slots` of `kind` that `holder` still holds, in one statement; how
    /// many it freed.
    pub async fn release_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        slots: &[u32],
    ) -> Result<u64, StorageError> {
        let mut freed = 0;
        for chunk in slots.chunks(MAX_ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE dispatch_slots SET holder = NULL, lease_until_us = 0 \
                 WHERE kind = {} AND holder = {} AND slot IN ({})",
                self.list(1, 1),
                self.list(2, 1),
                self.list(3, chunk.len())
            );
            let mut query = sqlx::query(&sql)
                .bind(kind.to_owned())
                .bind(holder.to_owned());
            for slot in chunk {
                query = query.bind(i64::from(*slot));
            }
            freed += query.execute(&self.pool).await?.rows_affected();
        }
        Ok(freed)
    }

    /// How many slots of `kind` are held (lease not run out, on the database clock), and how
    /// many exist.
    pub async fn dispatch_slots_in_use(&self, kind: &str) -> Result<(u32, u32), StorageError> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN holder IS NOT NULL AND lease_until_us >= {} \
                          THEN 1 ELSE 0 END), 0) AS held \
             FROM dispatch_slots WHERE kind = $1",
            self.now_sql()
        ))
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

    /// The concurrency recorded for `kind`, if any replica set it up.
    pub async fn dispatch_concurrency(&self, kind: &str) -> Result<Option<u32>, StorageError> {
        let recorded: Option<i64> =
            sqlx::query_scalar("SELECT concurrency FROM dispatch_kinds WHERE kind = $1")
                .bind(kind.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        Ok(recorded.map(|c| u32::try_from(c).unwrap_or(0)))
    }

    /// Reserves the next start of a request of `kind`, one per `interval_us` across all
    /// replicas (database clock), if it is at most `max_wait` away.
    pub async fn reserve_dispatch_start(
        &self,
        kind: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, StorageError> {
        let now = self.now_sql();
        sqlx::query(
            "INSERT INTO dispatch_rate (kind, tat_us) VALUES ($1, $2) \
             ON CONFLICT (kind) DO NOTHING",
        )
        .bind(kind.to_owned())
        .bind(0_i64)
        .execute(&self.pool)
        .await?;
        let interval_us = interval_us.max(1);
        let max_wait_us = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX / 2);
        let wait: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE dispatch_rate \
             SET tat_us = (CASE WHEN tat_us > {now} THEN tat_us ELSE {now} END) + $1 \
             WHERE kind = $2 AND tat_us <= {now} + $3 RETURNING tat_us - $4 - {now}"
        ))
        .bind(interval_us)
        .bind(kind.to_owned())
        .bind(max_wait_us)
        .bind(interval_us)
        .fetch_optional(&self.pool)
        .await?;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        if let Some(wait) = wait {
            return Ok(RateReservation::StartAfter(micros(wait)));
        }
        let busy: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT tat_us - {now} FROM dispatch_rate WHERE kind = $1"
        ))
        .bind(kind.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(RateReservation::Busy(micros(busy.unwrap_or(0))))
    }
}
