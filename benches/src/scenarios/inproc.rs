//! The ceilings measured inside one process (a `__ceiling` child of the benchmark, so its
//! CPU and peak RSS are its own): confirmed publishes and consumes through the `Broker`
//! trait, and result writes through `Storage` / `ResultWriter`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use surge_common::broker::{Broker, ConsumeOptions};
use surge_common::clock::now_micros;
use surge_common::job::Job;
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::storage::batch::ResultWriter;
use surge_common::storage::{JobResult, JobStatus};
use uuid::Uuid;

use super::ms;
use crate::db::{BenchDb, Engine};
use crate::deploy::{connect_broker, Backend, Cost};
use crate::load::histogram;
use crate::procs;
use crate::results::CeilingRow;

fn bench_job() -> Job {
    Job::new(BuiltinKind::Sleep, json!({"ms": 0}), None)
}

/// Which in-process ceiling a `__ceiling` child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CeilingKind {
    /// Through the `Broker` trait.
    Broker,
    /// Through `Storage` / `ResultWriter`.
    Db,
}

/// The `__ceiling` child's command line.
#[derive(Debug, Clone, clap::Parser)]
pub struct CeilingArgs {
    /// What to measure.
    #[arg(long, value_enum)]
    pub what: CeilingKind,
    /// Broker (with `--what broker`).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// `sqlite` or a PostgreSQL URL (with `--what db`).
    #[arg(long)]
    pub database: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, default_value = "")]
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "")]
    pub kafka_brokers: String,
    /// Queue / topic (removed afterwards).
    #[arg(long, default_value = "surge.bench.raw")]
    pub queue: String,
    /// Concurrent publishers.
    #[arg(long)]
    pub clients: usize,
    /// Seconds per measurement.
    #[arg(long)]
    pub secs: f64,
    /// Consumer prefetch.
    #[arg(long)]
    pub prefetch: u16,
}

/// Runs a `__ceiling` child's measurement in this process.
pub async fn ceiling_here(args: &CeilingArgs) -> anyhow::Result<Vec<CeilingRow>> {
    let duration = Duration::from_secs_f64(args.secs);
    match args.what {
        CeilingKind::Broker => {
            let backend = args.backend.context("--backend is required")?;
            let broker =
                connect_broker(backend, &args.amqp_url, &args.kafka_brokers, &args.queue).await?;
            let result = broker_phases(broker.clone(), args, duration, backend).await;
            if let Err(e) = broker.delete_topology().await {
                eprintln!("note: could not delete {}: {e}", args.queue);
            }
            result
        }
        CeilingKind::Db => {
            let engine = match args.database.as_deref() {
                Some("sqlite") | None => Engine::Sqlite,
                Some(url) => Engine::Postgres(url.to_owned()),
            };
            db_phases(duration, &engine).await
        }
    }
}

async fn publish_for(
    broker: &Arc<dyn Broker>,
    clients: usize,
    duration: Duration,
) -> (u64, hdrhistogram::Histogram<u64>, u64) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut h) = (0u64, 0u64, histogram());
                while Instant::now() < deadline {
                    let job = bench_job();
                    let sent = Instant::now();
                    match broker.publish(std::slice::from_ref(&job)).await {
                        Ok(()) => {
                            ok += 1;
                            h.saturating_record(sent.elapsed().as_micros() as u64);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, h, failed)
            })
        })
        .collect();
    let (mut ok, mut h, mut failed) = (0, histogram(), 0);
    for task in tasks {
        if let Ok((n, mine, f)) = task.await {
            ok += n;
            failed += f;
            let _ = h.add(&mine);
        }
    }
    (ok, h, failed)
}

