//! The fault suite: real processes (`surge-producer`, two `surge-worker`s), real brokers
//! (RabbitMQ, Apache Kafka) and real PostgreSQL, with clients posting jobs continuously
//! while a fault hits:
//!
//! - a worker SIGKILLed (and replaced),
//! - a worker SIGTERMed (it drains; replaced),
//! - the ingress SIGTERMed mid-burst (it drains; restarted on the same port),
//! - the broker restarted (`rabbitmqctl stop_app`/`start_app`; Kafka SIGKILLed and
//!   restarted on its log directory by `scripts/kafka.sh`),
//! - PostgreSQL restarted.
//!
//! Each run needs at least [`DURING_FAULT`] jobs accepted from the moment the fault starts,
//! then checks the promise: every job answered 202 has exactly one result row, and there
//! are no other rows (so no job refused with a non-2xx, nor one whose request got no
//! answer, ran); refusals are 503 with `Retry-After`, never a 500. One request in eight
//! carries an `Idempotency-Key`, so the ingress needs the database for those. It prints one
//! report line per run (`--nocapture`) and appends it to `target/tmp/faults.md`.
//!
//! The faults hit services every test uses, so the runs take turns (one lock) and this
//! binary runs alone (`cargo test` runs test binaries one after another).
//!
//! Over 500 lines on purpose: every scenario shares the one harness (spawning the
//! processes, injecting the faults and the report line), and keeping them together keeps
//! each scenario a few lines long. The posting clients and the final row count live in
//! `support`, shared with `cluster.rs`.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use support::{child_log_level, free_port, publish_report, worker_binary, Load, Outcome, Verdict};
use surge_common::broker::kafka::KafkaBroker;
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Jobs that must be accepted from the start of the fault on.
const DURING_FAULT: usize = 2_000;
/// Jobs accepted before the fault starts (so it hits mid-burst).
const BEFORE_FAULT: usize = 300;
/// Capacity of each worker.
const CAPACITY: &str = "64";
/// Longest wait for any condition (generous: a loaded 2-core CI machine, debug build).
const PATIENCE: Duration = Duration::from_secs(300);

/// One run at a time: the faults stop shared services.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `scenario` alone on a fresh runtime.
fn serially(scenario: impl std::future::Future<Output = ()>) {
    let _turn = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    support::block_on(scenario);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    RabbitMq,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    WorkerKill,
    WorkerTerm,
    IngressTerm,
    BrokerRestart,
    DatabaseRestart,
}

