//! One broker conformance suite: the same test bodies run against every backend.
//!
//! Each body in [`bodies`] takes a [`Fixture`] — a broker on a queue / topic no other run
//! uses — and exercises one promise of the [`Broker`] contract. The `suite!` macro at the
//! bottom instantiates every body once per backend (`memory::*`, `rabbitmq::*` on classic
//! queues, `rabbitmq_quorum::*` on quorum queues, `kafka::*`). RabbitMQ and Kafka come from
//! `SURGE_TEST_AMQP_URL` and `SURGE_TEST_KAFKA_BROKERS`: without them the tests are
//! reported ignored, except in CI, where they run and fail.
//!
//! Waiting is always on a condition with a deadline (a delivery, a stats value), never a
//! bare sleep.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use surge_common::broker::kafka::KafkaBroker;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::rabbitmq::{QueueType, RabbitMqBroker};
use surge_common::broker::{Broker, BrokerStats, ConsumeOptions, Deliveries, Delivery};
use surge_common::job::Job;
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::testing::{kafka_tuning, service, unique_name, AMQP_URL_VAR, KAFKA_BROKERS_VAR};
use uuid::Uuid;

/// Longest wait for any one expected event. Generous: a Kafka group join takes seconds.
const PATIENCE: Duration = Duration::from_secs(45);
/// Partitions of each test topic on Kafka (more than one, so keys matter).
const KAFKA_PARTITIONS: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Rabbitmq(QueueType),
    Kafka,
}

/// A broker on a fresh queue, and how to open a second, independent handle on it.
struct Fixture {
    backend: Backend,
    queue: String,
    /// RabbitMQ URL or Kafka bootstrap servers.
    address: String,
    broker: Arc<dyn Broker>,
    memory: Option<MemoryBroker>,
}

impl Fixture {
    /// `None` when the backend's service is not configured (skip; fails in CI instead).
    async fn open(backend: Backend) -> Option<Fixture> {
        let queue = unique_name("conformance");
        let (address, broker, memory): (String, Arc<dyn Broker>, _) = match backend {
            Backend::Memory => {
                let memory = MemoryBroker::new();
                (String::new(), Arc::new(memory.clone()), Some(memory))
            }
            Backend::Rabbitmq(queue_type) => {
                let url = service(AMQP_URL_VAR, "RabbitMQ")?;
                let broker = RabbitMqBroker::connect_with(&url, &queue, queue_type)
                    .await
                    .expect("connect to RabbitMQ");
                (url, Arc::new(broker), None)
            }
            Backend::Kafka => {
                let brokers = service(KAFKA_BROKERS_VAR, "a Kafka broker (scripts/kafka.sh)")?;
                let broker =
                    KafkaBroker::connect_with(&brokers, &queue, KAFKA_PARTITIONS, kafka_tuning())
                        .await
                        .expect("connect to Kafka");
                (brokers, Arc::new(broker), None)
            }
        };
        Some(Fixture {
            backend,
            queue,
            address,
            broker,
            memory,
        })
    }

    /// Another broker on the same queue with its own connection (memory: the same queue,
    /// since it lives in this process).
    async fn second(&self) -> Arc<dyn Broker> {
        match self.backend {
            Backend::Memory => Arc::new(self.memory.clone().expect("memory fixture")),
            Backend::Rabbitmq(queue_type) => Arc::new(
                RabbitMqBroker::connect_with(&self.address, &self.queue, queue_type)
                    .await
                    .expect("second RabbitMQ connection"),
            ),
            Backend::Kafka => Arc::new(
                KafkaBroker::connect_with(
                    &self.address,
                    &self.queue,
                    KAFKA_PARTITIONS,
                    kafka_tuning(),
                )
                .await
                .expect("second Kafka client"),
            ),
        }
    }
}

/// Opens the fixture, runs `body`, and deletes the queues afterwards.
async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(fixture) = Fixture::open(backend).await else {
        return;
    };
    let fixture = Arc::new(fixture);
    body(fixture.clone()).await;
    if let Err(e) = fixture.broker.delete_topology().await {
        eprintln!("cleanup of {} failed: {e}", fixture.queue);
    }
}

