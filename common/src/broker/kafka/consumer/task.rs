//! The consumer task: owns the librdkafka consumer, reads messages, hands deliveries out
//! within the prefetch window, holds early retries, commits watermarks, and drains when the
//! stream is dropped. The loop's priorities are in the [module docs](super).

use std::collections::VecDeque;
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::super::producer::NOT_BEFORE;
use super::super::Inner;
use super::schedule::retry_wait;
use super::settle::KafkaSettle;
use super::state::{commit_offsets, list, Held, InFlight, Position, Ready, Shared};
use super::turns::PartitionTurns;
use super::{KafkaConsumer, COMMIT_INTERVAL, DEAD_LETTER_BACKOFF, DRAIN_TIMEOUT};
use crate::broker::{headers, BrokerError, Delivery};
use crate::job::Job;

/// What the consumer task owns besides the consumer itself.
pub(super) struct Task {
    pub inner: Arc<Inner>,
    pub shared: Arc<Shared>,
    pub window: Arc<Semaphore>,
    pub prefetch: usize,
    pub tx: mpsc::Sender<Result<Delivery, BrokerError>>,
}

/// What [`Task::read`] made of one message.
enum Read {
    Ready(Ready),
    Hold(Held),
    Skip,
}

impl Task {
    pub(super) async fn run(self, consumer: Arc<KafkaConsumer>, mut turns: PartitionTurns) {
        let (release_tx, mut release_rx) = mpsc::unbounded_channel::<Ready>();
        let mut ready: VecDeque<Ready> = VecDeque::new();
        let mut held: Vec<Held> = Vec::new();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next_due = held.iter().map(|h| h.due).min();
            tokio::select! {
                biased;
                _ = self.tx.closed() => break,
                permit = self.window.clone().acquire_owned(), if !ready.is_empty() => {
                    let (Ok(permit), Some(item)) = (permit, ready.pop_front()) else { break };
                    if !self.shared.is_current(&item.pos) {
                        continue; // revoked meanwhile: its next owner delivers it
                    }
                    let delivery = self.delivery(item, permit, release_tx.clone());
                    if self.tx.send(Ok(delivery)).await.is_err() {
                        break;
                    }
                }
                Some(mut item) = release_rx.recv() => {
                    item.redelivered = true;
                    ready.push_back(item);
                }
                _ = sleep_until(next_due), if next_due.is_some() => {
                    self.release_due(&consumer, &mut held, &mut ready);
                }
                _ = commit_tick.tick() => self.commit(&consumer, CommitMode::Async),
                (index, message) = turns.recv(), if ready.is_empty() => {
                    let read = message.map(|m| self.read(&consumer, &m));
                    turns.served(index);
                    if !self.take(read, &mut ready, &mut held).await {
                        break;
                    }
                }
                message = consumer.recv(), if ready.is_empty() => {
                    let read = message.map(|m| self.read(&consumer, &m));
                    if !self.take(read, &mut ready, &mut held).await {
                        break;
                    }
                }
            }
        }
        // The partition queues hold the consumer: let them go before it is closed.
        drop(turns);
        self.drain(consumer, release_rx).await;
    }

    /// Files what reading one message gave; `false` when the consumer must stop.
    async fn take(
        &self,
        read: Result<Read, KafkaError>,
        ready: &mut VecDeque<Ready>,
        held: &mut Vec<Held>,
    ) -> bool {
        match read {
            Ok(Read::Ready(item)) => ready.push_back(item),
            Ok(Read::Hold(h)) => held.push(h),
            Ok(Read::Skip) | Err(KafkaError::PartitionEOF(_)) => {}
            Err(KafkaError::MessageConsumptionFatal(code)) => {
                let e = BrokerError::Unavailable(format!("fatal kafka consumer error: {code}"));
                tracing::error!(error = %e, "kafka consumer stopped");
                let _ = self.tx.send(Err(e)).await;
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "kafka consume error; librdkafka retries"),
        }
        true
    }

    /// Turns one message into a ready job, a held retry, or nothing (undecodable: sent to
    /// the dead letters by a background task).
    fn read(&self, consumer: &KafkaConsumer, message: &BorrowedMessage<'_>) -> Read {
        let tp = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        let generation = self.shared.lock().tracker.delivered(&tp, offset);
        let pos = Position {
            tp,
            offset,
            generation,
        };
        let job = match Job::decode(message.payload().unwrap_or_default()) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(
                    topic = %pos.tp.0, partition = pos.tp.1, offset, error = %e,
                    "undecodable kafka message; dead-lettering"
                );
                self.dead_letter_raw(message, pos, format!("undecodable job: {e}"));
                return Read::Skip;
            }
        };
        let attempt = header(message, headers::ATTEMPT)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        let item = Ready {
            job,
            attempt,
            redelivered: false,
            pos,
        };
        if item.pos.tp.0 != self.inner.topics.retry {
            return Read::Ready(item);
        }
        let wait = retry_wait(
            header(message, NOT_BEFORE),
            crate::clock::now_micros() / 1000,
        );
        if wait.is_zero() {
            return Read::Ready(item);
        }
        // Too early: hold it and stop reading its retry partition until then. Only this
        // partition waits; the main topic keeps flowing.
        match consumer.pause(&list(std::slice::from_ref(&item.pos.tp))) {
            Ok(()) => {
                self.shared
                    .lock()
                    .paused
                    .insert(item.pos.tp.clone(), item.pos.generation);
            }
            Err(e) => tracing::warn!(error = %e, "pausing a retry partition failed"),
        }
        Read::Hold(Held {
            due: Instant::now() + wait,
            item,
        })
    }

    /// Queues the held retries that are due and resumes their partitions.
    fn release_due(
        &self,
        consumer: &KafkaConsumer,
        held: &mut Vec<Held>,
        ready: &mut VecDeque<Ready>,
    ) {
        let now = Instant::now();
        let (due, waiting): (Vec<Held>, Vec<Held>) = held.drain(..).partition(|h| h.due <= now);
        *held = waiting;
        for Held { item, .. } in due {
            let pos = &item.pos;
            let still_held = held
                .iter()
                .any(|h| h.item.pos.tp == pos.tp && h.item.pos.generation == pos.generation);
            if !still_held {
                let ours = {
                    let mut state = self.shared.lock();
                    let ours = state.paused.get(&pos.tp) == Some(&pos.generation);
                    if ours {
                        state.paused.remove(&pos.tp);
                    }
                    ours
                };
                if ours {
                    if let Err(e) = consumer.resume(&list(std::slice::from_ref(&pos.tp))) {
                        tracing::warn!(error = %e, "resuming a retry partition failed");
                    }
                }
            }
            if self.shared.is_current(&item.pos) {
                ready.push_back(item);
            }
        }
    }

    fn delivery(
        &self,
        item: Ready,
        permit: OwnedSemaphorePermit,
        releases: mpsc::UnboundedSender<Ready>,
    ) -> Delivery {
        let settle = KafkaSettle {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            releases,
            in_flight: InFlight::start(&self.shared, &item.pos.tp),
            item: item.clone(),
            permit,
        };
        Delivery::new(item.job, item.attempt, item.redelivered, Box::new(settle))
    }

    fn commit(&self, consumer: &KafkaConsumer, mode: CommitMode) {
        let commits = self.shared.lock().tracker.take_commits();
        commit_offsets(consumer, &self.shared, commits, mode);
    }

    /// Sends an undecodable message to the dead letters, then settles it. Retries until it
    /// succeeds or the partition moves to another consumer (which will try again).
    fn dead_letter_raw(&self, message: &BorrowedMessage<'_>, pos: Position, reason: String) {
        let key = message.key().map(<[u8]>::to_vec);
        let payload = message.payload().map(<[u8]>::to_vec);
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let sent = inner
                    .producer
                    .send_raw(
                        &inner.topics.dead,
                        key.as_deref(),
                        payload.as_deref(),
                        &reason,
                    )
                    .await;
                match sent {
                    Ok(()) => {
                        shared.settle(&pos);
                        return;
                    }
                    Err(e) if shared.is_current(&pos) => {
                        tracing::warn!(error = %e, "dead-lettering an undecodable message failed; retrying");
                        tokio::time::sleep(DEAD_LETTER_BACKOFF).await;
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// The stream is gone: stop reading, let handed-out deliveries settle (bounded), commit,
    /// and leave the group.
    async fn drain(
        self,
        consumer: Arc<KafkaConsumer>,
        mut releases: mpsc::UnboundedReceiver<Ready>,
    ) {
        if let Ok(assignment) = consumer.assignment() {
            if let Err(e) = consumer.pause(&assignment) {
                tracing::debug!(error = %e, "pausing for shutdown failed");
            }
        }
        let all_back = u32::try_from(self.prefetch).unwrap_or(u32::MAX);
        let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
        tokio::pin!(deadline);
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        loop {
            tokio::select! {
                biased;
                _ = self.window.acquire_many(all_back) => break,
                _ = &mut deadline => {
                    tracing::warn!("kafka consumer leaving with deliveries unsettled; they will be redelivered");
                    break;
                }
                // Released jobs are not handed out again: their offsets stay uncommitted.
                Some(_) = releases.recv() => {}
                _ = commit_tick.tick() => self.commit(&consumer, CommitMode::Async),
                // Keep serving rebalance and commit callbacks; paused, so no new messages.
                message = consumer.recv() => if let Err(e) = message {
                    tracing::debug!(error = %e, "kafka error while draining");
                },
            }
        }
        // Final commit and group leave block on the network: off the async threads.
        let shared = self.shared.clone();
        let closing = tokio::task::spawn_blocking(move || {
            let commits = shared.lock().tracker.take_commits();
            commit_offsets(consumer.as_ref(), &shared, commits, CommitMode::Sync);
            drop(consumer);
        });
        if let Err(e) = closing.await {
            tracing::warn!(error = %e, "closing the kafka consumer failed");
        }
        tracing::info!("kafka consumer stopped");
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A UTF-8 header value.
fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
