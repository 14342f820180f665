//! Prometheus metrics: the names Surge exports and the process-wide recorder.
//!
//! Both binaries call [`install`] once and serve [`render`] at `GET /metrics`. Counters are
//! process-wide; in one process running both the ingress and workers (the embedded
//! setup) one `/metrics` shows both sides.
//!
//! Histogram samples wait in the recorder until they are folded into their buckets. The
//! exporter does that on every render and on "upkeep"; `build_recorder` starts no upkeep,
//! so with nobody scraping `/metrics` every job's samples piled up and memory grew without
//! bound (metrics-rs/metrics#467, #537). [`install`] therefore starts an upkeep thread that
//! folds them in every [`UPKEEP_INTERVAL`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Jobs answered 202 (counter).
pub const JOBS_ACCEPTED: &str = "surge_jobs_accepted_total";
/// Requests refused, by `reason` = the error code (counter).
pub const JOBS_REJECTED: &str = "surge_jobs_rejected_total";
/// Time from publish to the broker's confirm / delivery report (histogram, seconds).
pub const PUBLISH_SECONDS: &str = "surge_publish_seconds";
/// Jobs waiting in the broker (gauge; queue depth or consumer lag).
pub const BACKLOG: &str = "surge_backlog";
/// Jobs being handled right now (gauge).
pub const JOBS_IN_FLIGHT: &str = "surge_jobs_in_flight";
/// Worker capacity (gauge): the most jobs this process runs at once.
pub const CAPACITY: &str = "surge_capacity";
/// Jobs settled, by `outcome` = succeeded | dead | retried (counter).
pub const JOBS_PROCESSED: &str = "surge_jobs_processed_total";
/// Jobs handed back to the broker without an attempt, by `kind` (counter): their target's
/// circuit was open or its concurrency cap full.
pub const JOBS_DEFERRED: &str = "surge_jobs_deferred_total";
/// Jobs of a kind this worker does not know, handed back for a worker that does, by
/// `kind` (counter). Non-zero outside a rolling deploy: a worker lacks the `--config`.
pub const UNKNOWN_KIND: &str = "surge_unknown_kind_total";
/// Redelivered jobs that already had a result (counter).
pub const JOBS_DUPLICATE: &str = "surge_jobs_duplicate_total";
/// Handler run time (histogram, seconds).
pub const JOB_SECONDS: &str = "surge_job_seconds";
/// From acceptance at the ingress to the result's commit (histogram, seconds).
pub const END_TO_END_SECONDS: &str = "surge_end_to_end_seconds";
/// Jobs of recurring schedules recorded by this ingress, by `schedule` and `trigger`
/// (`tick` or `manual`) (counter).
pub const SCHEDULE_JOBS: &str = "surge_schedule_jobs_total";
/// Worker replicas the backlog and drain rate call for (gauge; see the worker's autoscale).
pub const DESIRED_WORKERS: &str = "surge_desired_workers";
/// Rows deleted by the retention pruner, by what they were (counter).
pub const PRUNED_ROWS: &str = "surge_storage_pruned_rows_total";
/// Stored jobs per `state` (scheduled, queued, running, retrying, waiting, succeeded,
/// dead, cancelled), as the retention pass last counted them (gauge).
pub const STORED_JOBS: &str = "surge_storage_jobs";
/// Age of the oldest stored result per final status, as the pruner last saw it (gauge,
/// seconds): stays below its retention window while pruning keeps up.
pub const OLDEST_RESULT_SECONDS: &str = "surge_storage_oldest_result_seconds";

/// How often pending histogram samples are folded into their buckets (the exporter's own
/// default for its HTTP listener).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder and starts its upkeep (once; later calls return the
/// same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (an embedding program): then ours
            // still renders whatever is recorded through it, which is nothing; say so.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            spawn_upkeep(handle.clone(), UPKEEP_INTERVAL);
            handle
        })
        .clone()
}

/// Runs `handle`'s upkeep every `interval` on a thread of its own for the rest of the
/// process (a thread, not a task: the recorder outlives any one Tokio runtime).
pub fn spawn_upkeep(handle: PrometheusHandle, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histogram samples pile up until /metrics is scraped");
    }
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install().render()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(JOBS_ACCEPTED, "Jobs answered 202 Accepted.");
    describe_counter!(JOBS_REJECTED, "Requests refused, by reason.");
    describe_counter!(
        SCHEDULE_JOBS,
        "Jobs of recurring schedules recorded by this ingress, by schedule and trigger."
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Publish until broker confirm."
    );
    describe_gauge!(BACKLOG, "Jobs waiting in the broker.");
    describe_gauge!(JOBS_IN_FLIGHT, "Jobs being handled now.");
    describe_gauge!(CAPACITY, "Most jobs this process runs at once.");
    describe_counter!(JOBS_PROCESSED, "Jobs settled, by outcome.");
    describe_counter!(
        JOBS_DUPLICATE,
        "Redelivered jobs that already had a result."
    );
    describe_counter!(
        JOBS_DEFERRED,
        "Jobs handed back to the broker without an attempt, by kind."
    );
    describe_counter!(
        UNKNOWN_KIND,
        "Jobs of a kind this worker does not know, handed back, by kind."
    );
    describe_histogram!(JOB_SECONDS, Unit::Seconds, "Handler run time.");
    describe_histogram!(
        END_TO_END_SECONDS,
        Unit::Seconds,
        "Accepted at the ingress until the result committed."
    );
    describe_gauge!(DESIRED_WORKERS, "Worker replicas the backlog calls for.");
    describe_counter!(
        PRUNED_ROWS,
        "Rows deleted by the retention pruner, by kind."
    );
    describe_gauge!(
        OLDEST_RESULT_SECONDS,
        Unit::Seconds,
        "Age of the oldest stored result, by status (pruner's last look)."
    );
    describe_gauge!(
        STORED_JOBS,
        "Stored jobs by state (the retention pass's last count)."
    );
    crate::kinds::http::metrics::describe();
}
