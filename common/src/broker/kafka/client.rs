//! What every librdkafka client of this backend shares: base configuration, log routing
//! into `tracing`, and the mapping of librdkafka errors onto [`BrokerError`].

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::broker::BrokerError;

/// Longest a `stats()` query (offsets, watermarks) may take before the broker counts as down.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest a set-up query (connect, consume) may take. Generous: on a loaded machine a
/// broker that just started (or took over a partition) can take seconds to answer.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration naming `bootstrap`, with the settings all our clients share.
pub(super) fn base_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // Fail fast on an unreachable broker instead of the 30 s / 60 s defaults.
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("socket.timeout.ms", "10000")
        // Test and compose brokers listen on IPv4 only; `localhost` may resolve to ::1 first.
        .set("broker.address.family", "v4")
        .set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Routes librdkafka's log lines and global errors into `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(&error, reason);
    }
}

impl ConsumerContext for TracingContext {}

/// Emits one librdkafka log line as a `tracing` event.
pub(super) fn log_line(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// Emits a librdkafka global error. Transport errors are routine (librdkafka reconnects on
/// its own), so they are warnings.
pub(super) fn log_error(error: &KafkaError, reason: &str) {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => {
            tracing::error!(target: "librdkafka", %error, reason, "fatal kafka client error")
        }
        _ => tracing::warn!(target: "librdkafka", %error, reason, "kafka client error"),
    }
}

/// Maps a librdkafka error onto the backend-neutral [`BrokerError`].
pub(super) fn broker_error(error: &KafkaError) -> BrokerError {
    let text = error.to_string();
    match error {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => {
            BrokerError::Config(text)
        }
        KafkaError::Canceled => BrokerError::Unavailable(text),
        KafkaError::AdminOp(code) => code_error(*code, false, text),
        KafkaError::MessageProduction(code) => code_error(*code, true, text),
        other => match other.rdkafka_error_code() {
            Some(code) => code_error(code, false, text),
            None => BrokerError::Unavailable(text),
        },
    }
}

/// Maps an error code; `producing` marks a failed delivery, where an unexplained error means
/// the broker refused the record rather than that it is out of reach.
pub(super) fn code_error(code: RDKafkaErrorCode, producing: bool, text: String) -> BrokerError {
    use RDKafkaErrorCode as C;
    match code {
        C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::PolicyViolation
        | C::InvalidConfig
        | C::InvalidArgument
        | C::UnsupportedFeature
        | C::UnsupportedVersion => BrokerError::Config(text),
        C::InvalidMessage
        | C::InvalidRecord
        | C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::OutOfOrderSequenceNumber
        | C::DuplicateSequenceNumber
        | C::InvalidRequiredAcks
        | C::Fatal => BrokerError::Rejected(text),
        code if producing && !is_transient(code) => BrokerError::Rejected(text),
        _ => BrokerError::Unavailable(text),
    }
}

/// Whether an error code means "the broker is (temporarily) out of reach".
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut
            | C::QueueFull
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::BrokerNotAvailable
            | C::BrokerDestroy
            | C::TimedOutQueue
            | C::WaitingForCoordinator
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::State
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_onto_broker_errors() {
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(
            broker_error(&timed_out),
            BrokerError::Unavailable(_)
        ));
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(broker_error(&too_large), BrokerError::Rejected(_)));
        let unknown = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert!(matches!(broker_error(&unknown), BrokerError::Config(_)));
        let down = KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown);
        assert!(matches!(broker_error(&down), BrokerError::Unavailable(_)));
        assert!(matches!(
            broker_error(&KafkaError::Canceled),
            BrokerError::Unavailable(_)
        ));
    }
}
