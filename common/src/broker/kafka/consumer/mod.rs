//! Consuming: one consumer-group member per [`Broker::consume`](crate::broker::Broker::consume)
//! call, driven by one task that owns the librdkafka consumer.
//!
//! The task loop ([`task`]), in priority order:
//! 1. the stream was dropped → drain (below);
//! 2. a job is ready and the prefetch window has room → hand it out as a [`Delivery`] whose
//!    settle handle ([`settle`]) holds one window permit;
//! 3. a released delivery came back → queue it again (`redelivered = true`);
//! 4. a held retry became due ([`schedule`]) → queue it and resume its paused `T.retry`
//!    partition;
//! 5. every [`COMMIT_INTERVAL`] → commit the watermarks that moved (asynchronously);
//! 6. nothing is queued → read the next message: from the main topic's partitions in turn
//!    ([`turns`]), or from the consumer queue (retries, events). Polling the consumer queue
//!    also runs librdkafka's rebalance and commit callbacks ([`rebalance`]), so the task
//!    keeps polling while all permits are out (at most one message is read ahead).
//!
//! When the stream is dropped the task stops reading (pauses its partitions) but keeps the
//! group membership until every delivery it handed out is settled or released (bounded by
//! [`DRAIN_TIMEOUT`]), so a worker may drop the stream on SIGTERM and still ack its in-flight
//! jobs. Then it commits the settled watermarks synchronously and leaves the group.
//!
//! [`state`] holds what the task, the callbacks and the settle handles share.

mod rebalance;
mod schedule;
mod settle;
mod state;
mod task;
mod turns;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::{mpsc, Semaphore};

use super::client::{base_config, broker_error, SETUP_TIMEOUT};
use super::Inner;
use crate::broker::{BrokerError, ConsumeOptions, Deliveries, Delivery, KafkaAssignment};
use rebalance::SurgeContext;
use state::Shared;
use task::Task;

/// How often settled watermarks are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a dropped stream keeps its group membership for in-flight deliveries to settle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts to dead-letter an undecodable message.
const DEAD_LETTER_BACKOFF: Duration = Duration::from_secs(1);

type KafkaConsumer = StreamConsumer<SurgeContext>;

/// Starts a consumer-group member and its task; see the module docs.
pub(super) async fn consume(
    inner: Arc<Inner>,
    options: ConsumeOptions,
) -> Result<Deliveries, BrokerError> {
    if options.prefetch == 0 {
        return Err(BrokerError::Config("prefetch must be at least 1".into()));
    }
    if options.group.trim().is_empty() {
        return Err(BrokerError::Config("a Kafka consumer needs a group".into()));
    }
    let shared = Arc::new(Shared::default());
    let mut config = base_config(&inner.bootstrap, "surge-worker");
    assignment_config(&mut config, inner.tuning.assignment);
    let consumer: KafkaConsumer = config
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", inner.tuning.fetch_wait_ms.to_string())
        // librdkafka reads ahead up to 100,000 messages per partition and 64 MiB by
        // default; the task never holds more than its prefetch window, so a few MiB of
        // read-ahead keep it fed (thousands of jobs per fetch) at a fraction of the memory.
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "4096")
        // The task stops polling while its window is full and a message is read ahead;
        // allow that for longer than the longest job (10 min) before librdkafka decides
        // the consumer is wedged and leaves the group.
        .set("max.poll.interval.ms", "900000")
        .create_with_context(SurgeContext {
            shared: shared.clone(),
            main_topic: inner.topics.main.clone(),
        })
        .map_err(|e| broker_error(&e))?;
    // Fail here, not in the stream, when the broker is out of reach.
    let main = inner.topics.main.clone();
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&main), SETUP_TIMEOUT)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == main)
            .map_or(0, |t| t.partitions().len());
        Ok::<_, rdkafka::error::KafkaError>((consumer, partitions))
    })
    .await
    .map_err(|e| BrokerError::Unavailable(format!("kafka consumer set-up failed: {e}")))?
    .map_err(|e| broker_error(&e))?;
    let consumer = Arc::new(consumer);
    let turns = turns::PartitionTurns::split(
        &consumer,
        &inner.topics.main,
        i32::try_from(partitions).unwrap_or(i32::MAX),
    );
    consumer
        .subscribe(&[&inner.topics.main, &inner.topics.retry])
        .map_err(|e| broker_error(&e))?;
    inner.stats.use_group(&options.group);
    tracing::info!(
        group = %options.group, topic = %inner.topics.main, prefetch = options.prefetch,
        partitions_in_turn = turns.len(),
        assignment = %inner.tuning.assignment, fetch_wait_ms = inner.tuning.fetch_wait_ms,
        "kafka consumer started"
    );

    let prefetch = usize::from(options.prefetch);
    let (tx, mut rx) = mpsc::channel::<Result<Delivery, BrokerError>>(prefetch);
    let tasks = inner.clone();
    let task = Task {
        inner,
        shared,
        window: Arc::new(Semaphore::new(prefetch)),
        prefetch,
        tx,
    };
    let handle = tokio::spawn(task.run(consumer, turns));
    let mut running = super::lock(&tasks.consumers);
    running.retain(|task| !task.is_finished());
    running.push(handle);
    drop(running);
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

