//! Kafka backend (rdkafka with a bundled librdkafka), tested against Apache Kafka 4
//! (`scripts/kafka.sh`).
//!
//! Topology for a topic `T`, created explicitly at connect with the admin client
//! (`partitions` partitions, the cluster's default replication factor and
//! `min.insync.replicas`; "already exists" is fine — Surge does not rely
//! on auto-creation, which locked-down clusters and the test broker disable):
//! - `T`: jobs, keyed by [`Job::partition_key`], headers `x-surge-attempt`, job id and kind.
//! - `T.retry`: retried jobs, with an `x-surge-not-before-ms` header; consumed by the same
//!   group as `T`.
//! - `T.dead`: dead letters, with `x-surge-dead-reason`.
//!
//! The pieces:
//! - `producer`: an idempotent `acks=all` producer; a publish enqueues every record, then
//!   awaits every delivery report, and is `Ok` only when all succeeded.
//! - `consumer`: one consumer-group member per [`Broker::consume`] call, driven by one
//!   task. Offsets are committed manually (`enable.auto.commit=false`) and only up to the
//!   contiguous low watermark of settled deliveries per partition (`offsets`), so
//!   deliveries may be processed concurrently — up to `prefetch` unsettled, more than there
//!   are partitions — and a crash never skips an unprocessed job.
//!   - *retry* produces the job to `T.retry` (attempt + not-before headers), awaits the
//!     delivery report, then settles the original offset: the partition never waits for a
//!     retry. A retry message read before its time pauses only its `T.retry` partition
//!     until then; `T` keeps flowing.
//!   - *dead-letter* produces to `T.dead` with the reason, then settles.
//!   - *release* (a delivery dropped unsettled) hands the job back to the consumer task,
//!     which delivers it again from memory (`redelivered = true`); its offset stays
//!     uncommitted meanwhile, so if the process dies the next owner reads it again.
//!   - *rebalance*: on revoke the settled watermark is committed synchronously and
//!     everything unsettled is forgotten (its settles become no-ops); the new owner
//!     re-reads from the committed offset. Duplicates are harmless: results are keyed by
//!     job id.
//! - `offsets`: the per-partition watermark tracker.
//! - `admin`: topic creation and deletion, the lag / dead-letter / member counts behind
//!   [`Broker::stats`], and where the main topic's replicas live
//!   ([`KafkaBroker::placement`]).
//! - `client`: configuration shared by all clients, librdkafka logs into `tracing`, and
//!   the mapping of librdkafka errors onto [`BrokerError`].

mod admin;
mod client;
mod consumer;
mod offsets;
mod producer;

use std::sync::Arc;

use async_trait::async_trait;
use backon::Retryable;

pub use admin::{PartitionPlacement, TopicPlacement};

use super::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries, KafkaTuning};
use crate::job::Job;

/// Consumer group whose lag [`Broker::stats`] reports until this broker consumes itself.
pub const DEFAULT_GROUP: &str = "surge-workers";

/// Longest accepted main topic name (Kafka allows 249; the suffixes need 6).
const MAX_TOPIC_LEN: usize = 243;

/// The three topics of one Surge queue.
#[derive(Debug, Clone)]
struct Topics {
    main: String,
    retry: String,
    dead: String,
}

impl Topics {
    fn for_topic(topic: &str) -> Self {
        Topics {
            main: topic.to_owned(),
            retry: format!("{topic}.retry"),
            dead: format!("{topic}.dead"),
        }
    }

    fn all(&self) -> [&str; 3] {
        [&self.main, &self.retry, &self.dead]
    }
}

/// What clones of a broker, its consumers and their settle handles share.
struct Inner {
    bootstrap: String,
    topics: Topics,
    producer: producer::Producer,
    stats: admin::StatsSource,
    /// Assignment protocol and fetch wait of the consumers (the producer got its linger).
    tuning: KafkaTuning,
    /// The consumer tasks started by `consume`: each ends after its stream was dropped and
    /// it drained, committed its last offsets and left the group. `close` awaits them.
    consumers: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The Kafka broker. Cheap to clone; clones share the producer.
#[derive(Clone)]
pub struct KafkaBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("bootstrap", &self.inner.bootstrap)
            .field("topic", &self.inner.topics.main)
            .finish()
    }
}

