//! A Surge deployment for one measurement: an ingress process, worker processes (memory
//! broker: workers embedded in the ingress, as `surge-producer` runs them), a fresh
//! queue / topic and a fresh results database — all removed by [`Deployment::stop`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use surge_common::broker::Broker;

use crate::db::{BenchDb, Engine};
use crate::http::{self, Pool};
use crate::procs::{self, BrokerFlags, Executables, Proc, Usage};

/// Concurrent single POSTs of the warm-up round.
const WARM_CONCURRENCY: usize = 32;

/// Partitions of the Kafka topics (Surge's default).
pub const KAFKA_PARTITIONS: i32 = 6;

/// A broker backend (and, for RabbitMQ, the queue type).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// In-process queue (workers embedded in the ingress).
    Memory,
    /// RabbitMQ, classic queues (durable, persistent messages, publisher confirms).
    Rabbitmq,
    /// RabbitMQ, quorum queues (replicated by Raft; on one node here, so the cost of the
    /// Raft log without its network hops).
    RabbitmqQuorum,
    /// Apache Kafka (acks=all, idempotent producer).
    Kafka,
}

impl Backend {
    /// `memory`, `rabbitmq`, `rabbitmq-quorum`, `kafka`: the label in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Rabbitmq => "rabbitmq",
            Backend::RabbitmqQuorum => "rabbitmq-quorum",
            Backend::Kafka => "kafka",
        }
    }

    /// The `--broker` value of the processes (`rabbitmq` for both queue types).
    pub fn broker_flag(self) -> &'static str {
        match self {
            Backend::RabbitmqQuorum => "rabbitmq",
            other => other.name(),
        }
    }

    /// The RabbitMQ queue type, for the RabbitMQ backends.
    pub fn queue_type(self) -> Option<surge_common::broker::QueueType> {
        use surge_common::broker::QueueType;
        match self {
            Backend::Rabbitmq => Some(QueueType::Classic),
            Backend::RabbitmqQuorum => Some(QueueType::Quorum),
            Backend::Memory | Backend::Kafka => None,
        }
    }
}

/// Where the services are and how to run processes; shared by every scenario.
#[derive(Debug, Clone)]
pub struct Env {
    /// The ingress and worker executables.
    pub exes: Executables,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Results database engine for deployments.
    pub engine: Engine,
    /// Where child processes' stderr goes.
    pub log_dir: PathBuf,
    /// `RUST_LOG` of the child processes.
    pub log_level: String,
    /// Short id of this run, part of every queue name.
    pub run_id: String,
    /// A configuration file (`--config`) given to the ingress and every worker.
    pub config: Option<PathBuf>,
    /// More flags for the ingress and every worker (e.g. `--kafka-assignment consumer`).
    pub extra_args: Vec<String>,
    serial: Arc<AtomicU64>,
}

impl Env {
    /// A new environment.
    pub fn new(
        exes: Executables,
        amqp_url: String,
        kafka_brokers: String,
        engine: Engine,
        log_dir: PathBuf,
        log_level: String,
    ) -> Env {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Env {
            exes,
            amqp_url,
            kafka_brokers,
            engine,
            log_dir,
            log_level,
            run_id,
            config: None,
            extra_args: Vec::new(),
            serial: Arc::default(),
        }
    }

    /// The same environment (same run id and queue numbering) whose deployments read
    /// `config` (`--config`, ingress and workers alike).
    pub fn with_config(&self, config: PathBuf) -> Env {
        Env {
            config: Some(config),
            ..self.clone()
        }
    }

    /// The same environment whose deployments pass `args` to the ingress and every worker.
    pub fn with_extra_args(&self, args: Vec<String>) -> Env {
        Env {
            extra_args: args,
            ..self.clone()
        }
    }

    fn add_config(&self, command: &mut tokio::process::Command) {
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command.args(&self.extra_args);
    }

