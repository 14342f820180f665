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
//! A slot freed while another attempt of the same process waits is handed to it directly,
//! without a database round trip (which measured as the bottleneck: two statements per
//! request, each a commit), as long as the slot was taken from the database less than
//! [`HANDOFF_WINDOW`] ago; after that it goes back to the database, where every replica's
//! pollers compete for it (so one busy replica cannot keep the slots to itself).
//!
//! A slot is leased for the kind's timeout + [`HANDOFF_WINDOW`] + [`WAIT_BOUND`] +
//! [`LEASE_MARGIN`]: the last holder gets it within the hand-off window and sends within
//! its wait bound, and a request cannot outlive its timeout, so a slot still held after
//! that belongs to a crashed (or partitioned) worker and is taken over.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, OnceCell};
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
/// How long after its database acquisition a slot may still be handed to a waiter of the
/// same process instead of going back to the database.
pub const HANDOFF_WINDOW: Duration = Duration::from_secs(1);
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
    /// This process's attempts waiting for a slot, oldest first.
    waiters: Waiters,
}

/// Where a freed slot is handed to a waiting attempt of the same process.
type Waiters = Arc<Mutex<VecDeque<oneshot::Sender<SlotLease>>>>;

/// A held slot. [`SlotLease::release`] frees it; dropped unreleased (a cancelled attempt),
/// it is freed by a background task.
#[derive(Debug)]
pub struct SlotLease {
    storage: Storage,
    kind: String,
    slot: u32,
    holder: String,
    released: bool,
    /// When the slot was taken from the database (kept across hand-offs).
    acquired: Instant,
    waiters: Waiters,
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
            lease: timeout + HANDOFF_WINDOW + WAIT_BOUND + LEASE_MARGIN,
            ready: OnceCell::new(),
            waiters: Arc::default(),
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
        let lease = self.slot(deadline).await?;
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

    /// A slot: from the database, or handed over by an attempt of this process.
    async fn slot(&self, deadline: Instant) -> Result<SlotLease, Refusal> {
        let (handed, mut handoff) = oneshot::channel();
        lock(&self.waiters).push_back(handed);
        let outcome = self.poll(deadline, &mut handoff).await;
        // No more hand-offs to this attempt; one that raced in is passed on.
        handoff.close();
        let extra = handoff.try_recv().ok();
        lock(&self.waiters).retain(|waiter| !waiter.is_closed());
        match (outcome, extra) {
            (Ok(lease), Some(extra)) => {
                extra.release().await;
                Ok(lease)
            }
            (Err(_), Some(handed)) => Ok(handed),
            (outcome, None) => outcome,
        }
    }

    async fn poll(
        &self,
        deadline: Instant,
        handoff: &mut oneshot::Receiver<SlotLease>,
    ) -> Result<SlotLease, Refusal> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let lease_us = i64::try_from(self.lease.as_micros()).unwrap_or(i64::MAX);
        let mut pause = POLL_MIN;
        loop {
            if let Ok(lease) = handoff.try_recv() {
                return Ok(lease);
            }
            let now = now_micros();
            if let Some(slot) = self
                .storage
                .try_acquire_dispatch_slot(&self.kind, &holder, now, now.saturating_add(lease_us))
                .await?
            {
                return Ok(SlotLease {
                    storage: self.storage.clone(),
                    kind: self.kind.clone(),
                    slot,
                    holder,
                    released: false,
                    acquired: Instant::now(),
                    waiters: self.waiters.clone(),
                });
            }
            if Instant::now() + pause > deadline {
                return Err(Refusal::Concurrency(self.concurrency));
            }
            if let Ok(Ok(lease)) = tokio::time::timeout(pause, &mut *handoff).await {
                return Ok(lease);
            }
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SlotLease {
    /// Frees the slot: to a waiting attempt of this process while the hand-off window
    /// lasts, else to the database (a failure is logged: the lease runs out on its own).
    pub async fn release(mut self) {
        if self.acquired.elapsed() < HANDOFF_WINDOW {
            let waiters = self.waiters.clone();
            let mut lease = self;
            loop {
                let Some(waiter) = lock(&waiters).pop_front() else {
                    break;
                };
                match waiter.send(lease) {
                    Ok(()) => return,
                    // That attempt stopped waiting: try the next.
                    Err(back) => lease = back,
                }
            }
            self = lease;
        }
        self.released = true;
        release(&self.storage, &self.kind, self.slot, &self.holder).await;
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
        let slot = self.slot;
        runtime.spawn(async move { release(&storage, &kind, slot, &holder).await });
    }
}
