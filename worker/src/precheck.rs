//! The check before an attempt: does the job already have a terminal state?
//!
//! A delivery of a job that an operator cancelled (`DELETE /jobs/{id}`), that the ingress
//! refused, or that already has a result (a redelivery after the worker died between
//! commit and ack) is settled without running the handler, so a cancelled job's side
//! effects (an HTTP call) do not happen and a repeat costs no work. The lookups of
//! concurrent deliveries share one query ([`GroupCommit`]), as result writes do. The check
//! is an optimisation of the promise, not the promise itself: if it fails (the database
//! is out of reach) the job runs, and its commit still finds the terminal row (see
//! `surge_common::storage::cancel`).

use surge_common::storage::batch::{GroupCommit, WriteError};
use surge_common::storage::cancel::Settled;
use surge_common::storage::Storage;
use uuid::Uuid;

/// Batched [`Storage::settled`] lookups. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SettledCheck {
    inner: GroupCommit<Uuid, Option<Settled>>,
}

impl SettledCheck {
    /// Starts the lookup task on the current runtime; it stops when every clone is dropped.
    pub fn spawn(storage: Storage, max_batch: usize) -> SettledCheck {
        let inner = GroupCommit::spawn(max_batch, move |ids: Vec<Uuid>| {
            let storage = storage.clone();
            async move {
                let mut settled = storage.settled(&ids).await.map_err(|e| e.to_string())?;
                Ok(ids.iter().map(|id| settled.remove(id)).collect())
            }
        });
        SettledCheck { inner }
    }

    /// The job's terminal state, or `None` when it has none and should run.
    pub async fn check(&self, job_id: Uuid) -> Result<Option<Settled>, WriteError> {
        self.inner.submit(job_id).await
    }
}
