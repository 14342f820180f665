//! Losing a Kafka broker: a three-broker KRaft cluster on loopback
//! (`scripts/kafka-cluster.sh`, ports 9192-9197, started and stopped by this test), topics
//! with replication factor 3 and `min.insync.replicas` 2, the idempotent `acks=all`
//! producer, the real `surge-producer` and two `surge-worker`s given all three bootstrap
//! servers, 16 clients posting jobs flat out. The broker leading most of the topic's
//! partitions is SIGKILLed mid-load; the load goes on until the cluster has moved its
//! partitions' leadership away (and some more), then the broker is restarted and the load
//! goes on until it is back in sync.
//!
//! The promise checked: every job answered 202 has exactly one result row and there are
//! no other rows (no job refused with a non-2xx, nor one whose request got no answer,
//! ran); while the broker is down the ingress refuses with 503 + `Retry-After`, never
//! another 5xx, and the surviving brokers keep accepting jobs. One report line
//! (`--nocapture`), appended to `target/tmp/cluster.md` next to the RabbitMQ one: accepted,
//! lost, duplicated rows, the 503 window, redeliveries.
//!
//! Needs `SURGE_TEST_KAFKA_CLUSTER=1` (java, and the jars `scripts/kafka.sh` resolves; three
//! JVMs of 384 MB heap) and `SURGE_TEST_POSTGRES_URL`; `scripts/test.sh` sets both. Without
//! them it is reported ignored, except with `CI=true`, where it runs and fails. With
//! `SURGE_CLUSTER_KEEP=1` the cluster is left running afterwards (data under
//! `target/tmp/kafka-cluster`), for a look at its logs.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{child_log_level, free_port, publish_report, worker_binary, Load, Posting};
use surge_common::broker::kafka::{KafkaBroker, TopicPlacement};
use surge_common::storage::Storage;
use surge_common::testing::{self, POSTGRES_URL_VAR};
use tokio::process::{Child, Command};
use uuid::Uuid;

/// Set (to anything) to run the cluster test.
const CLUSTER_VAR: &str = "SURGE_TEST_KAFKA_CLUSTER";
/// Brokers in the cluster (node ids 1..=3, as `scripts/kafka-cluster.sh` numbers them).
const BROKERS: usize = 3;
/// Partitions of the topic: two per broker.
const PARTITIONS: i32 = 6;
/// Jobs accepted before the kill (so it hits mid-load).
const BEFORE_KILL: usize = 500;
/// Jobs accepted after the cluster moved leadership off the dead broker, before it is
/// restarted.
const WHILE_DOWN: usize = 1_000;
/// Jobs accepted after the restarted broker is back in sync.
const AFTER_RESTART: usize = 500;
/// Longest wait for any one condition (generous: a loaded 2-core machine, debug build).
const PATIENCE: Duration = Duration::from_secs(240);

