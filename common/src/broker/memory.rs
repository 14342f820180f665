//! In-process broker with the same settle semantics as the real ones — ack, retry after a
//! delay with an attempt count, dead-letter, redelivery of deliveries dropped unsettled —
//! for the quick start and unit tests.
//!
//! **Not durable**: jobs live in this process's memory and die with it. Publishing "succeeds"
//! as soon as the job is queued in memory. Only one process can use it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries, Delivery, Settle};
use crate::job::Job;

/// A job waiting in the queue.
#[derive(Debug, Clone)]
struct Queued {
    job: Job,
    attempt: u32,
    redelivered: bool,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Queued>,
    in_flight: u64,
    consumers: u64,
    dead: Vec<(Job, String)>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    arrived: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: Queued) {
        self.lock().ready.push_back(item);
        self.arrived.notify_waiters();
    }

    fn settled(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// The in-process broker. Clones share one queue.
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dead-lettered jobs with their reasons, oldest first.
    pub fn dead_letters(&self) -> Vec<(Job, String)> {
        self.shared.lock().dead.clone()
    }

    async fn next(shared: &Shared) -> Queued {
        loop {
            let arrived = shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut state = shared.lock();
                if let Some(item) = state.ready.pop_front() {
                    state.in_flight += 1;
                    return item;
                }
            }
            arrived.await;
        }
    }
}

struct ConsumerGuard(Arc<Shared>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.consumers = state.consumers.saturating_sub(1);
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        {
            let mut state = self.shared.lock();
            state.ready.extend(jobs.iter().map(|job| Queued {
                job: job.clone(),
                attempt: 1,
                redelivered: false,
            }));
        }
        self.shared.arrived.notify_waiters();
        Ok(())
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        if options.prefetch == 0 {
            return Err(BrokerError::Config("prefetch must be at least 1".into()));
        }
        self.shared.lock().consumers += 1;
        let guard = Arc::new(ConsumerGuard(self.shared.clone()));
        let window = Arc::new(Semaphore::new(usize::from(options.prefetch)));
        let shared = self.shared.clone();
        let stream = futures::stream::unfold(
            (shared, window, guard),
            |(shared, window, guard)| async move {
                let permit = window
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the prefetch semaphore is never closed");
                let item = MemoryBroker::next(&shared).await;
                let settle = MemorySettle {
                    shared: shared.clone(),
                    item: item.clone(),
                    _permit: permit,
                };
                let delivery =
                    Delivery::new(item.job, item.attempt, item.redelivered, Box::new(settle));
                Some((Ok(delivery), (shared, window, guard)))
            },
        );
        Ok(Box::pin(stream))
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let state = self.shared.lock();
        Ok(BrokerStats {
            backlog: Some(state.ready.len() as u64),
            in_flight: Some(state.in_flight),
            dead_letters: Some(state.dead.len() as u64),
            consumers: Some(state.consumers),
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Settles one memory delivery; holds one slot of its consumer's prefetch window.
struct MemorySettle {
    shared: Arc<Shared>,
    item: Queued,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.shared.settled();
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        job: &Job,
        next_attempt: u32,
        after: Duration,
    ) -> Result<(), BrokerError> {
        self.shared.settled();
        let shared = self.shared.clone();
        let item = Queued {
            job: job.clone(),
            attempt: next_attempt,
            redelivered: false,
        };
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shared.push(item);
        });
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, job: &Job, reason: &str) -> Result<(), BrokerError> {
        let mut state = self.shared.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.dead.push((job.clone(), reason.to_owned()));
        Ok(())
    }

    fn release(self: Box<Self>) {
        self.shared.settled();
        let mut item = self.item.clone();
        item.redelivered = true;
        self.shared.push(item);
    }
}
