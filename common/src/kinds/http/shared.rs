//! The limits every replica shares: `concurrency` (slots leased in the results database)
//! and `rate` (a GCRA row there). See [`crate::storage::flow`] for the SQL.
//!
//! A request needs a slot. When none is free the attempt polls, 5 ms doubling to 50 ms,
//! for at most [`WAIT_BOUND`] (measured from the start of the attempt, the local limit's
//! wait included); then the job is deferred: back to the broker for [`DEFER_BUSY`],
//! without consuming an attempt. Bounded so that a saturated kind does not hold the
//! worker's capacity (other kinds keep flowing); polling rather than notifications because
//! the only thing the replicas share is the database.
//!
//! A slot is leased for the kind's timeout + [`WAIT_BOUND`] + [`LEASE_MARGIN`]: a request
//! cannot outlive its timeout, so a slot still held after that belongs to a crashed (or
//! partitioned) worker and is taken over.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::time::Instant;

use crate::clock::now_micros;
use crate::storage::flow::RateReservation;
use crate::storage::{Storage, StorageError};

/// Longest wait for a slot (or a rate turn) before the job is deferred.
pub const WAIT_BOUND: Duration = Duration::from_secs(2);
/// First pause between slot polls; doubles up to [`POLL_MAX`].
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// Longest pause between slot polls.
pub const POLL_MAX: Duration = Duration::from_millis(50);
/// How long a job deferred for lack of a slot waits in the broker.
pub const DEFER_BUSY: Duration = Duration::from_secs(1);
/// Added to a lease beyond the longest a holder can need it.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Why no slot (or rate turn) was had.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Every slot stayed taken until the deadline.
    #[error("all {0} slots are taken (the concurrency cap across replicas)")]
    Concurrency(u32),
    /// The rate allows the next request only after this long.
    #[error("the rate limit allows the next request in {0:?}")]
    Rate(Duration),
    /// The database did not answer.
    #[error("the flow-control database failed: {0}")]
    Database(#[from] StorageError),
}

/// One kind's shared limits.
#[derive(Debug)]
pub struct SharedLimits {
    storage: Storage,
    kind: String,
    concurrency: u32,
    /// Microseconds between request starts, when `rate` is set.
    interval_us: Option<i64>,
    lease: Duration,
    ready: OnceCell<()>,
    /// Told when this process frees a slot, so one of its own waiters polls at once
    /// instead of at its next tick (waiters in other replicas still poll).
    freed: Arc<Notify>,
}

/// A held slot. [`SlotLease::release`] frees it; dropped unreleased (a cancelled attempt),
/// it is freed by a background task.
#[derive(Debug)]
pub struct SlotLease {
    storage: Storage,
    kind: String,
    slot: u32,
    holder: String,
    released: bool,
    freed: Arc<Notify>,
}

impl SharedLimits {
    /// Limits for `kind`: `concurrency` slots, `rate` requests per second (if any), and
    /// requests lasting at most `timeout`.
    pub fn new(
        storage: Storage,
        kind: &str,
        concurrency: u32,
        rate: Option<f64>,
        timeout: Duration,
    ) -> SharedLimits {
        let interval_us = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| (1_000_000.0 / r).round().clamp(1.0, i64::MAX as f64) as i64);
        SharedLimits {
            storage,
            kind: kind.to_owned(),
            concurrency,
            interval_us,
            lease: timeout + WAIT_BOUND + LEASE_MARGIN,
            ready: OnceCell::new(),
            freed: Arc::new(Notify::new()),
        }
    }

    /// Writes the kind's slot rows (once per process; later calls return at once).
    pub async fn prepare(&self) -> Result<(), StorageError> {
        self.ready
            .get_or_try_init(|| async {
                self.storage
                    .ensure_dispatch_slots(&self.kind, self.concurrency)
                    .await
            })
            .await
            .map(|_| ())
    }

    /// A slot and a rate turn, waiting until `deadline` at most.
    pub async fn acquire(&self, deadline: Instant) -> Result<SlotLease, Refusal> {
        self.prepare().await?;
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let lease_us = i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX);
        let mut pause = POLL_MIN;
        let slot = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before polling, so a release in between is not missed.
            freed.as_mut().enable();
            let now = now_micros();
            if let Some(slot) = self
                .storage
                .try_acquire_dispatch_slot(&self.kind, &holder, now, now.saturating_add(lease_us))
                .await?
            {
                break slot;
            }
            if Instant::now() + pause > deadline {
                return Err(Refusal::Concurrency(self.concurrency));
            }
            if tokio::time::timeout(pause, freed).await.is_ok() {
                // A slot of ours came free: try it now, and start the backoff again.
                pause = POLL_MIN;
            } else {
                pause = (pause * 2).min(POLL_MAX);
            }
        };
        let lease = SlotLease {
            storage: self.storage.clone(),
            kind: self.kind.clone(),
            slot,
            holder,
            released: false,
            freed: self.freed.clone(),
        };
        if let Some(interval_us) = self.interval_us {
            let now = now_micros();
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let max_wait_us = i64::try_from(max_wait.as_micros()).unwrap_or(i64::MAX);
            let reserved = self
                .storage
                .reserve_dispatch_start(&self.kind, interval_us, now, max_wait_us)
                .await;
            match reserved {
                Ok(RateReservation::StartAt(at)) => {
                    let wait = u64::try_from(at.saturating_sub(now_micros())).unwrap_or(0);
                    tokio::time::sleep(Duration::from_micros(wait)).await;
                }
                Ok(RateReservation::Busy(next)) => {
                    lease.release().await;
                    let wait = u64::try_from(next.saturating_sub(now)).unwrap_or(0);
                    return Err(Refusal::Rate(Duration::from_micros(wait)));
                }
                Err(e) => {
                    lease.release().await;
                    return Err(e.into());
                }
            }
        }
        Ok(lease)
    }
}

impl SlotLease {
    /// Frees the slot (a failure is logged: the lease runs out on its own).
    pub async fn release(mut self) {
        self.released = true;
        release(&self.storage, &self.kind, self.slot, &self.holder).await;
        self.freed.notify_one();
    }
}

async fn release(storage: &Storage, kind: &str, slot: u32, holder: &str) {
    if let Err(error) = storage.release_dispatch_slot(kind, slot, holder).await {
        tracing::warn!(kind, slot, %error, "could not free a dispatch slot; its lease will run out");
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (storage, kind, holder) = (
            self.storage.clone(),
            std::mem::take(&mut self.kind),
            std::mem::take(&mut self.holder),
        );
        let (slot, freed) = (self.slot, self.freed.clone());
        runtime.spawn(async move {
            release(&storage, &kind, slot, &holder).await;
            freed.notify_one();
        });
    }
}
