//! The limits every replica shares: `concurrency` (slots leased in the results database)
//! and `rate` (a GCRA row there). See [`crate::storage::flow`] for the SQL.
//!
//! **One acquirer per kind per process.** Attempts never query the database for a slot
//! themselves: they queue in this process, and a single task per kind (the poller) claims
//! as many slots as there are queued attempts in one statement, then hands them out. While
//! attempts wait and no slot is free, the poller asks again every [`POLL_MIN`] doubling to
//! [`POLL_MAX`]; with nobody waiting it sleeps until an attempt arrives. So a saturated
//! kind costs each replica at most one poll statement per [`POLL_MAX`] (not one per waiting
//! attempt), and the pool the result commits use stays theirs. An attempt waits for at most
//! [`WAIT_BOUND`] (from the start of the attempt, the local limit's wait included); then the
//! job is deferred: back to the broker for [`DEFER_BUSY`], without consuming an attempt.
//! Polling rather than notifications because the only thing the replicas share is the
//! database (and sqlx's `Any` driver has no `LISTEN`).
//!
//! **Slots stay in the process while they are young.** A freed slot goes straight to a
//! waiting attempt of this process, or, when none waits, stays idle in the process for
//! [`IDLE_HOLD`] for the next attempt: no database round trip either way, which is what
//! keeps an HTTP kind close to a kind without I/O and refills the cap at once when a wave
//! of requests ends. Both only while the slot was claimed from the database less than
//! [`HANDOFF_WINDOW`] ago; after that it goes back to the database, where every replica's
//! poller competes for it on the same cadence (so one busy replica cannot keep the slots
//! to itself).
//!
//! **Leases are on the database clock**, starting when the claiming statement runs (the
//! connection held): a slot is leased for the kind's timeout + [`HANDOFF_WINDOW`] +
//! [`WAIT_BOUND`] + [`LEASE_MARGIN`]. Its age here is measured from before the statement
//! was sent (so it is never younger than the lease), the last holder gets it within the
//! hand-off window and sends within its wait bound, and a request cannot outlive its
//! timeout: a slot still held after its lease belongs to a crashed (or partitioned) worker
//! and is taken over. Clocks of replicas play no part.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Notify, OnceCell};
use tokio::time::Instant;

use crate::kinds::flow_store::{FlowStore, FlowStoreError, RateReservation, SlotsSetup};

/// Longest wait for a slot (or a rate turn) before the job is deferred.
pub const WAIT_BOUND: Duration = Duration::from_secs(2);
/// First pause between slot polls while attempts wait; doubles up to [`POLL_MAX`].
pub const POLL_MIN: Duration = Duration::from_millis(5);
/// Longest pause between slot polls while attempts wait.
pub const POLL_MAX: Duration = Duration::from_millis(20);
/// How long a job deferred for lack of a slot waits in the broker.
pub const DEFER_BUSY: Duration = Duration::from_secs(1);
/// How long after its database acquisition a slot may still be handed to another attempt
/// of the same process instead of going back to the database. Longer than a 1 s request
/// plus its dispatch, so the founding story's second wave of 1 s requests takes the first
/// wave's slots in memory (with 1 s, every slot went back to the database between the waves
/// and the cap refilled in 16–40 ms instead of 3–19 ms); short enough that a busy replica
/// returns its slots to the other replicas' pollers every 2 s.
pub const HANDOFF_WINDOW: Duration = Duration::from_secs(2);
/// How long a freed slot that no attempt of this process wants stays with the process
/// before going back to the database.
pub const IDLE_HOLD: Duration = Duration::from_millis(20);
/// Added to a lease beyond the longest a holder can need it.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Why no slot (or rate turn) was had.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Every slot stayed taken until the deadline.
    #[error("all {0} slots are taken (the concurrency cap across replicas)")]
    Concurrency(u32),
    /// The rate limit allows the next request only after this long.
    #[error("the rate limit allows the next request in {0:?}")]
    Rate(Duration),
    /// The database did not answer.
    #[error("the flow-control database failed: {0}")]
    Database(Arc<FlowStoreError>),
    /// The kind's slots could not be set up (see [`PrepareError`]).
    #[error("the flow-control database refused this kind's set-up: {0}")]
    Setup(String),
}

impl From<FlowStoreError> for Refusal {
    fn from(error: FlowStoreError) -> Refusal {
        Refusal::Database(Arc::new(error))
    }
}

