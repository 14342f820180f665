//! Surge's load generation.
//!
//! - [`burst`]: the 400-against-200 story — start an ingress and workers, fire a burst of
//!   concurrent POSTs, wait for the drain, and check every accepted job against the
//!   database.
//! - [`stack`]: an in-process Surge (ingress + worker tasks) on a real or memory broker.
//! - [`report`]: the burst report and its checks.

pub mod burst;
pub mod report;
pub mod stack;