    /// A queue / topic name used by nothing else: `surge.bench.<label>-<run id>-<n>`.
    pub fn fresh_queue(&self, label: &str) -> String {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        format!("surge.bench.{label}-{}-{n}", self.run_id)
    }

    /// Connects a broker handle of this process to `queue`.
    pub async fn broker(&self, backend: Backend, queue: &str) -> anyhow::Result<Arc<dyn Broker>> {
        connect_broker(backend, &self.amqp_url, &self.kafka_brokers, queue).await
    }

    fn flags(&self, backend: Backend, queue: &str) -> BrokerFlags {
        BrokerFlags {
            broker: backend.broker_flag(),
            rabbitmq_queue_type: backend.queue_type(),
            amqp_url: self.amqp_url.clone(),
            kafka_brokers: self.kafka_brokers.clone(),
            queue: queue.to_owned(),
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The broker.
    pub backend: Backend,
    /// Names the queue and the logs.
    pub label: String,
    /// Worker processes (ignored for memory).
    pub workers: u16,
    /// Capacity of each worker process; for memory, of the embedded worker.
    pub capacity: u16,
}

/// Resource figures of a deployment at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The ingress.
    pub ingress: Usage,
    /// Each worker process.
    pub workers: Vec<Usage>,
    /// CPU seconds of the broker and database servers (see [`procs::service_cpu`]).
    pub services: BTreeMap<String, f64>,
}

/// CPU seconds per 1,000 jobs and peak RSS, by process role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// CPU seconds per 1,000 jobs, by role (`ingress`, `workers` summed over replicas,
    /// `bench` for measurements inside the benchmark process, `server` for the null one,
    /// and the broker and database servers: `rabbitmq-server`, `kafka-server`, `postgres`).
    pub cpu_s_per_1k: BTreeMap<String, f64>,
    /// Peak RSS in MiB, by role (`workers`: the largest replica).
    pub peak_rss_mb: BTreeMap<String, f64>,
}

impl Cost {
    /// The cost of `jobs` between two snapshots.
    pub fn between(before: &Snapshot, after: &Snapshot, jobs: u64) -> Cost {
        let per_1k = |cpu: f64| cpu * 1000.0 / (jobs.max(1) as f64);
        let mut cost = Cost::default();
        cost.cpu_s_per_1k.insert(
            "ingress".into(),
            per_1k(after.ingress.cpu_s - before.ingress.cpu_s),
        );
        cost.peak_rss_mb
            .insert("ingress".into(), after.ingress.peak_rss_mb);
        if !after.workers.is_empty() {
            let cpu: f64 = after
                .workers
                .iter()
                .zip(&before.workers)
                .map(|(a, b)| a.cpu_s - b.cpu_s)
                .sum();
            cost.cpu_s_per_1k.insert("workers".into(), per_1k(cpu));
            let peak = after
                .workers
                .iter()
                .map(|u| u.peak_rss_mb)
                .fold(0.0, f64::max);
            cost.peak_rss_mb.insert("workers".into(), peak);
        }
        cost.add_services(&before.services, &after.services, jobs);
        cost
    }

    /// Adds the CPU the broker and database servers spent meanwhile (those that spent any).
    pub fn add_services(
        &mut self,
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
        jobs: u64,
    ) {
        for (role, cpu) in after {
            let spent = cpu - before.get(role).copied().unwrap_or(0.0);
            if spent > 0.0 {
                self.cpu_s_per_1k
                    .insert(role.clone(), spent * 1000.0 / (jobs.max(1) as f64));
            }
        }
    }

    /// The cost of `jobs` done inside one process between two usages, under `role`.
    pub fn single(role: &str, before: Usage, after: Usage, jobs: u64) -> Cost {
        let mut cost = Cost::default();
        cost.cpu_s_per_1k.insert(
            role.into(),
            (after.cpu_s - before.cpu_s) * 1000.0 / (jobs.max(1) as f64),
        );
        cost.peak_rss_mb.insert(role.into(), after.peak_rss_mb);
        cost
    }
}