/// Why a kind's slots could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The database did not answer.
    #[error("setting up the dispatch slots in the results database failed: {0}")]
    Database(#[from] FlowStoreError),
    /// Another replica set the kind up with another `concurrency` and is using it.
    #[error(
        "concurrency = {configured} here, but the results database records concurrency = \
         {recorded} for this kind, set by another replica, and {held} of its slots are in \
         use: give every replica the same concurrency (a new value is adopted when a \
         replica starts while no slot of the kind is held)"
    )]
    Mismatch {
        /// This process's value.
        configured: u32,
        /// The value in the database.
        recorded: u32,
        /// Slots held when it looked.
        held: u32,
    },
}

/// One kind's shared limits.
#[derive(Debug)]
pub struct SharedLimits {
    inner: Arc<Inner>,
    /// Microseconds between request starts, when `rate` is set.
    interval_us: Option<i64>,
    ready: OnceCell<()>,
    poller: OnceLock<()>,
}

/// What the attempts, the leases and the poller of one kind share.
#[derive(Debug)]
struct Inner {
    store: Arc<dyn FlowStore>,
    kind: String,
    concurrency: u32,
    lease: Duration,
    /// Unique to this process and kind; holder tokens are it plus a sequence number.
    token: String,
    sequence: AtomicU64,
    state: Mutex<State>,
    /// Wakes the poller: an attempt queued when none was, a slot went idle, or closing.
    wake: Arc<Notify>,
    closed: AtomicBool,
}

/// What a waiting attempt receives.
type Handed = Result<SlotLease, Arc<FlowStoreError>>;

#[derive(Debug, Default)]
struct State {
    /// Attempts waiting for a slot, oldest first.
    waiters: VecDeque<oneshot::Sender<Handed>>,
    /// Slots this process holds that no attempt uses, with when they were freed.
    idle: Vec<(Slot, Instant)>,
    /// Slots to free in the database, by the poller in one statement per holder token.
    returning: Vec<Slot>,
}

/// A slot held in the database by this process.
#[derive(Debug)]
struct Slot {
    slot: u32,
    holder: Arc<str>,
    /// Just before the statement that claimed it was sent (kept across hand-offs).
    acquired: Instant,
}

impl Slot {
    fn young(&self) -> bool {
        self.acquired.elapsed() < HANDOFF_WINDOW
    }
}

/// A held slot. [`SlotLease::release`] frees it; dropped unreleased (a cancelled attempt),
/// it is freed the same way.
#[derive(Debug)]
pub struct SlotLease {
    inner: Arc<Inner>,
    slot: Option<Slot>,
}

