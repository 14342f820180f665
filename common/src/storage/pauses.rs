//! Paused kinds in the database (`kind_pauses`), shared by every worker and ingress
//! replica and kept across restarts. One row per kind at most.
//!
//! A pause is set by the kind's **target** (a `429`/`503` with `Retry-After`, recorded by
//! the HTTP kind) or by an **operator** (`POST /kinds/{name}/pause`). An operator's pause
//! wins: a target's pause never replaces an operator's pause that has not ended, nor a
//! longer pause of its own. A resume deletes the row, whoever set it. Workers learn the
//! rows through a per-process cache ([`crate::kinds::pause::KindPauses`]), not per job.

use super::{Storage, StorageError};
pub use crate::kinds::flow_store::{KindPause, PauseSource};

impl Storage {
    /// Records `pause` for every replica. An operator's pause replaces any other; a
    /// target's pause is written only over no pause, an ended one, or a shorter one set by
    /// the target. Returns whether the row was written.
    pub async fn pause_kind(&self, pause: &KindPause) -> Result<bool, StorageError> {
        let sql = match pause.source {
            PauseSource::Operator => {
                "INSERT INTO kind_pauses (kind, paused_until_us, reason, source, set_at_us) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind) DO UPDATE SET paused_until_us = excluded.paused_until_us, \
                 reason = excluded.reason, source = excluded.source, set_at_us = excluded.set_at_us"
            }
            PauseSource::Target => {
                "INSERT INTO kind_pauses (kind, paused_until_us, reason, source, set_at_us) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (kind) DO UPDATE SET paused_until_us = excluded.paused_until_us, \
                 reason = excluded.reason, source = excluded.source, set_at_us = excluded.set_at_us \
                 WHERE kind_pauses.paused_until_us IS NOT NULL AND ( \
                   kind_pauses.paused_until_us <= excluded.set_at_us \
                   OR (kind_pauses.source = 'target' \
                       AND kind_pauses.paused_until_us < excluded.paused_until_us))"
            }
        };
        let done = sqlx::query(sql)
            .bind(&pause.kind)
            .bind(pause.until_us)
            .bind(&pause.reason)
            .bind(pause.source.as_str())
            .bind(pause.set_at_us)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends `kind`'s pause for every replica, whoever set it. Returns whether it had one
    /// (ended or not).
    pub async fn resume_kind(&self, kind: &str) -> Result<bool, StorageError> {
        let done = sqlx::query("DELETE FROM kind_pauses WHERE kind = $1")
            .bind(kind)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The pauses that hold at `now_us`, by kind name.
    pub async fn kind_pauses(&self, now_us: i64) -> Result<Vec<KindPause>, StorageError> {
        let rows: Vec<(String, Option<i64>, String, String, i64)> = sqlx::query_as(
            "SELECT kind, paused_until_us, reason, source, set_at_us FROM kind_pauses \
             WHERE paused_until_us IS NULL OR paused_until_us > $1 ORDER BY kind",
        )
        .bind(now_us)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, until_us, reason, source, set_at_us)| KindPause {
                kind,
                until_us,
                reason,
                source: PauseSource::parse(&source),
                set_at_us,
            })
            .collect())
    }
}