fn job(n: usize, key: Option<&str>) -> Job {
    Job::new(BuiltinKind::Echo, json!({ "n": n }), key.map(str::to_owned))
}

async fn consume(broker: &dyn Broker, group: &str, prefetch: u16) -> Deliveries {
    broker
        .consume(ConsumeOptions {
            group: group.to_owned(),
            prefetch,
        })
        .await
        .expect("consume")
}

/// The next delivery, failing the test if none arrives within [`PATIENCE`].
async fn next(stream: &mut Deliveries) -> Delivery {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("timed out waiting for a delivery")
        .expect("the delivery stream ended")
        .expect("the delivery stream reported an error")
}

/// Asserts that no delivery arrives within `window` (after everything expected arrived).
async fn assert_quiet(stream: &mut Deliveries, window: Duration) {
    if let Ok(item) = tokio::time::timeout(window, stream.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected extra delivery of {} (attempt {})",
                d.job.id, d.attempt
            ),
            Some(Err(e)) => panic!("delivery stream error: {e}"),
            None => panic!("the delivery stream ended"),
        }
    }
}

/// Polls `stats()` until `check` holds, failing with the last answer after [`PATIENCE`].
/// `Unavailable` answers are tolerated until then: `stats()` gives up after 2 s by design,
/// and a busy single-node test broker can be that slow for a moment.
async fn await_stats(broker: &dyn Broker, what: &str, check: impl Fn(&BrokerStats) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let answer = broker.stats().await;
        if answer.as_ref().is_ok_and(&check) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stats never showed {what}; last answer: {answer:?}"
        );
    }
}

mod bodies {
    use super::*;

    /// A published job is delivered once, as attempt 1; once acked, a new consumer of the
    /// same group does not see it again (it gets the next job instead).
    pub async fn publish_consume_ack(fx: Arc<Fixture>) {
        let group = unique_name("group");
        let key = unique_name("key");
        let first = job(1, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&first))
            .await
            .expect("publish");

        let mut stream = consume(&*fx.broker, &group, 8).await;
        let d = next(&mut stream).await;
        assert_eq!(d.job, first);
        assert_eq!(d.attempt, 1);
        assert!(!d.redelivered);
        d.ack().await.expect("ack");
        drop(stream);

