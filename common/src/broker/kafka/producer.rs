//! Publishing: an idempotent, `acks=all` producer shared by every caller of a broker.
//!
//! A call enqueues all its records first (librdkafka batches them, waiting up to `linger.ms`
//! to fill a batch) and only then awaits their delivery reports, so one call — and many
//! concurrent calls — keep many sends in flight. `Ok` means every record's delivery report
//! succeeded: the broker acknowledged it from all in-sync replicas. While librdkafka says
//! every broker is down, publishes fail fast (see [`Reachability`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;

use super::client::{base_config, broker_error, TracingContext, SETUP_TIMEOUT};
use crate::broker::{headers, BrokerError};
use crate::job::Job;

/// How long librdkafka may try to deliver a record (retries included) before reporting
/// failure. Bounds how long a publish waits when the broker is down.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to keep retrying when librdkafka's local queue is full.
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(5);

/// Extra metadata a record carries besides the job.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Extra<'a> {
    /// Earliest delivery time for a retry (ms since the epoch).
    pub not_before_ms: Option<i64>,
    /// Why a job was dead-lettered.
    pub dead_reason: Option<&'a str>,
}

/// Header carrying a retry's earliest delivery time, in milliseconds since the Unix epoch.
pub(super) const NOT_BEFORE: &str = "x-surge-not-before-ms";

/// While all brokers are down, one publish per this interval still goes to librdkafka (to
/// find out whether they are back); the others fail at once.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether the cluster is reachable, as librdkafka reports it: "all brokers down" marks it
/// down; a broker in state `UP` in the once-a-second statistics, or a delivered record,
/// marks it up. While down, publishes fail fast with `Unavailable` (the ingress answers
/// 503 within milliseconds instead of holding the request for the delivery timeout),
/// except one probe per [`PROBE_INTERVAL`], since an idle producer may not reconnect on
/// its own.
#[derive(Debug, Default)]
pub(super) struct Reachability {
    /// Milliseconds since the epoch when it went down; 0 while up.
    down_since_ms: AtomicU64,
    /// When the last probe was let through (ms since the epoch).
    last_probe_ms: AtomicU64,
}

impl Reachability {
    fn mark_down(&self) {
        let went_down = self
            .down_since_ms
            .compare_exchange(0, now_ms().max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if went_down {
            tracing::warn!("all kafka brokers are down: publishes fail fast until one is back");
        }
    }

    fn mark_up(&self) {
        let was_down = self.down_since_ms.swap(0, Ordering::AcqRel);
        if was_down != 0 {
            let for_ms = now_ms().saturating_sub(was_down);
            tracing::info!(for_ms, "a kafka broker is reachable again");
        }
    }

    /// Whether a publish may go to librdkafka now.
    fn admit(&self) -> bool {
        if self.down_since_ms.load(Ordering::Acquire) == 0 {
            return true;
        }
        let now = now_ms();
        let last = self.last_probe_ms.load(Ordering::Acquire);
        let interval = u64::try_from(PROBE_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) >= interval
            && self
                .last_probe_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

fn now_ms() -> u64 {
    u64::try_from(crate::clock::now_micros() / 1000).unwrap_or(0)
}

/// The producer's librdkafka context: logs like [`TracingContext`] and keeps
/// [`Reachability`] up to date.
#[derive(Clone)]
pub(super) struct ProducerContext {
    reachability: Arc<Reachability>,
}

impl ClientContext for ProducerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        TracingContext.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.reachability.mark_down();
        }
        TracingContext.error(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        if statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP")
        {
            self.reachability.mark_up();
        }
    }
}

/// The shared producer.
#[derive(Clone)]
pub(super) struct Producer {
    inner: FutureProducer<ProducerContext>,
    reachability: Arc<Reachability>,
}

impl Producer {
    /// Creates the producer with `linger_ms`. Does not contact the broker yet.
    pub(super) fn new(bootstrap: &str, linger_ms: u32) -> Result<Self, BrokerError> {
        let reachability = Arc::new(Reachability::default());
        let context = ProducerContext {
            reachability: reachability.clone(),
        };
        let inner = base_config(bootstrap, "surge-producer")
            // Broker states once a second, for Reachability.
            .set("statistics.interval.ms", "1000")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("request.timeout.ms", "10000")
            .create_with_context(context)
            .map_err(|e| broker_error(&e))?;
        Ok(Producer {
            inner,
            reachability,
        })
    }

