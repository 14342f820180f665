//! The consume loop.
//!
//! Deliveries are held as they arrive (at most the broker's prefetch) and started in the
//! order of [`crate::fair`] (round robin over keys, priorities with aging) whenever one of
//! `capacity` permits is free (so at most `capacity` handlers run at once in this process,
//! whatever the broker sends; a permit frees when its handler returns, and the broker's
//! prefetch of [`PREFETCH_PER_SLOT`] × `capacity` bounds the jobs still settling). Each
//! runs its handler, then
//! - success → commit the result row, then ack;
//! - retryable failure with attempts left → schedule a retry after a backoff delay;
//! - permanent failure or attempts exhausted → commit a `dead` row, then dead-letter.
//!
//! A job is never acked before its row is committed: when the database stays unreachable
//! the delivery is released and the broker redelivers it later. The broker connection is
//! re-opened with backoff when the delivery stream breaks. On shutdown the loop stops
//! taking deliveries, lets in-flight jobs finish for a grace period, and releases the rest.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use futures::StreamExt;
use surge_common::broker::{Broker, BrokerError, ConsumeOptions, Deliveries, Delivery};
use surge_common::clock::now_micros;
use surge_common::metrics as m;
use surge_common::otlp::{Span, SpanKind};
use surge_common::retry::{reconnect, RetryPolicy};
use surge_common::storage::batch::{ResultWriter, StageWriter};
use surge_common::storage::cancel::Settled;
use surge_common::storage::lifecycle::{Stage, StageUpdate};
use surge_common::storage::{JobResult, JobStatus, PendingResult, Recorded, Storage};
use surge_common::trace::TraceContext;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::autoscale::desired_replicas;
use crate::fair::FairQueue;
use crate::precheck::SettledCheck;
use crate::stats::WorkerStats;
use surge_common::kinds::{JobError, Kind, KindRegistry};

/// What jobs without a key are counted under in the busiest keys (each is a fairness
/// group of its own).
pub const NO_KEY: &str = "(no key)";

/// Deliveries a worker may hold unsettled per unit of capacity (the broker prefetch is
/// `capacity` × this). A job's slot frees when its handler returns, before its result
/// commits and its delivery is acked; the extra window keeps the next jobs in hand for
/// those slots instead of waiting for an ack's round trip to the broker.
pub const PREFETCH_PER_SLOT: u16 = 2;

/// Most deliveries a worker holds, not yet started, whatever the broker's prefetch.
pub const MAX_HELD: usize = 65_536;

/// A job still running this long after it started is recorded `running` (its row's state);
/// one that finishes sooner goes from `queued` straight to its result, with no write in
/// between. Operators see `running` for jobs long enough to look at.
pub const RUNNING_STAGE_AFTER: Duration = Duration::from_millis(250);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Most jobs this worker runs at once (handlers running; the broker prefetch is
    /// [`PREFETCH_PER_SLOT`] times this).
    pub capacity: u16,
    /// Consumer group (Kafka) / informational (others).
    pub group: String,
    /// This worker's name, stored with each result.
    pub worker_id: String,
    /// Retry policy for retryable failures.
    pub retry: RetryPolicy,
    /// How long in-flight jobs may run on after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Most results committed together (group commit; see `ResultWriter`).
    pub write_batch: usize,
    /// Upper bound for the desired-replicas signal (Kafka: the partition count).
    pub max_replicas: Option<u32>,
    /// How long a job of a kind this worker does not know waits in the broker before it
    /// comes again ([`UNKNOWN_KIND_DELAY`] by default).
    pub unknown_kind_delay: Duration,
    /// Signs outcome callbacks; without it they wait undelivered.
    pub callback_secret: Option<surge_common::config::Secret>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            capacity: 200,
            group: "surge-workers".into(),
            worker_id: default_worker_id(),
            retry: RetryPolicy::default(),
            shutdown_grace: Duration::from_secs(30),
            write_batch: 256,
            max_replicas: None,
            unknown_kind_delay: UNKNOWN_KIND_DELAY,
            callback_secret: None,
        }
    }
}