impl SharedLimits {
    /// Limits for `kind`: `concurrency` slots, `rate` requests per second (if any), and
    /// requests lasting at most `timeout`.
    pub fn new(
        store: Arc<dyn FlowStore>,
        kind: &str,
        concurrency: u32,
        rate: Option<f64>,
        timeout: Duration,
    ) -> SharedLimits {
        let interval_us = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| (1_000_000.0 / r).round().clamp(1.0, i64::MAX as f64) as i64);
        SharedLimits {
            inner: Arc::new(Inner {
                store,
                kind: kind.to_owned(),
                concurrency,
                lease: timeout + HANDOFF_WINDOW + WAIT_BOUND + LEASE_MARGIN,
                token: uuid::Uuid::new_v4().simple().to_string(),
                sequence: AtomicU64::new(0),
                state: Mutex::default(),
                wake: Arc::new(Notify::new()),
                closed: AtomicBool::new(false),
            }),
            interval_us,
            ready: OnceCell::new(),
            poller: OnceLock::new(),
        }
    }

    /// Records the kind's concurrency and writes its slot rows (once per process; later
    /// calls return at once). Refused when another replica uses another concurrency (see
    /// [`SlotsSetup`]).
    pub async fn prepare(&self) -> Result<(), PrepareError> {
        let inner = &self.inner;
        self.ready
            .get_or_try_init(|| async {
                match inner
                    .store
                    .ensure_dispatch_slots(&inner.kind, inner.concurrency)
                    .await?
                {
                    SlotsSetup::Ready => Ok(()),
                    SlotsSetup::Adopted { previous } => {
                        tracing::warn!(
                            kind = %inner.kind,
                            previous,
                            concurrency = inner.concurrency,
                            "no slot of this kind was in use: its concurrency across all \
                             replicas is now this process's"
                        );
                        Ok(())
                    }
                    SlotsSetup::Mismatch { recorded, held } => Err(PrepareError::Mismatch {
                        configured: inner.concurrency,
                        recorded,
                        held,
                    }),
                }
            })
            .await
            .map(|_| ())
    }

    /// A slot and a rate turn, waiting until `deadline` at most.
    pub async fn acquire(&self, deadline: Instant) -> Result<SlotLease, Refusal> {
        self.prepare().await.map_err(|e| match e {
            PrepareError::Database(e) => Refusal::from(e),
            mismatch => Refusal::Setup(mismatch.to_string()),
        })?;
        let lease = self.slot(deadline).await?;
        if let Some(interval_us) = self.interval_us {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let reserved = self
                .inner
                .store
                .reserve_dispatch_start(&self.inner.kind, interval_us, max_wait)
                .await;
            match reserved {
                Ok(RateReservation::StartAfter(wait)) => tokio::time::sleep(wait).await,
                Ok(RateReservation::Busy(wait)) => {
                    lease.release().await;
                    return Err(Refusal::Rate(wait));
                }
                Err(e) => {
                    lease.release().await;
                    return Err(e.into());
                }
            }
        }
        Ok(lease)
    }

    /// A slot: idle in this process, or handed over by the poller or a finishing attempt.
    async fn slot(&self, deadline: Instant) -> Result<SlotLease, Refusal> {
        self.poller.get_or_init(|| {
            tokio::spawn(poll(Arc::downgrade(&self.inner), self.inner.wake.clone()));
        });
        let mut stale = Vec::new();
        let mut handoff = {
            let mut state = lock(&self.inner.state);
            let mut young = None;
            while let Some((slot, _)) = state.idle.pop() {
                if slot.young() {
                    young = Some(slot);
                    break;
                }
                stale.push(slot);
            }
            let returned = !stale.is_empty();
            state.returning.append(&mut stale);
            if returned {
                self.inner.wake.notify_one();
            }
            match young {
                Some(slot) => return Ok(self.inner.lease(slot)),
                None => {
                    let (handed, handoff) = oneshot::channel();
                    if state.waiters.is_empty() {
                        self.inner.wake.notify_one();
                    }
                    state.waiters.push_back(handed);
                    handoff
                }
            }
        };
        let handed = match tokio::time::timeout_at(deadline, &mut handoff).await {
            Ok(Ok(handed)) => Some(handed),
            Ok(Err(_)) => None,
            Err(_) => {
                // No more hand-offs to this attempt; one that raced in is used.
                handoff.close();
                handoff.try_recv().ok()
            }
        };
        match handed {
            Some(Ok(lease)) => Ok(lease),
            Some(Err(error)) => Err(Refusal::Database(error)),
            None => Err(Refusal::Concurrency(self.inner.concurrency)),
        }
    }
}

impl Drop for SharedLimits {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }
}

