//! Losing a RabbitMQ node: a three-node cluster on loopback (`scripts/rabbitmq-cluster.sh`,
//! started and stopped by this test), quorum queues, the real `surge-producer` and two
//! `surge-worker`s given all three node URLs, 16 clients posting jobs flat out. The node
//! leading the queue is SIGKILLed mid-load and later restarted.
//!
//! The promise checked: every job answered 202 has exactly one result row and there are
//! no other rows (no job refused with a non-2xx, nor one whose request got no answer,
//! ran); while the node is down the ingress refuses with 503 + `Retry-After`, never another
//! 5xx, and the surviving nodes keep accepting jobs. One report line (`--nocapture`), also
//! appended to `target/tmp/cluster.md`: accepted, lost, duplicated rows, the 503 window,
//! redeliveries.
//!
//! Needs `SURGE_TEST_RABBITMQ_CLUSTER=1` (Debian's `rabbitmq-server` installed; the three
//! nodes take ~140 MB each) and `SURGE_TEST_POSTGRES_URL`; `scripts/test.sh` sets both.
//! Without them it is reported ignored, except with `CI=true`, where it runs and fails. With
//! `SURGE_CLUSTER_KEEP=1` the cluster is left running afterwards, for a look at its logs.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use surge_common::storage::{JobResult, Storage};
use surge_common::testing::{self, POSTGRES_URL_VAR};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Set (to anything) to run the cluster test.
const CLUSTER_VAR: &str = "SURGE_TEST_RABBITMQ_CLUSTER";
/// Concurrent clients posting jobs.
const CLIENTS: usize = 16;
/// Jobs accepted before the kill (so it hits mid-load).
const BEFORE_KILL: usize = 500;
/// Jobs accepted while the node is down, before it is restarted.
const WHILE_DOWN: usize = 1_000;
/// Jobs accepted after the restart.
const AFTER_RESTART: usize = 500;
/// Longest wait for any one condition (generous: a loaded 2-core machine, debug build).
const PATIENCE: Duration = Duration::from_secs(240);

#[test]
#[cfg_attr(
    not(all(surge_rabbitmq_cluster, surge_postgres)),
    ignore = "set SURGE_TEST_RABBITMQ_CLUSTER and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn rabbitmq_cluster_survives_losing_the_queue_leader() {
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let Some(_) = testing::service(
        CLUSTER_VAR,
        "a local 3-node RabbitMQ cluster (scripts/rabbitmq-cluster.sh; rabbitmq-server installed)",
    ) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(scenario(postgres));
}

