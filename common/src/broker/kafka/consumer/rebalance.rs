//! librdkafka's callbacks for the consumer: log routing, rebalances (revoke waits for the
//! revoked partitions' in-flight jobs and commits what is settled) and commit results.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};

use super::super::client::{log_error, log_line};
use super::super::offsets::TopicPartition;
use super::state::{commit_offsets, list, partitions_of, Shared};

/// How long a revoke waits for the revoked partitions' in-flight jobs to settle.
const REVOKE_GRACE: Duration = Duration::from_secs(20);

/// librdkafka callbacks: logs, rebalances and commit results.
pub(super) struct SurgeContext {
    pub shared: Arc<Shared>,
    /// The main topic: only its revoked partitions wait for in-flight jobs (held retries
    /// are not in flight).
    pub main_topic: String,
}

impl ClientContext for SurgeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(&error, reason);
    }
}

impl SurgeContext {
    /// Before partitions of the main topic go to another member, waits (at most
    /// [`REVOKE_GRACE`]) until the jobs already handed out from them are settled or
    /// released ([`InFlight`](super::state::InFlight)), so their offsets are committed with
    /// the revoke and the new owner does not run them again.
    /// Without this, a member joining mid-burst made every in-flight job of the moved
    /// partitions run twice (the demo measured 101 of 400). Blocks the polling thread, so
    /// only on a multi-thread Tokio runtime (via `block_in_place`, which hands the
    /// thread's other tasks to another worker); elsewhere it does not wait.
    fn await_in_flight(&self, partitions: &[TopicPartition]) {
        let main: Vec<&TopicPartition> = partitions
            .iter()
            .filter(|tp| tp.0 == self.main_topic)
            .collect();
        let pending = || {
            let state = self.shared.lock();
            main.iter()
                .map(|tp| state.in_flight.get(*tp).copied().unwrap_or(0))
                .sum::<usize>()
        };
        if main.is_empty() || pending() == 0 {
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if !multi_thread {
            return;
        }
        let started = std::time::Instant::now();
        tokio::task::block_in_place(|| {
            while pending() > 0 && started.elapsed() < REVOKE_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let left = pending();
        if left > 0 {
            tracing::warn!(left, "kafka revoke: in-flight jobs still running after the grace period; their next owner runs them again");
        } else {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "kafka revoke: in-flight jobs of the revoked partitions settled"
            );
        }
    }
}

impl ConsumerContext for SurgeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                self.await_in_flight(&partitions);
                let mut commits = Vec::new();
                let mut resume = Vec::new();
                {
                    let mut state = self.shared.lock();
                    for tp in partitions {
                        if let Some(offset) = state.tracker.revoke(&tp) {
                            commits.push((tp.clone(), offset));
                        }
                        if state.paused.remove(&tp).is_some() {
                            resume.push(tp);
                        }
                    }
                }
                // librdkafka keeps an application pause across reassignment: undo ours.
                if !resume.is_empty() {
                    if let Err(e) = consumer.resume(&list(&resume)) {
                        tracing::debug!(error = %e, "resume on revoke failed");
                    }
                }
                // Commit what is settled before the partitions go; the rest is redelivered
                // to their next owner.
                commit_offsets(consumer, &self.shared, commits, CommitMode::Sync);
                tracing::info!(partitions = %describe(tpl), "kafka partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = self.shared.lock();
            for tp in partitions_of(tpl) {
                state.tracker.assign(tp);
            }
            tracing::info!(partitions = %describe(tpl), "kafka partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "kafka offset commit failed; will retry");
            let mut state = self.shared.lock();
            for elem in offsets.elements() {
                if let Offset::Offset(offset) = elem.offset() {
                    let tp = (elem.topic().to_owned(), elem.partition());
                    state.tracker.commit_failed(&tp, offset);
                }
            }
        }
    }
}

/// `tpl` for a log line, grouped by topic: `surge.jobs[0,1,2] surge.jobs.retry[3]`. With an
/// incremental assignment it names only the partitions that move.
fn describe(tpl: &TopicPartitionList) -> String {
    let mut topics: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for (topic, partition) in partitions_of(tpl) {
        topics.entry(topic).or_default().push(partition);
    }
    if topics.is_empty() {
        return "none".to_owned();
    }
    topics
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
            format!("{topic}[{}]", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
