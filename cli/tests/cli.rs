//! The `surge` binary against a real ingress (memory broker, SQLite, embedded workers, in
//! this process): every subcommand (the schedules ones with a config file's schedule), an
//! API key, and the exit code of each class of error.

use std::sync::Arc;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use tokio::process::Command;

const KEY: &str = "cli-test-key-4b1e";

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.unwrap().unwrap();
    }
}

async fn ingress(extra: &[&str]) -> Running {
    let mut argv = vec![
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "memory",
        "--embedded-capacity",
        "4",
        "--max-attempts",
        "1",
    ];
    argv.extend_from_slice(extra);
    let args = ProducerArgs::try_parse_from(argv).unwrap();
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let ingress = Ingress::build_with(&args, Arc::new(MemoryBroker::new()), storage)
        .await
        .unwrap();
    let url = format!("http://{}", ingress.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Running {
        url,
        stop: Some(stop),
        server,
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

async fn surge(url: &str, key: Option<&str>, args: &[&str]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_surge"));
    command
        .args(args)
        .env("SURGE_URL", url)
        .env_remove("SURGE_API_KEY");
    if let Some(key) = key {
        command.env("SURGE_API_KEY", key);
    }
    let output = command.output().await.unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_real_ingress() {
    let running = ingress(&[]).await;
    let url_owned = running.url.clone();
    let url = url_owned.as_str();

    // submit --wait: the outcome, exit 0.
    let done = surge(
        url,
        None,
        &["submit", "echo", r#"{"hello": "world"}"#, "--wait"],
    )
    .await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    let job = done.json();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], json!({"hello": "world"}));
    let echo_id = job["id"].as_str().unwrap().to_owned();

    // submit without --wait prints the id; show reads it.
    let dead = surge(url, None, &["submit", "poison", "--wait"]).await;
    assert_eq!(dead.code, 7, "a dead job exits 7: {}", dead.stderr);
    assert_eq!(dead.json()["status"], "dead");
    for _ in 0..2 {
        assert_eq!(
            surge(url, None, &["submit", "poison", "--wait"]).await.code,
            7
        );
    }
    let shown = surge(url, None, &["jobs", "show", &echo_id]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert_eq!(shown.json()["id"], echo_id.as_str());

    // list: every page (page size 2 over 3 dead jobs), as a table and as JSON lines.
    let table = surge(
        url,
        None,
        &["jobs", "list", "--status", "dead", "--page-size", "2"],
    )
    .await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", table.stdout);
    assert_eq!(lines.len(), 4, "a header and 3 dead jobs: {}", table.stdout);
    assert!(lines[1..]
        .iter()
        .all(|l| l.contains("poison") && l.contains("dead")));
    let as_json = surge(
        url,
        None,
        &[
            "jobs",
            "list",
            "--kind",
            "poison",
            "--since",
            "1h",
            "--json",
            "--page-size",
            "2",
        ],
    )
    .await;
    assert_eq!(as_json.code, 0, "{}", as_json.stderr);
    let ids: Vec<String> = as_json
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 3, "{}", as_json.stdout);

    // replay one by id, then the rest by kind.
    let one = surge(url, None, &["jobs", "replay", &ids[0]]).await;
    assert_eq!(one.code, 0, "{}", one.stderr);
    let many = surge(
        url,
        None,
        &["jobs", "replay", "--kind", "poison", "--since", "1h"],
    )
    .await;
    assert_eq!(many.code, 0, "{}", many.stderr);
    assert!(many.stdout.starts_with("replayed "), "{}", many.stdout);
    // Replaying a job that is not dead is refused by the ingress: exit 3, its error shown.
    let not_dead = surge(url, None, &["jobs", "replay", &echo_id]).await;
    assert_eq!(not_dead.code, 3, "{}", not_dead.stderr);
    assert!(not_dead.stderr.contains("not_dead"), "{}", not_dead.stderr);

    // cancel a scheduled job; cancelling a finished one is refused (409 → 3).
    let later = surge(url, None, &["submit", "echo", "--delay-ms", "600000"]).await;
    assert_eq!(later.code, 0, "{}", later.stderr);
    let later_id = later.stdout.trim().to_owned();
    let cancelled = surge(url, None, &["jobs", "cancel", &later_id]).await;
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(
        surge(url, None, &["jobs", "cancel", &echo_id]).await.code,
        3
    );

    // Errors by class: a bad job (422 → 3, the field named), an unknown id (404 → 4), a
    // bad command line (2, nothing sent).
    let bad = surge(url, None, &["submit", "no-such-kind"]).await;
    assert_eq!(bad.code, 3);
    assert!(bad.stderr.contains("invalid_job (kind)"), "{}", bad.stderr);
    let unknown = surge(
        url,
        None,
        &["jobs", "show", "0193a6c4-0000-7000-8000-000000000000"],
    )
    .await;
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert_eq!(
        surge(url, None, &["submit", "echo", "{not json"])
            .await
            .code,
        2
    );
    assert_eq!(
        surge(url, None, &["jobs", "show", "../metrics"]).await.code,
        2
    );
    assert_eq!(
        surge(url, None, &["jobs", "list", "--since", "soon"])
            .await
            .code,
        2
    );

    running.stop().await;
    // Nobody listening any more: unavailable, 6.
    let gone = surge(url, None, &["jobs", "list"]).await;
    assert_eq!(gone.code, 6, "{}", gone.stderr);
    assert!(gone.stdout.is_empty(), "{}", gone.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_sent_and_a_missing_one_exits_5() {
    let running = ingress(&["--api-keys", KEY]).await;
    let url_owned = running.url.clone();
    let url = url_owned.as_str();
    let refused = surge(url, None, &["jobs", "list"]).await;
    assert_eq!(refused.code, 5, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("unauthorized"),
        "{}",
        refused.stderr
    );
    let wrong = surge(url, Some("guess"), &["submit", "echo"]).await;
    assert_eq!(wrong.code, 5);
    assert!(!wrong.stderr.contains("guess"), "the key is never echoed");
    let done = surge(url, Some(KEY), &["submit", "echo", "-", "--wait"]).await;
    // `-` reads standard input: empty here, so not JSON: a usage error before any request.
    assert_eq!(done.code, 2, "{}", done.stderr);
    let done = surge(url, Some(KEY), &["submit", "echo", "[1, 2]", "--wait"]).await;
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(done.json()["result"], json!([1, 2]));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_subcommands_against_a_real_ingress_with_an_api_key() {
    let config = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("cli")));
    std::fs::write(
        &config,
        "[schedules.nightly]\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\n\
         kind = \"echo\"\npayload = { report = \"all\" }\n",
    )
    .unwrap();
    let path = config.display().to_string();
    let running = ingress(&["--api-keys", KEY, "--config", &path]).await;
    let url_owned = running.url.clone();
    let url = url_owned.as_str();

    // Without the key: 401 → 5.
    let refused = surge(url, None, &["schedules", "list"]).await;
    assert_eq!(refused.code, 5, "{}", refused.stderr);

    let table = surge(url, Some(KEY), &["schedules", "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", table.stdout);
    assert_eq!(lines.len(), 2, "{}", table.stdout);
    for cell in ["nightly", "0 3 * * *", "Europe/Berlin", "echo", "running"] {
        assert!(lines[1].contains(cell), "{cell}: {}", table.stdout);
    }
    let listed = surge(url, Some(KEY), &["schedules", "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let nightly = listed.json();
    assert_eq!(nightly["name"], "nightly");
    assert_eq!(nightly["payload"], json!({"report": "all"}));
    assert!(nightly["next_tick"].is_string(), "{nightly}");

    let paused = surge(url, Some(KEY), &["schedules", "pause", "nightly"]).await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert_eq!(paused.json()["paused"], true);
    let table = surge(url, Some(KEY), &["schedules", "list"]).await;
    assert!(
        table.stdout.lines().nth(1).unwrap().contains("paused"),
        "{}",
        table.stdout
    );
    let resumed = surge(url, Some(KEY), &["schedules", "resume", "nightly"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.json()["paused"], false);

    // trigger: a job now, which runs.
    let triggered = surge(url, Some(KEY), &["schedules", "trigger", "nightly"]).await;
    assert_eq!(triggered.code, 0, "{}", triggered.stderr);
    let id = triggered.json()["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let shown = surge(url, Some(KEY), &["jobs", "show", &id]).await;
        if shown.code == 0 && shown.json()["status"] == "succeeded" {
            assert_eq!(shown.json()["result"], json!({"report": "all"}));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", shown.stdout);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let table = surge(url, Some(KEY), &["schedules", "list"]).await;
    assert!(table.stdout.contains(&id), "the last job: {}", table.stdout);

    // An unknown schedule: 404 → 4, named; a bad name: 2, nothing sent.
    for action in ["pause", "resume", "trigger"] {
        let unknown = surge(url, Some(KEY), &["schedules", action, "nope"]).await;
        assert_eq!(unknown.code, 4, "{action}: {}", unknown.stderr);
        assert!(
            unknown.stderr.contains("not_found (name)") && unknown.stderr.contains("\"nope\""),
            "{}",
            unknown.stderr
        );
    }
    assert_eq!(
        surge(url, Some(KEY), &["schedules", "trigger", "../jobs"])
            .await
            .code,
        2
    );
    running.stop().await;
    let _ = std::fs::remove_file(config);
}

/// `surge kinds list|pause|resume`: a paused kind's job waits (the embedded workers hold
/// it), and runs once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_subcommands_against_a_real_ingress_with_an_api_key() {
    let running = ingress(&["--api-keys", KEY]).await;
    let url_owned = running.url.clone();
    let url = url_owned.as_str();

    let refused = surge(url, None, &["kinds", "list"]).await;
    assert_eq!(refused.code, 5, "{}", refused.stderr);
    let table = surge(url, Some(KEY), &["kinds", "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    let echo = table
        .stdout
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    assert!(
        echo.contains("builtin") && echo.contains("running"),
        "{echo}"
    );

    let paused = surge(
        url,
        Some(KEY),
        &[
            "kinds",
            "pause",
            "echo",
            "--for",
            "15m",
            "--reason",
            "target deploy",
        ],
    )
    .await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    let shown = paused.json();
    assert_eq!(shown["paused"]["source"], "operator", "{shown}");
    assert_eq!(shown["paused"]["reason"], "target deploy", "{shown}");
    assert!(shown["paused"]["until"].is_string(), "{shown}");
    let listed = surge(url, Some(KEY), &["kinds", "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let echo: Value = listed
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|k| k["name"] == "echo")
        .unwrap();
    assert_eq!(echo["paused"]["reason"], "target deploy", "{echo}");

    // Its job waits; resumed, it runs.
    tokio::time::sleep(surge_common::kinds::pause::REFRESH * 2).await;
    let submitted = surge(url, Some(KEY), &["submit", "echo", "{\"n\": 7}"]).await;
    assert_eq!(submitted.code, 0, "{}", submitted.stderr);
    let id = submitted.stdout.trim().to_owned();
    let status = |id: String| async move {
        let shown = surge(url, Some(KEY), &["jobs", "show", &id]).await;
        assert_eq!(shown.code, 0, "{}", shown.stderr);
        shown.json()["status"].as_str().unwrap_or("").to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = status(id.clone()).await;
        assert_ne!(now, "succeeded", "a paused kind's job ran");
        if now == "waiting" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let resumed = surge(url, Some(KEY), &["kinds", "resume", "echo"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.json()["paused"], Value::Null);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while status(id.clone()).await != "succeeded" {
        assert!(
            std::time::Instant::now() < deadline,
            "never ran after the resume"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // Errors by class: a bad duration or name is 2 (nothing sent), a refused one 3 naming
    // the field, an unknown kind 4 naming it.
    for bad in [
        &["kinds", "pause", "echo", "--for", "soon"][..],
        &["kinds", "pause", "../jobs"],
        &["kinds", "resume", "Echo"],
    ] {
        let out = surge(url, Some(KEY), bad).await;
        assert_eq!(out.code, 2, "{bad:?}: {}", out.stderr);
    }
    let long = surge(url, Some(KEY), &["kinds", "pause", "echo", "--for", "31d"]).await;
    assert_eq!(long.code, 3, "{}", long.stderr);
    assert!(long.stderr.contains("(for_s)"), "{}", long.stderr);
    let unknown = surge(url, Some(KEY), &["kinds", "pause", "nope"]).await;
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("not_found (name)") && unknown.stderr.contains("\"nope\""),
        "{}",
        unknown.stderr
    );
    let help = surge(url, None, &["--help"]).await;
    assert!(help.stdout.contains("surge kinds pause"), "{}", help.stdout);
    running.stop().await;
}

#[tokio::test]
async fn completions_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = surge("http://127.0.0.1:9", None, &["completions", shell]).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains("surge"), "{shell}");
        assert!(
            out.stdout.contains("replay"),
            "{shell}: subcommands are completed"
        );
    }
}
