//! HTTP kinds: each job POSTed to an existing service, its payload as the JSON body, with
//! flow control protecting that service.
//!
//! Declared in the configuration file ([`config`]). Modelled on Google Cloud Tasks' HTTP
//! targets and Upstash QStash: the target's answer decides the outcome.
//!
//! | Target's answer | Job outcome | Notes |
//! |---|---|---|
//! | 2xx | `succeeded` | Result = the body: JSON if it parses, else a string (lossy UTF-8); empty → `null`. A body over `max_result_bytes` is not read further: the result is `{"truncated": true, "bytes": N, "content_length": …, "body": "<first N bytes>"}` |
//! | 429, 503 with `Retry-After` > 0 | kind (or key) paused | With [`HttpKind::with_pauses`] (as every worker has): the kind pauses until then for every replica ([`crate::kinds::pause`]; clamped like a `Retry-After`) and the job is deferred, no attempt consumed. On a kind with per-key limits, a job with a key pauses only its key ([`per_key`]) |
//! | 408, 429, 5xx | retried | After `Retry-After` (seconds or an HTTP-date, clamped to `max_backoff_ms`, else 1 h) when sent, else the kind's backoff. Dead after `max_attempts` |
//! | timeout, connection refused/reset | retried | `timeout_ms` covers the whole exchange, body included |
//! | 3xx | `dead` | Redirects are not followed (a redirected POST loses its body on 301/302/303, and the headers — secrets too — would go to another address): point `url` at the final address |
//! | other 4xx | `dead` | The error names the status and quotes ≤ 200 characters of the body (never a header) |
//! | kind paused, circuit open, cap or rate full (the kind's or the key's) | deferred | No request sent, no attempt consumed: the job goes back to the broker for a while |
//!
//! Every request carries `Content-Type: application/json`, `Idempotency-Key: <job id>`
//! (the same on every attempt: the target can drop repeats), `Surge-Attempt: <n>`
//! (1-based), the job's `traceparent` when it has one, and the configured `headers`
//! (which cannot replace `Idempotency-Key`, `Surge-Attempt` or `traceparent`; their values
//! are never logged).
//!
//! Flow control, in the order an attempt meets it:
//! 1. the circuit breaker ([`breaker`], per process): open after `breaker_failures`
//!    consecutive retryable failures, jobs deferred for `breaker_cooldown_ms`, then one
//!    probe;
//! 2. the per-key limits ([`per_key`], across ALL replicas, in the results database), for
//!    a job with a key: `concurrency_per_key` leased slots and `rate_per_key` requests
//!    started per second of that key; waited for at most [`per_key::KEY_WAIT_BOUND`],
//!    before any kind-wide slot is taken, so a busy key never holds up other keys;
//! 3. the adaptive limit ([`aimd`], per process): at most `limit` requests in flight,
//!    `limit` halving on 429/503/timeouts and growing back by one per window of successes,
//!    never above `concurrency`;
//! 4. the shared limits ([`shared`], across ALL replicas, in the results database):
//!    `concurrency` leased slots and `rate` requests started per second.
//!
//! Waiting for 3 and 4 is bounded ([`shared::WAIT_BOUND`]); past it the job is deferred.

pub mod aimd;
pub mod breaker;
pub mod config;
pub mod metrics;
pub mod outcome;
pub mod per_key;
pub mod request;
pub mod retry_after;
pub mod shared;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use self::aimd::AdaptiveLimit;
use self::breaker::{Admission, Breaker};
use self::config::HttpKindConfig;
use self::per_key::{KeyRefusal, PerKeyLimits};
use self::shared::{Refusal, SharedLimits};
use super::flow_store::{FlowStore, KindPause, PauseSource};
use crate::clock::now_micros;
use crate::job::{InvalidJob, Job};
use crate::kinds::pause::{KindPauses, MAX_DEFER, MIN_DEFER};
use crate::kinds::{JobError, Kind};
use crate::retry::RetryPolicy;