/// `<hostname>-<pid>`, a name that tells replicas apart.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Why the worker stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker is misconfigured; reconnecting will not help.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A worker bound to one broker and one results store.
pub struct Worker {
    broker: Arc<dyn Broker>,
    storage: Storage,
    kinds: KindRegistry,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
}

/// How long, by default, a job of a kind this worker does not know waits in the broker
/// before it is delivered again (to this or another worker): during a rolling deploy the workers that
/// know it come up within that time.
pub const UNKNOWN_KIND_DELAY: Duration = Duration::from_secs(5);

/// What a job task needs, shared by all of them.
struct JobContext {
    kinds: KindRegistry,
    settled: SettledCheck,
    storage: Storage,
    writer: ResultWriter,
    stages: StageWriter,
    options: WorkerOptions,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker running the kinds in `kinds`; call [`Worker::run`] to start it.
    pub fn new(
        broker: Arc<dyn Broker>,
        storage: Storage,
        kinds: KindRegistry,
        options: WorkerOptions,
    ) -> Self {
        Worker {
            broker,
            storage,
            kinds,
            options,
            stats: Arc::default(),
        }
    }

    /// Live counters of this worker.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` completes, then drains in-flight jobs (see module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), WorkerError> {
        let capacity = self.options.capacity.max(1);
        let permits = Arc::new(Semaphore::new(usize::from(capacity)));
        let context = Arc::new(JobContext {
            kinds: self.kinds.clone(),
            settled: SettledCheck::spawn(self.storage.clone(), self.options.write_batch),
            storage: self.storage.clone(),
            writer: ResultWriter::spawn(self.storage.clone(), self.options.write_batch),
            stages: StageWriter::spawn(self.storage.clone(), self.options.write_batch),
            options: self.options.clone(),
            stats: self.stats.clone(),
        });
        let mut tasks = JoinSet::new();
        m::install();
        metrics::gauge!(m::CAPACITY).increment(f64::from(capacity));
        let signal = tokio::spawn(autoscale_signal(
            self.broker.clone(),
            self.stats.clone(),
            capacity,
            self.options.max_replicas,
        ));
        let heartbeat = crate::heartbeat::spawn(
            self.storage.clone(),
            self.stats.clone(),
            self.options.worker_id.clone(),
            capacity,
            self.kinds.clone(),
        );
        let callbacks = crate::callbacks::spawn(
            self.storage.clone(),
            self.options.callback_secret.clone(),
            self.kinds.callback_policy().targets.clone(),
        );
        tokio::pin!(shutdown);
        let mut failures = 0usize;
        let mut open_stream = None;
        tracing::info!(
            broker = self.broker.name(),
            capacity,
            kinds = ?self.kinds,
            worker = %self.options.worker_id,
            "worker started"
        );
        'connect: loop {
            let mut deliveries = tokio::select! {
                _ = &mut shutdown => break 'connect,
                opened = self.open(capacity) => match opened {
                    Ok(stream) => stream,
                    Err(BrokerError::Config(message)) => {
                        return Err(BrokerError::Config(message).into());
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "cannot consume yet");
                        if self.pause(failures, &mut shutdown).await == Paused::Stopped {
                            break 'connect;
                        }
                        continue 'connect;
                    }
                },
            };
            let mut stopping = false;
            // Deliveries held until a slot frees up, started in fair order (crate::fair).
            let mut held: FairQueue<Delivery> = FairQueue::default();
            loop {
                while let Some(joined) = tasks.try_join_next() {
                    if let Err(e) = joined {
                        // Handler panics are caught in `process`; this is a bug elsewhere.
                        tracing::error!(error = %e, "job task failed; its delivery was released");
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => {
                        stopping = true;
                        break;
                    }
                    permit = permits.clone().acquire_owned(), if !held.is_empty() => {
                        let permit = permit.expect("the capacity semaphore is never closed");
                        if let Some(delivery) = held.pop(Instant::now()) {
                            let key = delivery.job.key.as_deref().unwrap_or(NO_KEY);
                            context.stats.keys().started(key);
                            tasks.spawn(process(delivery, permit, context.clone()));
                        }
                    }
                    next = deliveries.next(), if held.len() < MAX_HELD => match next {
                        Some(Ok(delivery)) => {
                            failures = 0;
                            let key = delivery.job.fairness_key().into_owned();
                            let priority = delivery.job.priority();
                            held.push(&key, priority, Instant::now(), delivery);
                        }
                        Some(Err(e)) => {
                            failures += 1;
                            tracing::warn!(error = %e, "delivery stream broke; reconnecting");
                            break;
                        }
                        None => {
                            failures += 1;
                            tracing::warn!("delivery stream ended; reconnecting");
                            break;
                        }
                    },
                }
            }
            // Held, never started: back to the broker (released) while the stream that
            // delivered them is still open.
            drop(held.drain());
            if stopping {
                // Keep the stream, and with it the channel the in-flight jobs ack on, open
                // until they are drained: closing it now would requeue them after their
                // results are committed (harmless, but a redelivery for nothing).
                open_stream = Some(deliveries);
                break 'connect;
            }
            drop(deliveries);
            if self.pause(failures, &mut shutdown).await == Paused::Stopped {
                break 'connect;
            }
        }
        let in_flight = tasks.len();
        tracing::info!(in_flight, "shutting down: draining in-flight jobs");
        let grace = self.options.shutdown_grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                left = tasks.len(),
                "grace period over: releasing unfinished jobs for redelivery"
            );
            tasks.shutdown().await;
        }
        drop(open_stream);
        signal.abort();
        callbacks.abort();
        heartbeat.stop();
        metrics::gauge!(m::CAPACITY).decrement(f64::from(capacity));
        tracing::info!("worker stopped");
        Ok(())
    }

    async fn open(&self, capacity: u16) -> Result<Deliveries, BrokerError> {
        self.broker
            .consume(ConsumeOptions {
                group: self.options.group.clone(),
                prefetch: capacity.saturating_mul(PREFETCH_PER_SLOT),
            })
            .await
    }

    /// Waits a growing delay before reconnecting, or until shutdown. Says which: once
    /// `shutdown` has completed it must not be polled again.
    async fn pause(
        &self,
        failures: usize,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Paused {
        let exponent = u32::try_from(failures.min(6)).unwrap_or(6);
        let delay = Duration::from_millis(100 * 2u64.pow(exponent)).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown => Paused::Stopped,
            _ = tokio::time::sleep(delay) => Paused::Elapsed,
        }
    }
}

