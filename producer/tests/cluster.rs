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

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::{child_log_level, free_port, publish_report, worker_binary, Load, Posting};
use surge_common::storage::Storage;
use surge_common::testing::{self, POSTGRES_URL_VAR};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Set (to anything) to run the cluster test.
const CLUSTER_VAR: &str = "SURGE_TEST_RABBITMQ_CLUSTER";
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
    support::block_on(scenario(postgres));
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
    support::wait_ready(&reqwest::Client::new(), port, PATIENCE).await;
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

    let posting = Posting {
        job_ms: 2,
        idempotency_every: None,
        count_overloaded: false,
    };
    let load = Load::start(port, posting, PATIENCE);
    load.wait_accepted(BEFORE_KILL).await;
    let leader = cluster.script(&["leader", &queue]).trim().to_owned();
    // The fault starts when the kill is sent: the script returns only once the node is
    // gone, and the 503s come while it waits.
    load.mark_fault();
    cluster.script(&["kill", &leader]);
    let at_kill = load.accepted();
    load.wait_accepted(at_kill + WHILE_DOWN).await;
    let accepted_while_down = load.accepted() - at_kill;
    cluster.script(&["restart", &leader]);
    let at_restart = load.accepted();
    load.wait_accepted(at_restart + AFTER_RESTART).await;
    let outcome = load.stop().await;

    let verdict = support::verify(&storage, &outcome, PATIENCE).await;
    let stored = verdict.stored;
    let lost = outcome.accepted.len() - verdict.with_row;
    let duplicated = verdict.duplicate_rows;
    let redelivered = verdict.redelivered;
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
    publish_report("cluster.md", None, &report);

    for worker in &workers {
        support::signal(worker, "TERM");
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
        .args(["--rabbitmq-queue-type", "quorum", "--builtin-kinds", "true"])
        .env("DATABASE_URL", database)
        .env("RUST_LOG", child_log_level())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("a Surge binary starts")
}
