//! `GET /jobs/{id}?wait=N`: clients waiting for a job to finish, without each of them
//! polling the database.
//!
//! One task per ingress looks up every waited-for job in one query per tick
//! ([`POLL_EVERY`]) and wakes the waiters whose job has a terminal row (succeeded, dead,
//! cancelled). So the database sees one indexed lookup per tick whatever the number of
//! waiters, and a result is seen at most one tick after it commits. Waiters are bounded
//! ([`Waiters::new`]'s `max`): beyond, the request is refused with 503 and `Retry-After`
//! instead of holding a connection and a task.
//!
//! A waiter is registered for exactly as long as its request runs: a guard removes it
//! when the wait ends — woken, timed out, or dropped because the client hung up (the
//! server drops the handler's future then). So the map holds only live requests, and a
//! job nobody waits for any more is no longer looked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use surge_common::storage::Storage;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

/// How often the waited-for jobs are looked up.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// Longest `wait` a request may ask for, in seconds: below the server's default idle
/// timeout (60 s, `crate::server::ServeOptions`), so an answer after the full wait is
/// never raced by the connection's close. A shorter idle timeout lowers it further
/// ([`max_wait_for`]).
pub const MAX_WAIT_SECS: u64 = 50;

/// The longest wait allowed under a connection idle timeout of `idle`: [`MAX_WAIT_SECS`],
/// or 5/6 of the idle timeout in whole seconds when that is less (a client that waits
/// sends and receives nothing, so its connection counts as idle meanwhile).
pub fn max_wait_for(idle: Duration) -> Duration {
    let bound = Duration::from_secs((idle.as_millis() * 5 / 6 / 1000) as u64);
    bound.min(Duration::from_secs(MAX_WAIT_SECS))
}
/// Most jobs looked up in one query.
const LOOKUP_CHUNK: usize = 500;

/// Too many clients are waiting already.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many requests are waiting for results; retry shortly")]
pub struct TooManyWaiters;

#[derive(Default)]
struct Pending {
    /// The waiters of each job, by the number their registration got.
    by_job: HashMap<Uuid, HashMap<u64, oneshot::Sender<()>>>,
    /// The next registration's number.
    next: u64,
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
    /// caller reads the job's state afterwards. The waiter is removed when this returns or
    /// its future is dropped (the client hung up).
    pub async fn wait(&self, job: Uuid, timeout: Duration) -> Result<(), TooManyWaiters> {
        let _permit: OwnedSemaphorePermit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| TooManyWaiters)?;
        let (tx, rx) = oneshot::channel();
        let _registered = {
            let mut pending = self.lock();
            let number = pending.next;
            pending.next = pending.next.wrapping_add(1);
            pending.by_job.entry(job).or_default().insert(number, tx);
            Registered {
                waiters: self,
                job,
                number,
            }
        };
        let _ = tokio::time::timeout(timeout, rx).await;
        Ok(())
    }

    /// How many requests are waiting, over all jobs.
    pub fn len(&self) -> usize {
        self.lock().by_job.values().map(HashMap::len).sum()
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().by_job.is_empty()
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
            for sender in senders.into_values() {
                let _ = sender.send(());
            }
        }
    }
}

/// One waiter's registration: removes it from the map when dropped, however the wait
/// ended.
struct Registered<'a> {
    waiters: &'a Waiters,
    job: Uuid,
    number: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut pending = self.waiters.lock();
        if let Some(senders) = pending.by_job.get_mut(&self.job) {
            senders.remove(&self.number);
            if senders.is_empty() {
                pending.by_job.remove(&self.job);
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
