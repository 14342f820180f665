//! Surge's load generation and benchmark.
//!
//! The burst demo (`surge-demo`):
//! - [`burst`]: the 400-against-200 story — start an ingress and workers, fire a burst of
//!   concurrent POSTs, wait for the drain, and check every accepted job against the
//!   database.
//! - [`stack`]: an in-process Surge (ingress + worker tasks) on a real or memory broker.
//! - [`report`]: the burst report and its checks.
//! - [`downstream`]: the API Surge protects in the story (handles only so many requests at
//!   a time, 503 beyond), measuring itself.
//! - [`story`]: the story — the API called directly, then through Surge with an HTTP kind —
//!   and its side-by-side report and chart.
//!
//! The benchmark (`surge-bench`), on processes like a deployment's:
//! - [`scenarios`]: burst, max sustainable rate, scaling, and the HTTP / ingress / broker /
//!   database ceilings.
//! - [`load`]: open-loop (coordinated-omission-corrected) and closed-loop load.
//! - [`http`]: the load generator's minimal keep-alive HTTP/1.1 client and pool.
//! - [`deploy`]: an ingress, worker processes, a fresh queue and database per measurement.
//! - [`procs`]: child processes and their CPU seconds and peak RSS.
//! - [`db`]: the benchmark's databases and the commit timestamps read back from them.
//! - [`results`]: the figures, as Markdown and JSON, and the targets checked.
//! - [`rebalance_report`]: the Kafka rebalancing scenario's rows and section.
//! - [`charts`]: SVG charts of the figures.

#![forbid(unsafe_code)]

pub mod burst;
pub mod charts;
pub mod db;
pub mod deploy;
pub mod downstream;
pub mod http;
pub mod load;
pub mod procs;
pub mod rebalance_report;
pub mod report;
pub mod results;
pub mod scenarios;
pub mod stack;
pub mod story;