/// How a reconnect [`Worker::pause`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Paused {
    /// The delay passed: reconnect.
    Elapsed,
    /// Shutdown was requested during the delay: stop.
    Stopped,
}

/// Every 5 s: refresh the backlog gauge and the desired-replicas signal.
async fn autoscale_signal(
    broker: Arc<dyn Broker>,
    stats: Arc<WorkerStats>,
    capacity: u16,
    max_replicas: Option<u32>,
) {
    const EVERY: Duration = Duration::from_secs(5);
    const TARGET_DRAIN: Duration = Duration::from_secs(30);
    let mut ticker = tokio::time::interval(EVERY);
    let mut settled_before = 0u64;
    loop {
        ticker.tick().await;
        let now = stats.snapshot();
        let settled = now.succeeded + now.dead;
        let rate = settled.saturating_sub(settled_before) as f64 / EVERY.as_secs_f64();
        settled_before = settled;
        let Ok(Ok(broker_stats)) = tokio::time::timeout(EVERY, broker.stats()).await else {
            continue;
        };
        let backlog = broker_stats.backlog.unwrap_or(0);
        metrics::gauge!(m::BACKLOG).set(backlog as f64);
        let desired = desired_replicas(
            backlog,
            now.in_flight,
            rate,
            capacity,
            TARGET_DRAIN,
            max_replicas,
        );
        metrics::gauge!(m::DESIRED_WORKERS).set(f64::from(desired));
    }
}

