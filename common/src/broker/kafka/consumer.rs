//! Consuming: one consumer-group member per [`Broker::consume`](crate::broker::Broker::consume)
//! call, driven by one task that owns the librdkafka consumer.
//!
//! The task loop, in priority order:
//! 1. the stream was dropped → drain (below);
//! 2. a job is ready and the prefetch window has room → hand it out as a [`Delivery`] whose
//!    settle handle holds one window permit;
//! 3. a released delivery came back → queue it again (`redelivered = true`);
//! 4. a held retry became due → queue it and resume its paused `T.retry` partition;
//! 5. every [`COMMIT_INTERVAL`] → commit the watermarks that moved (asynchronously);
//! 6. nothing is queued → poll Kafka for the next message. Polling also runs librdkafka's
//!    rebalance and commit callbacks, so the task keeps polling while all permits are out
//!    (at most one message is read ahead).
//!
//! When the stream is dropped the task stops reading (pauses its partitions) but keeps the
//! group membership until every delivery it handed out is settled or released (bounded by
//! [`DRAIN_TIMEOUT`]), so a worker may drop the stream on SIGTERM and still ack its in-flight
//! jobs. Then it commits the settled watermarks synchronously and leaves the group.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::client::{base_config, broker_error, log_error, log_line, SETUP_TIMEOUT};
use super::offsets::{OffsetTracker, TopicPartition};
use super::producer::{Extra, NOT_BEFORE};
use super::Inner;
use crate::broker::{headers, BrokerError, ConsumeOptions, Deliveries, Delivery, Settle};
use crate::job::Job;

/// How often settled watermarks are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a dropped stream keeps its group membership for in-flight deliveries to settle.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between attempts to dead-letter an undecodable message.
const DEAD_LETTER_BACKOFF: Duration = Duration::from_secs(1);

/// Where a delivery came from, and under which assignment generation.
#[derive(Debug, Clone)]
struct Position {
    tp: TopicPartition,
    offset: i64,
    generation: u64,
}

/// A job ready to be handed out.
#[derive(Debug, Clone)]
struct Ready {
    job: Job,
    attempt: u32,
    redelivered: bool,
    pos: Position,
}

/// A retry read before its time, held until `due`.
#[derive(Debug)]
struct Held {
    due: Instant,
    item: Ready,
}

#[derive(Debug, Default)]
struct State {
    tracker: OffsetTracker,
    /// `T.retry` partitions this consumer paused while holding a retry, with the generation
    /// it paused them in.
    paused: HashMap<TopicPartition, u64>,
    /// The group generation of the last assignment (see [`group_generation`]).
    generation: Option<i32>,
    /// Set when the coordinator answered a rejoin without a new generation: the task
    /// leaves and rejoins the group (see [`Task::force_rebalance`]).
    rejoin: bool,
    /// Deliveries handed to the worker and not yet settled or released, per partition
    /// (see [`InFlight`]); a revoke waits for its partitions' count to reach zero.
    in_flight: HashMap<TopicPartition, usize>,
}

/// Shared by the consumer task, its rebalance callbacks (which run inside the task's
/// polls) and the settle handles (which run wherever the worker settles).
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a harmful way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn settle(&self, pos: &Position) {
        let moved = self
            .lock()
            .tracker
            .settle(&pos.tp, pos.generation, pos.offset);
        if !moved && !self.is_current(pos) {
            tracing::debug!(
                topic = %pos.tp.0, partition = pos.tp.1, offset = pos.offset,
                "settled after its partition moved; the new owner redelivers it"
            );
        }
    }

    fn is_current(&self, pos: &Position) -> bool {
        self.lock().tracker.is_current(&pos.tp, pos.generation)
    }
}

/// librdkafka callbacks: logs, rebalances and commit results.
struct SurgeContext {
    shared: Arc<Shared>,
    /// The main topic: only its revoked partitions wait for in-flight jobs (held retries
    /// are not in flight).
    main_topic: String,
}

