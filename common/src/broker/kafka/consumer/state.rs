//! What the consumer task, its rebalance callbacks and the settle handles share: the
//! offset tracker, paused retry partitions and per-partition in-flight counts, plus the
//! small conversions between partition lists and librdkafka's `TopicPartitionList`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::super::offsets::{OffsetTracker, TopicPartition};
use crate::job::Job;

/// Where a delivery came from, and under which assignment generation.
#[derive(Debug, Clone)]
pub(super) struct Position {
    pub tp: TopicPartition,
    pub offset: i64,
    pub generation: u64,
}

/// A job ready to be handed out.
#[derive(Debug, Clone)]
pub(super) struct Ready {
    pub job: Job,
    pub attempt: u32,
    pub redelivered: bool,
    pub pos: Position,
}

/// A retry read before its time, held until `due`.
#[derive(Debug)]
pub(super) struct Held {
    pub due: Instant,
    pub item: Ready,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub tracker: OffsetTracker,
    /// `T.retry` partitions this consumer paused while holding a retry, with the generation
    /// it paused them in.
    pub paused: HashMap<TopicPartition, u64>,
    /// Deliveries handed to the worker and not yet settled or released, per partition
    /// (see [`InFlight`]); a revoke waits for its partitions' count to reach zero.
    pub in_flight: HashMap<TopicPartition, usize>,
}

/// Shared by the consumer task, its rebalance callbacks (which run inside the task's
/// polls) and the settle handles (which run wherever the worker settles).
#[derive(Debug, Default)]
pub(super) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the delivery at `pos` settled (a no-op when its partition moved since).
    pub(super) fn settle(&self, pos: &Position) {
        let moved = self
            .lock()
            .tracker
            .settle(&pos.tp, pos.generation, pos.offset);
        if !moved && !self.is_current(pos) {
            tracing::debug!(
                topic = %pos.tp.0, partition = pos.tp.1, offset = pos.offset,
                "settled after its partition moved; the new owner redelivers it"
            );
        }
    }

    /// Whether `pos` still belongs to this consumer's current assignment.
    pub(super) fn is_current(&self, pos: &Position) -> bool {
        self.lock().tracker.is_current(&pos.tp, pos.generation)
    }
}

/// Counts one delivery as in flight on its partition from hand-out until its settle handle
/// is gone (settled, released or dropped); the count is what a revoke waits for.
pub(super) struct InFlight {
    shared: Arc<Shared>,
    tp: TopicPartition,
}

impl InFlight {
    pub(super) fn start(shared: &Arc<Shared>, tp: &TopicPartition) -> InFlight {
        *shared.lock().in_flight.entry(tp.clone()).or_default() += 1;
        InFlight {
            shared: shared.clone(),
            tp: tp.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(count) = state.in_flight.get_mut(&self.tp) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.in_flight.remove(&self.tp);
            }
        }
    }
}

/// The partitions named in `tpl`.
pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// `partitions` as a librdkafka list (no offsets).
pub(super) fn list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

fn offsets_list(commits: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for ((topic, partition), offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Commits `commits`; on failure offers them again for the next commit.
pub(super) fn commit_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    commits: Vec<(TopicPartition, i64)>,
    mode: CommitMode,
) {
    if commits.is_empty() {
        return;
    }
    let result = offsets_list(&commits).and_then(|tpl| consumer.commit(&tpl, mode));
    if let Err(e) = result {
        tracing::warn!(error = %e, "kafka offset commit failed; will retry");
        let mut state = shared.lock();
        for (tp, offset) in &commits {
            state.tracker.commit_failed(tp, *offset);
        }
    }
}
