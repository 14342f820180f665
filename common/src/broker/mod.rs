//! The broker contract every backend fulfils, and the backends.
//!
//! Guarantee: at-least-once delivery. [`Broker::publish`] returns `Ok` only once the broker
//! is responsible for every job (RabbitMQ publisher confirm, Kafka delivery report). Each
//! [`Delivery`] is settled exactly once — [`Delivery::ack`], [`Delivery::retry`], [`Delivery::defer`] or
//! [`Delivery::dead_letter`] take `self`, so settling twice does not compile — and a
//! delivery dropped unsettled is released back to the broker for redelivery.
//!
//! Backends: [`memory`] is always there; [`rabbitmq`] and [`kafka`] are each one folder
//! behind the cargo feature of the same name (both on by default), so a build that needs
//! only one does not compile the other's client library. `factory` ([`connect`]) picks one at
//! start-up; see it for how to add a backend.

mod factory;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kafka_tuning;
pub mod memory;
mod queue_type;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

pub use factory::{connect, BrokerKind, BrokerTarget};
pub use kafka_tuning::{KafkaAssignment, KafkaTuning};
pub use queue_type::QueueType;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::job::Job;

/// Errors from any backend.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or refused the operation; the caller may retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not take responsibility for a job (nack, failed delivery report).
    #[error("broker rejected the publish: {0}")]
    Rejected(String),
    /// Misconfiguration (bad URL, bad topology); retrying will not help.
    #[error("broker misconfigured: {0}")]
    Config(String),
}

/// Backlog and health, for `/readyz`, admission control and reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Jobs waiting to be delivered (queue depth / consumer lag), when the broker can say.
    pub backlog: Option<u64>,
    /// Jobs delivered and not yet settled, when the broker can say.
    pub in_flight: Option<u64>,
    /// Jobs in the dead-letter store, when the broker can say.
    pub dead_letters: Option<u64>,
    /// Consumers attached, when the broker can say.
    pub consumers: Option<u64>,
}

/// How a consumer wants to receive jobs.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Consumer group (Kafka group id; informational elsewhere).
    pub group: String,
    /// Most deliveries this consumer holds unsettled at once (RabbitMQ prefetch).
    pub prefetch: u16,
}

/// A stream of deliveries. It ends when the consumer is cancelled; an `Err` item reports a
/// broken connection (the caller reconnects by calling [`Broker::consume`] again).
pub type Deliveries = Pin<Box<dyn Stream<Item = Result<Delivery, BrokerError>> + Send>>;

/// A message broker Surge can publish jobs to and consume them from.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes `jobs`. `Ok` only once the broker is responsible for every one of them.
    /// On `Err` some may have been stored: callers must treat the whole call as failed and
    /// rely on job-id keyed results to make a client's retry harmless.
    async fn publish(&self, jobs: &[Job]) -> Result<(), BrokerError>;

    /// Starts consuming.
    async fn consume(&self, options: ConsumeOptions) -> Result<Deliveries, BrokerError>;

    /// Backlog and health. `Err` means the broker is not reachable.
    async fn stats(&self) -> Result<BrokerStats, BrokerError>;

    /// A short name for logs and reports (`memory`, `rabbitmq`, `kafka`).
    fn name(&self) -> &'static str;

    /// Deletes the queues / topics this broker declared, with everything in them. For
    /// tests and demos that use names of their own; never call it on a production queue.
    async fn delete_topology(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Closes the connection gracefully, so settlements sent just before (acks) reach the
    /// broker before the socket goes away. Call it last, when the process is done with the
    /// broker; a later call reconnects.
    async fn close(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// How a backend settles one delivery. Implemented by each backend; users call the
/// methods on [`Delivery`] instead.
#[async_trait]
pub trait Settle: Send + 'static {
    /// The job is done (its result is committed): forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Deliver `job` again after `after`, as attempt `next_attempt`.
    async fn retry(
        self: Box<Self>,
        job: &Job,
        next_attempt: u32,
        after: Duration,
    ) -> Result<(), BrokerError>;
    /// Move `job` to the dead letters with `reason`.
    async fn dead_letter(self: Box<Self>, job: &Job, reason: &str) -> Result<(), BrokerError>;
    /// Called when the delivery is dropped unsettled: hand it back for redelivery.
    /// Must not block (it runs in `Drop`).
    fn release(self: Box<Self>);
}

/// One job handed to a consumer. Settle it exactly once.
pub struct Delivery {
    /// The job.
    pub job: Job,
    /// 1 for the first delivery; retries count up. A crash redelivery keeps the number.
    pub attempt: u32,
    /// The broker says this may have been delivered before (a consumer died or let go).
    pub redelivered: bool,
    settle: Option<Box<dyn Settle>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("job", &self.job.id)
            .field("attempt", &self.attempt)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// Wraps a backend's settle handle.
    pub fn new(job: Job, attempt: u32, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Delivery {
            job,
            attempt: attempt.max(1),
            redelivered,
            settle: Some(settle),
        }
    }

    fn take(&mut self) -> Box<dyn Settle> {
        self.settle
            .take()
            .expect("a Delivery holds its settle handle until settled")
    }

    /// Acknowledges the job. Call only after its result is committed.
    pub async fn ack(mut self) -> Result<(), BrokerError> {
        self.take().ack().await
    }

    /// Schedules the job for another attempt after `after`.
    pub async fn retry(mut self, after: Duration) -> Result<(), BrokerError> {
        let next = self.attempt.saturating_add(1);
        let settle = self.take();
        settle.retry(&self.job, next, after).await
    }

    /// Hands the job back to come again after `after` *without consuming an attempt*: it
    /// was not attempted (its kind is unknown to this worker, its target's circuit is
    /// open, its target is at its concurrency cap).
    pub async fn defer(mut self, after: Duration) -> Result<(), BrokerError> {
        let attempt = self.attempt;
        let settle = self.take();
        settle.retry(&self.job, attempt, after).await
    }

    /// Moves the job to the dead letters, recording `reason`.
    pub async fn dead_letter(mut self, reason: &str) -> Result<(), BrokerError> {
        let settle = self.take();
        settle.dead_letter(&self.job, reason).await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.release();
        }
    }
}

/// Message header names shared by the backends.
pub mod headers {
    /// The attempt number (1-based) of this delivery.
    pub const ATTEMPT: &str = "x-surge-attempt";
    /// Why a job was dead-lettered.
    pub const DEAD_REASON: &str = "x-surge-dead-reason";
    /// The job id.
    pub const JOB_ID: &str = "x-surge-job-id";
    /// The job kind.
    pub const JOB_KIND: &str = "x-surge-job-kind";
    /// W3C trace context (also inside the job body, which is what the worker reads).
    pub const TRACEPARENT: &str = "traceparent";
}
