//! Kafka backend (rdkafka). Placeholder until the Kafka issue lands.

use async_trait::async_trait;

use super::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use crate::job::Job;

/// The Kafka broker.
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    _topic: String,
}

impl KafkaBroker {
    /// Connects to `bootstrap` and makes sure `topic` (and its retry / dead-letter topics)
    /// exist with `partitions` partitions.
    pub async fn connect(
        _bootstrap: &str,
        _topic: &str,
        _partitions: i32,
    ) -> Result<Self, BrokerError> {
        Err(BrokerError::Config(
            "the Kafka backend is not built yet".into(),
        ))
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn publish(&self, _jobs: &[Job]) -> Result<(), BrokerError> {
        Err(BrokerError::Config(
            "the Kafka backend is not built yet".into(),
        ))
    }
    async fn consume(&self, _options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        Err(BrokerError::Config(
            "the Kafka backend is not built yet".into(),
        ))
    }
    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        Err(BrokerError::Config(
            "the Kafka backend is not built yet".into(),
        ))
    }
    fn name(&self) -> &'static str {
        "kafka"
    }
}
