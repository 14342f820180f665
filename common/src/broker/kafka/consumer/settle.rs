//! The settle handle of one Kafka delivery: ack marks its offset settled; retry and
//! dead-letter first produce the job to `T.retry` / `T.dead` and settle only once that
//! record's delivery report succeeded; release hands it back to the consumer task.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::super::producer::Extra;
use super::super::Inner;
use super::schedule::not_before_ms;
use super::state::{InFlight, Ready, Shared};
use crate::broker::{BrokerError, Settle};
use crate::job::Job;

/// Settles one Kafka delivery; holds one permit of its consumer's prefetch window.
pub(super) struct KafkaSettle {
    pub inner: Arc<Inner>,
    pub shared: Arc<Shared>,
    pub releases: mpsc::UnboundedSender<Ready>,
    pub item: Ready,
    pub permit: OwnedSemaphorePermit,
    pub in_flight: InFlight,
}

impl KafkaSettle {
    /// Produces `job` to `topic` with `attempt` and `extra`; settles on success, hands the
    /// delivery back (so it is delivered again) on failure.
    async fn forward(
        self: Box<Self>,
        topic: &str,
        job: &Job,
        attempt: u32,
        extra: Extra<'_>,
    ) -> Result<(), BrokerError> {
        let sent = self
            .inner
            .producer
            .send(topic, std::slice::from_ref(job), attempt, extra)
            .await;
        match sent {
            Ok(()) => {
                self.shared.settle(&self.item.pos);
                Ok(())
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.shared.settle(&self.item.pos);
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        job: &Job,
        next_attempt: u32,
        after: Duration,
    ) -> Result<(), BrokerError> {
        let extra = Extra {
            not_before_ms: Some(not_before_ms(crate::clock::now_micros() / 1000, after)),
            dead_reason: None,
        };
        let topic = self.inner.topics.retry.clone();
        self.forward(&topic, job, next_attempt, extra).await
    }

    async fn dead_letter(self: Box<Self>, job: &Job, reason: &str) -> Result<(), BrokerError> {
        let extra = Extra {
            not_before_ms: None,
            dead_reason: Some(reason),
        };
        let topic = self.inner.topics.dead.clone();
        let attempt = self.item.attempt;
        self.forward(&topic, job, attempt, extra).await
    }

    fn release(self: Box<Self>) {
        // Unbounded send never blocks. If the consumer task is gone the offset was never
        // committed, so the partition's next owner delivers the job again.
        let KafkaSettle {
            releases,
            item,
            permit,
            in_flight,
            ..
        } = *self;
        let _ = releases.send(item);
        // The window permit and the in-flight count go after the job is queued again.
        drop((permit, in_flight));
    }
}