impl Fault {
    fn describe(self, backend: Backend) -> &'static str {
        match (self, backend) {
            (Fault::WorkerKill, _) => "worker SIGKILL",
            (Fault::WorkerTerm, _) => "worker SIGTERM",
            (Fault::IngressTerm, _) => "ingress SIGTERM",
            (Fault::BrokerRestart, Backend::RabbitMq) => "rabbitmqctl stop_app/start_app",
            (Fault::BrokerRestart, Backend::Kafka) => "Kafka SIGKILL + restart",
            (Fault::DatabaseRestart, _) => "PostgreSQL restart",
        }
    }
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_survives_a_worker_sigkill() {
    serially(run(Backend::RabbitMq, Fault::WorkerKill));
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_survives_a_worker_sigterm() {
    serially(run(Backend::RabbitMq, Fault::WorkerTerm));
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_survives_an_ingress_sigterm() {
    serially(run(Backend::RabbitMq, Fault::IngressTerm));
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_survives_a_broker_restart() {
    serially(run(Backend::RabbitMq, Fault::BrokerRestart));
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_survives_a_database_restart() {
    serially(run(Backend::RabbitMq, Fault::DatabaseRestart));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_survives_a_worker_sigkill() {
    serially(run(Backend::Kafka, Fault::WorkerKill));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_survives_a_worker_sigterm() {
    serially(run(Backend::Kafka, Fault::WorkerTerm));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_survives_an_ingress_sigterm() {
    serially(run(Backend::Kafka, Fault::IngressTerm));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_survives_a_broker_restart() {
    serially(run(Backend::Kafka, Fault::BrokerRestart));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_survives_a_database_restart() {
    serially(run(Backend::Kafka, Fault::DatabaseRestart));
}

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_sheds_a_burst_beyond_the_backlog_bound() {
    serially(overload(Backend::RabbitMq));
}

#[test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_sheds_a_burst_beyond_the_backlog_bound() {
    serially(overload(Backend::Kafka));
}

/// How the processes are started.
struct Setup {
    /// Extra flags for the ingress.
    ingress_args: &'static [&'static str],
    /// `--capacity` of each worker.
    capacity: &'static str,
    /// Milliseconds each job sleeps.
    job_ms: u64,
}

/// The fault runs: workers fast enough to keep up, no admission bound.
const FAULT_SETUP: Setup = Setup {
    ingress_args: &[],
    capacity: CAPACITY,
    job_ms: 2,
};

/// How the clients post for `setup`: one request in eight carries an `Idempotency-Key`;
/// 503s coded `overloaded` are counted.
fn posting(setup: &Setup) -> support::Posting {
    support::Posting {
        job_ms: setup.job_ms,
        idempotency_every: Some(8),
        count_overloaded: true,
    }
}

/// Overload: with the backlog bound low and slow workers, clients posting flat out get
/// `503` + `Retry-After` beyond the bound; every job accepted is processed exactly once.
async fn overload(backend: Backend) {
    const REFUSALS: usize = 300;
    let setup = Setup {
        ingress_args: &["--max-backlog", "100"],
        capacity: "4",
        job_ms: 40,
    };
    let Some(stack) = Stack::start(backend, &setup).await else {
        return;
    };
    let load = Load::start(stack.port, posting(&setup), PATIENCE);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while load.overloaded.load(Ordering::Relaxed) < REFUSALS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {REFUSALS} requests were shed within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = load.stop().await;
    let verdict = support::verify(&stack.storage, &outcome, PATIENCE).await;
    let report = report_line(
        backend,
        "overload (--max-backlog 100)",
        &outcome,
        None,
        &verdict,
    );
    publish_report("faults.md", Some(REPORT_HEADER), &report);
    stack.stop().await;
    verdict.assert_exactly_once(&outcome, &report);
    assert!(
        outcome.refused.get(&503).copied().unwrap_or(0) >= REFUSALS,
        "the burst beyond the bound got 503s: {report}"
    );
    assert!(
        !outcome.accepted.is_empty(),
        "jobs below the bound were accepted"
    );
}

impl Verdict {
    fn assert_exactly_once(&self, outcome: &Outcome, report: &str) {
        let distinct: HashSet<&Uuid> = outcome.accepted.iter().collect();
        assert_eq!(
            distinct.len(),
            outcome.accepted.len(),
            "the ingress never hands out an id twice"
        );
        assert_eq!(
            self.with_row,
            outcome.accepted.len(),
            "every accepted job has a row"
        );
        assert_eq!(self.duplicate_rows, 0, "one row per job");
        assert_eq!(
            self.stored,
            outcome.accepted.len() as u64,
            "no rows beyond the accepted jobs: a refused or unanswered job ran ({report})"
        );
        assert!(
            !outcome
                .refused
                .keys()
                .any(|&status| status >= 500 && status != 503),
            "faults are answered 503, never another 5xx ({report})"
        );
        assert_eq!(
            outcome.without_retry_after, 0,
            "every 503/429 carries Retry-After ({report})"
        );
    }
}

/// One fault run, start to verdict.
async fn run(backend: Backend, fault: Fault) {
    let Some(mut stack) = Stack::start(backend, &FAULT_SETUP).await else {
        return;
    };
    let load = Load::start(stack.port, posting(&FAULT_SETUP), PATIENCE);
    load.wait_accepted(BEFORE_FAULT).await;
    let at_fault = load.accepted();
    inject(fault, &mut stack, &load, at_fault).await;
    load.wait_accepted(at_fault + DURING_FAULT).await;
    let outcome = load.stop().await;
    let verdict = support::verify(&stack.storage, &outcome, PATIENCE).await;
    let during = outcome.accepted.len() - at_fault;
    let report = report_line(
        backend,
        fault.describe(backend),
        &outcome,
        Some(during),
        &verdict,
    );
    publish_report("faults.md", Some(REPORT_HEADER), &report);
    stack.stop().await;
    verdict.assert_exactly_once(&outcome, &report);
    assert!(
        during >= DURING_FAULT,
        "at least {DURING_FAULT} jobs accepted from the fault on"
    );
}

/// Applies `fault` while the load runs, and recovers from it.
async fn inject(fault: Fault, stack: &mut Stack, load: &Load, at_fault: usize) {
    // Some jobs accepted while the system is degraded, before recovery.
    let degraded = at_fault + DURING_FAULT / 4;
    match fault {
        Fault::WorkerKill => {
            stack.workers[0].start_kill().expect("SIGKILL the worker");
            stack.workers[0].wait().await.expect("the worker exits");
            load.wait_accepted(degraded).await;
            stack.replace_worker(0);
        }
        Fault::WorkerTerm => {
            signal(&stack.workers[0], "TERM");
            let status = stack.workers[0].wait().await.expect("the worker exits");
            assert!(
                status.success(),
                "a SIGTERMed worker exits cleanly: {status}"
            );
            load.wait_accepted(degraded).await;
            stack.replace_worker(0);
        }
        Fault::IngressTerm => {
            let ingress = stack.ingress.as_mut().expect("the ingress runs");
            signal(ingress, "TERM");
            let status = ingress.wait().await.expect("the ingress exits");
            assert!(
                status.success(),
                "a SIGTERMed ingress exits cleanly: {status}"
            );
            stack.ingress = Some(stack.spawn_ingress());
            stack.wait_ready().await;
        }
        Fault::BrokerRestart => {
            match stack.backend {
                Backend::RabbitMq => {
                    run_command("rabbitmqctl", &["stop_app"]).await;
                    // The outage itself: clients keep posting into it.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    run_command("rabbitmqctl", &["start_app"]).await;
                    run_command("rabbitmqctl", &["await_startup"]).await;
                }
                Backend::Kafka => {
                    kill_kafka(&stack.broker_args[3]).await;
                    // The outage itself: clients keep posting into it.
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    run_command("bash", &[&scripts_dir().join("kafka.sh").to_string_lossy()]).await;
                }
            }
            stack.wait_ready().await;
        }
        Fault::DatabaseRestart => {
            let version = postgres_cluster_version();
            run_command(
                "pg_ctlcluster",
                &[
                    "--skip-systemctl-redirect",
                    &version,
                    "main",
                    "restart",
                    "-m",
                    "fast",
                ],
            )
            .await;
            stack.wait_ready().await;
        }
    }
}

/// The running system under test.
struct Stack {
    backend: Backend,
    broker_args: Vec<String>,
    database: String,
    storage: Storage,
    port: u16,
    ingress: Option<Child>,
    workers: Vec<Child>,
    spawned_workers: usize,
    capacity: &'static str,
    ingress_args: &'static [&'static str],
    http: reqwest::Client,
}

impl Stack {
    /// Fresh database, fresh queue/topic, one ingress and two workers, ready.
    async fn start(backend: Backend, setup: &Setup) -> Option<Stack> {
        let postgres = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
        let broker_args = match backend {
            Backend::RabbitMq => {
                let url = testing::service(AMQP_URL_VAR, "RabbitMQ")?;
                vec![
                    "--broker".into(),
                    "rabbitmq".into(),
                    "--amqp-url".into(),
                    url,
                ]
            }
            Backend::Kafka => {
                let brokers = testing::service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)")?;
                vec![
                    "--broker".into(),
                    "kafka".into(),
                    "--kafka-brokers".into(),
                    brokers,
                ]
            }
        };
        let name = testing::unique_name("faults");
        let mut broker_args = broker_args;
        broker_args.extend([
            "--queue".into(),
            name.clone(),
            "--builtin-kinds".into(),
            "true".into(),
        ]);
        let database = testing::fresh_postgres_database(&postgres)
            .await
            .expect("a fresh PostgreSQL database");
        let storage = Storage::connect(&database)
            .await
            .expect("the database opens");
        let mut stack = Stack {
            backend,
            broker_args,
            database,
            storage,
            port: free_port(),
            ingress: None,
            workers: Vec::new(),
            spawned_workers: 0,
            capacity: setup.capacity,
            ingress_args: setup.ingress_args,
            http: reqwest::Client::new(),
        };
        stack.ingress = Some(stack.spawn_ingress());
        stack.wait_ready().await;
        for _ in 0..2 {
            let worker = stack.spawn_worker(&name);
            stack.workers.push(worker);
        }
        Some(stack)
    }

    fn spawn_ingress(&self) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_surge-producer"));
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(self.ingress_args);
        self.spawn(command, "surge-producer")
    }

    fn spawn_worker(&mut self, group: &str) -> Child {
        self.spawned_workers += 1;
        let mut command = Command::new(worker_binary());
        command
            .args(["--capacity", self.capacity, "--group", group])
            .args(["--worker-id", &format!("worker-{}", self.spawned_workers)]);
        self.spawn(command, "surge-worker")
    }

    /// Starts `command` on this run's broker and database: stdout quiet, stderr (the
    /// process's log at `SURGE_FAULTS_LOG`) inherited, killed when dropped.
    fn spawn(&self, mut command: Command, what: &str) -> Child {
        command
            .args(&self.broker_args)
            .env("DATABASE_URL", &self.database)
            .env("RUST_LOG", child_log_level())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"))
    }

    /// Replaces the (exited) worker at `index` with a new process.
    fn replace_worker(&mut self, index: usize) {
        let group = self.group();
        self.workers[index] = self.spawn_worker(&group);
    }

    fn group(&self) -> String {
        let at = self.broker_args.iter().position(|a| a == "--queue");
        at.map(|i| self.broker_args[i + 1].clone())
            .expect("a queue name")
    }

    /// Waits until the ingress answers `/readyz` with 200 (broker and database reachable).
    async fn wait_ready(&self) {
        support::wait_ready(&self.http, self.port, PATIENCE).await;
    }

    /// Stops every process: workers first (SIGTERM, so they leave their group), then the
    /// ingress.
    async fn stop(mut self) {
        for worker in &self.workers {
            signal(worker, "TERM");
        }
        for worker in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(40), worker.wait()).await;
        }
        if let Some(ingress) = &mut self.ingress {
            let _ = ingress.start_kill();
            let _ = ingress.wait().await;
        }
        self.delete_topology().await;
    }

    /// Deletes this run's queues (RabbitMQ) or topics (Kafka), so runs do not pile up
    /// queues a later broker restart has to recover.
    async fn delete_topology(&self) {
        let address = &self.broker_args[3];
        let queue = self.group();
        let broker: Result<Box<dyn Broker>, _> = match self.backend {
            Backend::RabbitMq => RabbitMqBroker::connect(address, &queue)
                .await
                .map(|b| Box::new(b) as Box<dyn Broker>),
            Backend::Kafka => {
                KafkaBroker::connect_with(address, &queue, 1, testing::kafka_tuning())
                    .await
                    .map(|b| Box::new(b) as Box<dyn Broker>)
            }
        };
        let deleted = match broker {
            Ok(broker) => broker.delete_topology().await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            eprintln!("cleanup of {queue} failed: {e}");
        }
    }
}

/// One row of the report table (see [`REPORT_HEADER`] for its columns).
fn report_line(
    backend: Backend,
    what: &str,
    outcome: &Outcome,
    during_fault: Option<usize>,
    verdict: &Verdict,
) -> String {
    format!(
        "| {} | {what} | {} | {} | {:?} | {} | {} | {} | {} |",
        format!("{backend:?}").to_lowercase(),
        outcome.accepted.len(),
        during_fault.map_or_else(|| "-".to_owned(), |n| n.to_string()),
        outcome.refused,
        outcome.unanswered,
        verdict.stored,
        verdict.duplicate_rows,
        verdict.redelivered,
    )
}

/// The header of the report table in `target/tmp/faults.md`.
const REPORT_HEADER: &str = "| broker | fault | accepted | accepted from the fault on | refused (status: count) | unanswered | rows | duplicate rows | redelivered |\n|---|---|---|---|---|---|---|---|---|";

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// Sends `SIGname` to `child`.
fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Longest a service-control command may take (a RabbitMQ `start_app` that waited for
/// file handles once hung for the rest of a CI run).
const COMMAND_PATIENCE: Duration = Duration::from_secs(180);

/// Runs a service-control command, failing the test when it fails or takes longer than
/// [`COMMAND_PATIENCE`] (it is killed then).
async fn run_command(program: &str, args: &[&str]) {
    let running = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_PATIENCE, running)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {COMMAND_PATIENCE:?}"))
        .unwrap_or_else(|e| {
            panic!("{program} could not run (it controls the service under test): {e}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Debian cluster version of the local PostgreSQL (`/etc/postgresql/<version>`).
fn postgres_cluster_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster (/etc/postgresql) to restart")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL cluster version")
}

/// SIGKILLs the Kafka broker that `scripts/kafka.sh` started (`kafka.sh kill` waits until
/// the process is gone) and checks that its port is closed.
async fn kill_kafka(brokers: &str) {
    let script = scripts_dir().join("kafka.sh");
    run_command("bash", &[&script.to_string_lossy(), "kill"]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(brokers).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "Kafka did not die");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