        // Same key (same Kafka partition): an unacked `first` would come before `marker`.
        let marker = job(2, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&marker))
            .await
            .expect("publish marker");
        let mut stream = consume(&*fx.broker, &group, 8).await;
        let d = next(&mut stream).await;
        assert_eq!(d.job.id, marker.id, "the acked job came back");
        d.ack().await.expect("ack marker");
    }

    /// retry() delivers the job again after the delay with attempt + 1, without holding
    /// up the jobs behind it; a retried job can be retried again.
    pub async fn retry_counts_attempts(fx: Arc<Fixture>) {
        let group = unique_name("group");
        let key = unique_name("key");
        let retried = job(1, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&retried))
            .await
            .expect("publish");
        let mut stream = consume(&*fx.broker, &group, 8).await;

        let d = next(&mut stream).await;
        assert_eq!((d.job.id, d.attempt), (retried.id, 1));
        let delay = Duration::from_millis(1500);
        let retried_at = Instant::now();
        d.retry(delay).await.expect("retry");

        // A job published after the retry (same key, so same Kafka partition) is not
        // blocked behind it.
        let behind = job(2, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&behind))
            .await
            .expect("publish behind");
        let d = next(&mut stream).await;
        assert_eq!(
            (d.job.id, d.attempt),
            (behind.id, 1),
            "the retry blocked the queue"
        );
        d.ack().await.expect("ack behind");

        let d = next(&mut stream).await;
        assert_eq!(d.job, retried);
        assert_eq!(d.attempt, 2);
        let waited = retried_at.elapsed();
        assert!(
            waited + Duration::from_millis(100) >= delay,
            "retried after {waited:?}, before the {delay:?} delay"
        );
        d.retry(Duration::ZERO).await.expect("second retry");

        let d = next(&mut stream).await;
        assert_eq!((d.job.id, d.attempt), (retried.id, 3));
        d.ack().await.expect("ack");
        assert_quiet(&mut stream, Duration::from_millis(500)).await;
    }

    /// dead_letter() moves the job to the dead letters (counted by stats) and it is not
    /// delivered again.
    pub async fn dead_letter(fx: Arc<Fixture>) {
        let group = unique_name("group");
        let key = unique_name("key");
        let poison = job(1, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&poison))
            .await
            .expect("publish");
        let mut stream = consume(&*fx.broker, &group, 8).await;
        let d = next(&mut stream).await;
        assert_eq!(d.job.id, poison.id);
        d.dead_letter("poison pill").await.expect("dead-letter");

        await_stats(&*fx.broker, "one dead letter", |s| {
            s.dead_letters == Some(1)
        })
        .await;
        if let Some(memory) = &fx.memory {
            assert_eq!(
                memory.dead_letters(),
                vec![(poison.clone(), "poison pill".to_owned())]
            );
        }
        let marker = job(2, Some(&key));
        fx.broker
            .publish(std::slice::from_ref(&marker))
            .await
            .expect("publish marker");
        let d = next(&mut stream).await;
        assert_eq!(
            d.job.id, marker.id,
            "the dead-lettered job was delivered again"
        );
        d.ack().await.expect("ack");
    }

    /// A consumer that dies with a delivery unsettled (its stream, delivery and
    /// connection dropped) does not lose it: a new consumer gets it. A later job that the
    /// dead consumer did ack does not let the earlier unsettled one be skipped.
    pub async fn redelivery_after_consumer_dies(fx: Arc<Fixture>) {
        let group = unique_name("group");
        let key = unique_name("key");
        let (held, acked) = (job(1, Some(&key)), job(2, Some(&key)));
        fx.broker
            .publish(&[held.clone(), acked.clone()])
            .await
            .expect("publish");

        let doomed = fx.second().await;
        let mut stream = consume(&*doomed, &group, 8).await;
        let (a, b) = (next(&mut stream).await, next(&mut stream).await);
        let (unsettled, settled) = if a.job.id == held.id { (a, b) } else { (b, a) };
        assert_eq!((unsettled.job.id, settled.job.id), (held.id, acked.id));
        settled.ack().await.expect("ack the later job");
        // The consumer dies: stream, unsettled delivery and connection go.
        drop(stream);
        drop(unsettled);
        drop(doomed);

        let mut stream = consume(&*fx.broker, &group, 8).await;
        loop {
            let d = next(&mut stream).await;
            if d.job.id == held.id {
                assert_eq!(d.job, held);
                assert_eq!(d.attempt, 1, "a crash redelivery keeps the attempt number");
                if fx.backend != Backend::Kafka {
                    // Kafka cannot tell a redelivery from another process apart.
                    assert!(d.redelivered, "redelivery not flagged");
                }
                d.ack().await.expect("ack");
                break;
            }
            // Only Kafka may repeat the acked job (its offset sits above the unsettled one).
            assert_eq!(d.job.id, acked.id, "unexpected job");
            assert_eq!(fx.backend, Backend::Kafka, "an acked job was redelivered");
            d.ack().await.expect("ack duplicate");
        }
    }

    /// stats() counts the consumers attached: one while a stream is open, none once it is
    /// dropped (on Kafka: once its member has left the group).
    pub async fn stats_count_consumers(fx: Arc<Fixture>) {
        let stream = consume(&*fx.broker, &unique_name("group"), 8).await;
        await_stats(&*fx.broker, "one consumer", |s| s.consumers == Some(1)).await;
        drop(stream);
        await_stats(&*fx.broker, "no consumer", |s| s.consumers == Some(0)).await;
    }

    /// Many tasks publishing at once: every job is delivered, exactly once.
    pub async fn concurrent_publishers(fx: Arc<Fixture>) {
        const TASKS: usize = 8;
        const PER_TASK: usize = 200;
        let publishers: Vec<_> = (0..TASKS)
            .map(|t| {
                let broker = fx.broker.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::with_capacity(PER_TASK);
                    for i in 0..PER_TASK {
                        let job = job(t * PER_TASK + i, None);
                        broker
                            .publish(std::slice::from_ref(&job))
                            .await
                            .expect("publish");
                        ids.push(job.id);
                    }
                    ids
                })
            })
            .collect();
        let mut expected = HashSet::new();
        for publisher in publishers {
            expected.extend(publisher.await.expect("publisher task"));
        }
        assert_eq!(expected.len(), TASKS * PER_TASK);

        let mut stream = consume(&*fx.broker, &unique_name("group"), 100).await;
        let mut seen = HashSet::new();
        while seen.len() < expected.len() {
            let d = next(&mut stream).await;
            assert!(expected.contains(&d.job.id), "unknown job {}", d.job.id);
            assert!(seen.insert(d.job.id), "job {} delivered twice", d.job.id);
            d.ack().await.expect("ack");
        }
        assert_quiet(&mut stream, Duration::from_secs(1)).await;
    }

    /// One publish of many jobs: all-or-nothing from the caller's view, all delivered;
    /// the backlog shows them and drains to zero once they are acked.
    pub async fn batch_publish(fx: Arc<Fixture>) {
        const JOBS: usize = 500;
        fx.broker
            .publish(&[])
            .await
            .expect("an empty batch is fine");
        let jobs: Vec<Job> = (0..JOBS).map(|n| job(n, None)).collect();
        fx.broker.publish(&jobs).await.expect("publish batch");
        await_stats(&*fx.broker, "the batch as backlog", |s| {
            s.backlog == Some(JOBS as u64)
        })
        .await;

        let expected: HashSet<Uuid> = jobs.iter().map(|j| j.id).collect();
        let mut stream = consume(&*fx.broker, &unique_name("group"), 64).await;
        let mut seen = HashSet::new();
        while seen.len() < JOBS {
            let d = next(&mut stream).await;
            assert!(expected.contains(&d.job.id), "unknown job {}", d.job.id);
            assert!(seen.insert(d.job.id), "job {} delivered twice", d.job.id);
            d.ack().await.expect("ack");
        }
        await_stats(&*fx.broker, "an empty backlog", |s| s.backlog == Some(0)).await;
        assert_quiet(&mut stream, Duration::from_millis(500)).await;
    }
}

