//! The RabbitMQ queue type (`--rabbitmq-queue-type` / `SURGE_RABBITMQ_QUEUE_TYPE`). It lives
//! outside `rabbitmq/` so that the flag parses in a build without the `rabbitmq` feature,
//! like `--amqp-url`: such a build then fails at start-up naming the missing feature.

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
