//! What request handlers share.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::kinds::KindRegistry;
use surge_common::metrics as m;
use surge_common::storage::batch::AcceptWriter;
use surge_common::storage::Storage;

use crate::admission::{Admission, AdmissionConfig};
use crate::auth::ApiKeys;
use crate::kind_counts::KindCountsCache;
use crate::live::Live;
use crate::observed::ObservedCache;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most jobs in one `POST /jobs/batch`.
    pub max_batch: usize,
    /// Longest wait for the broker to take responsibility for a publish (confirm /
    /// delivery report). Beyond it the client gets 503 and the jobs are cancelled, so a
    /// broker that stalls (a quorum queue without its majority, a Kafka partition without
    /// its in-sync replicas) cannot hold requests, and connections, for ever.
    pub publish_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 256 * 1024,
            max_batch: 1000,
            publish_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Most clients waiting in `GET /jobs/{id}?wait=N` at once.
pub const MAX_WAITERS: usize = 1000;

/// Most requests whose acceptances (each job's `queued` row) share one commit.
const ACCEPT_WRITE_BATCH: usize = 500;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Where jobs are published.
    pub broker: Arc<dyn Broker>,
    /// Where results and job states are read and written.
    pub storage: Storage,
    /// Records published jobs accepted (each job's row, `queued`), many requests per
    /// commit.
    pub accepts: AcceptWriter,
    /// Request limits.
    pub limits: Limits,
    /// Counters for the live dashboard.
    pub live: Arc<Live>,
    /// The dashboard's look at the broker and the database, shared by viewers for a moment.
    pub(crate) observed: Arc<ObservedCache>,
    /// Backlog bound and per-client rate limits.
    pub admission: Arc<Admission>,
    /// API keys for the job endpoints, or every endpoint (none: open).
    pub api_keys: ApiKeys,
    /// Proxies whose forwarding headers name the client for the rate limit.
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// Set on SIGTERM: `/readyz` answers 503 and new jobs are refused while in-flight
    /// requests finish.
    pub draining: Arc<AtomicBool>,
    /// The job kinds accepted (validated here before anything is published).
    pub kinds: KindRegistry,
    /// Clients waiting in `GET /jobs/{id}?wait=N`.
    pub waiters: Arc<crate::waiters::Waiters>,
    /// Longest `wait` a request may ask for: below the connections' idle timeout
    /// ([`crate::waiters::max_wait_for`]).
    pub max_wait: std::time::Duration,
    /// `GET /openapi.json`, made once from the router and `kinds`.
    pub openapi: Arc<std::sync::OnceLock<utoipa::openapi::OpenApi>>,
    /// The dashboard's jobs per kind and status, shared by viewers for a few seconds.
    pub kind_counts: Arc<KindCountsCache>,
    /// The recurring jobs of the config file (`[schedules.NAME]`), by name.
    pub schedules: Arc<Vec<surge_common::recurring::Schedule>>,
}

impl AppState {
    /// State for one server: the built-in kinds, no admission limits, no API keys. Starts
    /// the acceptance writer task, so it must be called inside a Tokio runtime.
    pub fn new(broker: Arc<dyn Broker>, storage: Storage, limits: Limits) -> AppState {
        let waiters = crate::waiters::Waiters::new(storage.clone(), MAX_WAITERS);
        AppState {
            broker,
            accepts: AcceptWriter::spawn(storage.clone(), ACCEPT_WRITE_BATCH),
            storage,
            limits,
            live: Arc::default(),
            observed: Arc::default(),
            admission: Arc::default(),
            api_keys: ApiKeys::default(),
            trusted_proxies: Default::default(),
            draining: Arc::default(),
            kinds: KindRegistry::builtin(),
            waiters,
            max_wait: crate::waiters::max_wait_for(
                crate::server::ServeOptions::default().idle_timeout,
            ),
            openapi: Arc::default(),
            kind_counts: Arc::default(),
            schedules: Arc::default(),
        }
    }

    /// The same state running `schedules` (their kinds must be among its kinds).
    pub fn with_schedules(mut self, schedules: Vec<surge_common::recurring::Schedule>) -> AppState {
        self.schedules = Arc::new(schedules);
        self
    }

    /// The schedule called `name`.
    pub fn schedule(&self, name: &str) -> Option<&surge_common::recurring::Schedule> {
        self.schedules.iter().find(|s| s.name == name)
    }

    /// The same state accepting the kinds in `kinds`.
    pub fn with_kinds(mut self, kinds: KindRegistry) -> AppState {
        self.kinds = kinds;
        self.openapi = Arc::default();
        self
    }

    /// The same state with admission control.
    pub fn with_admission(mut self, config: AdmissionConfig) -> AppState {
        self.admission = Arc::new(Admission::new(config));
        self
    }

    /// The same state serving connections closed after `idle` without traffic: waits are
    /// kept below it ([`crate::waiters::max_wait_for`]).
    pub fn with_idle_timeout(mut self, idle: std::time::Duration) -> AppState {
        self.max_wait = crate::waiters::max_wait_for(idle);
        self.openapi = Arc::default();
        self
    }

    /// The same state requiring one of `keys` on the job endpoints (or on every
    /// endpoint, as their scope says).
    pub fn with_api_keys(mut self, keys: ApiKeys) -> AppState {
        self.api_keys = keys;
        self
    }

    /// The same state believing `proxies`' forwarding headers for the client's address.
    pub fn with_trusted_proxies(mut self, proxies: crate::client_addr::TrustedProxies) -> AppState {
        self.trusted_proxies = proxies;
        self
    }

    /// Counts `jobs` accepted, their publish having taken `publish_time`, for admission
    /// control, metrics and the dashboard.
    pub(crate) fn record_accepted(&self, jobs: &[Job], publish_time: std::time::Duration) {
        self.admission.accepted(jobs.len() as u64);
        metrics::histogram!(m::PUBLISH_SECONDS).record(publish_time.as_secs_f64());
        metrics::counter!(m::JOBS_ACCEPTED).increment(jobs.len() as u64);
        self.live.accepted(jobs.len(), publish_time);
    }
}