/// How long a job deferred because the flow-control database failed waits in the broker.
pub const DEFER_DATABASE: Duration = Duration::from_secs(1);
/// Shortest deferral for the rate limit.
pub const DEFER_RATE_MIN: Duration = Duration::from_millis(100);

/// An HTTP kind, ready to dispatch.
pub struct HttpKind {
    config: HttpKindConfig,
    client: reqwest::Client,
    breaker: Breaker,
    limit: AdaptiveLimit,
    shared: SharedLimits,
    per_key: PerKeyLimits,
    in_flight: AtomicU32,
    pauses: Option<Arc<KindPauses>>,
}

/// An HTTP kind could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("kinds.{kind}: {message}")]
pub struct HttpKindError {
    /// The kind.
    pub kind: String,
    /// Why.
    pub message: String,
}

/// The flow-control state of a kind in this process (for tests and the dashboard).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowSnapshot {
    /// The adaptive limit (1..=concurrency).
    pub limit: f64,
    /// Requests in flight from this process.
    pub in_flight: u32,
    /// Whether the circuit is open or half-open.
    pub breaker_open: bool,
}

impl HttpKind {
    /// A dispatcher for `config`. `store` is the results database, shared by every
    /// replica ([`crate::storage::Storage`]): it holds the cross-replica concurrency and
    /// rate state (its rows are written by [`HttpKind::prepare`], at worker start-up).
    pub fn new(
        config: HttpKindConfig,
        store: impl FlowStore + 'static,
    ) -> Result<HttpKind, HttpKindError> {
        let store: Arc<dyn FlowStore> = Arc::new(store);
        let client = request::client(&config).map_err(|e| HttpKindError {
            kind: config.name.clone(),
            message: format!("building the HTTP client: {e}"),
        })?;
        let shared = SharedLimits::new(
            store.clone(),
            &config.name,
            config.concurrency,
            config.rate,
            config.timeout,
        );
        let per_key = PerKeyLimits::new(
            store,
            &config.name,
            config.concurrency_per_key,
            config.rate_per_key,
            config.timeout,
        );
        Ok(HttpKind {
            per_key,
            client,
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            limit: AdaptiveLimit::new(config.concurrency, config.adaptive),
            shared,
            in_flight: AtomicU32::new(0),
            pauses: None,
            config,
        })
    }

    /// Records in `pauses` the pause a target asks for (a `429` or `503` with a
    /// `Retry-After` above zero, up to `max_backoff_ms`, else 1 h): the kind is paused for
    /// every replica until then and the job is deferred, no attempt consumed. Without it
    /// such an answer is a retryable failure retried after the `Retry-After`.
    pub fn with_pauses(mut self, pauses: Arc<KindPauses>) -> HttpKind {
        self.pauses = Some(pauses);
        self
    }

    /// Records the kind's concurrency and writes its slot rows in the shared database;
    /// refused when other replicas use another concurrency ([`shared::PrepareError`]). The
    /// worker does it at start-up ([`Kind::prepare`]); the first attempt does it otherwise.
    pub async fn prepare(&self) -> Result<(), shared::PrepareError> {
        self.shared.prepare().await
    }

    /// The checked configuration.
    pub fn config(&self) -> &HttpKindConfig {
        &self.config
    }

