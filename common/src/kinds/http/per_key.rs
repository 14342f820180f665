//! Per-key limits across every replica: `concurrency_per_key` (slots leased in the results
//! database) and `rate_per_key` (a GCRA row per key there). See
//! [`crate::storage::dispatch_keys`] for the SQL and why the rows stay few.
//!
//! **Which key.** A job's `key` (given in the request or taken by the kind's `key_from` at
//! the ingress): its fairness key. A job without one is its own group: the per-key limits
//! never hold it back and write nothing for it (a row per keyless job would be a row per
//! job).
//!
//! **Before the kind's own limits.** An attempt takes its key's slot and rate turn first,
//! then the adaptive limit and the kind's shared slot ([`super::shared`]). So a job whose
//! key is at its cap holds no kind slot while it waits, and cannot keep other keys' jobs
//! from the target. Its wait is short ([`KEY_WAIT_BOUND`], asking again every
//! [`KEY_POLL_MIN`] doubling to [`KEY_POLL_MAX`]); past it the job is deferred to the
//! broker ([`KEY_DEFER_BUSY`], or until the key's next rate turn), no attempt consumed,
//! and other jobs take the worker's capacity meanwhile.
//!
//! **Each attempt asks the database itself** (one statement for the slot, one for the rate
//! turn, one to free the slot): unlike the kind's slots, there is no per-process pool of
//! key slots to hand over, which would be per-key state in each process.
//!
//! **Leases** are on the database clock, like the kind's slots: the kind's timeout +
//! [`KEY_WAIT_BOUND`] + the kind's wait bound + [`super::shared::LEASE_MARGIN`] — longer
//! than an attempt can hold a key slot. A crashed worker's slot is taken over after that.
//!
//! **Expired rows** (a crashed holder's slot, a rate row whose time has passed) are
//! deleted by each process at most every [`SWEEP_EVERY`] (after a release, at most
//! [`SWEEP_LIMIT`] rows of each table per statement) and by the ingress's retention pass.
//!
//! **Paused keys.** On a kind with per-key limits, a `429`/`503` with `Retry-After` to a
//! job with a key pauses that key only (for every replica, a row in the results database,
//! clamped like a kind's pause), not the kind: [`PerKeyLimits::pause`]. Every attempt of a
//! key checks for a pause first (one more statement) and is deferred while it runs.
//!
//! What it gives up: a rate turn reserved by an attempt that is then refused a kind slot
//! is spent (the key's next request waits one more interval: never over the rate); a key
//! slot is freed when the request ends, so under a full kind cap a key may wait on the
//! kind while holding its own slot (only its own jobs wait for that); every replica must
//! be given the same values (each enforces its own; the larger wins).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::shared::{LEASE_MARGIN, WAIT_BOUND};
use crate::kinds::flow_store::{key_hash, FlowStore, FlowStoreError, RateReservation};

/// Longest an attempt waits for its key's slot and rate turn before being deferred.
pub const KEY_WAIT_BOUND: Duration = Duration::from_millis(250);
/// First pause before asking again for a key slot; doubles up to [`KEY_POLL_MAX`].
pub const KEY_POLL_MIN: Duration = Duration::from_millis(5);
/// Longest pause before asking again for a key slot.
pub const KEY_POLL_MAX: Duration = Duration::from_millis(40);
/// How long a job deferred because its key's slots are all held waits in the broker.
pub const KEY_DEFER_BUSY: Duration = Duration::from_millis(500);
/// Shortest deferral for a key's rate.
pub const KEY_DEFER_RATE_MIN: Duration = Duration::from_millis(50);
/// How often (at most) a process deletes expired per-key rows.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most rows of each table one sweep deletes.
pub const SWEEP_LIMIT: u32 = 1_000;

/// Why a key's slot or rate turn was not had.
#[derive(Debug, thiserror::Error)]
pub enum KeyRefusal {
    /// Every slot of the key stayed held until the deadline.
    #[error("all {0} slots of this job's key are taken (concurrency_per_key across replicas)")]
    Concurrency(u32),
    /// The key's rate allows its next request only after this long.
    #[error("the rate limit of this job's key allows its next request in {0:?}")]
    Rate(Duration),
    /// The target asked this job's key to wait (a `429`/`503` with `Retry-After`) this
    /// much longer.
    #[error("the target asked this job's key to wait: paused for {0:?} more")]
    Paused(Duration),
    /// The database did not answer.
    #[error("the flow-control database failed: {0}")]
    Database(#[from] FlowStoreError),
}

/// One kind's per-key limits.
#[derive(Debug)]
pub struct PerKeyLimits {
    inner: Arc<Inner>,
    concurrency: Option<u32>,
    /// Microseconds between a key's request starts, when `rate_per_key` is set.
    interval_us: Option<i64>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn FlowStore>,
    kind: String,
    lease: Duration,
    /// Unique to this process and kind; holder tokens are it plus a sequence number.
    token: String,
    sequence: AtomicU64,
    last_sweep: Mutex<Option<Instant>>,
}

/// A key slot held (or nothing, when the kind has no `concurrency_per_key` or the job no
/// key). [`KeyLease::release`] frees it; dropped unreleased, it is freed the same way.
#[derive(Debug)]
pub struct KeyLease {
    inner: Arc<Inner>,
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    key_hash: String,
    slot: u32,
    holder: String,
}

impl PerKeyLimits {
    /// Limits for `kind`: `concurrency` slots per key, `rate` requests per second per key
    /// (either may be absent), for requests lasting at most `timeout`.
    pub fn new(
        store: Arc<dyn FlowStore>,
        kind: &str,
        concurrency: Option<u32>,
        rate: Option<f64>,
        timeout: Duration,
    ) -> PerKeyLimits {
        let interval_us = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| (1_000_000.0 / r).round().clamp(1.0, i64::MAX as f64) as i64);
        PerKeyLimits {
            inner: Arc::new(Inner {
                store,
                kind: kind.to_owned(),
                lease: timeout + KEY_WAIT_BOUND + WAIT_BOUND + LEASE_MARGIN,
                token: uuid::Uuid::new_v4().simple().to_string(),
                sequence: AtomicU64::new(0),
                last_sweep: Mutex::new(None),
            }),
            concurrency: concurrency.filter(|c| *c > 0),
            interval_us,
        }
    }