    /// Fails fast while librdkafka reports every broker down (see [`Reachability`]).
    fn check_reachable(&self) -> Result<(), BrokerError> {
        if self.reachability.admit() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(
                "all Kafka brokers are down (librdkafka keeps reconnecting)".into(),
            ))
        }
    }

    /// The underlying client, for metadata queries.
    pub(super) fn client(&self) -> &FutureProducer<ProducerContext> {
        &self.inner
    }

    /// Sends `jobs` to `topic` as attempt `attempt` and waits for every delivery report.
    pub(super) async fn send(
        &self,
        topic: &str,
        jobs: &[Job],
        attempt: u32,
        extra: Extra<'_>,
    ) -> Result<(), BrokerError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.check_reachable()?;
        let encoded: Vec<(String, Vec<u8>, OwnedHeaders)> = jobs
            .iter()
            .map(|job| {
                (
                    job.partition_key(),
                    job.encode(),
                    job_headers(job, attempt, extra),
                )
            })
            .collect();
        let mut reports = Vec::with_capacity(encoded.len());
        for (key, payload, headers) in &encoded {
            let record = FutureRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice())
                .headers(headers.clone());
            reports.push(self.enqueue(record).await?);
        }
        // Every record is enqueued; librdkafka reports each within DELIVERY_TIMEOUT. The
        // outer timeout only guards against a report that never comes.
        let outcome = tokio::time::timeout(DELIVERY_TIMEOUT + SETUP_TIMEOUT, join_all(reports))
            .await
            .map_err(|_| BrokerError::Unavailable("no delivery report in time".into()))?;
        for report in outcome {
            match report {
                Ok(Ok(_delivered)) => {}
                Ok(Err((e, _message))) => return Err(broker_error(&e)),
                Err(_canceled) => {
                    return Err(BrokerError::Unavailable(
                        "the producer shut down before the delivery report".into(),
                    ))
                }
            }
        }
        self.reachability.mark_up();
        Ok(())
    }

    /// Sends one record that is not a decodable job (raw bytes, e.g. to dead-letter a
    /// message someone else wrote) and waits for its delivery report.
    pub(super) async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: headers::DEAD_REASON,
            value: Some(reason),
        });
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.check_reachable()?;
        let report = self.enqueue(record).await?;
        match tokio::time::timeout(DELIVERY_TIMEOUT + SETUP_TIMEOUT, report).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(broker_error(&e)),
            Ok(Err(_)) | Err(_) => Err(BrokerError::Unavailable(
                "no delivery report in time".into(),
            )),
        }
    }

    /// Hands one record to librdkafka, waiting a little while its queue is full.
    async fn enqueue<K: rdkafka::message::ToBytes + ?Sized>(
        &self,
        mut record: FutureRecord<'_, K, [u8]>,
    ) -> Result<DeliveryFuture, BrokerError> {
        let deadline = tokio::time::Instant::now() + QUEUE_FULL_PATIENCE;
        loop {
            match self.inner.send_result(record) {
                Ok(report) => return Ok(report),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = back;
                    // Back-pressure, not synchronisation: wait for librdkafka to drain.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(broker_error(&e)),
            }
        }
    }
}

/// The headers of a job record: attempt, job id and kind, plus `extra`.
fn job_headers(job: &Job, attempt: u32, extra: Extra<'_>) -> OwnedHeaders {
    let attempt = attempt.to_string();
    let id = job.id.to_string();
    let mut out = OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: headers::ATTEMPT,
            value: Some(attempt.as_str()),
        })
        .insert(Header {
            key: headers::JOB_ID,
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: headers::JOB_KIND,
            value: Some(job.kind.as_str()),
        });
    if let Some(not_before) = extra.not_before_ms {
        let not_before = not_before.to_string();
        out = out.insert(Header {
            key: NOT_BEFORE,
            value: Some(not_before.as_str()),
        });
    }
    if let Some(reason) = extra.dead_reason {
        out = out.insert(Header {
            key: headers::DEAD_REASON,
            value: Some(reason),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_down_only_one_probe_per_interval_goes_through() {
        let reachability = Reachability::default();
        assert!(reachability.admit() && reachability.admit(), "up: all pass");
        reachability.mark_down();
        assert!(reachability.admit(), "the first publish while down probes");
        assert!(!reachability.admit(), "the rest fail fast");
        assert!(!reachability.admit());
        // A probe interval later, one more probe.
        let interval = u64::try_from(PROBE_INTERVAL.as_millis()).unwrap();
        reachability
            .last_probe_ms
            .fetch_sub(interval, Ordering::AcqRel);
        assert!(reachability.admit());
        assert!(!reachability.admit());
        reachability.mark_up();
        assert!(
            reachability.admit() && reachability.admit(),
            "back up: all pass"
        );
    }
}
