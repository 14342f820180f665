//! Surge's HTTP ingress.
//!
//! It validates a job, publishes it, and answers `202 Accepted` only once the broker has
//! taken responsibility for it (publisher confirm / delivery report). Bad input is answered
//! with a JSON error naming the field, and nothing is published.
//!
//! - [`ingress`]: the one entry point — [`Ingress::build`] from the flags, then
//!   [`Ingress::run_until_stopped`] — that `main`, the benchmark, the demo and the tests call.
//! - [`server`]: serving the router with header / idle timeouts and a connection cap.
//! - [`app`](mod@app): the router with its middleware (request ids, request logging, API
//!   keys beyond the job endpoints) and `GET /openapi.json`, generated from its routes —
//!   tests call it directly.
//! - [`admission`]: the backlog bound (503) and per-client token buckets (429).
//! - [`auth`]: optional API keys for the job endpoints (or every endpoint but health), and
//!   what they protect.
//! - [`client_addr`]: the client behind trusted proxies, for per-client rate limits.
//! - [`routes`]: the handlers (`/jobs`, `/jobs/batch`, `/jobs/{id}`, `/healthz`, `/readyz`).
//! - [`dashboard`]: the live dashboard page (`GET /`) and its JSON (`GET /api/dashboard`,
//!   `GET /api/dashboard/kinds`).
//! - [`live`]: this ingress's own counters for the dashboard (accepted jobs, accept
//!   latency, the last minute's history).
//! - [`observed`]: the dashboard's look at the broker and the database, shared by viewers.
//! - [`kind_counts`]: the dashboard's jobs per kind and status, counted once for every
//!   viewer.
//! - [`body`]: the JSON body extractor (content type, size limit, syntax, field errors).
//! - [`error`]: [`error::ApiError`], the one place errors become HTTP responses.
//! - [`openapi`]: the schemas the OpenAPI document shares (a job request per kind, the
//!   error body).
//! - [`state`]: what handlers share (broker, storage, limits).
//! - [`retention`]: prunes finished jobs past their window (one replica at a time).
//! - [`scheduler`]: publishes scheduled jobs (`delay_ms` / `run_at`) when due.
//! - [`recurring`]: records the ticks of the config file's recurring jobs (`[schedules.*]`),
//!   one job per tick across replicas, for the scheduler to publish.
//! - [`waiters`]: `GET /jobs/{id}?wait=N` without per-request database polling.
//! - [`config`]: the binary's command line.
//!
//! The modules form layers, each naming only modules below it, so none imports another
//! that imports it back, even through others. From the bottom:
//! - modules that use no other: `admission`, `auth`, `client_addr`, `server`, `waiters`,
//!   `retention`, `openapi`, `live`; then `error` (uses `waiters`), `observed` (uses
//!   `live`) and `kind_counts` (uses `observed`);
//! - [`state`], which holds them;
//! - what works on the state: `body`, `scheduler`, `recurring` (uses `scheduler`),
//!   `config`;
//! - the handlers: `routes` (uses `recurring`), `dashboard`;
//! - [`app`](mod@app): the router, and the OpenAPI document made from it;
//! - [`ingress`], which starts everything.

#![forbid(unsafe_code)]

pub mod admission;
pub mod app;
pub mod auth;
pub mod body;
pub mod client_addr;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod ingress;
pub mod kind_counts;
pub mod live;
pub mod observed;
pub mod openapi;
pub mod recurring;
pub mod retention;
pub mod routes;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod waiters;

pub use app::app;
pub use ingress::Ingress;
pub use state::{AppState, Limits};
