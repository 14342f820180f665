//! RabbitMQ backend (lapin), compiled with the `rabbitmq` cargo feature.
//!
//! Topology, declared on every (re)connect, for a queue named `Q`:
//! - `Q`: durable; rejected messages dead-letter to `Q.dead`.
//! - `Q.retry`: durable holding queue; a retried job waits here with a per-message TTL and
//!   then dead-letters back into `Q` (RabbitMQ's delay-queue idiom, no plugin needed).
//!   Classic queues expire messages at the head only, so a long delay ahead of a short one
//!   can postpone it: retries may come late, never early.
//! - `Q.dead`: durable dead letters, with the reason in the `x-surge-dead-reason` header.
//! - `Q.lane0` … `Q.lane7`: the [`LANES`] fairness lanes. A new job goes to the lane its
//!   key hashes to ([`lane_of`]); `Q` itself still receives retries (through `Q.retry`)
//!   and the jobs of ingresses from before lanes. Every worker consumes `Q` and all lanes,
//!   each with its own prefetch window, so a key with a huge backlog fills one lane's
//!   window while the other lanes' jobs reach the worker at once; the worker then starts
//!   them fairly (`surge_worker::fair`). Two keys hashing to one lane share its order.
//!
//! The queue type is a choice ([`QueueType`]): classic, or quorum (replicated over a
//! cluster by Raft; dead-lettering at-least-once, which needs `x-overflow=reject-publish`).
//! Per-message TTL on quorum queues, which the retry queue needs, came with RabbitMQ 3.10.
//! A queue already declared with another type fails the start with a message naming
//! `--rabbitmq-queue-type`.
//!
//! Several nodes: the URL may be a comma-separated list of AMQP URLs (one cluster). The
//! broker connects to the first that answers and, when the connection drops, to the next
//! one that answers, round the list, with backoff ([`crate::retry::reconnect`]). A publish
//! whose connection drops before its confirm fails (`Unavailable`): the caller treats the
//! jobs as not accepted.
//!
//! Publishing: persistent messages on a channel in confirm mode, shared by all callers.
//! A call sends all its messages first and then awaits their confirms, so concurrent
//! requests keep many publishes in flight on the one channel. `Ok` means every message was
//! confirmed (and, being `mandatory`, routed to a queue).
//!
//! Consuming: a channel per consumer with `basic_qos(prefetch)` per queue (so a worker
//! holds up to `prefetch` deliveries from `Q` and from each lane), manual acks. Retry and
//! dead-letter publish the job to the holding queue, await the confirm, then ack the
//! original: a crash between the two yields a duplicate, never a loss.
//!
//! The pieces:
//! - `connection`: URL list parsing, the shared publishing channel, reconnect with backoff
//!   and fail-over to the next node.
//! - `topology`: the queue arguments per type; declaring, measuring and deleting the three
//!   queues.
//! - `publish`: confirmed publishing (a fresh channel after a nack) and the Surge headers.
//! - `consumer`: the delivery stream and how each delivery is settled.

mod connection;
mod consumer;
mod publish;
mod topology;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::uri::AMQPUri;
use tokio::sync::Mutex;

use super::{
    headers, Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries, Delivery, Settle,
};
use crate::job::Job;
use crate::redact::redact_urls;

pub use super::QueueType;
pub use connection::DEFAULT_FRAME_MAX;

/// State shared by the broker's clones and its deliveries.
struct Inner {
    /// The URLs as given (comma separated); log only through `redact_urls`.
    url: String,
    /// One per node, in the order given.
    uris: Vec<AMQPUri>,
    /// The node to try first on the next connect: the last one that answered, or the one
    /// after it once its connection broke.
    preferred: AtomicUsize,
    queue_type: QueueType,
    queue: String,
    retry_queue: String,
    dead_queue: String,
    /// The fairness lanes `Q.lane0` … (see the module docs).
    lanes: Vec<String>,
    link: Mutex<Option<connection::Link>>,
}

/// Number of fairness lanes per queue: a key shares its lane with 1/8 of the others.
/// Fixed, so that every ingress and worker agree without a setting to get wrong.
pub const LANES: usize = 8;

/// The lane of a job whose fairness key is `key`: FNV-1a, stable across processes and
/// releases (a changed mapping would only change which keys share a lane).
pub fn lane_of(key: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % LANES as u64) as usize
}

impl Inner {
    /// The queues a worker consumes: `Q` and every lane.
    fn consumed_queues(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.queue).chain(self.lanes.iter())
    }
}

/// The RabbitMQ broker. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RabbitMqBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitMqBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBroker")
            .field("url", &redact_urls(&self.inner.url))
            .field("queue", &self.inner.queue)
            .field("queue_type", &self.inner.queue_type)
            .finish()
    }
}

impl RabbitMqBroker {
    /// Connects to `url` (one AMQP URL, or several comma separated) and declares the
    /// topology for `queue`, of the default [`QueueType`].
    pub async fn connect(url: &str, queue: &str) -> Result<Self, BrokerError> {
        Self::connect_with(url, queue, QueueType::default()).await
    }

    /// Connects to the first of `urls` (comma separated) that answers and declares the
    /// topology for `queue` with queues of `queue_type`.
    pub async fn connect_with(
        urls: &str,
        queue: &str,
        queue_type: QueueType,
    ) -> Result<Self, BrokerError> {
        if queue.is_empty() || queue.len() > 200 {
            return Err(BrokerError::Config(
                "queue name must be 1 to 200 bytes".into(),
            ));
        }
        let broker = RabbitMqBroker {
            inner: Arc::new(Inner {
                url: urls.to_owned(),
                uris: connection::connection_uris(urls)?,
                preferred: AtomicUsize::new(0),
                queue_type,
                queue: queue.to_owned(),
                retry_queue: format!("{queue}.retry"),
                dead_queue: format!("{queue}.dead"),
                lanes: (0..LANES).map(|i| format!("{queue}.lane{i}")).collect(),
                link: Mutex::new(None),
            }),
        };
        broker.inner.link().await?;
        Ok(broker)
    }

    /// The main queue's name.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
}

#[async_trait]
impl Broker for RabbitMqBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .publish_to(
                |job| inner.lanes[lane_of(&job.fairness_key())].as_str(),
                jobs,
                |job| publish::attempt_headers(job, 1),
                None,
            )
            .await
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        consumer::consume(self.inner.clone(), options).await
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let link = self.inner.link().await?;
        // A fresh channel: a passive declare of a missing queue closes its channel.
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(connection::unavailable)?;
        let (mut backlog, consumers) = self.inner.queue_depth(&channel, &self.inner.queue).await?;
        for lane in &self.inner.lanes {
            backlog += self.inner.queue_depth(&channel, lane).await?.0;
        }
        let (dead, _) = self
            .inner
            .queue_depth(&channel, &self.inner.dead_queue)
            .await?;
        let _ = channel.close(200, "stats done".into()).await;
        Ok(BrokerStats {
            backlog: Some(backlog),
            in_flight: None,
            dead_letters: Some(dead),
            consumers: Some(consumers),
        })
    }

    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.inner.close().await
    }

    async fn delete_topology(&self) -> Result<(), BrokerError> {
        self.inner.delete_queues().await
    }
}