impl ClientContext for SurgeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        log_error(&error, reason);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn list(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

fn offsets_list(commits: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for ((topic, partition), offset) in commits {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

/// Commits `commits`; on failure offers them again for the next commit.
fn commit_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    commits: Vec<(TopicPartition, i64)>,
    mode: CommitMode,
) {
    if commits.is_empty() {
        return;
    }
    let result = offsets_list(&commits).and_then(|tpl| consumer.commit(&tpl, mode));
    if let Err(e) = result {
        tracing::warn!(error = %e, "kafka offset commit failed; will retry");
        let mut state = shared.lock();
        for (tp, offset) in &commits {
            state.tracker.commit_failed(tp, *offset);
        }
    }
}

/// How long a revoke waits for the revoked partitions' in-flight jobs to settle.
const REVOKE_GRACE: Duration = Duration::from_secs(20);

impl SurgeContext {
    /// Before partitions of the main topic go to another member, waits (at most
    /// [`REVOKE_GRACE`]) until the jobs already handed out from them are settled or
    /// released ([`InFlight`]), so their offsets are committed with the revoke and the new
    /// owner does not run them again.
    /// Without this, a member joining mid-burst made every in-flight job of the moved
    /// partitions run twice (the demo measured 101 of 400). Blocks the polling thread, so
    /// only on a multi-thread Tokio runtime (via `block_in_place`, which hands the
    /// thread's other tasks to another worker); elsewhere it does not wait.
    fn await_in_flight(&self, partitions: &[TopicPartition]) {
        let main: Vec<&TopicPartition> = partitions
            .iter()
            .filter(|tp| tp.0 == self.main_topic)
            .collect();
        let pending = || {
            let state = self.shared.lock();
            main.iter()
                .map(|tp| state.in_flight.get(*tp).copied().unwrap_or(0))
                .sum::<usize>()
        };
        if main.is_empty() || pending() == 0 {
            return;
        }
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if !multi_thread {
            return;
        }
        let started = std::time::Instant::now();
        tokio::task::block_in_place(|| {
            while pending() > 0 && started.elapsed() < REVOKE_GRACE {
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let left = pending();
        if left > 0 {
            tracing::warn!(left, "kafka revoke: in-flight jobs still running after the grace period; their next owner runs them again");
        } else {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "kafka revoke: in-flight jobs of the revoked partitions settled"
            );
        }
    }
}

impl ConsumerContext for SurgeContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                self.await_in_flight(&partitions);
                let mut commits = Vec::new();
                let mut resume = Vec::new();
                {
                    let mut state = self.shared.lock();
                    for tp in partitions {
                        if let Some(offset) = state.tracker.revoke(&tp) {
                            commits.push((tp.clone(), offset));
                        }
                        if state.paused.remove(&tp).is_some() {
                            resume.push(tp);
                        }
                    }
                }
                // librdkafka keeps an application pause across reassignment: undo ours.
                if !resume.is_empty() {
                    if let Err(e) = consumer.resume(&list(&resume)) {
                        tracing::debug!(error = %e, "resume on revoke failed");
                    }
                }
                // Commit what is settled before the partitions go; the rest is redelivered
                // to their next owner.
                commit_offsets(consumer, &self.shared, commits, CommitMode::Sync);
                tracing::info!(partitions = tpl.count(), "kafka partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let generation = group_generation(consumer);
            let mut state = self.shared.lock();
            for tp in partitions_of(tpl) {
                state.tracker.assign(tp);
            }
            // A real rebalance always starts a new generation. The same one again means the
            // coordinator re-sent the old assignment: Tansu 0.6 does that after evicting a
            // dead member on a heartbeat, leaving the dead member's partitions unowned and
            // telling no other member. Leaving and rejoining forces a real rebalance.
            if generation.is_some() && generation == state.generation {
                tracing::warn!(
                    generation = generation.unwrap_or_default(),
                    "kafka group rejoin kept its generation (coordinator did not rebalance); \
                     leaving and rejoining to force a rebalance"
                );
                state.rejoin = true;
            }
            state.generation = generation;
            tracing::info!(
                partitions = tpl.count(),
                generation = generation.unwrap_or(-1),
                "kafka partitions assigned"
            );
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "kafka offset commit failed; will retry");
            let mut state = self.shared.lock();
            for elem in offsets.elements() {
                if let Offset::Offset(offset) = elem.offset() {
                    let tp = (elem.topic().to_owned(), elem.partition());
                    state.tracker.commit_failed(&tp, offset);
                }
            }
        }
    }
}

type KafkaConsumer = StreamConsumer<SurgeContext>;

/// The consumer's current group generation, from librdkafka's group metadata.
///
/// rdkafka does not expose it, so this serialises the metadata with
/// `rd_kafka_consumer_group_metadata_write`, whose layout is the 7-byte magic `CGMDv2:`
/// followed by the generation id in native byte order.
fn group_generation<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<i32> {
    use rdkafka::bindings as rdsys;
    const MAGIC: &[u8] = b"CGMDv2:";
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is a live consumer handle (borrowed for this call); every object
    // librdkafka hands back is checked for null, read within its reported size and freed
    // with its matching destructor exactly once.
    unsafe {
        let cgmd = rdsys::rd_kafka_consumer_group_metadata(rk);
        if cgmd.is_null() {
            return None;
        }
        let mut buffer: *mut std::ffi::c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        let error = rdsys::rd_kafka_consumer_group_metadata_write(cgmd, &mut buffer, &mut size);
        rdsys::rd_kafka_consumer_group_metadata_destroy(cgmd);
        if !error.is_null() {
            rdsys::rd_kafka_error_destroy(error);
            return None;
        }
        if buffer.is_null() {
            return None;
        }
        let bytes = std::slice::from_raw_parts(buffer.cast::<u8>(), size);
        let generation = bytes
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.get(..4))
            .and_then(|raw| <[u8; 4]>::try_from(raw).ok())
            .map(i32::from_ne_bytes);
        rdsys::rd_kafka_mem_free(rk, buffer);
        generation
    }
}