    /// The flow-control state in this process.
    pub fn flow(&self) -> FlowSnapshot {
        FlowSnapshot {
            limit: self.limit.limit(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            breaker_open: self.breaker.is_open(),
        }
    }

    fn publish_gauges(&self) {
        let flow = self.flow();
        metrics::gauges(
            &self.config.name,
            flow.limit,
            flow.in_flight,
            flow.breaker_open,
        );
    }

    fn defer(&self, reason: &'static str, message: String, after: Duration) -> JobError {
        metrics::deferred(&self.config.name, reason);
        self.publish_gauges();
        tracing::debug!(kind = %self.config.name, reason, ?after, "job deferred");
        JobError::Deferred {
            reason: message,
            after,
        }
    }

    /// The target asked for `wait` (a 429/503 with `Retry-After`): pause the kind that long
    /// for every replica, and defer this job (no attempt consumed).
    async fn pause(
        &self,
        pauses: &KindPauses,
        wait: Duration,
        result: Result<Value, JobError>,
    ) -> JobError {
        let answer = match result {
            Err(JobError::Retryable { message, .. }) => message,
            _ => "the target asked to wait".to_owned(),
        };
        let now = now_micros();
        let until = now.saturating_add(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX));
        tracing::warn!(kind = %self.config.name, ?wait, "the target asked to wait: kind paused");
        pauses
            .record(KindPause {
                kind: self.config.name.clone(),
                until_us: Some(until),
                reason: format!("{answer} (Retry-After)"),
                source: PauseSource::Target,
                set_at_us: now,
            })
            .await;
        self.defer(
            "paused",
            format!("{answer}; kind paused for {} s", wait.as_secs_f64().ceil()),
            wait.clamp(MIN_DEFER, MAX_DEFER),
        )
    }

    /// The target asked this job's key to wait (recorded by [`PerKeyLimits::pause`]):
    /// defer the job (no attempt consumed); other keys go on.
    fn key_paused(&self, wait: Duration, result: Result<Value, JobError>) -> JobError {
        let answer = match result {
            Err(JobError::Retryable { message, .. }) => message,
            _ => "the target asked to wait".to_owned(),
        };
        tracing::info!(kind = %self.config.name, ?wait, "the target asked a key to wait: key paused");
        self.defer(
            "key_paused",
            format!(
                "{answer}; this job's key paused for {} s",
                wait.as_secs_f64().ceil()
            ),
            wait.clamp(MIN_DEFER, MAX_DEFER),
        )
    }

    fn max_retry_after(&self) -> Duration {
        self.config
            .max_backoff
            .unwrap_or(retry_after::DEFAULT_MAX_RETRY_AFTER)
    }
}