#[test]
#[cfg_attr(
    not(all(surge_kafka_cluster, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_CLUSTER and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn kafka_cluster_survives_losing_the_partition_leader() {
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let Some(_) = testing::service(
        CLUSTER_VAR,
        "a local 3-broker Kafka cluster (scripts/kafka-cluster.sh; java and scripts/kafka.sh's jars)",
    ) else {
        return;
    };
    support::block_on(scenario(postgres));
}

async fn scenario(postgres: String) {
    let cluster = Cluster::start();
    let bootstrap = cluster.script(&["bootstrap"]).trim().to_owned();
    assert_eq!(
        bootstrap.split(',').count(),
        BROKERS,
        "three bootstrap servers: {bootstrap}"
    );
    let topic = testing::unique_name("kcluster");
    let database = testing::fresh_postgres_database(&postgres)
        .await
        .expect("a fresh PostgreSQL database");
    let storage = Storage::connect(&database)
        .await
        .expect("the database opens");
    let port = free_port();
    let ingress = spawn(
        Command::new(env!("CARGO_BIN_EXE_surge-producer"))
            .args(["--listen", &format!("127.0.0.1:{port}")]),
        &bootstrap,
        &topic,
        &database,
    );
    support::wait_ready(&reqwest::Client::new(), port, PATIENCE).await;
    let workers: Vec<Child> = (0..2)
        .map(|i| {
            spawn(
                Command::new(worker_binary())
                    .args(["--capacity", "64", "--group", &topic])
                    .args(["--worker-id", &format!("kcluster-worker-{i}")]),
                &bootstrap,
                &topic,
                &database,
            )
        })
        .collect();

    // The test's own view of the topic (the ingress created it): Surge asked for the
    // cluster's default replication, so every partition has a copy on every broker and a
    // write needs two of them.
    let observer = KafkaBroker::connect(&bootstrap, &topic, PARTITIONS)
        .await
        .expect("the test connects to the cluster");
    let placement = observer
        .placement()
        .await
        .expect("the topic can be described");
    assert_eq!(
        placement.partitions.len(),
        PARTITIONS as usize,
        "{placement:?}"
    );
    for partition in &placement.partitions {
        let replicas: HashSet<i32> = partition.replicas.iter().copied().collect();
        assert_eq!(
            replicas.len(),
            BROKERS,
            "every partition is replicated to all three brokers: {placement:?}"
        );
    }
    assert_eq!(
        placement.min_insync_replicas,
        Some(2),
        "a write needs two in-sync replicas: {placement:?}"
    );

    let posting = Posting {
        job_ms: 2,
        idempotency_every: None,
        count_overloaded: false,
    };
    let load = Load::start(port, posting, PATIENCE);
    load.wait_accepted(BEFORE_KILL).await;
    let placement = observer.placement().await.expect("the topic is described");
    let victim = busiest_leader(&placement);
    let led = leaders(&placement).get(&victim).copied().unwrap_or(0);
    // The fault starts when the kill is sent: the script returns once the broker is gone.
    load.mark_fault();
    cluster.script(&["kill", &victim.to_string()]);
    let at_kill = load.accepted();
    // Down until the cluster noticed: no partition led by it, it in no partition's ISR.
    let moved = wait_placement(&observer, "leadership to move off the killed broker", |p| {
        p.partitions.iter().all(|part| {
            part.leader != victim && part.leader >= 0 && !part.in_sync.contains(&victim)
        })
    })
    .await;
    let fenced_after = moved.as_secs_f64();
    load.wait_accepted(load.accepted() + WHILE_DOWN).await;
    let accepted_while_down = load.accepted() - at_kill;
    cluster.script(&["restart", &victim.to_string()]);
    let at_restart = load.accepted();
    wait_placement(&observer, "the restarted broker to catch up", |p| {
        p.partitions
            .iter()
            .all(|part| part.in_sync.contains(&victim))
    })
    .await;
    load.wait_accepted(at_restart.max(load.accepted()) + AFTER_RESTART)
        .await;
    let outcome = load.stop().await;

    let verdict = support::verify(&storage, &outcome, PATIENCE).await;
    let stored = verdict.stored;
    let lost = outcome.accepted.len() - verdict.with_row;
    let duplicated = verdict.duplicate_rows;
    let redelivered = verdict.redelivered;
    let report = format!(
        "| kafka 3-broker, RF 3, min ISR 2 | SIGKILL leader broker {victim} (led {led}/{PARTITIONS}), restart | \
         accepted {} | lost {lost} | duplicated rows {duplicated} | rows beyond accepted {} | \
         refused {:?} | unanswered {} | 503 window {} | leadership moved {fenced_after:.1}s after the kill | \
         accepted while down {accepted_while_down} | redelivered {redelivered} |",
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
    drop(observer);
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
        "a lost broker is answered 503, never another 5xx ({report})"
    );
    assert_eq!(
        outcome.without_retry_after, 0,
        "every 503 carries Retry-After ({report})"
    );
}

/// Partitions led, by broker id.
fn leaders(placement: &TopicPlacement) -> BTreeMap<i32, usize> {
    let mut led = BTreeMap::new();
    for partition in placement.partitions.iter().filter(|p| p.leader >= 0) {
        *led.entry(partition.leader).or_default() += 1;
    }
    led
}

/// The broker leading the most partitions (the lowest id among equals).
fn busiest_leader(placement: &TopicPlacement) -> i32 {
    let led = leaders(placement);
    let most = led
        .values()
        .copied()
        .max()
        .expect("some partition has a leader");
    let (&id, _) = led
        .iter()
        .find(|(_, &n)| n == most)
        .expect("a broker leads the most");
    assert!(
        (1..=BROKERS as i32).contains(&id),
        "leader {id} is a node of the cluster"
    );
    id
}

/// Polls the topic's placement until `done` holds (failing after [`PATIENCE`]); how long
/// that took. A failed query (a broker just died) counts as not yet.
async fn wait_placement(
    observer: &KafkaBroker,
    what: &str,
    done: impl Fn(&TopicPlacement) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let last = match observer.placement().await {
            Ok(placement) if done(&placement) => return started.elapsed(),
            Ok(placement) => format!("{placement:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where the cluster keeps its data: under the target's tmp dir, away from the shared
/// single node's state.
fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-cluster")
}

/// The cluster, started through the script. Dropped (also when the test fails), it
/// SIGKILLs the three JVMs by the pids `scripts/kafka.sh` recorded, waits until they are
/// gone and deletes the data.
struct Cluster;

impl Cluster {
    fn start() -> Cluster {
        let cluster = Cluster;
        cluster.script(&["start"]);
        cluster
    }

    /// Runs `scripts/kafka-cluster.sh ARGS`, failing the test if it fails; its stdout.
    fn script(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("bash")
            .arg(script_path())
            .args(args)
            .env("SURGE_KAFKA_CLUSTER_DIR", cluster_dir())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("bash could not run the cluster script: {e}"));
        assert!(
            output.status.success(),
            "scripts/kafka-cluster.sh {args:?} failed ({})",
            output.status
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("SURGE_CLUSTER_KEEP").is_some() {
            eprintln!(
                "SURGE_CLUSTER_KEEP is set: the Kafka cluster keeps running ({})",
                cluster_dir().display()
            );
            return;
        }
        let nodes = cluster_dir().join("kafka").join(format!("{BROKERS}-node"));
        let pids: Vec<u32> = (1..=BROKERS)
            .filter_map(|n| node_pid(&nodes.join(format!("node-{n}"))))
            .collect();
        for pid in &pids {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
            && Instant::now() < deadline
        {
            // Waiting for the kernel to reap killed processes: no condition to await.
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(pid) = pids
            .iter()
            .find(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            eprintln!("Kafka cluster JVM {pid} still runs 30 s after SIGKILL");
        }
        let _ = std::fs::remove_dir_all(cluster_dir().join("kafka"));
    }
}

/// The pid in `node/kafka.pid` when that process is a Kafka broker of this cluster (its
/// command line names the node's config), so a reused pid is never killed.
fn node_pid(node: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(node.join("kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let config = node.join("server.properties");
    (cmdline.contains("kafka.Kafka") && cmdline.contains(&*config.to_string_lossy())).then_some(pid)
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-cluster.sh")
}

/// Starts a Surge process on the cluster's topic `topic`: stdout quiet, stderr (its log at
/// `SURGE_FAULTS_LOG`, default `error`) inherited, killed when dropped.
fn spawn(command: &mut Command, bootstrap: &str, topic: &str, database: &str) -> Child {
    command
        .args([
            "--broker",
            "kafka",
            "--kafka-brokers",
            bootstrap,
            "--queue",
            topic,
            "--builtin-kinds",
            "true",
        ])
        .args(["--kafka-partitions", &PARTITIONS.to_string()])
        .env("DATABASE_URL", database)
        .env("RUST_LOG", child_log_level())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("a Surge binary starts")
}