/// The poller of one kind (see the module docs): runs until the kind is dropped.
async fn poll(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut pause = POLL_MIN;
    loop {
        let Some(limits) = inner.upgrade() else {
            return;
        };
        if limits.closed.load(Ordering::SeqCst) {
            let all: Vec<Slot> = {
                let mut state = lock(&limits.state);
                let mut all: Vec<Slot> = state.idle.drain(..).map(|(s, _)| s).collect();
                all.append(&mut state.returning);
                all
            };
            limits.release_to_database(all).await;
            return;
        }
        // Slots idle too long (or too old) go back to the database, with those returned.
        let (stale, want, next_idle) = {
            let mut state = lock(&limits.state);
            let (keep, stale): (Vec<_>, Vec<_>) = state
                .idle
                .drain(..)
                .partition(|(slot, since)| slot.young() && since.elapsed() < IDLE_HOLD);
            state.idle = keep;
            let mut returning = std::mem::take(&mut state.returning);
            returning.extend(stale.into_iter().map(|(slot, _)| slot));
            state.waiters.retain(|waiter| !waiter.is_closed());
            let next_idle = state.idle.iter().map(|(_, since)| *since + IDLE_HOLD).min();
            let want = u32::try_from(state.waiters.len()).unwrap_or(u32::MAX);
            (returning, want.min(limits.concurrency), next_idle)
        };
        let returned = !stale.is_empty();
        limits.release_to_database(stale).await;
        if returned && want > 0 {
            // Other replicas' pollers get a chance at what was just freed.
            drop(limits);
            tokio::time::sleep(POLL_MIN).await;
            continue;
        }
        if want == 0 {
            drop(limits);
            match next_idle {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, wake.notified()).await;
                }
                None => wake.notified().await,
            }
            pause = POLL_MIN;
            continue;
        }
        let holder: Arc<str> = format!(
            "{}-{}",
            limits.token,
            limits.sequence.fetch_add(1, Ordering::Relaxed)
        )
        .into();
        let sent = Instant::now();
        match limits
            .store
            .acquire_dispatch_slots(&limits.kind, &holder, want, limits.lease)
            .await
        {
            Ok(slots) => {
                let got = slots.len();
                let mut back = Vec::new();
                for slot in slots {
                    let slot = Slot {
                        slot,
                        holder: holder.clone(),
                        acquired: sent,
                    };
                    back.extend(limits.give(slot));
                }
                limits.release_to_database(back).await;
                if got > 0 {
                    pause = POLL_MIN;
                }
                if u32::try_from(got).unwrap_or(u32::MAX) >= want {
                    // Everyone served; more may have queued meanwhile.
                    continue;
                }
            }
            Err(error) => limits.fail_waiters(Arc::new(error)),
        }
        drop(limits);
        let _ = tokio::time::timeout(pause, wake.notified()).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

impl Inner {
    fn lease(self: &Arc<Self>, slot: Slot) -> SlotLease {
        SlotLease {
            inner: self.clone(),
            slot: Some(slot),
        }
    }

    /// Gives a slot to the oldest waiting attempt, or keeps it idle, or (too old) queues it
    /// for the poller to free in the database; returns it when the caller must free it
    /// itself (the kind is closing).
    fn give(self: &Arc<Self>, mut slot: Slot) -> Option<Slot> {
        if self.closed.load(Ordering::SeqCst) {
            return Some(slot);
        }
        if !slot.young() {
            let mut state = lock(&self.state);
            if state.returning.is_empty() {
                self.wake.notify_one();
            }
            state.returning.push(slot);
            return None;
        }
        loop {
            let waiter = {
                let mut state = lock(&self.state);
                match state.waiters.pop_front() {
                    Some(waiter) => waiter,
                    None => {
                        if state.idle.is_empty() {
                            self.wake.notify_one();
                        }
                        state.idle.push((slot, Instant::now()));
                        return None;
                    }
                }
            };
            match waiter.send(Ok(self.lease(slot))) {
                Ok(()) => return None,
                // That attempt stopped waiting: try the next.
                Err(back) => {
                    let mut lease = back.ok()?;
                    slot = lease.slot.take()?;
                }
            }
        }
    }

    fn fail_waiters(&self, error: Arc<FlowStoreError>) {
        let waiters: Vec<_> = lock(&self.state).waiters.drain(..).collect();
        for waiter in waiters {
            // A lease is never sent back here: only an error was.
            let _ = waiter.send(Err(error.clone()));
        }
    }

    /// Frees slots in the database, one statement per holder token (a failure is logged:
    /// the leases run out on their own).
    async fn release_to_database(&self, mut slots: Vec<Slot>) {
        slots.sort_by(|a, b| a.holder.cmp(&b.holder));
        for group in slots.chunk_by(|a, b| a.holder == b.holder) {
            let numbers: Vec<u32> = group.iter().map(|s| s.slot).collect();
            if let Err(error) = self
                .store
                .release_dispatch_slots(&self.kind, &group[0].holder, &numbers)
                .await
            {
                tracing::warn!(kind = %self.kind, slots = numbers.len(), %error, "could not free dispatch slots; their leases will run out");
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SlotLease {
    /// Frees the slot: to a waiting attempt of this process, or idle in it, while the slot
    /// is young; else back to the database (by the poller, batched with other returns).
    pub async fn release(mut self) {
        if let Some(slot) = self.slot.take() {
            if let Some(back) = self.inner.give(slot) {
                self.inner.release_to_database(vec![back]).await;
            }
        }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        if let Some(back) = self.inner.give(slot) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let inner = self.inner.clone();
                runtime.spawn(async move { inner.release_to_database(vec![back]).await });
            }
        }
    }
}