/// A running deployment.
pub struct Deployment {
    /// Where the ingress listens.
    pub address: SocketAddr,
    /// Its results database.
    pub db: BenchDb,
    /// The broker.
    pub backend: Backend,
    /// The queue / topic.
    pub queue: String,
    ingress: Proc,
    workers: Vec<Proc>,
    worker_ids: Vec<String>,
    env: Env,
    label: String,
    /// Jobs accepted by this deployment so far (warm-up included).
    pub accepted_total: u64,
}

impl Deployment {
    /// Starts the ingress (and, for real brokers, `spec.workers` worker processes) on a
    /// fresh queue and database, and waits until the ingress answers.
    pub async fn start(env: &Env, spec: &Spec) -> anyhow::Result<Deployment> {
        let queue = env.fresh_queue(&spec.label);
        let db = BenchDb::create(&env.engine).await?;
        let listen = procs::free_port()?;
        let flags = env.flags(spec.backend, &queue);
        let mut command =
            procs::ingress_command(&env.exes, listen, &flags, &db.url, spec.capacity.max(1));
        env.add_config(&mut command);
        let log = env.log_dir.join(format!("{queue}.ingress.log"));
        let mut ingress = Proc::spawn("ingress", command, &log, &env.log_level)?;
        procs::wait_healthy(listen, &mut ingress, Duration::from_secs(60))
            .await
            .with_context(|| format!("ingress for {queue}; log: {}", log.display()))?;
        let mut deployment = Deployment {
            address: listen,
            db,
            backend: spec.backend,
            queue,
            ingress,
            workers: Vec::new(),
            worker_ids: Vec::new(),
            env: env.clone(),
            label: spec.label.clone(),
            accepted_total: 0,
        };
        if spec.backend != Backend::Memory {
            deployment.add_workers(spec.workers, spec.capacity)?;
        }
        Ok(deployment)
    }

    /// Starts `n` more worker processes of `capacity` each.
    pub fn add_workers(&mut self, n: u16, capacity: u16) -> anyhow::Result<()> {
        let flags = self.env.flags(self.backend, &self.queue);
        let group = format!("{}-workers", self.queue);
        for _ in 0..n {
            let id = format!("{}-w{}", self.label, self.workers.len());
            let mut command =
                procs::worker_command(&self.env.exes, &flags, &self.db.url, capacity, &group, &id);
            self.env.add_config(&mut command);
            let log = self.env.log_dir.join(format!("{}.{id}.log", self.queue));
            self.workers
                .push(Proc::spawn(&id, command, &log, &self.env.log_level)?);
            self.worker_ids.push(id);
        }
        Ok(())
    }

