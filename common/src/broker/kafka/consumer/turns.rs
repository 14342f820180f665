//! Fair reading over the main topic's partitions: each partition gets a queue of its own
//! (librdkafka's `rd_kafka_queue_get_partition` + forward to none, through rdkafka's
//! [`StreamConsumer::split_partition_queue`]) and the consumer task reads them in turn.
//!
//! Why: with one consumer queue, librdkafka appends each fetch response's records to it
//! partition by partition, so a key whose few jobs land in another partition behind a
//! tenant's 5,000-record backlog were read only after that backlog (measured: 6.3 s for 10
//! jobs of 20 ms, issue 21). Read in turn, that partition's next record is at most one read
//! per busy partition away, and the worker's fair queue (see `surge-worker`'s `fair`
//! module) orders what it holds by key.
//!
//! The split is made once, before the consumer subscribes, for every partition the main
//! topic has then: librdkafka marks an application-set forward (`RD_KAFKA_Q_F_FWD_APP`)
//! and its fetch start never re-forwards such a queue to the consumer queue, so the split
//! holds across revokes and assignments. Records of a partition added to the topic later
//! arrive on the consumer queue and are read as before (in order, not in turn). Retry
//! partitions stay on the consumer queue: they are paused while they hold a retry, and
//! their records are few.
//!
//! Limits: fairness is per partition here and per key only among records already read, so
//! keys that hash to one partition share its turn in arrival order (6 partitions: a key
//! has a 1 in 6 chance to sit behind another given key's backlog).

use std::sync::Arc;

use futures::future::{select_all, FutureExt};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;

use super::rebalance::SurgeContext;

/// The main topic's partition queues, read in turn.
pub(super) struct PartitionTurns {
    queues: Vec<StreamPartitionQueue<SurgeContext>>,
    /// The queue whose record is taken first when several have one.
    next: usize,
}

impl PartitionTurns {
    /// Splits partitions `0..partitions` of `topic` off the consumer queue. Call before
    /// the consumer subscribes.
    pub(super) fn split(
        consumer: &Arc<StreamConsumer<SurgeContext>>,
        topic: &str,
        partitions: i32,
    ) -> PartitionTurns {
        let queues = (0..partitions)
            .filter_map(|p| consumer.split_partition_queue(topic, p))
            .collect();
        PartitionTurns { queues, next: 0 }
    }

    /// How many partitions are read in turn.
    pub(super) fn len(&self) -> usize {
        self.queues.len()
    }

    /// The next record of any partition queue, trying them from the one after the queue
    /// the previous record came from. Cancellation safe (each queue's `recv` is); never
    /// ready when there are no queues.
    pub(super) async fn recv(&self) -> (usize, Result<BorrowedMessage<'_>, KafkaError>) {
        if self.queues.is_empty() {
            return std::future::pending().await;
        }
        let n = self.queues.len();
        // `select_all` polls in vector order, so starting the vector at `next` rotates
        // which ready partition wins.
        let receiving = (0..n).map(|i| {
            let index = (self.next + i) % n;
            self.queues[index].recv().map(move |m| (index, m)).boxed()
        });
        let ((index, message), _, _) = select_all(receiving).await;
        (index, message)
    }

    /// Records that the last record came from queue `index`, so the next read starts
    /// after it.
    pub(super) fn served(&mut self, index: usize) {
        self.next = (index + 1) % self.queues.len().max(1);
    }
}