async fn scenario(postgres: String) {
    let cluster = Cluster::start();
    let urls: Vec<String> = cluster
        .script(&["urls"])
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3, "three node URLs: {urls:?}");
    let queue = testing::unique_name("cluster");
    let database = testing::fresh_postgres_database(&postgres)
        .await
        .expect("a fresh PostgreSQL database");
    let storage = Storage::connect(&database)
        .await
        .expect("the database opens");
    let port = free_port();
    // The ingress and the first worker start at node 1 (which then leads the queue: quorum
    // leaders are placed on the declaring client's node); the second worker at node 2.
    let ingress = spawn(
        Command::new(env!("CARGO_BIN_EXE_surge-producer"))
            .args(["--listen", &format!("127.0.0.1:{port}")]),
        &rotated(&urls, 0),
        &queue,
        &database,
    );
    wait_ready(port).await;
    let workers: Vec<Child> = (0..2)
        .map(|i| {
            spawn(
                Command::new(worker_binary())
                    .args(["--capacity", "64", "--group", &queue])
                    .args(["--worker-id", &format!("cluster-worker-{i}")]),
                &rotated(&urls, i),
                &queue,
                &database,
            )
        })
        .collect();

    let load = Load::start(port);
    load.wait_accepted(BEFORE_KILL).await;
    let leader = cluster.script(&["leader", &queue]).trim().to_owned();
    cluster.script(&["kill", &leader]);
    load.mark_fault();
    let at_kill = load.accepted();
    load.wait_accepted(at_kill + WHILE_DOWN).await;
    let accepted_while_down = load.accepted() - at_kill;
    cluster.script(&["restart", &leader]);
    let at_restart = load.accepted();
    load.wait_accepted(at_restart + AFTER_RESTART).await;
    let outcome = load.stop().await;

    let rows = wait_for_rows(&storage, &outcome.accepted).await;
    let stored = storage.count().await.expect("rows are countable");
    let unique: HashSet<Uuid> = rows.iter().map(|r| r.job_id).collect();
    let lost = outcome.accepted.len() - unique.len();
    let duplicated = rows.len() - unique.len();
    let redelivered = rows.iter().filter(|r| r.deliveries > 1).count();
    let report = format!(
        "| rabbitmq 3-node, quorum | SIGKILL leader rc{leader}, restart | accepted {} | lost {lost} | \
         duplicated rows {duplicated} | rows beyond accepted {} | refused {:?} | unanswered {} | \
         503 window {} | accepted while down {accepted_while_down} | redelivered {redelivered} |",
        outcome.accepted.len(),
        stored.saturating_sub(outcome.accepted.len() as u64),
        outcome.refused,
        outcome.unanswered,
        outcome.window(),
    );
    publish_report(&report);

    for worker in &workers {
        signal(worker, "TERM");
    }
    for mut worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(40), worker.wait()).await;
    }
    drop(ingress);
    drop(cluster);

    let distinct: HashSet<&Uuid> = outcome.accepted.iter().collect();
    assert_eq!(
        distinct.len(),
        outcome.accepted.len(),
        "ids are unique ({report})"
    );
    assert_eq!(lost, 0, "every accepted job has a row ({report})");
    assert_eq!(duplicated, 0, "one row per job ({report})");
    assert_eq!(
        stored,
        outcome.accepted.len() as u64,
        "no rows beyond the accepted jobs: a refused or unanswered job ran ({report})"
    );
    assert!(
        !outcome
            .refused
            .keys()
            .any(|&status| status >= 500 && status != 503),
        "a lost node is answered 503, never another 5xx ({report})"
    );
    assert_eq!(
        outcome.without_retry_after, 0,
        "every 503 carries Retry-After ({report})"
    );
}

/// The cluster, started through the script; stopped (and its data deleted) when dropped,
/// also when the test fails.
struct Cluster;

impl Cluster {
    fn start() -> Cluster {
        let cluster = Cluster;
        cluster.script(&["start"]);
        cluster
    }

    /// Runs `scripts/rabbitmq-cluster.sh ARGS`, failing the test if it fails; its stdout.
    fn script(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("bash")
            .arg(script_path())
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("bash could not run the cluster script: {e}"));
        assert!(
            output.status.success(),
            "scripts/rabbitmq-cluster.sh {args:?} failed ({})",
            output.status
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("SURGE_CLUSTER_KEEP").is_some() {
            eprintln!("SURGE_CLUSTER_KEEP is set: the RabbitMQ cluster keeps running");
            return;
        }
        let status = std::process::Command::new("bash")
            .arg(script_path())
            .arg("stop")
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("stopping the RabbitMQ cluster failed: {status:?}");
        }
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster.sh")
}

/// `urls` starting at index `first`, comma separated.
fn rotated(urls: &[String], first: usize) -> String {
    let mut list = urls.to_vec();
    list.rotate_left(first % urls.len());
    list.join(",")
}

