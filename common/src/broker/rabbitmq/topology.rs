//! The queues of one Surge queue `Q` (`Q`, `Q.retry`, `Q.dead`): their arguments per
//! [`QueueType`], declaring them (with a clear error when they exist with another type),
//! reading their depth, deleting them.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::connection::unavailable;
use super::{BrokerError, Inner, QueueType};

/// An AMQP long-string value.
pub(super) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The declare arguments of a queue of type `queue_type` whose dead letters (rejected or
/// expired messages) go to `dead_letter_to`, if any.
/// RabbitMQ's priority levels on a classic lane (`x-max-priority`): the job's 1 to 5.
/// Quorum queues of RabbitMQ 3.x take no priorities (4.x orders two levels by itself).
const LANE_PRIORITIES: u8 = crate::job::MAX_PRIORITY;

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

impl Inner {
    /// Declares the three durable queues, of [`Inner::queue_type`], and their dead-letter
    /// routing on `channel`; on a mismatch, finds out the existing type through
    /// `connection` for the error message.
    pub(super) async fn declare(
        &self,
        connection: &Connection,
        channel: &Channel,
    ) -> Result<(), BrokerError> {
        let kind = self.queue_type;
        let lanes = self
            .lanes
            .iter()
            .map(|lane| (lane, Some(self.dead_queue.as_str()), true));
        for (name, dead_letter_to, lane) in [
            (&self.queue, Some(self.dead_queue.as_str()), false),
            (&self.retry_queue, Some(self.queue.as_str()), false),
            (&self.dead_queue, None, false),
        ]
        .into_iter()
        .chain(lanes)
        {
            let mut args = queue_arguments(kind, dead_letter_to);
            if lane && kind == QueueType::Classic {
                args.insert(
                    "x-max-priority".into(),
                    AMQPValue::ShortShortUInt(LANE_PRIORITIES),
                );
            }
            let declared = channel
                .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
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

    /// Messages ready and consumers attached on queue `name` (a passive declare, which
    /// closes `channel` if the queue is missing).
    pub(super) async fn queue_depth(
        &self,
        channel: &Channel,
        name: &str,
    ) -> Result<(u64, u64), BrokerError> {
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

    /// Deletes the three queues with everything in them.
    pub(super) async fn delete_queues(&self) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let all = [&self.queue, &self.retry_queue, &self.dead_queue];
        for name in all.into_iter().chain(self.lanes.iter()) {
            link.publisher
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