/// Starts a consumer-group member and its task; see the module docs.
pub(super) async fn consume(
    inner: Arc<Inner>,
    options: ConsumeOptions,
) -> Result<Deliveries, BrokerError> {
    if options.prefetch == 0 {
        return Err(BrokerError::Config("prefetch must be at least 1".into()));
    }
    if options.group.trim().is_empty() {
        return Err(BrokerError::Config("a Kafka consumer needs a group".into()));
    }
    let shared = Arc::new(Shared::default());
    let consumer: KafkaConsumer = base_config(&inner.bootstrap, "surge-worker")
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        // Notice a dead worker within seconds, not the 45 s default.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "100")
        // librdkafka reads ahead up to 100,000 messages per partition and 64 MiB by
        // default; the task never holds more than its prefetch window, so a few MiB of
        // read-ahead keep it fed (thousands of jobs per fetch) at a fraction of the memory.
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "4096")
        // The task stops polling while its window is full and a message is read ahead;
        // allow that for longer than the longest job (10 min) before librdkafka decides
        // the consumer is wedged and leaves the group.
        .set("max.poll.interval.ms", "900000")
        .create_with_context(SurgeContext {
            shared: shared.clone(),
            main_topic: inner.topics.main.clone(),
        })
        .map_err(|e| broker_error(&e))?;
    // Fail here, not in the stream, when the broker is out of reach.
    let main = inner.topics.main.clone();
    let consumer = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(Some(&main), SETUP_TIMEOUT)
            .map(|_| consumer)
    })
    .await
    .map_err(|e| BrokerError::Unavailable(format!("kafka consumer set-up failed: {e}")))?
    .map_err(|e| broker_error(&e))?;
    consumer
        .subscribe(&[&inner.topics.main, &inner.topics.retry])
        .map_err(|e| broker_error(&e))?;
    inner.stats.use_group(&options.group);
    tracing::info!(
        group = %options.group, topic = %inner.topics.main, prefetch = options.prefetch,
        "kafka consumer started"
    );

    let prefetch = usize::from(options.prefetch);
    let (tx, mut rx) = mpsc::channel(prefetch);
    let tasks = inner.clone();
    let task = Task {
        inner,
        shared,
        window: Arc::new(Semaphore::new(prefetch)),
        prefetch,
        tx,
    };
    let handle = tokio::spawn(task.run(consumer));
    let mut running = super::lock(&tasks.consumers);
    running.retain(|task| !task.is_finished());
    running.push(handle);
    drop(running);
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

