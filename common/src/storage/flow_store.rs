//! [`FlowStore`] on the results database: each method is the storage's own (see
//! [`super::flow`], [`super::dispatch_keys`] and [`super::pauses`] for the SQL), with its
//! error wrapped.

use std::time::Duration;

use async_trait::async_trait;

use super::Storage;
use crate::kinds::flow_store::{
    FlowStore, FlowStoreError, KeySweep, KindPause, RateReservation, SlotsSetup,
};

#[async_trait]
impl FlowStore for Storage {
    async fn ensure_dispatch_slots(
        &self,
        kind: &str,
        concurrency: u32,
    ) -> Result<SlotsSetup, FlowStoreError> {
        Storage::ensure_dispatch_slots(self, kind, concurrency)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn acquire_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        want: u32,
        lease: Duration,
    ) -> Result<Vec<u32>, FlowStoreError> {
        Storage::acquire_dispatch_slots(self, kind, holder, want, lease)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn release_dispatch_slots(
        &self,
        kind: &str,
        holder: &str,
        slots: &[u32],
    ) -> Result<u64, FlowStoreError> {
        Storage::release_dispatch_slots(self, kind, holder, slots)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn reserve_dispatch_start(
        &self,
        kind: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, FlowStoreError> {
        Storage::reserve_dispatch_start(self, kind, interval_us, max_wait)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn acquire_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        holder: &str,
        per_key: u32,
        lease: Duration,
    ) -> Result<Option<u32>, FlowStoreError> {
        Storage::acquire_key_slot(self, kind, key_hash, holder, per_key, lease)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn release_key_slot(
        &self,
        kind: &str,
        key_hash: &str,
        slot: u32,
        holder: &str,
    ) -> Result<bool, FlowStoreError> {
        Storage::release_key_slot(self, kind, key_hash, slot, holder)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn reserve_key_start(
        &self,
        kind: &str,
        key_hash: &str,
        interval_us: i64,
        max_wait: Duration,
    ) -> Result<RateReservation, FlowStoreError> {
        Storage::reserve_key_start(self, kind, key_hash, interval_us, max_wait)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn pause_key(
        &self,
        kind: &str,
        key_hash: &str,
        wait: Duration,
    ) -> Result<(), FlowStoreError> {
        Storage::pause_key(self, kind, key_hash, wait)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn key_paused_for(
        &self,
        kind: &str,
        key_hash: &str,
    ) -> Result<Option<Duration>, FlowStoreError> {
        Storage::key_paused_for(self, kind, key_hash)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn sweep_dispatch_keys(&self, limit: u32) -> Result<KeySweep, FlowStoreError> {
        Storage::sweep_dispatch_keys(self, limit)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn pause_kind(&self, pause: &KindPause) -> Result<bool, FlowStoreError> {
        Storage::pause_kind(self, pause)
            .await
            .map_err(FlowStoreError::new)
    }

    async fn kind_pauses(&self, now_us: i64) -> Result<Vec<KindPause>, FlowStoreError> {
        Storage::kind_pauses(self, now_us)
            .await
            .map_err(FlowStoreError::new)
    }
}