/// Checks `topic` against Kafka's naming rules (with room for the `.retry` suffix).
fn validate_topic(topic: &str) -> Result<(), BrokerError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN || topic == "." || topic == ".." {
        return Err(BrokerError::Config(format!(
            "topic name must be 1 to {MAX_TOPIC_LEN} characters and not . or .."
        )));
    }
    if !topic.chars().all(legal) {
        return Err(BrokerError::Config(format!(
            "topic name {topic:?} may only contain ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

impl KafkaBroker {
    /// Connects to `bootstrap` and makes sure `topic` (and its retry / dead-letter topics)
    /// exist with `partitions` partitions. Retries a few times while the broker is
    /// unreachable, then fails with [`BrokerError::Unavailable`]. Default tuning
    /// ([`KafkaTuning::default`]); see [`KafkaBroker::connect_with`].
    pub async fn connect(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Self, BrokerError> {
        Self::connect_with(bootstrap, topic, partitions, KafkaTuning::default()).await
    }

    /// [`KafkaBroker::connect`] with `tuning` for the producer and every consumer.
    pub async fn connect_with(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        tuning: KafkaTuning,
    ) -> Result<Self, BrokerError> {
        validate_topic(topic)?;
        if !(1..=10_000).contains(&partitions) {
            return Err(BrokerError::Config(format!(
                "partitions must be between 1 and 10000, not {partitions}"
            )));
        }
        if bootstrap.trim().is_empty() {
            return Err(BrokerError::Config(
                "no Kafka bootstrap servers given".into(),
            ));
        }
        let topics = Topics::for_topic(topic);
        let producer = producer::Producer::new(bootstrap, tuning.linger_ms)?;
        (|| admin::ensure_topics(bootstrap, &producer, &topics, partitions))
            .retry(crate::retry::reconnect(3))
            .when(|e| matches!(e, BrokerError::Unavailable(_)))
            .notify(|e, after| tracing::warn!(error = %e, ?after, "kafka connect failed; retrying"))
            .await?;
        let counts = admin::partition_counts(&producer, &topics).await?;
        tracing::info!(
            bootstrap,
            topic,
            partitions = counts.main,
            assignment = %tuning.assignment,
            linger_ms = tuning.linger_ms,
            fetch_wait_ms = tuning.fetch_wait_ms,
            "kafka connected"
        );
        Ok(KafkaBroker {
            inner: Arc::new(Inner {
                bootstrap: bootstrap.to_owned(),
                stats: admin::StatsSource::new(bootstrap, topics.clone(), counts),
                topics,
                producer,
                tuning,
                consumers: std::sync::Mutex::default(),
            }),
        })
    }

    /// The main topic's name.
    pub fn topic(&self) -> &str {
        &self.inner.topics.main
    }

    /// Where the main topic's partitions live (leader, replicas, in-sync replicas) and its
    /// `min.insync.replicas`, as the cluster reports them now.
    pub async fn placement(&self) -> Result<TopicPlacement, BrokerError> {
        admin::placement(
            &self.inner.bootstrap,
            &self.inner.producer,
            &self.inner.topics.main,
        )
        .await
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .producer
            .send(&inner.topics.main, jobs, 1, producer::Extra::default())
            .await
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        consumer::consume(self.inner.clone(), options).await
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        self.inner.stats.get().await
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    /// Deletes `T`, `T.retry` and `T.dead` (Kafka completes it in the background).
    async fn delete_topology(&self) -> Result<(), BrokerError> {
        admin::delete_topics(&self.inner.bootstrap, &self.inner.topics).await
    }

    /// Waits for every dropped consumer stream's task to commit its last offsets and leave
    /// the group, so a stopping worker hands its partitions over at once (no session
    /// timeout) and nothing settled is redelivered.
    async fn close(&self) -> Result<(), BrokerError> {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.inner.consumers));
        for task in tasks {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a kafka consumer task failed while closing");
            }
        }
        Ok(())
    }
}

/// Locks `mutex`, also after a panic elsewhere (the data is a list of handles).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic("surge.jobs").is_ok());
        assert!(validate_topic("surge-test-x_1").is_ok());
        for bad in ["", ".", "..", "has space", "slash/y", &"x".repeat(244)] {
            assert!(
                matches!(validate_topic(bad), Err(BrokerError::Config(_))),
                "{bad:?} accepted"
            );
        }
    }
}