/// The group protocol settings of `assignment`.
///
/// The classic protocol gets a 10 s session (a dead worker is noticed within seconds, not
/// the 45 s default) and 1 s heartbeats. With `group.protocol=consumer` (KIP-848) the
/// broker owns the session timeout, heartbeat interval and assignor: librdkafka refuses to
/// create a consumer that sets `session.timeout.ms`, `heartbeat.interval.ms` or
/// `partition.assignment.strategy` (its `rd_kafka_conf_finalize`), so none is set; the
/// broker's `group.consumer.session.timeout.ms` (45 s by default) then bounds how long a
/// SIGKILLed worker's partitions wait.
fn assignment_config(config: &mut ClientConfig, assignment: KafkaAssignment) {
    match assignment {
        KafkaAssignment::Eager | KafkaAssignment::CooperativeSticky => {
            let strategy = if assignment == KafkaAssignment::Eager {
                "range,roundrobin"
            } else {
                "cooperative-sticky"
            };
            config
                .set("group.protocol", "classic")
                .set("partition.assignment.strategy", strategy)
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000");
        }
        KafkaAssignment::Consumer => {
            // The broker's default `uniform` assignor balances each member's partition
            // count over T and T.retry together, so a joining member could take every
            // partition of T and leave the first one only (empty) retry partitions:
            // measured, the first worker then sat idle. `range` splits each topic's
            // partitions over the members on its own.
            config
                .set("group.protocol", "consumer")
                .set("group.remote.assignor", "range");
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;

    use super::*;

    fn create(assignment: KafkaAssignment, extra: Option<(&str, &str)>) -> Result<(), String> {
        let mut config = base_config("127.0.0.1:1", "surge-test");
        assignment_config(&mut config, assignment);
        config.set("group.id", "surge-test");
        if let Some((key, value)) = extra {
            config.set(key, value);
        }
        config
            .create::<BaseConsumer>()
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// librdkafka checks the group settings when the consumer is created (no broker
    /// needed): every assignment value must give a configuration it accepts.
    #[test]
    fn every_assignment_gives_a_configuration_librdkafka_accepts() {
        for assignment in KafkaAssignment::ALL {
            create(assignment, None).unwrap_or_else(|e| panic!("{assignment}: {e}"));
        }
    }

    /// The reason `consumer` sets no session timeout: librdkafka refuses one with KIP-848.
    #[test]
    fn the_consumer_protocol_refuses_a_client_side_session_timeout() {
        let refused = create(
            KafkaAssignment::Consumer,
            Some(("session.timeout.ms", "10000")),
        )
        .expect_err("librdkafka accepted session.timeout.ms with group.protocol=consumer");
        assert!(refused.contains("session.timeout.ms"), "{refused}");
    }
}
