//! Request handlers.
//!
//! - [`jobs`]: `POST /jobs`, `POST /jobs/batch`, `GET /jobs/{id}`.
//! - [`health`]: `GET /healthz` (the process answers), `GET /readyz` (broker and database
//!   reachable).
//! - [`metrics`]: `GET /metrics` (Prometheus).
//! - [`operations`]: `GET /jobs` (list), `POST /jobs/replay` (bulk replay of dead jobs),
//!   `DELETE /jobs/{id}` (cancel).
//! - [`schedules`]: `GET /schedules`, `POST /schedules/{name}/pause|resume|trigger`
//!   (the config file's recurring jobs).
//! - [`kinds`]: `GET /kinds`, `POST /kinds/{name}/pause|resume` (paused kinds wait in the
//!   broker, for every worker).

pub mod health;
pub mod jobs;
pub mod kinds;
pub mod metrics;
pub mod operations;
pub mod schedules;
