//! Batched writers: group commit for results and acceptances, fire-and-forget stages.
//!
//! Hundreds of jobs finishing (or being accepted) at once would otherwise each pay a
//! commit (an fsync). A [`GroupCommit`] task takes the first waiting item, sweeps up every
//! other item already queued (up to `max_batch`), stores them with one statement and one
//! commit, and answers each caller. No artificial delay: under light load a batch is one
//! item; under a burst, items pile up while a commit runs and the next batch takes them
//! all. Workers ack their job only after their answer, so acks still follow commits.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::acceptance::AcceptedJob;
use super::lifecycle::StageUpdate;
use super::{JobResult, PendingResult, Recorded, Storage};
use crate::job::Job;

type Reply<O> = oneshot::Sender<Result<O, String>>;

/// Why an item was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The batch containing the item failed to commit.
    #[error("batch commit failed: {0}")]
    Commit(String),
    /// The writer task has stopped.
    #[error("the writer has stopped")]
    Stopped,
}

/// Hands items of type `T` to a background task that writes them in batches and answers
/// each with its `O`. Cheap to clone; the task stops when every clone is dropped.
#[derive(Debug)]
pub struct GroupCommit<T, O> {
    queue: mpsc::Sender<(T, Reply<O>)>,
}

impl<T, O> Clone for GroupCommit<T, O> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, O: Send + 'static> GroupCommit<T, O> {
    /// Starts the task on the current runtime. `write` stores one batch and returns one
    /// output per item, in order, or an error that every item of the batch receives.
    pub fn spawn<F, Fut>(max_batch: usize, write: F) -> GroupCommit<T, O>
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<O>, String>> + Send,
    {
        let max_batch = max_batch.max(1);
        let (queue, mut incoming) = mpsc::channel::<(T, Reply<O>)>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while incoming.recv_many(&mut batch, max_batch).await > 0 {
                let (items, replies): (Vec<T>, Vec<Reply<O>>) = batch.drain(..).unzip();
                match write(items).await {
                    Ok(outputs) => {
                        for (reply, output) in replies.into_iter().zip(outputs) {
                            let _ = reply.send(Ok(output));
                        }
                    }
                    Err(message) => {
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        GroupCommit { queue }
    }

    /// Writes `item` in the next batch and returns once that batch is committed.
    pub async fn submit(&self, item: T) -> Result<O, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        match answer.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(message)) => Err(WriteError::Commit(message)),
            Err(_) => Err(WriteError::Stopped),
        }
    }
}

/// Group commit of job results ([`Storage::record_pending`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResultWriter {
    inner: GroupCommit<PendingResult, Recorded>,
}

impl ResultWriter {
    /// Starts the writer task on the current runtime. It stops when every clone is dropped.
    pub fn spawn(storage: Storage, max_batch: usize) -> ResultWriter {
        let inner = GroupCommit::spawn(max_batch, move |rows: Vec<PendingResult>| {
            let storage = storage.clone();
            async move {
                storage
                    .record_pending(&rows)
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        ResultWriter { inner }
    }

    /// Stores `row` of a job that does not await acceptance in the next batch and returns
    /// once that batch is committed.
    pub async fn record(&self, row: JobResult) -> Result<Recorded, WriteError> {
        self.record_pending(PendingResult {
            row,
            awaits_acceptance: false,
        })
        .await
    }

    /// Stores `result` in the next batch and returns once that batch is committed.
    pub async fn record_pending(&self, result: PendingResult) -> Result<Recorded, WriteError> {
        self.inner.submit(result).await
    }
}

/// Group commit of acceptances of published jobs ([`Storage::accept`]: each job's row,
/// `queued`), so that concurrent requests share one insert and one commit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AcceptWriter {
    inner: GroupCommit<Vec<AcceptedJob>, ()>,
}

impl AcceptWriter {
    /// Starts the writer task on the current runtime. `max_batch` counts requests.
    pub fn spawn(storage: Storage, max_batch: usize) -> AcceptWriter {
        let inner = GroupCommit::spawn(max_batch, move |requests: Vec<Vec<AcceptedJob>>| {
            let storage = storage.clone();
            async move {
                let count = requests.len();
                let jobs: Vec<AcceptedJob> = requests.into_iter().flatten().collect();
                storage
                    .accept(&jobs)
                    .await
                    .map(|()| vec![(); count])
                    .map_err(|e| e.to_string())
            }
        });
        AcceptWriter { inner }
    }

    /// Records `jobs` accepted in the next batch; returns once that batch is committed.
    pub async fn accept(&self, jobs: &[Job]) -> Result<(), WriteError> {
        self.inner.submit(AcceptedJob::of(jobs)).await
    }
}

/// Hands stage changes (`running`, `retrying`) to a background task that writes them in
/// batches. Fire-and-forget: stages are advisory, so a full queue or a failed write drops
/// updates (logged) rather than slowing jobs down. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StageWriter {
    queue: mpsc::Sender<StageUpdate>,
}

impl StageWriter {
    /// Starts the writer task on the current runtime. It stops when every clone is dropped.
    pub fn spawn(storage: Storage, max_batch: usize) -> StageWriter {
        let max_batch = max_batch.max(1);
        let (queue, mut incoming) = mpsc::channel(max_batch * 16);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while incoming.recv_many(&mut batch, max_batch).await > 0 {
                if let Err(e) = storage.record_stages(&batch).await {
                    tracing::warn!(error = %e, dropped = batch.len(), "stage updates not stored");
                }
                batch.clear();
            }
        });
        StageWriter { queue }
    }

    /// Queues `update` for the next batch; drops it when the queue is full.
    pub fn record(&self, update: StageUpdate) {
        if self.queue.try_send(update).is_err() {
            tracing::debug!("stage update dropped: writer busy");
        }
    }
}
