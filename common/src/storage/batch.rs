//! [`ResultWriter`]: group commit for results.
//!
//! Hundreds of jobs finishing at once would otherwise each pay a commit (an fsync). The
//! writer task takes the first waiting row, sweeps up every other row already queued (up
//! to `max_batch`), stores them with one [`Storage::record_many`] — one statement, one
//! commit — and answers each caller. No artificial delay: under light load a batch is one
//! row; under a burst, rows pile up while a commit runs and the next batch takes them all.
//! Callers ack their job only after their answer, so acks still follow commits.

use tokio::sync::{mpsc, oneshot};

use super::{JobResult, Recorded, Storage};

type Reply = oneshot::Sender<Result<Recorded, String>>;

/// Hands results to a background writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResultWriter {
    queue: mpsc::Sender<(JobResult, Reply)>,
}

/// Why a result was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The batch containing the row failed to commit.
    #[error("batch commit failed: {0}")]
    Commit(String),
    /// The writer task has stopped.
    #[error("the result writer has stopped")]
    Stopped,
}

impl ResultWriter {
    /// Starts the writer task on the current runtime. It stops when every clone is dropped.
    pub fn spawn(storage: Storage, max_batch: usize) -> ResultWriter {
        let max_batch = max_batch.max(1);
        let (queue, mut incoming) = mpsc::channel::<(JobResult, Reply)>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while incoming.recv_many(&mut batch, max_batch).await > 0 {
                let (rows, replies): (Vec<JobResult>, Vec<Reply>) = batch.drain(..).unzip();
                match storage.record_many(&rows).await {
                    Ok(outcome) => {
                        for (reply, recorded) in replies.into_iter().zip(outcome) {
                            let _ = reply.send(Ok(recorded));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        ResultWriter { queue }
    }

    /// Stores `row` in the next batch and returns once that batch is committed.
    pub async fn record(&self, row: JobResult) -> Result<Recorded, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((row, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        match answer.await {
            Ok(Ok(recorded)) => Ok(recorded),
            Ok(Err(message)) => Err(WriteError::Commit(message)),
            Err(_) => Err(WriteError::Stopped),
        }
    }
}

/// Hands stage changes (`running`, `retrying`) to a background task that writes them in
/// batches. Fire-and-forget: stages are advisory, so a full queue or a failed write drops
/// updates (logged) rather than slowing jobs down. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StageWriter {
    queue: mpsc::Sender<super::lifecycle::StageUpdate>,
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
    pub fn record(&self, update: super::lifecycle::StageUpdate) {
        if self.queue.try_send(update).is_err() {
            tracing::debug!("stage update dropped: writer busy");
        }
    }
}
