//! Publishing: an idempotent, `acks=all` producer shared by every caller of a broker.
//!
//! A call enqueues all its records first (librdkafka batches them, waiting up to `linger.ms`
//! to fill a batch) and only then awaits their delivery reports, so one call — and many
//! concurrent calls — keep many sends in flight. `Ok` means every record's delivery report
//! succeeded: the broker acknowledged it from all in-sync replicas.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

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

/// The shared producer.
#[derive(Clone)]
pub(super) struct Producer {
    inner: FutureProducer<TracingContext>,
}

impl Producer {
    /// Creates the producer. Does not contact the broker yet.
    pub(super) fn new(bootstrap: &str) -> Result<Self, BrokerError> {
        let inner = base_config(bootstrap, "surge-producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("request.timeout.ms", "10000")
            .create_with_context(TracingContext)
            .map_err(|e| broker_error(&e))?;
        Ok(Producer { inner })
    }

    /// The underlying client, for metadata queries.
    pub(super) fn client(&self) -> &FutureProducer<TracingContext> {
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
