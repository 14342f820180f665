//! Recurring jobs (`[schedules.NAME]` in the config file) against real ingresses:
//!
//! - one job per tick with three `surge-producer` processes on PostgreSQL and RabbitMQ,
//!   one of them SIGKILLed and restarted mid-way, and with three on one SQLite file (the
//!   embedded default): consecutive ticks, no gap, each tick's job id derived from it, one
//!   result per tick and no other job;
//! - `catch_up` on and off after an outage (the last tick recorded 30 s ago);
//! - the API: API keys, 404 naming an unknown schedule, pause shared by two replicas,
//!   resume, trigger;
//! - a schedule's config errors stop the start naming the key.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::clock::now_micros;
use surge_common::job::Job;
use surge_common::kinds::file::SurgeConfig;
use surge_common::recurring::Schedule;
use surge_common::storage::{JobStatus, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use tokio::process::{Child, Command};

const SECOND: i64 = 1_000_000;
const PATIENCE: Duration = Duration::from_secs(60);

/// A config file in the temp folder holding `text`.
fn config_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("schedules")));
    std::fs::write(&path, text).unwrap();
    path
}

/// The schedule `name` as the ingress reads it from `text`.
fn schedule(text: &str, name: &str) -> Schedule {
    SurgeConfig::parse(text, &|_| None)
        .unwrap()
        .schedules
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

/// Polls `check` every 50 ms until it holds, failing after [`PATIENCE`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ticks(storage: &Storage, name: &str) -> Vec<(i64, uuid::Uuid)> {
    storage.schedule_ticks(name, 0, 100_000).await.unwrap()
}

/// Every recorded tick of `name` follows the previous one by exactly `step_us`, its job has
/// the id derived from it, and every such job succeeded, once. Returns the tick count.
async fn check_one_job_per_tick(storage: &Storage, schedule: &Schedule, step_us: i64) -> usize {
    let recorded = ticks(storage, &schedule.name).await;
    assert!(!recorded.is_empty());
    for pair in recorded.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            step_us,
            "a gap or an extra tick between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
    for (tick, id) in &recorded {
        assert_eq!(*id, schedule.job_id(*tick), "tick {tick}'s job id");
    }
    let ids: Vec<uuid::Uuid> = recorded.iter().map(|(_, id)| *id).collect();
    let deadline = Instant::now() + PATIENCE;
    let results = loop {
        let results = storage.get_many(&ids).await.unwrap();
        if results.len() == ids.len() {
            break results;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} tick jobs finished",
            results.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for result in &results {
        assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
        assert_eq!(result.kind, schedule.kind);
    }
    recorded.len()
}

/// A `surge-producer` process.
struct Replica {
    port: u16,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn spawn_producer(port: u16, args: &[String], database: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_surge-producer"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("DATABASE_URL", database)
        .env(
            "RUST_LOG",
            std::env::var("SURGE_FAULTS_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("surge-producer starts")
}

async fn wait_ready(port: u16) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    until("the ingress to be ready", || {
        let request = http.get(&url).send();
        async move { request.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
}

impl Replica {
    /// Starts one and waits until it is ready (so replicas never migrate at once).
    async fn start(args: &[String], database: &str) -> Replica {
        let port = free_port();
        let child = spawn_producer(port, args, database);
        wait_ready(port).await;
        Replica { port, child }
    }

    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    async fn restart(&mut self, args: &[String], database: &str) {
        self.child = spawn_producer(self.port, args, database);
        wait_ready(self.port).await;
    }
}

/// Waits until `name` has at least `n` ticks recorded.
async fn until_ticks(storage: &Storage, name: &str, n: usize) {
    until(&format!("{n} ticks of {name}"), || {
        let storage = storage.clone();
        async move { ticks(&storage, name).await.len() >= n }
    })
    .await;
}

const EVERY_SECOND: &str = r#"
builtin_kinds = true
[schedules.every_second]
cron = "@every 1s"
kind = "echo"
payload = { from = "schedule" }
catch_up = "1h"
"#;

#[test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
fn one_job_per_tick_with_three_ingress_processes_on_postgres() {
    block_on(async {
        let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
            return;
        };
        let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
            return;
        };
        let database = testing::fresh_postgres_database(&postgres).await.unwrap();
        let storage = Storage::connect(&database).await.unwrap();
        let queue = testing::unique_name("schedules");
        let config = config_file(EVERY_SECOND);
        let broker: Vec<String> = [
            "--broker",
            "rabbitmq",
            "--amqp-url",
            &amqp,
            "--queue",
            &queue,
            "--builtin-kinds",
            "true",
        ]
        .map(String::from)
        .to_vec();
        let mut ingress_args = broker.clone();
        ingress_args.extend(["--config".into(), config.display().to_string()]);
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Replica::start(&ingress_args, &database).await);
        }
        let mut worker = Command::new(worker_binary())
            .args(&broker)
            .args(["--capacity", "20", "--group", &queue])
            .env("DATABASE_URL", &database)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("surge-worker starts");

        until_ticks(&storage, "every_second", 4).await;
        replicas[0].kill().await;
        let before = ticks(&storage, "every_second").await.len();
        until_ticks(&storage, "every_second", before + 3).await;
        replicas[0].restart(&ingress_args, &database).await;
        let before = ticks(&storage, "every_second").await.len();
        until_ticks(&storage, "every_second", before + 4).await;
        // Stop ticking (a pause holds for every replica) and let every recorded tick's job
        // finish while the replicas run: a tick committed but not yet published when the
        // last replica dies is left to the next replica, and here none would come.
        let paused = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/schedules/every_second/pause",
                replicas[1].port
            ))
            .send()
            .await
            .unwrap();
        assert!(paused.status().is_success(), "pause: {}", paused.status());
        until("every recorded tick's job to finish", || {
            let storage = storage.clone();
            async move {
                let ids: Vec<uuid::Uuid> = ticks(&storage, "every_second")
                    .await
                    .into_iter()
                    .map(|(_, id)| id)
                    .collect();
                storage.get_many(&ids).await.unwrap().len() == ids.len()
            }
        })
        .await;
        for replica in &mut replicas {
            replica.kill().await;
        }

        let schedule = schedule(EVERY_SECOND, "every_second");
        let count = check_one_job_per_tick(&storage, &schedule, SECOND).await;
        let (jobs,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE finished_at_us IS NOT NULL")
                .fetch_one(storage.pool())
                .await
                .unwrap();
        assert_eq!(jobs as usize, count, "no job but the ticks' jobs");
        eprintln!("3 ingress processes (one SIGKILLed and restarted): {count} ticks, {count} jobs, 0 duplicates");
        worker.kill().await.unwrap();
        let _ = std::fs::remove_file(config);
    });
}

#[test]
fn one_job_per_tick_with_three_ingress_processes_on_sqlite() {
    block_on(async {
        let database = testing::temp_sqlite_url();
        let storage = Storage::connect(&database).await.unwrap();
        let config = config_file(EVERY_SECOND);
        let args: Vec<String> = [
            "--broker",
            "memory",
            "--config",
            &config.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Replica::start(&args, &database).await);
        }
        let before = ticks(&storage, "every_second").await.len();
        until_ticks(&storage, "every_second", before + 6).await;
        // Every job is run by the embedded workers of the replica that published it: let
        // them finish before stopping (the memory broker keeps nothing).
        let schedule = schedule(EVERY_SECOND, "every_second");
        let count = check_one_job_per_tick(&storage, &schedule, SECOND).await;
        for replica in &mut replicas {
            replica.kill().await;
        }
        assert_eq!(
            check_one_job_per_tick(&storage, &schedule, SECOND).await,
            ticks(&storage, "every_second").await.len()
        );
        eprintln!("3 ingress processes on one SQLite file: {count}+ ticks, one job each");
        let _ = std::fs::remove_file(config);
    });
}

