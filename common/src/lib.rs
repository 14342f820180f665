//! Everything Surge's binaries share.
//!
//! - [`job`]: the job a client submits and how it travels.
//! - [`kinds`]: the registry of job kinds (built-in, Rust, HTTP from the config file);
//!   the HTTP kinds' flow control reaches the database through [`kinds::flow_store`].
//! - [`broker`]: the [`broker::Broker`] trait (publish, consume, stats), the
//!   [`broker::Delivery`] every consumer settles exactly once, and its backends:
//!   [`broker::memory`] (in-process, not durable), `broker::rabbitmq` (lapin, cargo
//!   feature `rabbitmq`) and `broker::kafka` (rdkafka, cargo feature `kafka`), chosen by
//!   [`broker::connect`] from a [`broker::BrokerTarget`].
//! - [`storage`]: one row per job (SQLite by default, PostgreSQL by URL), keyed by job id
//!   so a redelivered job never writes a second row.
//! - [`recurring`]: recurring jobs (`[schedules.NAME]` in the config file) and when they
//!   tick (cron patterns in a time zone, `@every`).
//! - [`config`]: clap argument groups with `SURGE_*` environment fallbacks.
//! - [`redact`]: connection URLs with their passwords hidden, safe to log.
//! - [`telemetry`]: `tracing` set-up, text or JSON.
//! - [`metrics`]: the Prometheus series Surge exports, and the recorder.
//! - [`netpolicy`]: which addresses outcome callbacks may reach (no internal ones by
//!   default), checked on submit and on the address actually connected to.
//! - [`retry`]: the backoff policy (backon) used for job retries and reconnects.
//! - [`shutdown`]: the SIGTERM / Ctrl-C future binaries stop on.
//! - [`clock`]: wall-clock helpers for timestamps that cross processes.
//! - [`otlp`]: spans to an OTLP backend (cargo feature `otlp`), one trace per job.
//! - [`trace`]: W3C `traceparent` carried from the request to the worker.
//! - [`testing`]: how tests find real services (and fail in CI when one is missing).

#![forbid(unsafe_code)]

pub mod broker;
pub mod clock;
pub mod config;
pub mod job;
pub mod kinds;
pub mod metrics;
pub mod netpolicy;
pub mod otlp;
pub mod recurring;
pub mod redact;
pub mod retry;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod testing;
pub mod trace;
