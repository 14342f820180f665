//! The queues of one Surge queue `Q` (`Q`, `Q.retry`, `Q.dead`): declaring them, reading
//! their depth, deleting them.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::connection::unavailable;
use super::{BrokerError, Inner};

/// An AMQP long-string value.
pub(super) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

impl Inner {
    /// Declares the three durable queues and their dead-letter routing.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions::durable();
        let mut main_args = FieldTable::default();
        main_args.insert("x-dead-letter-exchange".into(), text(""));
        main_args.insert("x-dead-letter-routing-key".into(), text(&self.dead_queue));
        let mut retry_args = FieldTable::default();
        retry_args.insert("x-dead-letter-exchange".into(), text(""));
        retry_args.insert("x-dead-letter-routing-key".into(), text(&self.queue));
        for (name, args) in [
            (&self.queue, main_args),
            (&self.retry_queue, retry_args),
            (&self.dead_queue, FieldTable::default()),
        ] {
            channel
                .queue_declare(name.as_str().into(), durable, args)
                .await
                .map_err(|e| match e.kind() {
                    lapin::ErrorKind::ProtocolError(_) => {
                        BrokerError::Config(format!("queue {name} exists with other settings: {e}"))
                    }
                    _ => unavailable(e),
                })?;
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
        for name in [&self.queue, &self.retry_queue, &self.dead_queue] {
            link.publisher
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}
