//! Publishing with publisher confirms (on a fresh channel after a nack), and the Surge
//! headers every message carries.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use super::connection::{unavailable, Link};
use super::topology::text;
use super::{headers, BrokerError, Inner};
use crate::job::Job;

/// Persistent delivery mode (survives a broker restart on a durable queue).
const PERSISTENT: u8 = 2;

impl Inner {
    /// Publishes each job to the queue `queue_of` names for it and waits for every confirm.
    pub(super) async fn publish_to<'q>(
        &self,
        queue_of: impl Fn(&Job) -> &'q str,
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
                .with_priority(job.priority())
                .with_headers(headers(job));
            if let Some(ttl) = expiration {
                properties = properties.with_expiration(ttl.as_millis().to_string().into());
            }
            let confirm = link
                .publisher
                .basic_publish(
                    "".into(),
                    queue_of(job).into(),
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
}

/// The headers of `job`'s message for delivery attempt `attempt`.
pub(super) fn attempt_headers(job: &Job, attempt: u32) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(attempt));
    table.insert(headers::JOB_ID.into(), text(&job.id.to_string()));
    table.insert(headers::JOB_KIND.into(), text(job.kind.as_str()));
    if let Some(traceparent) = &job.traceparent {
        table.insert(headers::TRACEPARENT.into(), text(traceparent));
    }
    table
}

/// Header `name` as a `u32`, whichever integer type the sender used.
pub(super) fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
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