/// Runs one delivery to its settlement. Holds one capacity permit throughout.
async fn process(delivery: Delivery, permit: OwnedSemaphorePermit, context: Arc<JobContext>) {
    let span = tracing::info_span!(
        "job",
        job_id = %delivery.job.id,
        kind = %delivery.job.kind,
        attempt = delivery.attempt,
        trace_id = delivery.job.trace_id().unwrap_or_default(),
    );
    async move {
        let permit = permit;
        match context.settled.check(delivery.job.id).await {
            Ok(Some(settled)) => return settle_early(delivery, settled, &context).await,
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "could not check whether the job is settled; running it"),
        }
        if let Some(early) = too_early(&delivery.job) {
            // Scheduled jobs are published when due; this one came early (clocks apart).
            context.stats.deferred();
            if let Err(e) = delivery.defer(early).await {
                tracing::warn!(error = %e, "handing back an early job failed; it will be redelivered");
            }
            return;
        }
        let Some(kind) = context.kinds.get(&delivery.job.kind).cloned() else {
            context.stats.deferred();
            return defer_unknown_kind(delivery, context.options.unknown_kind_delay).await;
        };
        let policy = kind.retry_policy(context.options.retry);
        let mut job_span = job_span(&delivery.job, delivery.attempt);
        let started_at_us = now_micros();
        let stage = |stage: Stage, attempt: u32, error: Option<String>| StageUpdate {
            job_id: delivery.job.id,
            kind: delivery.job.kind.to_string(),
            stage,
            attempt,
            error,
            at_us: now_micros(),
        };
        let outcome = {
            let _in_flight = context.stats.start();
            let handler = run_handler(kind.as_ref(), &delivery.job, delivery.attempt);
            tokio::pin!(handler);
            // Short jobs never write `running`: their result comes first, and a write per
            // job for a state nobody sees was a third of the worker's statements.
            tokio::select! {
                outcome = &mut handler => outcome,
                _ = tokio::time::sleep(RUNNING_STAGE_AFTER) => {
                    context
                        .stages
                        .record(stage(Stage::Running, delivery.attempt, None));
                    handler.await
                }
            }
        };
        // Stamped while the slot is still held: a recorded interval lies within the slot's
        // tenure, so the stored start/finish times never show more jobs in flight than the
        // capacity (the next job stamps its start only after taking this slot).
        let finished_at_us = now_micros();
        // The handler is done: its slot goes to the next job while this result commits
        // and its delivery settles (held within the prefetch, see `PREFETCH_PER_SLOT`).
        drop(permit);
        metrics::histogram!(m::JOB_SECONDS)
            .record((finished_at_us - started_at_us) as f64 / 1_000_000.0);
        let row = |status: JobStatus, result, error| JobResult {
            job_id: delivery.job.id,
            kind: delivery.job.kind.to_string(),
            status,
            result,
            error,
            attempts: delivery.attempt,
            deliveries: 1,
            worker: context.options.worker_id.clone(),
            enqueued_at_us: delivery.job.enqueued_at_us,
            started_at_us,
            finished_at_us,
            job: (status == JobStatus::Dead).then(|| delivery.job.clone()),
        };
        let settled = match outcome {
            Ok(value) => {
                let row = row(JobStatus::Succeeded, Some(value), None);
                let commit_span = child_span(&job_span, "commit");
                let committed = commit(&context, delivery.job.awaits_acceptance, row).await;
                drop(commit_span);
                let Some(recorded) = committed else {
                    return; // dropping the delivery releases it for redelivery
                };
                if recorded == Recorded::Cancelled {
                    return settle_cancelled(delivery, &context).await;
                }
                if !queue_callback(&context, &delivery.job).await {
                    return; // released: the redelivery queues it
                }
                context.stats.succeeded();
                record_end_to_end(delivery.job.enqueued_at_us);
                tracing::debug!("succeeded");
                delivery.ack().await
            }
            Err(JobError::Deferred { reason, after }) => {
                tracing::debug!(%reason, ?after, "not attempted; back to the broker");
                context.stats.deferred();
                metrics::counter!(m::JOBS_DEFERRED, "kind" => delivery.job.kind.clone())
                    .increment(1);
                context
                    .stages
                    .record(stage(Stage::Waiting, delivery.attempt, Some(reason)));
                delivery.defer(after).await
            }
            Err(JobError::Retryable {
                message,
                retry_after,
            }) if policy.allows_another(delivery.attempt) => {
                let after = match retry_after {
                    // The target said when; honoured up to the policy's longest delay.
                    Some(after) => after.min(policy.max_delay),
                    None => policy.delay_after(delivery.attempt),
                };
                tracing::info!(error = %message, ?after, "attempt failed; retrying");
                context.stats.retried();
                context.stages.record(stage(
                    Stage::Retrying,
                    delivery.attempt.saturating_add(1),
                    Some(message),
                ));
                delivery.retry(after).await
            }
            Err(error) => {
                let reason = error.to_string();
                let row = row(JobStatus::Dead, None, Some(reason.clone()));
                if let Some(span) = &mut job_span {
                    span.fail(&reason);
                }
                let commit_span = child_span(&job_span, "commit");
                let committed = commit(&context, delivery.job.awaits_acceptance, row).await;
                drop(commit_span);
                let Some(recorded) = committed else {
                    return;
                };
                if recorded == Recorded::Cancelled {
                    return settle_cancelled(delivery, &context).await;
                }
                if !queue_callback(&context, &delivery.job).await {
                    return;
                }
                tracing::warn!(error = %reason, "job dead-lettered");
                context.stats.dead();
                record_end_to_end(delivery.job.enqueued_at_us);
                delivery.dead_letter(&reason).await
            }
        };
        if let Err(e) = settled {
            // The broker will redeliver; the stored row makes the repeat harmless.
            tracing::warn!(error = %e, "settling failed; the job will be redelivered");
        }
    }
    .instrument(span)
    .await
}