/// An ingress in this process (memory broker, embedded workers) on `database`.
struct InProcess {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
}

impl InProcess {
    async fn start(database: &str, config: &Path, extra: &[&str]) -> InProcess {
        let config = config.display().to_string();
        let mut argv = vec![
            "surge-producer",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "memory",
            "--config",
            &config,
        ];
        argv.extend_from_slice(extra);
        let args = ProducerArgs::try_parse_from(argv).unwrap();
        let storage = Storage::connect(database).await.unwrap();
        let ingress = Ingress::build_with(&args, Arc::new(MemoryBroker::new()), storage)
            .await
            .unwrap();
        let url = format!("http://{}", ingress.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(ingress.run_until_stopped(async {
            let _ = stopped.await;
        }));
        InProcess {
            url,
            stop: Some(stop),
            server,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.unwrap().unwrap();
    }
}

const AFTER_AN_OUTAGE: &str = r#"
[schedules.skip]
cron = "@every 1s"
kind = "echo"

[schedules.catch]
cron = "@every 1s"
kind = "echo"
catch_up = "1h"

[schedules.short]
cron = "@every 1s"
kind = "echo"
catch_up = "10s"
"#;

/// The last ticks were recorded 30 s ago (no ingress ran since): `catch` runs every
/// missed tick, `short` those of its last 10 s, `skip` none older than the on-time slack.
async fn catch_up_after_an_outage(database: &str) {
    let storage = Storage::connect(database).await.unwrap();
    let config = config_file(AFTER_AN_OUTAGE);
    let outage_started = (now_micros() / SECOND - 30) * SECOND;
    for name in ["skip", "catch", "short"] {
        let s = schedule(AFTER_AN_OUTAGE, name);
        let mut job = Job::new("echo", json!({}), None);
        job.id = s.job_id(outage_started);
        assert!(storage
            .record_tick(name, outage_started, false, &job)
            .await
            .unwrap());
    }
    let started = now_micros();
    let ingress = InProcess::start(database, &config, &[]).await;
    for name in ["skip", "catch", "short"] {
        until(&format!("{name} to tick after the start"), || {
            let storage = storage.clone();
            async move {
                ticks(&storage, name)
                    .await
                    .last()
                    .is_some_and(|(tick, _)| *tick > started)
            }
        })
        .await;
    }
    ingress.stop().await;

    let catch = schedule(AFTER_AN_OUTAGE, "catch");
    let caught = check_one_job_per_tick(&storage, &catch, SECOND).await;
    assert!(caught >= 31, "every missed tick ran: {caught}");

    let after_gap = |recorded: Vec<(i64, uuid::Uuid)>| {
        assert_eq!(recorded[0].0, outage_started);
        let first = recorded[1].0;
        for pair in recorded[1..].windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, SECOND, "no gap after the first");
        }
        first
    };
    let skip_first = after_gap(ticks(&storage, "skip").await);
    let slack = 3 * SECOND;
    assert!(
        skip_first >= started - slack - SECOND,
        "without catch_up, ticks missed more than the slack ago are skipped: first {} s after the outage began",
        (skip_first - outage_started) / SECOND
    );
    let short_first = after_gap(ticks(&storage, "short").await);
    assert!(
        short_first >= started - slack - 10 * SECOND - SECOND
            && short_first <= started - 10 * SECOND + SECOND,
        "catch_up = 10s runs the last 10 s of missed ticks: first {} s before the start",
        (started - short_first) / SECOND
    );
    let _ = std::fs::remove_file(config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_on_and_off_on_sqlite() {
    catch_up_after_an_outage(&testing::temp_sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn catch_up_on_and_off_on_postgres() {
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    catch_up_after_an_outage(&database).await;
}

const TWO_SCHEDULES: &str = r#"
[schedules.every_second]
cron = "@every 1s"
kind = "echo"

[schedules.nightly]
cron = "0 3 * * *"
timezone = "Europe/Berlin"
kind = "sleep"
payload = { ms = 1 }
"#;

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pause_resume_and_trigger_across_two_replicas_on_sqlite() {
    list_pause_resume_and_trigger_across_two_replicas(&testing::temp_sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn list_pause_resume_and_trigger_across_two_replicas_on_postgres() {
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    list_pause_resume_and_trigger_across_two_replicas(&database).await;
}

async fn list_pause_resume_and_trigger_across_two_replicas(database: &str) {
    let storage = Storage::connect(database).await.unwrap();
    let config = config_file(TWO_SCHEDULES);
    let keys = ["--api-keys", "schedule-key-1"];
    let a = InProcess::start(database, &config, &keys).await;
    let b = InProcess::start(database, &config, &keys).await;
    let http = reqwest::Client::new();
    let key = Some("schedule-key-1");
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let (status, body) = call(&http, get.clone(), &format!("{}/schedules", a.url), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = call(
        &http,
        post.clone(),
        &format!("{}/schedules/every_second/pause", a.url),
        Some("wrong"),
    )
    .await;
    assert_eq!(status, 401, "{body}");

    until("a succeeded tick job listed", || {
        let (http, url) = (http.clone(), format!("{}/schedules", b.url));
        async move {
            let (_, list) = call(&http, reqwest::Method::GET, &url, key).await;
            find(&list, "every_second")["last_job"]["status"] == "succeeded"
        }
    })
    .await;
    let (status, list) = call(&http, get.clone(), &format!("{}/schedules", a.url), key).await;
    assert_eq!(status, 200, "{list}");
    let nightly = find(&list, "nightly");
    assert_eq!(nightly["timezone"], "Europe/Berlin");
    assert_eq!(nightly["paused"], false);
    assert_eq!(nightly["last_job"], Value::Null);
    let next = nightly["next_tick"].as_str().unwrap();
    let expected = schedule(TWO_SCHEDULES, "nightly")
        .next_tick_after(now_micros())
        .unwrap();
    assert_eq!(
        next.parse::<jiff::Timestamp>().unwrap().as_microsecond(),
        expected
    );
    assert!(
        next.ends_with("T01:00:00Z") || next.ends_with("T02:00:00Z"),
        "03:00 in Berlin: {next}"
    );
    let every = find(&list, "every_second");
    assert!(every["last_tick"].is_string(), "{every}");

    // 404 naming the schedule.
    for action in ["pause", "resume", "trigger"] {
        let (status, body) = call(
            &http,
            post.clone(),
            &format!("{}/schedules/nope/{action}", a.url),
            key,
        )
        .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["field"], "name");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"nope\"") && message.contains("every_second"),
            "{message}"
        );
    }

    // Paused through A: neither replica ticks.
    let (status, paused) = call(
        &http,
        post.clone(),
        &format!("{}/schedules/every_second/pause", a.url),
        key,
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next_tick"], Value::Null);
    let paused_at = now_micros();
    let (_, listed_by_b) = call(&http, get.clone(), &format!("{}/schedules", b.url), key).await;
    assert_eq!(find(&listed_by_b, "every_second")["paused"], true);
    // The observation window: three passes of each replica. A pass that read the
    // schedule just before the pause may still record a tick of that moment, none later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recorded = ticks(&storage, "every_second").await;
    assert!(
        recorded.last().unwrap().0 < paused_at + SECOND,
        "no tick while paused, on either replica: last {} µs after the pause",
        recorded.last().unwrap().0 - paused_at
    );

    // Resumed through B: ticks again, from now on (the paused ones are not caught up).
    let (status, resumed) = call(
        &http,
        post.clone(),
        &format!("{}/schedules/every_second/resume", b.url),
        key,
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["paused"], false);
    assert!(resumed["next_tick"].is_string());
    let resumed_at = now_micros();
    until("a tick after the resume", || {
        let storage = storage.clone();
        async move {
            ticks(&storage, "every_second")
                .await
                .last()
                .is_some_and(|(tick, _)| *tick > resumed_at)
        }
    })
    .await;
    let after = ticks(&storage, "every_second").await;
    let first_after = after.iter().find(|(tick, _)| *tick >= paused_at + SECOND);
    assert!(
        first_after.is_some_and(|(tick, _)| *tick >= resumed_at - SECOND),
        "the ticks of the pause were skipped: {first_after:?}"
    );

    // Triggered by hand: one job now, listed as the schedule's last.
    let (status, triggered) = call(
        &http,
        post.clone(),
        &format!("{}/schedules/nightly/trigger", a.url),
        key,
    )
    .await;
    assert_eq!(status, 202, "{triggered}");
    let id = triggered["id"].as_str().unwrap().to_owned();
    let (status, job) = call(
        &http,
        get.clone(),
        &format!("{}/jobs/{id}?wait=20", b.url),
        key,
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "sleep");
    let (_, list) = call(&http, get.clone(), &format!("{}/schedules", b.url), key).await;
    let nightly = find(&list, "nightly");
    assert_eq!(nightly["last_job"]["id"], id.as_str());
    assert_eq!(nightly["last_job"]["triggered"], true);
    assert_eq!(nightly["last_job"]["status"], "succeeded");
    assert_eq!(nightly["last_tick"], Value::Null, "a trigger is not a tick");

    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_file(config);
}

#[tokio::test]
async fn a_schedules_config_errors_stop_the_start_naming_the_key() {
    let database = testing::temp_sqlite_url();
    let cases = [
        (
            "cron = \"@hourly\"\nkind = \"thumbnail\"",
            "schedules.bad.kind",
        ),
        (
            "cron = \"@hourly\"\nkind = \"sleep\"\npayload = { ms = \"long\" }",
            "schedules.bad.payload",
        ),
        (
            "cron = \"61 * * * *\"\nkind = \"echo\"",
            "schedules.bad.cron",
        ),
        (
            "cron = \"@hourly\"\nkind = \"echo\"\ntimezone = \"Europe/Atlantis\"",
            "schedules.bad.timezone",
        ),
        (
            "cron = \"@hourly\"\nkind = \"echo\"\ncatch_up = \"soon\"",
            "schedules.bad.catch_up",
        ),
        (
            "cron = \"@hourly\"\nkind = \"echo\"\nevery = \"1s\"",
            "schedules.bad.every",
        ),
    ];
    for (table, key) in cases {
        let config = config_file(&format!("[schedules.bad]\n{table}"));
        let path = config.display().to_string();
        let args = ProducerArgs::try_parse_from([
            "surge-producer",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "memory",
            "--config",
            &path,
        ])
        .unwrap();
        let storage = Storage::connect(&database).await.unwrap();
        let error = match Ingress::build_with(&args, Arc::new(MemoryBroker::new()), storage).await {
            Ok(_) => panic!("{table:?} started"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(&format!("{key}:")), "{table:?} → {error}");
        let _ = std::fs::remove_file(config);
    }
}

/// `surge-worker`, built next to `surge-producer` by `cargo test --workspace`.
fn worker_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_surge-producer")).with_file_name("surge-worker");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p surge-worker` first (cargo test --workspace does)",
        path.display()
    );
    path
}

fn block_on(scenario: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario);
}