/// What the consumer task owns besides the consumer itself.
struct Task {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    window: Arc<Semaphore>,
    prefetch: usize,
    tx: mpsc::Sender<Result<Delivery, BrokerError>>,
}

/// What [`Task::read`] made of one message.
enum Read {
    Ready(Ready),
    Hold(Held),
    Skip,
}

impl Task {
    async fn run(self, consumer: KafkaConsumer) {
        let (release_tx, mut release_rx) = mpsc::unbounded_channel::<Ready>();
        let mut ready: VecDeque<Ready> = VecDeque::new();
        let mut held: Vec<Held> = Vec::new();
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next_due = held.iter().map(|h| h.due).min();
            tokio::select! {
                biased;
                _ = self.tx.closed() => break,
                permit = self.window.clone().acquire_owned(), if !ready.is_empty() => {
                    let (Ok(permit), Some(item)) = (permit, ready.pop_front()) else { break };
                    if !self.shared.is_current(&item.pos) {
                        continue; // revoked meanwhile: its next owner delivers it
                    }
                    let delivery = self.delivery(item, permit, release_tx.clone());
                    if self.tx.send(Ok(delivery)).await.is_err() {
                        break;
                    }
                }
                Some(mut item) = release_rx.recv() => {
                    item.redelivered = true;
                    ready.push_back(item);
                }
                _ = sleep_until(next_due), if next_due.is_some() => {
                    self.release_due(&consumer, &mut held, &mut ready);
                }
                _ = commit_tick.tick() => {
                    self.commit(&consumer, CommitMode::Async);
                    self.force_rebalance(&consumer);
                }
                message = consumer.recv(), if ready.is_empty() => match message {
                    Ok(message) => match self.read(&consumer, &message) {
                        Read::Ready(item) => ready.push_back(item),
                        Read::Hold(h) => held.push(h),
                        Read::Skip => {}
                    },
                    Err(KafkaError::MessageConsumptionFatal(code)) => {
                        let e = BrokerError::Unavailable(format!("fatal kafka consumer error: {code}"));
                        tracing::error!(error = %e, "kafka consumer stopped");
                        let _ = self.tx.send(Err(e)).await;
                        break;
                    }
                    Err(KafkaError::PartitionEOF(_)) => {}
                    Err(e) => tracing::warn!(error = %e, "kafka consume error; librdkafka retries"),
                },
            }
        }
        self.drain(consumer, release_rx).await;
    }

    /// Turns one message into a ready job, a held retry, or nothing (undecodable: sent to
    /// the dead letters by a background task).
    fn read(&self, consumer: &KafkaConsumer, message: &BorrowedMessage<'_>) -> Read {
        let tp = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        let generation = self.shared.lock().tracker.delivered(&tp, offset);
        let pos = Position {
            tp,
            offset,
            generation,
        };
        let job = match Job::decode(message.payload().unwrap_or_default()) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(
                    topic = %pos.tp.0, partition = pos.tp.1, offset, error = %e,
                    "undecodable kafka message; dead-lettering"
                );
                self.dead_letter_raw(message, pos, format!("undecodable job: {e}"));
                return Read::Skip;
            }
        };
        let attempt = header(message, headers::ATTEMPT)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        let item = Ready {
            job,
            attempt,
            redelivered: false,
            pos,
        };
        let not_before = header(message, NOT_BEFORE).and_then(|v| v.parse::<i64>().ok());
        let wait_ms = not_before.map_or(0, |t| t - crate::clock::now_micros() / 1000);
        if item.pos.tp.0 != self.inner.topics.retry || wait_ms <= 0 {
            return Read::Ready(item);
        }
        // Too early: hold it and stop reading its retry partition until then. Only this
        // partition waits; the main topic keeps flowing.
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
        match consumer.pause(&list(std::slice::from_ref(&item.pos.tp))) {
            Ok(()) => {
                self.shared
                    .lock()
                    .paused
                    .insert(item.pos.tp.clone(), item.pos.generation);
            }
            Err(e) => tracing::warn!(error = %e, "pausing a retry partition failed"),
        }
        Read::Hold(Held {
            due: Instant::now() + wait,
            item,
        })
    }

    /// Queues the held retries that are due and resumes their partitions.
    fn release_due(
        &self,
        consumer: &KafkaConsumer,
        held: &mut Vec<Held>,
        ready: &mut VecDeque<Ready>,
    ) {
        let now = Instant::now();
        let (due, waiting): (Vec<Held>, Vec<Held>) = held.drain(..).partition(|h| h.due <= now);
        *held = waiting;
        for Held { item, .. } in due {
            let pos = &item.pos;
            let still_held = held
                .iter()
                .any(|h| h.item.pos.tp == pos.tp && h.item.pos.generation == pos.generation);
            if !still_held {
                let ours = {
                    let mut state = self.shared.lock();
                    let ours = state.paused.get(&pos.tp) == Some(&pos.generation);
                    if ours {
                        state.paused.remove(&pos.tp);
                    }
                    ours
                };
                if ours {
                    if let Err(e) = consumer.resume(&list(std::slice::from_ref(&pos.tp))) {
                        tracing::warn!(error = %e, "resuming a retry partition failed");
                    }
                }
            }
            if self.shared.is_current(&item.pos) {
                ready.push_back(item);
            }
        }
    }

    fn delivery(
        &self,
        item: Ready,
        permit: OwnedSemaphorePermit,
        releases: mpsc::UnboundedSender<Ready>,
    ) -> Delivery {
        let settle = KafkaSettle {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            releases,
            _in_flight: InFlight::start(&self.shared, &item.pos.tp),
            item: item.clone(),
            _permit: permit,
        };
        Delivery::new(item.job, item.attempt, item.redelivered, Box::new(settle))
    }

    /// Leaves and rejoins the group when a rebalance callback asked for it (see
    /// [`SurgeContext::post_rebalance`]). Unsubscribing revokes (committing the settled
    /// watermarks) and sends LeaveGroup, which makes the coordinator start a new generation
    /// that every member has to join; the fresh subscription joins it as a new member.
    fn force_rebalance(&self, consumer: &KafkaConsumer) {
        if !std::mem::take(&mut self.shared.lock().rejoin) {
            return;
        }
        consumer.unsubscribe();
        self.shared.lock().generation = None;
        let topics = [
            self.inner.topics.main.as_str(),
            self.inner.topics.retry.as_str(),
        ];
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::error!(error = %e, "kafka re-subscribe after leaving the group failed");
            let _ = self.tx.try_send(Err(broker_error(&e)));
        }
    }

    fn commit(&self, consumer: &KafkaConsumer, mode: CommitMode) {
        let commits = self.shared.lock().tracker.take_commits();
        commit_offsets(consumer, &self.shared, commits, mode);
    }

    /// Sends an undecodable message to the dead letters, then settles it. Retries until it
    /// succeeds or the partition moves to another consumer (which will try again).
    fn dead_letter_raw(&self, message: &BorrowedMessage<'_>, pos: Position, reason: String) {
        let key = message.key().map(<[u8]>::to_vec);
        let payload = message.payload().map(<[u8]>::to_vec);
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                let sent = inner
                    .producer
                    .send_raw(
                        &inner.topics.dead,
                        key.as_deref(),
                        payload.as_deref(),
                        &reason,
                    )
                    .await;
                match sent {
                    Ok(()) => {
                        shared.settle(&pos);
                        return;
                    }
                    Err(e) if shared.is_current(&pos) => {
                        tracing::warn!(error = %e, "dead-lettering an undecodable message failed; retrying");
                        tokio::time::sleep(DEAD_LETTER_BACKOFF).await;
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// The stream is gone: stop reading, let handed-out deliveries settle (bounded), commit,
    /// and leave the group.
    async fn drain(self, consumer: KafkaConsumer, mut releases: mpsc::UnboundedReceiver<Ready>) {
        if let Ok(assignment) = consumer.assignment() {
            if let Err(e) = consumer.pause(&assignment) {
                tracing::debug!(error = %e, "pausing for shutdown failed");
            }
        }
        let all_back = u32::try_from(self.prefetch).unwrap_or(u32::MAX);
        let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
        tokio::pin!(deadline);
        let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
        loop {
            tokio::select! {
                biased;
                _ = self.window.acquire_many(all_back) => break,
                _ = &mut deadline => {
                    tracing::warn!("kafka consumer leaving with deliveries unsettled; they will be redelivered");
                    break;
                }
                // Released jobs are not handed out again: their offsets stay uncommitted.
                Some(_) = releases.recv() => {}
                _ = commit_tick.tick() => self.commit(&consumer, CommitMode::Async),
                // Keep serving rebalance and commit callbacks; paused, so no new messages.
                message = consumer.recv() => if let Err(e) = message {
                    tracing::debug!(error = %e, "kafka error while draining");
                },
            }
        }
        // Final commit and group leave block on the network: off the async threads.
        let shared = self.shared.clone();
        let closing = tokio::task::spawn_blocking(move || {
            let commits = shared.lock().tracker.take_commits();
            commit_offsets(&consumer, &shared, commits, CommitMode::Sync);
            drop(consumer);
        });
        if let Err(e) = closing.await {
            tracing::warn!(error = %e, "closing the kafka consumer failed");
        }
        tracing::info!("kafka consumer stopped");
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A UTF-8 header value.
fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Settles one Kafka delivery; holds one permit of its consumer's prefetch window.
struct KafkaSettle {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    releases: mpsc::UnboundedSender<Ready>,
    item: Ready,
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlight,
}

/// Counts one delivery as in flight on its partition from hand-out until its settle handle
/// is gone (settled, released or dropped); the count is what a revoke waits for.
struct InFlight {
    shared: Arc<Shared>,
    tp: TopicPartition,
}

impl InFlight {
    fn start(shared: &Arc<Shared>, tp: &TopicPartition) -> InFlight {
        *shared.lock().in_flight.entry(tp.clone()).or_default() += 1;
        InFlight {
            shared: shared.clone(),
            tp: tp.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(count) = state.in_flight.get_mut(&self.tp) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.in_flight.remove(&self.tp);
            }
        }
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.shared.settle(&self.item.pos);
        Ok(())
    }

    async fn retry(
        self: Box<Self>,
        job: &Job,
        next_attempt: u32,
        after: Duration,
    ) -> Result<(), BrokerError> {
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2);
        let extra = Extra {
            not_before_ms: Some(crate::clock::now_micros() / 1000 + after_ms),
            dead_reason: None,
        };
        let inner = &self.inner;
        let sent = inner
            .producer
            .send(
                &inner.topics.retry,
                std::slice::from_ref(job),
                next_attempt,
                extra,
            )
            .await;
        match sent {
            Ok(()) => {
                self.shared.settle(&self.item.pos);
                Ok(())
            }
            Err(e) => {
                // Not settled: hand it back so it is delivered again.
                self.release();
                Err(e)
            }
        }
    }

    async fn dead_letter(self: Box<Self>, job: &Job, reason: &str) -> Result<(), BrokerError> {
        let extra = Extra {
            not_before_ms: None,
            dead_reason: Some(reason),
        };
        let inner = &self.inner;
        let sent = inner
            .producer
            .send(
                &inner.topics.dead,
                std::slice::from_ref(job),
                self.item.attempt,
                extra,
            )
            .await;
        match sent {
            Ok(()) => {
                self.shared.settle(&self.item.pos);
                Ok(())
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    fn release(self: Box<Self>) {
        // Unbounded send never blocks. If the consumer task is gone the offset was never
        // committed, so the partition's next owner delivers the job again.
        let _ = self.releases.send(self.item.clone());
    }
}