/// Counts a request in flight while alive.
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Kind for HttpKind {
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        match &self.config.schema {
            Some(schema) => schema.validate(payload),
            None => Ok(()),
        }
    }

    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError> {
        let ticket = match self.breaker.admit(Instant::now()) {
            Admission::Go(ticket) => ticket,
            Admission::Wait(after) => {
                return Err(self.defer(
                    "breaker",
                    format!(
                        "the circuit of {} is open after repeated failures",
                        self.config.name
                    ),
                    after,
                ))
            }
        };
        // The key's turn first: a key at its cap waits holding nothing kind-wide.
        let key_lease = match self
            .per_key
            .acquire(job.key.as_deref(), Instant::now() + per_key::KEY_WAIT_BOUND)
            .await
        {
            Ok(lease) => lease,
            Err(refusal) => {
                let (reason, after) = match &refusal {
                    KeyRefusal::Concurrency(_) => ("key_concurrency", per_key::KEY_DEFER_BUSY),
                    KeyRefusal::Rate(next) => {
                        ("key_rate", (*next).max(per_key::KEY_DEFER_RATE_MIN))
                    }
                    KeyRefusal::Paused(left) => ("key_paused", (*left).clamp(MIN_DEFER, MAX_DEFER)),
                    KeyRefusal::Database(error) => {
                        tracing::warn!(kind = %self.config.name, %error, "flow-control database failed; deferring");
                        ("database", DEFER_DATABASE)
                    }
                };
                return Err(self.defer(reason, refusal.to_string(), after));
            }
        };
        let deadline = Instant::now() + shared::WAIT_BOUND;
        let Some(permit) = self.limit.acquire(deadline).await else {
            key_lease.release().await;
            return Err(self.defer(
                "concurrency",
                format!(
                    "this worker's adaptive limit for {} ({:.0}) stayed full",
                    self.config.name,
                    self.limit.limit()
                ),
                shared::DEFER_BUSY,
            ));
        };
        let lease = match self.shared.acquire(deadline).await {
            Ok(lease) => lease,
            Err(refusal) => {
                let (reason, after) = match &refusal {
                    Refusal::Concurrency(_) => ("concurrency", shared::DEFER_BUSY),
                    Refusal::Rate(next) => ("rate", (*next).max(DEFER_RATE_MIN)),
                    Refusal::Database(error) => {
                        tracing::warn!(kind = %self.config.name, %error, "flow-control database failed; deferring");
                        ("database", DEFER_DATABASE)
                    }
                    Refusal::Setup(error) => {
                        tracing::error!(kind = %self.config.name, %error, "deferring");
                        ("database", DEFER_DATABASE)
                    }
                };
                key_lease.release().await;
                return Err(self.defer(reason, refusal.to_string(), after));
            }
        };
        // A pause learned while this job waited for its turn (another job's 429) holds it.
        if let Some((after, reason)) = self
            .pauses
            .as_ref()
            .and_then(|p| p.deferral_known(&self.config.name))
        {
            lease.release().await;
            key_lease.release().await;
            return Err(self.defer("paused", reason, after));
        }
        let started = Instant::now();
        let verdict = {
            let _counted = InFlight::new(&self.in_flight);
            self.publish_gauges();
            match request::send(&self.client, &self.config, job, attempt).await {
                Ok(answer) => outcome::from_answer(answer, self.max_retry_after()),
                Err(error) => outcome::from_error(&error),
            }
        };
        let took = started.elapsed();
        lease.release().await;
        key_lease.release().await;
        self.limit.record(&permit, verdict.signal);
        drop(permit);
        if ticket.record(verdict.failed, Instant::now()) {
            tracing::warn!(
                kind = %self.config.name,
                failures = self.config.breaker_failures,
                cooldown = ?self.config.breaker_cooldown,
                "circuit opened: jobs of this kind are deferred until a probe succeeds"
            );
        }
        metrics::response(&self.config.name, verdict.class, took);
        self.publish_gauges();
        match (verdict.pause, &self.pauses) {
            (Some(wait), _) if self.per_key.pause(job.key.as_deref(), wait).await => {
                Err(self.key_paused(wait, verdict.result))
            }
            (Some(wait), Some(pauses)) => Err(self.pause(pauses, wait, verdict.result).await),
            _ => verdict.result,
        }
    }

    fn kind_type(&self) -> &'static str {
        "http"
    }

    async fn prepare(&self) -> Result<(), HttpKindError> {
        HttpKind::prepare(self).await.map_err(|e| HttpKindError {
            kind: self.config.name.clone(),
            message: e.to_string(),
        })
    }

    fn flow(&self) -> Option<Value> {
        let flow = HttpKind::flow(self);
        Some(serde_json::json!({
            "limit": flow.limit,
            "in_flight": flow.in_flight,
            "breaker_open": flow.breaker_open,
            "concurrency": self.config.concurrency,
            "concurrency_per_key": self.config.concurrency_per_key,
            "rate_per_key": self.config.rate_per_key,
        }))
    }

    fn callback_url(&self) -> Option<String> {
        self.config.callback_url.clone()
    }

    fn key_from(&self) -> Option<&crate::job::KeySource> {
        self.config.key_from.as_ref()
    }

    fn description(&self) -> String {
        self.config
            .description
            .clone()
            // Public (`/openapi.json`): never the URL, which may carry credentials and
            // names an internal service.
            .unwrap_or_else(|| {
                "POSTs the payload to the HTTP service configured for this kind".into()
            })
    }

    fn payload_schema(&self) -> Value {
        self.config
            .schema
            .as_ref()
            .map(|s| s.document().clone())
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    fn retry_policy(&self, worker: RetryPolicy) -> RetryPolicy {
        self.config.retry_policy(worker)
    }
}
