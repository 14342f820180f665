//! RabbitMQ backend (lapin).
//!
//! Topology, declared on every (re)connect, for a queue named `Q`:
//! - `Q`: durable; rejected messages dead-letter to `Q.dead`.
//! - `Q.retry`: durable holding queue; a retried job waits here with a per-message TTL and
//!   then dead-letters back into `Q` (RabbitMQ's delay-queue idiom, no plugin needed).
//!   Classic queues expire messages at the head only, so a long delay ahead of a short one
//!   can postpone it: retries may come late, never early.
//! - `Q.dead`: durable dead letters, with the reason in the `x-surge-dead-reason` header.
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
//! Consuming: a channel per consumer with `basic_qos(prefetch)`, manual acks. Retry and
//! dead-letter publish the job to the holding queue, await the confirm, then ack the
//! original: a crash between the two yields a duplicate, never a loss.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{
    headers, Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries, Delivery, Settle,
};
use crate::config::{redact_url, redact_urls};
use crate::job::Job;

/// Persistent delivery mode (survives a broker restart on a durable queue).
const PERSISTENT: u8 = 2;

/// The AMQP frame size asked for when the URL sets no `frame_max`. lapin keeps a send and a
/// receive buffer of 32 frames per connection, zero-filled up front: with RabbitMQ's default
/// 128 KiB frames that is 8 MiB resident in every ingress and worker process, with 16 KiB
/// frames 1 MiB. A larger message body is split over several frames, so job size is not
/// limited by it.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Longest wait for one node to accept a connection, before trying the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The kind of RabbitMQ queue Surge declares for the main, retry and dead-letter queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// Classic queue: on one node; fastest, lost with that node's disk.
    #[default]
    Classic,
    /// Quorum queue: replicated over the cluster (Raft); survives the loss of a minority of
    /// nodes. Dead-lettering is at-least-once.
    Quorum,
}

impl QueueType {
    /// The name RabbitMQ and the flag use (`classic`, `quorum`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// The declare arguments of a queue of type `queue_type` whose dead letters (rejected or
/// expired messages) go to `dead_letter_to`, if any.
fn queue_arguments(queue_type: QueueType, dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text(queue_type.as_str()));
    if let Some(target) = dead_letter_to {
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(target));
    }
    if queue_type == QueueType::Quorum {
        // At-most-once (the default) drops a dead letter the target did not confirm; at-
        // least-once keeps it until confirmed, and RabbitMQ requires reject-publish for it.
        args.insert("x-overflow".into(), text("reject-publish"));
        if dead_letter_to.is_some() {
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        }
    }
    args
}

/// Whether a declare failed with `PRECONDITION_FAILED` (406): the queue exists with other
/// arguments.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The error for a failed queue declare. `PRECONDITION_FAILED` means the queue exists with
/// other arguments, usually another type (`existing`, when known), which only the operator
/// can resolve: the message says how.
fn declare_error(
    name: &str,
    queue_type: QueueType,
    existing: Option<QueueType>,
    e: lapin::Error,
) -> BrokerError {
    let wanted = queue_type.as_str();
    match (e.kind(), existing) {
        (lapin::ErrorKind::ProtocolError(_), Some(existing)) if is_precondition_failed(&e) => {
            let existing = existing.as_str();
            BrokerError::Config(format!(
                "queue {name} is a {existing} queue, but --rabbitmq-queue-type \
                 (SURGE_RABBITMQ_QUEUE_TYPE) asks for {wanted}: start with \
                 --rabbitmq-queue-type {existing}, or, to switch to {wanted} queues, drain the \
                 queue and delete it with its .retry and .dead queues first"
            ))
        }
        (lapin::ErrorKind::ProtocolError(amqp), None) if is_precondition_failed(&e) => {
            BrokerError::Config(format!(
                "queue {name} already exists with other arguments than a {wanted} queue \
                 (--rabbitmq-queue-type / SURGE_RABBITMQ_QUEUE_TYPE): {}. Pass the type it \
                 was declared with, or drain and delete it (with its .retry and .dead \
                 queues) so Surge can declare it again",
                amqp.get_message()
            ))
        }
        (lapin::ErrorKind::ProtocolError(_), _) => {
            BrokerError::Config(format!("queue {name} cannot be declared: {e}"))
        }
        _ => unavailable(e),
    }
}

