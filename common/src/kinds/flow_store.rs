//! What the HTTP kinds' flow control needs from the database every replica shares, as one
//! narrow trait: shared concurrency slots, rate reservations, per-key slots, rates and
//! pauses, and kind pauses. [`crate::storage::Storage`] implements it (the SQL lives in
//! `storage::flow`, `storage::dispatch_keys` and `storage::pauses`).
//!
//! The kinds see this trait and its value types, never the storage: so `kinds` does not
//! depend on `storage`, and `storage` (which stores jobs) may depend on `kinds` without an
//! import circle. A test can hand a kind any store.

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// A failure of the flow-control store (the database did not answer, or refused).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FlowStoreError(Box<dyn std::error::Error + Send + Sync>);

impl FlowStoreError {
    /// Wraps a store's own error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> FlowStoreError {
        FlowStoreError(Box::new(error))
    }
}

/// What a rate reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateReservation {
    /// The request may start after this wait (zero: now).
    StartAfter(Duration),
    /// Too busy: the earliest start is this far ahead, later than the caller would wait.
    Busy(Duration),
}

/// What [`FlowStore::ensure_dispatch_slots`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsSetup {
    /// The recorded concurrency is the one asked for; every slot row exists.
    Ready,
    /// Another concurrency was recorded but no slot was held: the one asked for is now
    /// recorded and the slot rows resized.
    Adopted {
        /// The concurrency recorded before.
        previous: u32,
    },
    /// Another concurrency is recorded and slots are held: nothing was changed.
    Mismatch {
        /// The concurrency recorded in the database.
        recorded: u32,
        /// Slots held when it looked.
        held: u32,
    },
}

/// Who paused a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseSource {
    /// The target answered `429`/`503` with `Retry-After`.
    Target,
    /// An operator, through the API.
    Operator,
}

impl PauseSource {
    /// `target` or `operator`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            PauseSource::Target => "target",
            PauseSource::Operator => "operator",
        }
    }

    /// The source named `text` (what [`PauseSource::as_str`] wrote); anything else counts
    /// as an operator's (the pause a target's `Retry-After` cannot replace).
    pub fn parse(text: &str) -> PauseSource {
        if text == "target" {
            PauseSource::Target
        } else {
            PauseSource::Operator
        }
    }
}

/// One kind's pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindPause {
    /// The kind.
    pub kind: String,
    /// When it ends (µs since the epoch); `None`: when resumed.
    pub until_us: Option<i64>,
    /// Why, for people (the target's status, or the operator's words).
    pub reason: String,
    /// Who set it.
    pub source: PauseSource,
    /// When it was set (µs since the epoch).
    pub set_at_us: i64,
}

impl KindPause {
    /// Whether the pause still holds at `now_us`.
    pub fn holds_at(&self, now_us: i64) -> bool {
        self.until_us.is_none_or(|until| until > now_us)
    }
}

/// Rows deleted by one [`FlowStore::sweep_dispatch_keys`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySweep {
    /// Slot rows whose lease had run out.
    pub slots: u64,
    /// Rate rows whose time had passed.
    pub rates: u64,
    /// Key pauses that had ended.
    pub pauses: u64,
}

impl KeySweep {
    /// Rows deleted in all.
    pub fn total(&self) -> u64 {
        self.slots + self.rates + self.pauses
    }
}

/// The stored form of a fairness key: SHA-256 of its bytes, lower-case hex.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The shared state behind the HTTP kinds' flow control. Every time is measured on the
/// store's own clock, so replicas with skewed clocks agree on leases and rates.
#[async_trait]
pub trait FlowStore: std::fmt::Debug + Send + Sync {
    /// Makes sure `kind` has `concurrency` slot rows (see [`SlotsSetup`]).
    async fn ensure_dispatch_slots(
        &self,
        kind: &str,
        concurrency: u32,
    ) -> Result<SlotsSetup, FlowStoreError>;

    /// Takes up to `want` free (or expired) slots of `kind` for `holder`, each leased for
    /// `lease`; returns their numbers (none: all taken).
    async fn acquire_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        want: u32,
        lease: Duration,
    ) -> Result<Vec<u32>, FlowStoreError>;

    /// Frees `slots` of `kind` still held by `holder`; returns how many were.
    async fn release_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        slots: &[u32],
    ) -> Result<u64, FlowStoreError>;

    /// Reserves `kind`'s next request start, one every `interval_us`, if it comes within
    /// `max_wait`.
    async fn reserve_dispatch_start(
        &self,
        kind: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, FlowStoreError>;

    /// Takes a slot of the key `key_hash` of `kind` (below `per_key`) for `holder`, leased
    /// for `lease`; `None`: every slot of the key is held.
    async fn acquire_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        holder: &str,
        per_key: u32,
        lease: Duration,
    ) -> Result<Option<u32>, FlowStoreError>;

    /// Frees the key's `slot` if `holder` still holds it; returns whether it did.
    async fn release_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        slot: u32,
        holder: &str,
    ) -> Result<bool, FlowStoreError>;

    /// Reserves the key's next request start, one every `interval_us`, if it comes within
    /// `max_wait`.
    async fn reserve_key_start(
        &self,
        kind: &str,
        key_hash: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, FlowStoreError>;

    /// Pauses the key for `wait` (a later pause only ever extends it).
    async fn pause_key(
        &self,
        kind: &str,
        key_hash: &str,
        wait: Duration,
    ) -> Result<(), FlowStoreError>;

    /// How much longer the key stays paused, if it is.
    async fn key_paused_for(
        &self,
        kind: &str,
        key_hash: &str,
    ) -> Result<Option<Duration>, FlowStoreError>;

    /// Deletes at most `limit` rows of each per-key table that mean nothing any more.
    async fn sweep_dispatch_keys(&self, limit: u32) -> Result<KeySweep, FlowStoreError>;

    /// Records `pause` for every replica; returns whether it was written (see the storage's
    /// rules on whose pause wins).
    async fn pause_kind(&self, pause: &KindPause) -> Result<bool, FlowStoreError>;

    /// The kind pauses that hold at `now_us`, by kind name.
    async fn kind_pauses(&self, now_us: i64) -> Result<Vec<KindPause>, FlowStoreError>;
}
