//! `GET /jobs/{id}?wait=N`: clients waiting for a job to finish, without each of them
//! polling the database.
//!
//! One task per ingress looks up every waited-for job in one query per tick
//! ([`POLL_EVERY`]) and wakes the waiters whose job has a terminal row (succeeded, dead,
//! cancelled). So the database sees one indexed lookup per tick whatever the number of
//! waiters, and a result is seen at most one tick after it commits. Waiters are bounded
//! ([`Waiters::new`]'s `max`): beyond, the request is refused with 503 and `Retry-After`
//! instead of holding a connection and a task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use surge_common::storage::Storage;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// How often the waited-for jobs are looked up.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest `wait` a request may ask for, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// Most jobs looked up in one query.
const LOOKUP_CHUNK: usize = 500;

/// Too many clients are waiting already.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many requests are waiting for results; retry shortly")]
pub struct TooManyWaiters;

#[derive(Default)]
struct Pending {
    by_job: HashMap<Uuid, Vec<oneshot::Sender<()>>>,
}

/// The waiters of one ingress.
pub struct Waiters {
    permits: Arc<Semaphore>,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("free", &self.permits.available_permits())
            .finish()
    }
}

impl Waiters {
    /// At most `max` waiters at once; starts the lookup task (so call it inside a Tokio
    /// runtime). The task ends when the returned value is dropped.
    pub fn new(storage: Storage, max: usize) -> Arc<Waiters> {
        let waiters = Arc::new(Waiters {
            permits: Arc::new(Semaphore::new(max)),
            pending: Mutex::new(Pending::default()),
        });
        tokio::spawn(look_up(Arc::downgrade(&waiters), storage));
        waiters
    }

    /// Waits until `job` has a terminal row or `timeout` passes (whichever first); the
    /// caller reads the job's state afterwards.
    pub async fn wait(&self, job: Uuid, timeout: Duration) -> Result<(), TooManyWaiters> {
        let _permit: OwnedSemaphorePermit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooManyWaiters)?;
        let (tx, rx) = oneshot::channel();
        self.lock().by_job.entry(job).or_default().push(tx);
        let _ = tokio::time::timeout(timeout, rx).await;
        // On timeout our sender is still registered: drop the closed ones of this job.
        let mut pending = self.lock();
        if let Some(senders) = pending.by_job.get_mut(&job) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                pending.by_job.remove(&job);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waited_for(&self) -> Vec<Uuid> {
        self.lock().by_job.keys().copied().collect()
    }

    fn finished(&self, job: Uuid) {
        if let Some(senders) = self.lock().by_job.remove(&job) {
            for sender in senders {
                let _ = sender.send(());
            }
        }
    }
}

/// Every [`POLL_EVERY`]: one lookup of all waited-for jobs, waking those that finished.
async fn look_up(waiters: Weak<Waiters>, storage: Storage) {
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(waiters) = waiters.upgrade() else {
            return;
        };
        let ids = waiters.waited_for();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            match storage.get_many(chunk).await {
                Ok(rows) => rows.iter().for_each(|row| waiters.finished(row.job_id)),
                Err(e) => {
                    // Waiters time out and answer with what they can read; try next tick.
                    tracing::warn!(error = %e, "looking up waited-for jobs failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_bounded_and_time_out() {
        let storage = Storage::connect(&surge_common::testing::temp_sqlite_url())
            .await
            .unwrap();
        let waiters = Waiters::new(storage, 1);
        let job = Uuid::now_v7();
        let first = {
            let waiters = waiters.clone();
            tokio::spawn(async move { waiters.wait(job, Duration::from_secs(2)).await })
        };
        // Once the first waiter holds the only permit, a second is refused.
        while waiters.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(waiters.wait(job, Duration::from_secs(2)).await.is_err());
        // The first one times out (the job never finishes) and leaves nothing behind.
        assert!(first.await.unwrap().is_ok());
        assert!(waiters.waited_for().is_empty());
        assert_eq!(waiters.permits.available_permits(), 1);
    }
}
