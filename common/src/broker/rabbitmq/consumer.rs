//! Consuming: one channel per stream with `basic_qos(prefetch)`, one consumer on it per
//! queue (`Q` and each fairness lane, so each has its own window), manual acks, and how
//! one delivery is settled (ack, retry through `Q.retry`, dead-letter to `Q.dead`, release
//! by a requeueing nack).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;

use super::connection::unavailable;
use super::publish::{attempt_headers, header_u32};
use super::topology::text;
use super::{headers, BrokerError, ConsumeOptions, Deliveries, Delivery, Inner, Settle, LANES};
use crate::job::Job;

/// Starts a consumer on the main queue of `inner`.
pub(super) async fn consume(
    inner: Arc<Inner>,
    options: ConsumeOptions,
) -> Result<Deliveries, BrokerError> {
    if options.prefetch == 0 {
        return Err(BrokerError::Config("prefetch must be at least 1".into()));
    }
    let link = inner.link().await?;
    let channel = link
        .connection
        .create_channel()
        .await
        .map_err(unavailable)?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await
        .map_err(unavailable)?;
    // One consumer per queue (`Q` and each lane), each with its own prefetch window
    // (`basic_qos` without `global` is per consumer), merged into one stream.
    let mut consumers = Vec::with_capacity(LANES + 1);
    for queue in inner.consumed_queues() {
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        consumers.push(consumer);
    }
    // The channel must live as long as the stream: it is moved into the closure.
    let stream = futures::stream::select_all(consumers).filter_map(move |item| {
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
                |_| inner.retry_queue.as_str(),
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
                |_| inner.dead_queue.as_str(),
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