/// Starts a Surge process on the cluster's quorum queue `queue`: stdout quiet, stderr
/// (its log at `SURGE_FAULTS_LOG`, default `error`) inherited, killed when dropped.
fn spawn(command: &mut Command, urls: &str, queue: &str, database: &str) -> Child {
    command
        .args(["--broker", "rabbitmq", "--amqp-url", urls, "--queue", queue])
        .args(["--rabbitmq-queue-type", "quorum"])
        .env("DATABASE_URL", database)
        .env(
            "RUST_LOG",
            std::env::var("SURGE_FAULTS_LOG").unwrap_or_else(|_| "error".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("a Surge binary starts")
}

/// Waits until the ingress answers `/readyz` with 200.
async fn wait_ready(port: u16) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(response) = reqwest::get(&url).await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ingress was not ready within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients posting jobs as fast as the ingress answers, recording every answer.
struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    /// When the node was killed; 503s are timed from here.
    fault: Arc<Mutex<Option<Instant>>>,
    tasks: JoinSet<Outcome>,
}

/// What the clients saw.
#[derive(Default)]
struct Outcome {
    /// Ids answered 202.
    accepted: Vec<Uuid>,
    /// Other answers, by status.
    refused: BTreeMap<u16, usize>,
    /// 503s and 429s without `Retry-After`.
    without_retry_after: usize,
    /// Requests that got no HTTP answer.
    unanswered: usize,
    /// First and last 503 after the kill, measured from it.
    unavailable: Option<(Duration, Duration)>,
}

impl Outcome {
    fn note_503(&mut self, since_fault: Duration) {
        self.unavailable = Some(match self.unavailable {
            None => (since_fault, since_fault),
            Some((first, last)) => (first.min(since_fault), last.max(since_fault)),
        });
    }

    fn window(&self) -> String {
        match self.unavailable {
            None => "none".to_owned(),
            Some((first, last)) => format!(
                "{:.2}s ({:.2}s..{:.2}s after the kill)",
                (last - first).as_secs_f64(),
                first.as_secs_f64(),
                last.as_secs_f64()
            ),
        }
    }
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let fault: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let url = format!("http://127.0.0.1:{port}/jobs");
        let mut tasks = JoinSet::new();
        for _ in 0..CLIENTS {
            let (stop, count, fault, client, url) = (
                stop.clone(),
                accepted.clone(),
                fault.clone(),
                client.clone(),
                url.clone(),
            );
            tasks.spawn(async move {
                let mut outcome = Outcome::default();
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "kind": "sleep", "payload": { "ms": 2 } });
                    match client.post(&url).json(&body).send().await {
                        Ok(response) if response.status().as_u16() == 202 => {
                            let answer: serde_json::Value =
                                response.json().await.expect("a 202 carries JSON");
                            let id = answer["id"].as_str().expect("a 202 carries an id");
                            outcome.accepted.push(id.parse().expect("the id is a UUID"));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => {
                            let status = response.status().as_u16();
                            if matches!(status, 503 | 429)
                                && !response.headers().contains_key("retry-after")
                            {
                                outcome.without_retry_after += 1;
                            }
                            if status == 503 {
                                let killed_at = *fault.lock().expect("fault clock");
                                if let Some(at) = killed_at {
                                    outcome.note_503(at.elapsed());
                                }
                            }
                            *outcome.refused.entry(status).or_default() += 1;
                            // Back off a little, as Retry-After asks (but keep probing).
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => {
                            outcome.unanswered += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                outcome
            });
        }
        Load {
            stop,
            accepted,
            fault,
            tasks,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn mark_fault(&self) {
        *self.fault.lock().expect("fault clock") = Some(Instant::now());
    }

    /// Waits until `n` jobs have been accepted in all.
    async fn wait_accepted(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.accepted() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} jobs accepted within {PATIENCE:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Outcome::default();
        while let Some(done) = self.tasks.join_next().await {
            let client = done.expect("a load client panicked");
            all.accepted.extend(client.accepted);
            for (status, n) in client.refused {
                *all.refused.entry(status).or_default() += n;
            }
            all.unanswered += client.unanswered;
            all.without_retry_after += client.without_retry_after;
            if let Some((first, last)) = client.unavailable {
                all.note_503(first);
                all.note_503(last);
            }
        }
        all
    }
}

/// Waits until every accepted id has a row; returns the rows.
async fn wait_for_rows(storage: &Storage, ids: &[Uuid]) -> Vec<JobResult> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match storage.get_many(ids).await {
            Ok(rows) if rows.len() >= ids.len() => return rows,
            Ok(rows) => assert!(
                Instant::now() < deadline,
                "only {} of {} accepted jobs have results after {PATIENCE:?}",
                rows.len(),
                ids.len()
            ),
            Err(e) => assert!(Instant::now() < deadline, "results unreadable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the report line and appends it to `target/tmp/cluster.md`.
fn publish_report(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster.md");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(file, "{line}");
    }
}

/// `surge-worker`, built next to `surge-producer` by `cargo test --workspace`.
fn worker_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_surge-producer")).with_file_name("surge-worker");
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p surge-worker` first)",
        path.display()
    );
    path
}

/// Sends `SIGname` to `child`.
fn signal(child: &Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status();
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