async fn broker_phases(
    broker: Arc<dyn Broker>,
    args: &CeilingArgs,
    duration: Duration,
    backend: Backend,
) -> anyhow::Result<Vec<CeilingRow>> {
    let queue = args.queue.as_str();
    let subject = backend.name().to_owned();
    let mut rows = Vec::new();
    // Warm the publishing channel / producer.
    broker
        .publish(&[bench_job()])
        .await
        .context("first publish")?;

    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let (published, latency, failed) = publish_for(&broker, args.clients, duration).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(failed == 0, "{failed} publishes failed");
    rows.push(CeilingRow {
        subject: subject.clone(),
        ceiling: format!(
            "raw confirmed publish, 1 job per call ({} publishers)",
            args.clients
        ),
        rate: published as f64 / elapsed.as_secs_f64(),
        ops: published,
        p99_ms: Some(ms(latency.value_at_quantile(0.99))),
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), published),
            &services,
            published,
        ),
    });

    // Consume: one consumer acking every delivery, counting as it goes.
    let acked = Arc::new(AtomicU64::new(0));
    let mut deliveries = broker
        .consume(ConsumeOptions {
            group: format!("{queue}-raw"),
            prefetch: args.prefetch,
        })
        .await
        .context("consuming")?;
    let consumer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                let Ok(delivery) = delivery else { break };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if delivery.ack().await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let backlog = published + 1;
    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let drained = wait_count(&acked, backlog, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    rows.push(CeilingRow {
        subject: subject.clone(),
        ceiling: format!(
            "raw consume + ack of that backlog (prefetch {})",
            args.prefetch
        ),
        rate: drained as f64 / elapsed.as_secs_f64(),
        ops: drained,
        p99_ms: None,
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), drained),
            &services,
            drained,
        ),
    });

    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let base = acked.load(Ordering::Relaxed);
    let (published, latency, failed) = publish_for(&broker, args.clients, duration).await;
    anyhow::ensure!(failed == 0, "{failed} publishes failed");
    let done = wait_count(&acked, base + published, Duration::from_secs(120)).await - base;
    let elapsed = started.elapsed();
    rows.push(CeilingRow {
        subject,
        ceiling: format!(
            "raw publish + consume at once ({} publishers, 1 consumer)",
            args.clients
        ),
        rate: done as f64 / elapsed.as_secs_f64(),
        ops: done,
        p99_ms: Some(ms(latency.value_at_quantile(0.99))),
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), done),
            &services,
            done,
        ),
    });
    consumer.abort();
    Ok(rows)
}

async fn wait_count(counter: &AtomicU64, n: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn with_services(mut cost: Cost, before: &BTreeMap<String, f64>, n: u64) -> Cost {
    cost.add_services(before, &procs::service_cpu(), n);
    cost
}

fn result_row() -> JobResult {
    let now = now_micros();
    JobResult {
        job_id: Uuid::now_v7(),
        kind: "sleep".into(),
        status: JobStatus::Succeeded,
        result: Some(json!({"slept_ms": 0})),
        error: None,
        attempts: 1,
        deliveries: 1,
        worker: "bench".into(),
        enqueued_at_us: now,
        started_at_us: now,
        finished_at_us: now,
        job: None,
    }
}

/// The database ceiling on `engine`: Surge's result writes alone — `Storage::record` one
/// row per transaction, `ResultWriter` (group commit) under many concurrent callers, and
/// `Storage::record_many` with full batches.
async fn db_phases(duration: Duration, engine: &Engine) -> anyhow::Result<Vec<CeilingRow>> {
    const BATCH: usize = 256;
    const CALLERS: usize = 512;
    let db = BenchDb::create_with(engine, false).await?;
    let storage = db.storage().clone();
    let subject = engine.name().to_owned();
    let mut rows = Vec::new();
    let result = async {
        // 1. One row per call, one call at a time: autocommit single-row writes.
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let (started, mut n, mut h) = (Instant::now(), 0u64, histogram());
        while started.elapsed() < duration {
            let t = Instant::now();
            storage.record(&result_row()).await?;
            h.saturating_record(t.elapsed().as_micros() as u64);
            n += 1;
        }
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: "Storage::record, 1 row per commit, sequential".into(),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });

        // 2. The worker's path: ResultWriter under many concurrent callers.
        let writer = ResultWriter::spawn(storage.clone(), BATCH);
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let started = Instant::now();
        let deadline = started + duration;
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let (mut n, mut h) = (0u64, histogram());
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if writer.record(result_row()).await.is_err() {
                            break;
                        }
                        h.saturating_record(t.elapsed().as_micros() as u64);
                        n += 1;
                    }
                    (n, h)
                })
            })
            .collect();
        let (mut n, mut h) = (0u64, histogram());
        for caller in callers {
            let (mine, hist) = caller.await?;
            n += mine;
            let _ = h.add(&hist);
        }
        drop(writer);
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: format!("ResultWriter group commit (≤{BATCH}/commit, {CALLERS} callers)"),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });

        // 3. record_many directly with full batches.
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let (started, mut n, mut h) = (Instant::now(), 0u64, histogram());
        while started.elapsed() < duration {
            let batch: Vec<JobResult> = (0..BATCH).map(|_| result_row()).collect();
            let t = Instant::now();
            storage.record_many(&batch).await?;
            h.saturating_record(t.elapsed().as_micros() as u64);
            n += BATCH as u64;
        }
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: format!("Storage::record_many, {BATCH} rows per commit, sequential"),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });
        anyhow::Ok(())
    }
    .await;
    db.remove().await;
    result?;
    Ok(rows)
}
