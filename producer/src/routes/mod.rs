//! Request handlers.
//!
//! - [`jobs`]: `POST /jobs`, `POST /jobs/batch`, `GET /jobs/{id}`.
//! - [`health`]: `GET /healthz` (the process answers), `GET /readyz` (broker and database
//!   reachable).
//! - [`metrics`]: `GET /metrics` (Prometheus).

pub mod health;
pub mod jobs;
pub mod metrics;