    /// Whether the kind has a per-key limit at all.
    pub fn is_active(&self) -> bool {
        self.concurrency.is_some() || self.interval_us.is_some()
    }

    /// A slot and a rate turn of `key` (none needed for a keyless job), waiting until
    /// `deadline` at most.
    pub async fn acquire(
        &self,
        key: Option<&str>,
        deadline: Instant,
    ) -> Result<KeyLease, KeyRefusal> {
        let mut lease = KeyLease {
            inner: self.inner.clone(),
            held: None,
        };
        let Some(key) = key.filter(|_| self.is_active()) else {
            return Ok(lease);
        };
        let hash = key_hash(key);
        if let Some(left) = self
            .inner
            .store
            .key_paused_for(&self.inner.kind, &hash)
            .await?
        {
            return Err(KeyRefusal::Paused(left));
        }
        if let Some(per_key) = self.concurrency {
            let holder = format!(
                "{}-{}",
                self.inner.token,
                self.inner.sequence.fetch_add(1, Ordering::Relaxed)
            );
            let mut pause = KEY_POLL_MIN;
            loop {
                let got = self
                    .inner
                    .store
                    .acquire_key_slot(&self.inner.kind, &hash, &holder, per_key, self.inner.lease)
                    .await?;
                if let Some(slot) = got {
                    lease.held = Some(Held {
                        key_hash: hash.clone(),
                        slot,
                        holder,
                    });
                    break;
                }
                if Instant::now() + pause > deadline {
                    return Err(KeyRefusal::Concurrency(per_key));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(KEY_POLL_MAX);
            }
        }
        if let Some(interval_us) = self.interval_us {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let reserved = self
                .inner
                .store
                .reserve_key_start(&self.inner.kind, &hash, interval_us, max_wait)
                .await;
            match reserved {
                Ok(RateReservation::StartAfter(wait)) => tokio::time::sleep(wait).await,
                Ok(RateReservation::Busy(wait)) => {
                    lease.release().await;
                    return Err(KeyRefusal::Rate(wait));
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

impl PerKeyLimits {
    /// Pauses `key` for `wait` for every replica (when the kind has per-key limits and the
    /// job a key: whether it did; otherwise the caller pauses the kind). A failed write is
    /// logged and still counts as done: the job is deferred all the same.
    pub async fn pause(&self, key: Option<&str>, wait: Duration) -> bool {
        let Some(key) = key.filter(|_| self.is_active()) else {
            return false;
        };
        if let Err(error) = self
            .inner
            .store
            .pause_key(&self.inner.kind, &key_hash(key), wait)
            .await
        {
            tracing::warn!(kind = %self.inner.kind, %error, "could not record a key's pause");
        }
        true
    }
}

impl Inner {
    async fn free(&self, held: Held) {
        if let Err(error) = self
            .store
            .release_key_slot(&self.kind, &held.key_hash, held.slot, &held.holder)
            .await
        {
            tracing::warn!(kind = %self.kind, %error, "could not free a per-key slot; its lease will run out");
        }
        self.maybe_sweep().await;
    }

    /// Deletes expired per-key rows if this process has not for [`SWEEP_EVERY`].
    async fn maybe_sweep(&self) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *last {
                Some(at) if at.elapsed() < SWEEP_EVERY => return,
                _ => *last = Some(Instant::now()),
            }
        }
        match self.store.sweep_dispatch_keys(SWEEP_LIMIT).await {
            Ok(swept) if swept.total() > 0 => {
                tracing::debug!(kind = %self.kind, ?swept, "deleted expired per-key rows")
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "sweeping per-key rows failed"),
        }
    }
}

impl KeyLease {
    /// Frees the key slot, if one is held (and now and then sweeps expired per-key rows).
    pub async fn release(mut self) {
        if let Some(held) = self.held.take() {
            self.inner.free(held).await;
        }
    }

    /// The slot held, if any (for tests).
    pub fn slot(&self) -> Option<u32> {
        self.held.as_ref().map(|h| h.slot)
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            runtime.spawn(async move { inner.free(held).await });
        }
    }
}