/// Runs the job's handler, turning a panic into a permanent failure carrying the panic
/// message. Uncaught, the panic would end this task with the delivery unsettled: dropped,
/// it is released with the same attempt count and redelivered forever. A panic is a bug
/// in the handler, not a passing condition, so it is not retried (the design: "a panicking
/// handler is a permanent failure, never a redelivery loop"); the job ends `dead` with the
/// message and can be replayed once the handler is fixed.
async fn run_handler(
    kind: &dyn Kind,
    job: &surge_common::job::Job,
    attempt: u32,
) -> Result<serde_json::Value, JobError> {
    use futures::FutureExt;
    // A message someone else wrote may carry a payload the ingress would have refused.
    kind.validate(&job.payload)
        .map_err(|e| JobError::permanent(format!("invalid payload: {e}")))?;
    std::panic::AssertUnwindSafe(kind.run(job, attempt))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(JobError::Permanent(panicked(panic.as_ref()))))
}

/// The message of a handler panic, as stored on the job's `dead` row.
pub fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("handler panicked: {message}")
}

/// The span of one attempt, child of the `publish` span the job's `traceparent` names
/// (when spans are exported and the job has a trace context).
fn job_span(job: &surge_common::job::Job, attempt: u32) -> Option<Span> {
    if !surge_common::otlp::enabled() {
        return None;
    }
    let parent = TraceContext::parse(job.traceparent.as_deref()?)?;
    let mut span = Span::start(
        format!("job {}", job.kind),
        SpanKind::Consumer,
        parent.child(),
        Some((parent, true)),
    );
    span.attribute("surge.job.id", job.id);
    span.attribute("surge.job.kind", &job.kind);
    span.attribute("surge.job.attempt", attempt);
    Some(span)
}

/// A span under `parent`, when there is one.
fn child_span(parent: &Option<Span>, name: &str) -> Option<Span> {
    let parent = parent.as_ref()?.context();
    Some(Span::start(
        name,
        SpanKind::Internal,
        parent.child(),
        Some((parent, false)),
    ))
}

/// How long before its `run_at` a job arrived, when that is more than a second (the
/// ingress's and this worker's clocks may differ by a little).
fn too_early(job: &surge_common::job::Job) -> Option<Duration> {
    let early_us = job.run_at_us? - now_micros();
    (early_us > 1_000_000).then(|| Duration::from_micros(early_us.unsigned_abs()))
}

