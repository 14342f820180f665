//! What request handlers share.

use std::sync::Arc;

use surge_common::broker::Broker;
use surge_common::storage::Storage;

use crate::dashboard::live::Live;

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Most jobs in one `POST /jobs/batch`.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 256 * 1024,
            max_batch: 1000,
        }
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Where jobs are published.
    pub broker: Arc<dyn Broker>,
    /// Where results are read from.
    pub storage: Storage,
    /// Request limits.
    pub limits: Limits,
    /// The dashboard's live counters (accepts, accept latency, the last minute); a fresh
    /// `Default::default()` for each server.
    pub live: Arc<Live>,
}

impl AppState {
    /// State for one server, with fresh dashboard counters.
    pub fn new(broker: Arc<dyn Broker>, storage: Storage, limits: Limits) -> AppState {
        AppState {
            broker,
            storage,
            limits,
            live: Arc::default(),
        }
    }
}