    /// Each process's role and pid: `ingress`, then each worker by id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        std::iter::once(("ingress".to_owned(), self.ingress.pid()))
            .chain(
                self.worker_ids
                    .iter()
                    .zip(&self.workers)
                    .map(|(id, w)| (format!("worker {id}"), w.pid())),
            )
            .collect()
    }

    /// Worker processes running.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Sends small batches of `sleep 0` jobs until every worker process has stored a
    /// result (so every consumer has joined and every connection is warm), then waits
    /// until all of them are stored.
    pub async fn warm_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let pool = Pool::new(self.address);
        let batch: Vec<serde_json::Value> = (0..8)
            .map(|_| serde_json::json!({"kind": "sleep", "payload": {"ms": 0}}))
            .collect();
        let request = http::post_json("/jobs/batch", &serde_json::to_string(&batch)?);
        let deadline = Instant::now() + timeout;
        loop {
            let response = pool.send(&request).await?;
            anyhow::ensure!(
                response.status == 202,
                "warm-up batch answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            self.accepted_total += batch.len() as u64;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let seen = self.db.workers_seen().await?;
            let all = if self.workers.is_empty() {
                !seen.is_empty()
            } else {
                self.worker_ids.iter().all(|id| seen.contains(id))
            };
            if all {
                break;
            }
            for worker in &mut self.workers {
                anyhow::ensure!(
                    !worker.exited(),
                    "worker {} exited (see its log in {})",
                    worker.name,
                    self.env.log_dir.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not every worker took a job within {timeout:?} (seen: {seen:?})"
            );
        }
        // Then a round of concurrent single POSTs, so the ingress's database and broker
        // connection pools have grown to what concurrent requests need.
        let single = http::post_json("/jobs", r#"{"kind":"sleep","payload":{"ms":0}}"#);
        for _ in 0..2 {
            let answers = futures::future::join_all((0..WARM_CONCURRENCY).map(|_| {
                let (pool, single) = (pool.clone(), single.clone());
                async move { pool.send(&single).await }
            }))
            .await;
            for answer in answers {
                if answer?.status == 202 {
                    self.accepted_total += 1;
                }
            }
        }
        let stored = self.db.wait_for(self.accepted_total, timeout).await?;
        anyhow::ensure!(stored >= self.accepted_total, "warm-up jobs not all stored");
        Ok(())
    }

    /// CPU and peak RSS of every process now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ingress: self.ingress.usage(),
            workers: self.workers.iter().map(Proc::usage).collect(),
            services: procs::service_cpu(),
        }
    }

    /// Resets every process's peak RSS.
    pub fn reset_peaks(&self) {
        self.ingress.reset_peak();
        for worker in &self.workers {
            worker.reset_peak();
        }
    }

    /// Stops the processes (SIGTERM, like an orchestrator), removes the queue / topic and
    /// the database.
    pub async fn stop(self) {
        self.ingress.stop(Duration::from_secs(10)).await;
        futures::future::join_all(
            self.workers
                .into_iter()
                .map(|w| w.stop(Duration::from_secs(10))),
        )
        .await;
        if self.backend != Backend::Memory {
            match self.env.broker(self.backend, &self.queue).await {
                Ok(broker) => {
                    if let Err(e) = broker.delete_topology().await {
                        eprintln!("  note: could not delete {}: {e}", self.queue);
                    }
                }
                Err(e) => eprintln!("  note: could not delete {}: {e:#}", self.queue),
            }
        }
        self.db.remove().await;
    }
}

/// A broker handle of this process on `queue`, through the one backend factory
/// ([`surge_common::broker::connect`]), so a backend compiled out of this build is a clear
/// error naming its cargo feature.
pub async fn connect_broker(
    backend: Backend,
    amqp_url: &str,
    kafka_brokers: &str,
    queue: &str,
) -> anyhow::Result<Arc<dyn Broker>> {
    use surge_common::broker::{kafka_tuning, BrokerKind, BrokerTarget, KafkaTuning};
    let target = BrokerTarget {
        kind: match backend {
            Backend::Memory => BrokerKind::Memory,
            Backend::Rabbitmq | Backend::RabbitmqQuorum => BrokerKind::Rabbitmq,
            Backend::Kafka => BrokerKind::Kafka,
        },
        amqp_url: amqp_url.to_owned(),
        rabbitmq_queue_type: backend.queue_type().unwrap_or_default(),
        kafka_brokers: kafka_brokers.to_owned(),
        queue: queue.to_owned(),
        kafka_partitions: KAFKA_PARTITIONS,
        // Surge's defaults; the processes under test read theirs from their flags / env.
        kafka_tuning: KafkaTuning {
            assignment: Default::default(),
            linger_ms: kafka_tuning::DEFAULT_LINGER_MS,
            fetch_wait_ms: kafka_tuning::DEFAULT_FETCH_WAIT_MS,
        },
    };
    surge_common::broker::connect(&target)
        .await
        .with_context(|| format!("connecting to {}", backend.name()))
}