/// Splits a comma-separated list of AMQP URLs (one or more nodes of one cluster).
fn connection_uris(urls: &str) -> Result<Vec<AMQPUri>, BrokerError> {
    let uris = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(connection_uri)
        .collect::<Result<Vec<_>, _>>()?;
    if uris.is_empty() {
        return Err(BrokerError::Config("no AMQP URL given".into()));
    }
    Ok(uris)
}

/// Parses the AMQP URL and asks for [`DEFAULT_FRAME_MAX`] unless the URL names a
/// `frame_max` of its own. The error never carries the URL's password.
fn connection_uri(url: &str) -> Result<AMQPUri, BrokerError> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| {
        BrokerError::Config(format!(
            "invalid AMQP URL {}: {}",
            redact_url(url),
            e.replace(url, &redact_url(url))
        ))
    })?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(uri)
}

/// An open connection and its shared confirm-mode publishing channel.
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

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
    link: Mutex<Option<Link>>,
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

fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
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
                uris: connection_uris(urls)?,
                preferred: AtomicUsize::new(0),
                queue_type,
                queue: queue.to_owned(),
                retry_queue: format!("{queue}.retry"),
                dead_queue: format!("{queue}.dead"),
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

impl Inner {
    /// The current link, reconnecting (with backoff) when it broke.
    async fn link(&self) -> Result<Link, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref() {
            if link.healthy() {
                return Ok(link.clone());
            }
            tracing::warn!("rabbitmq connection lost; reconnecting");
            // Start with the next node: the one just lost is likely down.
            self.preferred.fetch_add(1, Ordering::Relaxed);
        }
        *guard = None;
        let link = (|| self.open())
            .retry(crate::retry::reconnect(3))
            .when(|e| matches!(e, BrokerError::Unavailable(_)))
            .notify(
                |e, after| tracing::warn!(error = %e, ?after, "rabbitmq connect failed; retrying"),
            )
            .await?;
        *guard = Some(link.clone());
        Ok(link)
    }

    /// Opens a link to the first node that answers, starting with the preferred one.
    async fn open(&self) -> Result<Link, BrokerError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failure = BrokerError::Unavailable("no AMQP URL".into());
        for step in 0..self.uris.len() {
            let index = (first + step) % self.uris.len();
            match self.open_node(index).await {
                Ok(link) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(link);
                }
                Err(e @ BrokerError::Unavailable(_)) if step + 1 < self.uris.len() => {
                    tracing::warn!(node = index + 1, error = %e, "rabbitmq node unreachable; trying the next");
                    failure = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(failure)
    }

    /// Opens a link to node `index` of [`Inner::uris`].
    async fn open_node(&self, index: usize) -> Result<Link, BrokerError> {
        let uri = self.uris[index].clone();
        let connecting = Connection::connect_uri(uri, ConnectionProperties::default());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| BrokerError::Unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        self.declare(&connection, &publisher).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        tracing::info!(
            node = index + 1,
            url = %redact_urls(&self.url),
            queue = %self.queue,
            queue_type = self.queue_type.as_str(),
            "rabbitmq connected"
        );
        Ok(Link {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Declares the three queues on `channel`; on a mismatch, finds out the existing type
    /// through `connection` for the error message.
    async fn declare(&self, connection: &Connection, channel: &Channel) -> Result<(), BrokerError> {
        let kind = self.queue_type;
        for (name, dead_letter_to) in [
            (&self.queue, Some(self.dead_queue.as_str())),
            (&self.retry_queue, Some(self.queue.as_str())),
            (&self.dead_queue, None),
        ] {
            let declared = channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    queue_arguments(kind, dead_letter_to),
                )
                .await;
            if let Err(e) = declared {
                let existing = if is_precondition_failed(&e) {
                    probe_queue_type(connection, name, kind, dead_letter_to).await
                } else {
                    None
                };
                return Err(declare_error(name, kind, existing, e));
            }
        }
        Ok(())
    }

    /// Publishes `jobs` to `routing_key` and waits for every confirm.
    async fn publish_to(
        &self,
        routing_key: &str,
        jobs: &[Job],
        headers: impl Fn(&Job) -> FieldTable,
        expiration: Option<Duration>,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_content_type("application/json".into())
                .with_message_id(job.id.to_string().into())
                .with_headers(headers(job));
            if let Some(ttl) = expiration {
                properties = properties.with_expiration(ttl.as_millis().to_string().into());
            }
            let confirm = link
                .publisher
                .basic_publish(
                    "".into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &job.encode(),
                    properties,
                )
                .await
                .map_err(unavailable)?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(unavailable)?;
            if confirmation.is_nack() {
                self.renew_publisher(&link).await;
                return Err(BrokerError::Rejected("broker nacked the message".into()));
            }
            if let Some(returned) = confirmation.take_message() {
                return Err(BrokerError::Rejected(format!(
                    "message unroutable: {}",
                    returned.reply_text
                )));
            }
        }
        Ok(())
    }

    /// Replaces `link`'s publishing channel with a fresh one after a nack. Seen on RabbitMQ
    /// 3.10: a channel that first published to a quorum queue while it was electing a
    /// leader nacked every later publish to it, for minutes, while a new channel on the same
    /// connection published fine. The old channel is closed (its pending confirms fail,
    /// so their publishes count as not accepted). A broken connection is left to
    /// [`Inner::link`].
    async fn renew_publisher(&self, link: &Link) {
        let mut guard = self.link.lock().await;
        let Some(current) = guard.as_mut() else {
            return;
        };
        let same = Arc::ptr_eq(&current.connection, &link.connection)
            && current.publisher.id() == link.publisher.id();
        if !same || !current.healthy() {
            return; // Already renewed by a concurrent caller, or reconnecting anyway.
        }
        let fresh = async {
            let channel = current.connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        match fresh.await {
            Ok(channel) => {
                let old = std::mem::replace(&mut current.publisher, channel);
                tracing::warn!("rabbitmq nacked a publish; publishing on a fresh channel");
                tokio::spawn(async move {
                    let _ = old.close(200, "replaced after a nack".into()).await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "could not open a fresh publishing channel"),
        }
    }

    async fn queue_depth(&self, channel: &Channel, name: &str) -> Result<(u64, u64), BrokerError> {
        let queue = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions::durable().passive(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        Ok((
            u64::from(queue.message_count()),
            u64::from(queue.consumer_count()),
        ))
    }
}

/// The type of the existing queue `name`, which refused a declare as `refused`: declares it
/// again as each other type on a throwaway channel (an equivalent declare changes nothing;
/// a refused one closes only that channel).
async fn probe_queue_type(
    connection: &Connection,
    name: &str,
    refused: QueueType,
    dead_letter_to: Option<&str>,
) -> Option<QueueType> {
    for candidate in [QueueType::Classic, QueueType::Quorum] {
        if candidate == refused {
            continue;
        }
        let channel = connection.create_channel().await.ok()?;
        let args = queue_arguments(candidate, dead_letter_to);
        let declared = channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await;
        if declared.is_ok() {
            let _ = channel.close(200, "probe done".into()).await;
            return Some(candidate);
        }
    }
    None
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn attempt_headers(job: &Job, attempt: u32) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(attempt));
    table.insert(headers::JOB_ID.into(), text(&job.id.to_string()));
    table.insert(headers::JOB_KIND.into(), text(job.kind.as_str()));
    if let Some(traceparent) = &job.traceparent {
        table.insert(headers::TRACEPARENT.into(), text(traceparent));
    }
    table
}

fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let table = properties.headers().as_ref()?;
    let key: ShortString = name.into();
    match table.inner().get(&key)? {
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::LongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u32::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some(u32::from(*v)),
        _ => None,
    }
}

#[async_trait]
impl Broker for RabbitMqBroker {
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .publish_to(&inner.queue, jobs, |job| attempt_headers(job, 1), None)
            .await
    }

    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        if options.prefetch == 0 {
            return Err(BrokerError::Config("prefetch must be at least 1".into()));
        }
        let link = self.inner.link().await?;
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = channel
            .basic_consume(
                self.inner.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let inner = self.inner.clone();
        // The channel must live as long as the stream: it is moved into the closure.
        let stream = consumer.filter_map(move |item| {
            let inner = inner.clone();
            let _channel = channel.clone();
            async move {
                match item {
                    Err(e) => Some(Err(unavailable(e))),
                    Ok(message) => match Job::decode(&message.data) {
                        Ok(job) => {
                            let attempt =
                                header_u32(&message.properties, headers::ATTEMPT).unwrap_or(1);
                            let settle = RabbitSettle {
                                inner,
                                acker: message.acker,
                            };
                            Some(Ok(Delivery::new(
                                job,
                                attempt,
                                message.redelivered,
                                Box::new(settle),
                            )))
                        }
                        Err(e) => {
                            // Not a job: let the queue's dead-letter settings move it aside.
                            tracing::error!(error = %e, "undecodable message; dead-lettering");
                            let reject = BasicRejectOptions { requeue: false };
                            if let Err(e) = message.acker.reject(reject).await {
                                tracing::warn!(error = %e, "reject failed");
                            }
                            None
                        }
                    },
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        let link = self.inner.link().await?;
        // A fresh channel: a passive declare of a missing queue closes its channel.
        let channel = link
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let (backlog, consumers) = self.inner.queue_depth(&channel, &self.inner.queue).await?;
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
        let link = self.inner.link.lock().await.take();
        if let Some(link) = link {
            // connection.close waits for the broker's close-ok, which the broker sends after
            // handling every frame before it: the last acks are in.
            link.connection
                .close(200, "shutting down".into())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn delete_topology(&self) -> Result<(), BrokerError> {
        let link = self.inner.link().await?;
        let inner = &self.inner;
        for name in [&inner.queue, &inner.retry_queue, &inner.dead_queue] {
            link.publisher
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

/// Settles one RabbitMQ delivery through its channel's acker.
struct RabbitSettle {
    inner: Arc<Inner>,
    acker: lapin::Acker,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn retry(
        self: Box<Self>,
        job: &Job,
        next_attempt: u32,
        after: Duration,
    ) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .publish_to(
                &inner.retry_queue,
                std::slice::from_ref(job),
                |job| attempt_headers(job, next_attempt),
                Some(after),
            )
            .await?;
        self.ack().await
    }

    async fn dead_letter(self: Box<Self>, job: &Job, reason: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner
            .publish_to(
                &inner.dead_queue,
                std::slice::from_ref(job),
                |job| {
                    let mut table = attempt_headers(job, 0);
                    table.insert(headers::DEAD_REASON.into(), text(reason));
                    table
                },
                None,
            )
            .await?;
        self.ack().await
    }

    fn release(self: Box<Self>) {
        let acker = self.acker;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                if let Err(e) = acker.nack(requeue).await {
                    // The channel is gone: the broker requeues its unacked messages anyway.
                    tracing::debug!(error = %e, "release nack failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_defaults_to_16_kib_unless_the_url_sets_one() {
        let default = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(default.query.frame_max, Some(DEFAULT_FRAME_MAX));
        let own = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(own.query.frame_max, Some(131_072));
    }

    #[test]
    fn a_malformed_url_is_a_config_error_without_the_password() {
        for url in [
            "amqp://user:s3cret@127.0.0.1:5672/%2f?frame_max=many",
            "amqp://user:s3cret@[::1",
        ] {
            let e = connection_uri(url).unwrap_err();
            assert!(matches!(e, BrokerError::Config(_)), "{url}: {e:?}");
            assert!(!e.to_string().contains("s3cret"), "{url}: {e}");
        }
    }
}