/// Instantiates every body for one backend.
macro_rules! suite {
    ($(#[$attr:meta])* $module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn publish_consume_ack() {
                run($backend, bodies::publish_consume_ack).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn retry_counts_attempts() {
                run($backend, bodies::retry_counts_attempts).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn dead_letter() {
                run($backend, bodies::dead_letter).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn redelivery_after_consumer_dies() {
                run($backend, bodies::redelivery_after_consumer_dies).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn stats_count_consumers() {
                run($backend, bodies::stats_count_consumers).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn concurrent_publishers() {
                run($backend, bodies::concurrent_publishers).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn batch_publish() {
                run($backend, bodies::batch_publish).await;
            }
        }
    };
}

suite!(memory, Backend::Memory);
suite!(
    #[cfg_attr(
        not(surge_amqp),
        ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
    )]
    rabbitmq,
    Backend::Rabbitmq(QueueType::Classic)
);
suite!(
    #[cfg_attr(
        not(surge_amqp),
        ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
    )]
    rabbitmq_quorum,
    Backend::Rabbitmq(QueueType::Quorum)
);
suite!(
    #[cfg_attr(
        not(surge_kafka),
        ignore = "set SURGE_TEST_KAFKA_BROKERS to run (scripts/test.sh does)"
    )]
    kafka,
    Backend::Kafka
);
