//! Surge's worker: consumes jobs with bounded concurrency, runs them, commits each result,
//! and only then acks.
//!
//! Job kinds (what a job does) come from `surge_common::kinds`: the built-in examples,
//! HTTP kinds from `--config`, and kinds a team registers in Rust
//! ([`WorkerService::build_with_kinds`]).
//!
//! - [`runner`]: the consume loop — capacity bound, result commit, settle, reconnects,
//!   graceful shutdown.
//! - [`busy_keys`]: jobs started per fairness key lately, for the dashboard's busiest keys.
//! - [`fair`]: the order held jobs start in: round robin over keys, priorities with aging.
//! - [`callbacks`]: delivers signed outcome callbacks from the database outbox.
//! - [`autoscale`]: the `surge_desired_workers` signal from backlog and drain rate.
//! - [`precheck`]: before an attempt, whether the job is already settled (cancelled, or a
//!   result from an earlier delivery): then it is not run.
//! - [`heartbeat`]: the worker's row in `worker_heartbeats`, upserted every second.
//! - [`stats`]: live counters (in flight, peak, processed…) for progress and reports.
//! - [`service`]: the one entry point (build from settings, run until a shutdown future
//!   completes) that `main`, the ingress's embedded workers, the benchmark and the demo
//!   call.
//! - [`config`]: the binary's command line.
//!
//! Many worker processes may consume one queue or consumer group; results are keyed by job
//! id, so a job redelivered to a second worker never produces a second row.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod busy_keys;
pub mod callbacks;
pub mod config;
pub mod fair;
pub mod heartbeat;
pub mod precheck;
pub mod runner;
pub mod service;
pub mod stats;

pub use runner::{Worker, WorkerOptions};
pub use service::WorkerService;
pub use stats::WorkerStats;
pub use surge_common::kinds::{handler_fn, JobError, Kind, KindRegistry};