/// A job of a kind this worker does not know (a rolling deploy: the ingress, or another
/// worker, already runs a newer configuration): it is not this worker's to judge, so it
/// goes back to the broker, no attempt consumed, for a worker that knows the kind.
async fn defer_unknown_kind(delivery: Delivery, after: Duration) {
    tracing::warn!(
        ?after,
        "job of a kind this worker does not know: handing it back for a worker that does \
         (give every worker the ingress's --config)"
    );
    metrics::counter!(m::UNKNOWN_KIND, "kind" => delivery.job.kind.clone()).increment(1);
    if let Err(e) = delivery.defer(after).await {
        tracing::warn!(error = %e, "handing back failed; the broker will redeliver the job");
    }
}

/// Records the time from acceptance at the ingress until now (the result is committed).
fn record_end_to_end(enqueued_at_us: i64) {
    let seconds = (now_micros() - enqueued_at_us).max(0) as f64 / 1_000_000.0;
    metrics::histogram!(m::END_TO_END_SECONDS).record(seconds);
}

/// Queues the outcome callback of a job that has one, from its stored row (the first
/// delivery's outcome, also on a redelivery), before the message is settled: `false` when
/// that failed, and the delivery must be released so a redelivery queues it.
async fn queue_callback(context: &JobContext, job: &surge_common::job::Job) -> bool {
    let Some(url) = &job.callback_url else {
        return true;
    };
    let queued = async {
        let row = context.storage.get(job.id).await?;
        let Some(row) = row else {
            return Ok(());
        };
        let body = crate::callbacks::body(&row).to_string();
        context.storage.enqueue_callback(job.id, url, &body).await
    };
    match queued.await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "queueing the outcome callback failed; releasing the job");
            false
        }
    }
}

/// Acks a cancelled job (an operator cancelled it, or the ingress refused it): no result,
/// no dead letter.
async fn settle_cancelled(delivery: Delivery, context: &JobContext) {
    context.stats.cancelled();
    tracing::info!("job was cancelled; acking without a result");
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "ack failed; the cancelled job will be redelivered");
    }
}

/// Settles a delivery of a job that already has a terminal state, without running it (see
/// [`crate::precheck`]): cancelled → ack; succeeded (a repeat) → ack; dead → dead-letter
/// again with its stored error. A repeat queues the outcome callback first, as a repeat
/// that ran would (the first delivery may have died between its commit and its callback).
async fn settle_early(delivery: Delivery, settled: Settled, context: &JobContext) {
    if settled != Settled::Cancelled && !queue_callback(context, &delivery.job).await {
        return; // released: the redelivery queues it
    }
    let settled = match settled {
        Settled::Cancelled => return settle_cancelled(delivery, context).await,
        Settled::Succeeded => {
            context.stats.duplicate();
            tracing::info!("job already has a result; acking without running it");
            delivery.ack().await
        }
        Settled::Dead(error) => {
            tracing::info!("job is already dead; dead-lettering without running it");
            delivery.dead_letter(&error).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %e, "settling failed; the job will be redelivered");
    }
}

/// Commits `row`, retrying a failing database with backoff. `None`: give the job back.
///
/// A job the ingress has not yet recorded accepted ([`Recorded::Unaccepted`]: its publish
/// may still fail, and its client be refused) keeps its delivery and is tried again after
/// a growing pause, until the ingress decides or the decision is overdue and the storage
/// takes the job as accepted (see `surge_common::storage::acceptance`).
async fn commit(context: &JobContext, awaits_acceptance: bool, row: JobResult) -> Option<Recorded> {
    let result = PendingResult {
        row,
        awaits_acceptance,
    };
    let mut pause = Duration::from_millis(5);
    let stored = loop {
        let stored = (|| context.writer.record_pending(result.clone()))
            .retry(reconnect(6))
            .notify(|e, after| tracing::warn!(error = %e, ?after, "result commit failed; retrying"))
            .await;
        if !matches!(stored, Ok(Recorded::Unaccepted)) {
            break stored;
        }
        tracing::debug!(
            ?pause,
            "the ingress has not recorded the job accepted yet; waiting"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    };
    match stored {
        Ok(Recorded::Duplicate) => {
            context.stats.duplicate();
            tracing::info!("redelivered job already had a result; acking");
            Some(Recorded::Duplicate)
        }
        Ok(recorded) => Some(recorded),
        Err(e) => {
            tracing::error!(error = %e, "result not committed; releasing the job");
            None
        }
    }
}
