//! Paused kinds in a process: a cache of the `kind_pauses` rows
//! ([`crate::storage::pauses`]) and the wrapper that hands a paused kind's jobs back to the
//! broker instead of running them.
//!
//! Workers do not ask the database per job: [`KindPauses`] re-reads the rows at most once
//! per [`REFRESH`] (on the first job after that, by one task; the others use what it had),
//! so an operator's pause or resume reaches every replica within about a second. A pause
//! learned in this process (a target's `429`/`503` with `Retry-After`) applies at once,
//! before it is written for the others. A job of a paused kind is deferred
//! ([`JobError::Deferred`]): not attempted, no attempt consumed, the target not called; it
//! comes back after the rest of the pause, at most [`MAX_DEFER`] (so a resume is noticed
//! soon).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use super::flow_store::{FlowStore, KindPause, PauseSource};
use super::{http, JobError, Kind};
use crate::clock::now_micros;
use crate::job::{InvalidJob, Job};
use crate::retry::RetryPolicy;

/// Longest a process goes on using the pauses it read.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Longest a job of a paused kind waits in the broker before it is looked at again.
pub const MAX_DEFER: Duration = Duration::from_secs(30);
/// Shortest such wait (a pause ending in a moment).
pub const MIN_DEFER: Duration = Duration::from_millis(100);

/// The pauses this process knows, re-read from the database at most once per [`REFRESH`].
pub struct KindPauses {
    store: Arc<dyn FlowStore>,
    state: Mutex<State>,
    refreshing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    pauses: HashMap<String, KindPause>,
    read_at: Option<Instant>,
}

impl std::fmt::Debug for KindPauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindPauses").finish_non_exhaustive()
    }
}

impl KindPauses {
    /// The cache of `store`'s pauses (one per process, shared by its kinds): the
    /// results database every replica shares, [`crate::storage::Storage`].
    pub fn new(store: impl FlowStore + 'static) -> Arc<KindPauses> {
        Arc::new(KindPauses {
            store: Arc::new(store),
            state: Mutex::new(State::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The pause of `kind` holding now, if any (read from the database when what this
    /// process knows is older than [`REFRESH`]).
    pub async fn current(&self, kind: &str) -> Option<KindPause> {
        self.refresh_if_stale().await;
        self.known(kind)
    }

    fn known(&self, kind: &str) -> Option<KindPause> {
        let now = now_micros();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.pauses.get(kind).filter(|p| p.holds_at(now)).cloned()
    }

    /// How long a job of `kind` should wait in the broker, and why; `None` when the kind
    /// is not paused.
    pub async fn deferral(&self, kind: &str) -> Option<(Duration, String)> {
        self.refresh_if_stale().await;
        self.deferral_known(kind)
    }

    /// [`KindPauses::deferral`] from what this process knows now, without reading the
    /// database: for a job about to be sent after waiting for its turn (a pause learned
    /// meanwhile stops it).
    pub fn deferral_known(&self, kind: &str) -> Option<(Duration, String)> {
        let pause = self.known(kind)?;
        let after = match pause.until_us {
            Some(until) => {
                let left = u64::try_from(until - now_micros()).unwrap_or(0);
                Duration::from_micros(left).clamp(MIN_DEFER, MAX_DEFER)
            }
            None => MAX_DEFER,
        };
        let reason = format!(
            "kind {kind} is paused by its {} ({})",
            pause.source.as_str(),
            pause.reason
        );
        Some((after, reason))
    }

    /// Records a pause learned in this process: applied here at once, then written for
    /// every replica (see [`crate::storage::Storage::pause_kind`] for which pause wins). A database error
    /// is logged: the pause still holds here.
    pub async fn record(&self, pause: KindPause) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_micros();
            let replace = match state.pauses.get(&pause.kind) {
                None => true,
                Some(old) if !old.holds_at(now) => true,
                Some(old) => match (pause.source, old.source) {
                    (PauseSource::Operator, _) => true,
                    (PauseSource::Target, PauseSource::Operator) => false,
                    (PauseSource::Target, PauseSource::Target) => old
                        .until_us
                        .is_some_and(|o| pause.until_us.is_none_or(|n| n > o)),
                },
            };
            if replace {
                state.pauses.insert(pause.kind.clone(), pause.clone());
            }
        }
        if let Err(error) = self.store.pause_kind(&pause).await {
            tracing::warn!(kind = %pause.kind, %error, "could not store the kind's pause; it holds in this process only");
        }
    }

    async fn refresh_if_stale(&self) {
        let fresh = |state: &State| state.read_at.is_some_and(|at| at.elapsed() < REFRESH);
        let never_read = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if fresh(&state) {
                return;
            }
            state.read_at.is_none()
        };
        // Before the first read every job waits for it (a restarted worker must not send a
        // paused kind's backlog); later, one task reads and the others use what is known.
        let _guard = if never_read {
            self.refreshing.lock().await
        } else {
            match self.refreshing.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        };
        if fresh(&self.state.lock().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let started_us = now_micros();
        let read = self.store.kind_pauses(started_us).await;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.read_at = Some(Instant::now());
        match read {
            Ok(rows) => {
                // Pauses learned here while the read ran may not be in it yet: keep them.
                let mut pauses: HashMap<String, KindPause> = rows
                    .into_iter()
                    .map(|pause| (pause.kind.clone(), pause))
                    .collect();
                for (kind, pause) in state.pauses.drain() {
                    if pause.set_at_us >= started_us && !pauses.contains_key(&kind) {
                        pauses.insert(kind, pause);
                    }
                }
                state.pauses = pauses;
            }
            Err(error) => {
                tracing::warn!(%error, "could not read the kinds' pauses; using what this process knew");
            }
        }
    }
}

/// A kind whose jobs are deferred while it is paused (see the module docs); otherwise the
/// kind itself.
pub struct PausableKind {
    name: String,
    inner: Arc<dyn Kind>,
    pauses: Arc<KindPauses>,
}

impl PausableKind {
    /// `inner`, registered as `name`, paused as `pauses` says.
    pub fn new(name: String, inner: Arc<dyn Kind>, pauses: Arc<KindPauses>) -> PausableKind {
        PausableKind {
            name,
            inner,
            pauses,
        }
    }
}

#[async_trait]
impl Kind for PausableKind {
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        self.inner.validate(payload)
    }

    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError> {
        if let Some((after, reason)) = self.pauses.deferral(&self.name).await {
            http::metrics::deferred(&self.name, "paused");
            return Err(JobError::Deferred { reason, after });
        }
        self.inner.run(job, attempt).await
    }

    fn description(&self) -> String {
        self.inner.description()
    }

    fn payload_schema(&self) -> Value {
        self.inner.payload_schema()
    }

    fn example(&self) -> Option<Value> {
        self.inner.example()
    }

    fn callback_url(&self) -> Option<String> {
        self.inner.callback_url()
    }

    fn key_from(&self) -> Option<&crate::job::KeySource> {
        self.inner.key_from()
    }

    fn flow(&self) -> Option<Value> {
        self.inner.flow()
    }

    fn retry_policy(&self, worker: RetryPolicy) -> RetryPolicy {
        self.inner.retry_policy(worker)
    }

    fn kind_type(&self) -> &'static str {
        self.inner.kind_type()
    }

    async fn prepare(&self) -> Result<(), http::HttpKindError> {
        self.inner.prepare().await
    }
}
