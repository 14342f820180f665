//! The dashboard's operations part in a real browser (issue 14): the ingress with an
//! embedded worker serves `GET /` with dead jobs already stored; headless Chromium shows
//! them (kind, error, attempts, when) and the jobs per kind and status; clicking one job's
//! replay button replays it, and with the filter set to one kind, "replay all matching"
//! replays exactly that kind's dead jobs; the replayed jobs run to a result and the
//! per-kind counts follow. A screenshot is saved to
//! `target/artifacts/dashboard-operations.png`.
//!
//! With API keys on the job endpoints, the page asks the operator for one when the list
//! answers 401, refuses a wrong one with a clear note, and with the right one lists and
//! replays as without keys.
//!
//! The recurring jobs card lists the config file's schedules and pauses, resumes and
//! triggers one (screenshot `target/artifacts/dashboard-schedules.png`).
//!
//! The kinds card lists every kind with its pause: one the target paused shows until when,
//! by whom and why; its pause and resume buttons pause and resume a kind for the API too
//! (screenshot `target/artifacts/dashboard-pauses.png`).
//!
//! Needs Debian's `chromium` (`scripts/chromium.sh` installs it). Without it the test fails
//! when `CI=true` and is skipped loudly otherwise.

mod browser;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use browser::{chromium, Browser, Tab};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::job::Job;
use surge_common::storage::heartbeat::KeyLoad;
use surge_common::storage::{JobResult, JobStatus, Storage};
use surge_common::testing;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use uuid::Uuid;

/// One dead job row as shown.
#[derive(Debug, Clone, Deserialize)]
struct DeadRow {
    id: String,
    cells: Vec<String>,
    replayable: bool,
}

/// What the operations part of the page shows.
#[derive(Debug, Clone, Deserialize)]
struct Shown {
    /// Successful polls of /api/dashboard (the live panel).
    polls: u64,
    dead_polls: u64,
    kinds_polls: u64,
    dead: Vec<DeadRow>,
    empty: Option<String>,
    note: String,
    /// Whether the API key field is shown.
    key_asked: bool,
    replay_all: String,
    kinds: BTreeMap<String, BTreeMap<String, String>>,
    flows: BTreeMap<String, BTreeMap<String, String>>,
    /// Busiest keys: key → jobs started.
    keys: BTreeMap<String, String>,
}

const READ_PAGE: &str = r##"(() => {
  const $ = (id) => document.getElementById(id);
  const empty = document.querySelector("#dead-body td.empty");
  return {
    polls: Number(document.body.dataset.polls || 0),
    dead_polls: Number(document.body.dataset.deadPolls || 0),
    kinds_polls: Number(document.body.dataset.kindsPolls || 0),
    dead: [...document.querySelectorAll("#dead-body tr[data-job]")].map((row) => ({
      id: row.dataset.job,
      cells: [...row.cells].map((cell) => cell.textContent.trim()),
      replayable: !row.querySelector("button.replay").disabled,
    })),
    empty: empty ? empty.textContent.trim() : null,
    note: $("dead-note").textContent.trim(),
    key_asked: !$("dead-key-label").hidden,
    replay_all: $("replay-all").textContent.trim(),
    kinds: Object.fromEntries([...document.querySelectorAll("#kinds-body tr[data-kind]")].map((row) =>
      [row.dataset.kind, Object.fromEntries([...row.querySelectorAll("td[data-status]")]
        .map((td) => [td.dataset.status, td.textContent.trim()]))])),
    flows: Object.fromEntries([...document.querySelectorAll("#kinds-body tr[data-kind]")].map((row) =>
      [row.dataset.kind, Object.fromEntries([...row.querySelectorAll("td[data-flow]")]
        .map((td) => [td.dataset.flow, td.textContent.trim()]))])),
    keys: Object.fromEntries([...document.querySelectorAll("#keys-body tr[data-key]")]
      .map((row) => [row.dataset.key, row.cells[1].textContent.trim()])),
  };
})()"##;

async fn read(tab: &Tab<'_>) -> anyhow::Result<Shown> {
    tab.read(READ_PAGE).await
}

/// Polls the page until `done` holds; fails after `limit`.
async fn wait_for(
    tab: &Tab<'_>,
    what: &str,
    limit: Duration,
    done: impl Fn(&Shown) -> bool,
) -> anyhow::Result<Shown> {
    tab.wait_for(READ_PAGE, what, limit, |_| {}, done).await
}

/// Stores `n` dead jobs of `kind` (bodies kept, acceptance recorded) and returns their ids.
async fn dead_jobs(storage: &Storage, kind: &str, n: usize) -> anyhow::Result<Vec<Uuid>> {
    let rows: Vec<JobResult> = (0..n)
        .map(|i| {
            let mut job = Job::new(kind, json!({"rounds": 1 + i}), None);
            job.awaits_acceptance = true;
            let at = job.enqueued_at_us + i as i64;
            JobResult {
                job_id: job.id,
                kind: kind.into(),
                status: JobStatus::Dead,
                result: None,
                error: Some(format!("{kind}: bad deploy")),
                attempts: 5,
                deliveries: 1,
                worker: "old-worker".into(),
                enqueued_at_us: at,
                started_at_us: at,
                finished_at_us: at,
                job: Some(job),
            }
        })
        .collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.job_id).collect();
    storage
        .accept(&surge_common::testing::accepted(&ids))
        .await?;
    storage.record_many(&rows).await?;
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_are_listed_and_replayed_from_the_dashboard() -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    let storage = Storage::connect(&testing::temp_sqlite_url()).await?;
    // A bad deploy left dead jobs of two kinds (the payloads are valid for them: they
    // run to a result once replayed).
    let echo = dead_jobs(&storage, "echo", 3).await?;
    let hash = dead_jobs(&storage, "hash", 2).await?;
    let heartbeats = storage.clone();
    let (base, stop_server, server) = start_ingress(storage, &[]).await?;
    let client = reqwest::Client::new();

    // A worker in another process runs an HTTP kind whose target pushes back: its
    // heartbeat reports the kind's flow control, which the per-kind table shows.
    let beating = tokio::spawn(async move {
        loop {
            let now = surge_common::clock::now_micros();
            let beat = surge_common::storage::heartbeat::Heartbeat {
                worker_id: "remote-worker".into(),
                capacity: 32,
                in_flight: 3,
                succeeded: 0,
                dead: 0,
                started_at_us: now,
                last_seen_us: now,
                kinds: serde_json::json!({"thumbnail": {
                    "limit": 12.0, "in_flight": 3, "breaker_open": true, "concurrency": 20
                }}),
                busy_keys: vec![
                    KeyLoad {
                        key: "tenant-<b>".into(),
                        started: 1200,
                    },
                    KeyLoad {
                        key: "tenant-b".into(),
                        started: 40,
                    },
                ],
            };
            let _ = heartbeats.upsert_heartbeat(&beat).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let browser = Browser::launch(&chromium).await?;
    let outcome = drive(&browser, &client, &base, &echo, &hash).await;
    beating.abort();
    finish(browser, stop_server, server, outcome).await
}

/// Waits until `GET /jobs/{id}` says `succeeded`.
async fn succeeded(client: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client
            .get(format!("{base}/jobs/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if body["status"] == "succeeded" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("job {id} never succeeded: {body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drive(
    browser: &Browser,
    client: &reqwest::Client,
    base: &str,
    echo: &[Uuid],
    hash: &[Uuid],
) -> anyhow::Result<()> {
    let tab = browser.tab(1280, 1100).await?;
    tab.navigate(&format!("{base}/")).await?;
    let patience = Duration::from_secs(30);

    // The dead jobs, newest first, with kind, error, attempts and when; and per kind.
    let shown = wait_for(&tab, "5 dead jobs and their kinds", patience, |s| {
        s.dead.len() == 5 && s.kinds.contains_key("echo") && s.kinds.contains_key("hash")
    })
    .await?;
    for row in &shown.dead {
        let kind = &row.cells[0];
        assert!(kind == "echo" || kind == "hash", "{row:?}");
        assert_eq!(row.cells[1], format!("{kind}: bad deploy"), "{row:?}");
        assert_eq!(row.cells[2], "5", "{row:?}");
        assert!(row.cells[3].ends_with(" UTC"), "when it died: {row:?}");
        assert!(row.replayable, "{row:?}");
    }
    assert_eq!(shown.kinds["echo"]["dead"], "3", "{shown:#?}");
    assert_eq!(shown.kinds["hash"]["dead"], "2", "{shown:#?}");
    assert_eq!(
        shown.kinds["echo"]["cancelled"], "0",
        "every status has a column"
    );
    assert_eq!(shown.replay_all, "replay all 5 matching");
    let flow = wait_for(&tab, "the HTTP kind's flow control", patience, |s| {
        s.flows.contains_key("thumbnail")
    })
    .await?
    .flows["thumbnail"]
        .clone();
    assert_eq!(flow["in_flight"], "3 / 20", "{flow:?}");
    assert_eq!(flow["limit"], "12", "{flow:?}");
    assert_eq!(flow["circuit"], "open on 1 of 1", "{flow:?}");
    // The busiest keys, summed over live workers, busiest first; a key is text, not markup.
    let keys = wait_for(&tab, "the busiest keys", patience, |s| s.keys.len() >= 2)
        .await?
        .keys;
    assert_eq!(
        keys.get("tenant-<b>").map(String::as_str),
        Some("1,200"),
        "{keys:?}"
    );
    assert_eq!(
        keys.get("tenant-b").map(String::as_str),
        Some("40"),
        "{keys:?}"
    );

    // One job's replay button: that job leaves the table and runs to a result.
    let one = echo[0].to_string();
    tab.eval(&format!(
        r#"document.querySelector('#dead-body tr[data-job="{one}"] button.replay').click()"#
    ))
    .await?;
    wait_for(&tab, "the replayed job gone", patience, |s| {
        s.dead.len() == 4 && s.dead.iter().all(|r| r.id != one) && s.note == "replayed 1 job"
    })
    .await?;
    succeeded(client, base, &one).await?;

    // Filter to one kind, then replay all matching: exactly that kind's dead jobs.
    let polls = read(&tab).await?.dead_polls;
    tab.eval(
        r#"document.getElementById("dead-kind").value = "hash";
           document.getElementById("dead-apply").click()"#,
    )
    .await?;
    let filtered = wait_for(&tab, "the hash jobs only", patience, |s| {
        s.dead_polls > polls && s.dead.len() == 2 && s.dead.iter().all(|r| r.cells[0] == "hash")
    })
    .await?;
    assert_eq!(filtered.replay_all, "replay all 2 matching");
    tab.eval(r#"document.getElementById("replay-all").click()"#)
        .await?;
    wait_for(&tab, "no dead hash job left", patience, |s| {
        s.dead.is_empty()
            && s.empty.as_deref() == Some("no dead job matches")
            && s.note == "replayed 2 jobs"
    })
    .await?;
    for id in hash {
        succeeded(client, base, &id.to_string()).await?;
    }

    // Without the filter: the two echo jobs not replayed are still there; the per-kind
    // counts follow the replays.
    tab.eval(
        r#"document.getElementById("dead-kind").value = "";
           document.getElementById("dead-apply").click()"#,
    )
    .await?;
    let kinds_polls = read(&tab).await?.kinds_polls;
    let after = wait_for(
        &tab,
        "two echo jobs left and the counts updated",
        patience,
        |s| {
            s.dead.len() == 2
                && s.dead.iter().all(|r| r.cells[0] == "echo")
                && s.kinds_polls > kinds_polls
                && s.kinds
                    .get("hash")
                    .and_then(|k| k.get("succeeded"))
                    .map(String::as_str)
                    == Some("2")
                && s.kinds
                    .get("echo")
                    .and_then(|k| k.get("dead"))
                    .map(String::as_str)
                    == Some("2")
        },
    )
    .await?;
    let left: Vec<String> = after.dead.iter().map(|r| r.id.clone()).collect();
    let mut expected: Vec<String> = echo[1..].iter().map(Uuid::to_string).collect();
    expected.reverse();
    assert_eq!(left, expected, "newest first");
    assert_eq!(after.kinds["hash"]["dead"], "0");
    assert_eq!(after.kinds["echo"]["succeeded"], "1");

    let png = tab.screenshot().await?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir)?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 10_000 {
        bail!(
            "the screenshot is not a plausible PNG ({} bytes)",
            png.len()
        );
    }
    let path = dir.join("dashboard-operations.png");
    std::fs::write(&path, &png)?;
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    Ok(())
}

/// Starts an ingress (memory broker, embedded worker) on `storage` with `extra` flags.
async fn start_ingress(
    storage: Storage,
    extra: &[&str],
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
)> {
    let mut argv = vec![
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "memory",
        "--embedded-capacity",
        "4",
    ];
    argv.extend_from_slice(extra);
    let args = ProducerArgs::try_parse_from(argv)?;
    let ingress = Ingress::build_with(&args, Arc::new(MemoryBroker::new()), storage).await?;
    let base = format!("http://{}", ingress.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Ok((base, stop, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_dashboard_asks_for_one_and_sends_it() -> anyhow::Result<()> {
    asks_for_a_key_and_sends_it(&[]).await
}

/// With `--auth-scope all` the live panel and the jobs-per-kind table need the key too:
/// nothing shows until it is typed, then everything does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_scope_all_the_dashboards_data_waits_for_the_key() -> anyhow::Result<()> {
    asks_for_a_key_and_sends_it(&["--auth-scope", "all"]).await
}

async fn asks_for_a_key_and_sends_it(flags: &[&str]) -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    const KEY: &str = "ops-key-6f1d2c";
    let guards_data = flags.contains(&"all");
    let storage = Storage::connect(&testing::temp_sqlite_url()).await?;
    let echo = dead_jobs(&storage, "echo", 2).await?;
    let mut argv = vec!["--api-keys", KEY];
    argv.extend_from_slice(flags);
    let (base, stop_server, server) = start_ingress(storage, &argv).await?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {KEY}").parse()?,
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let browser = Browser::launch(&chromium).await?;
    let outcome = async {
        let tab = browser.tab(1280, 900).await?;
        tab.navigate(&format!("{base}/")).await?;
        let patience = Duration::from_secs(30);
        // Without a key: a note saying what is needed, the field shown, no rows.
        let asked = wait_for(&tab, "the page asking for an API key", patience, |s| {
            s.key_asked && s.note.contains("needs an API key")
        })
        .await?;
        assert!(asked.dead.is_empty(), "{asked:#?}");
        if guards_data {
            assert_eq!((asked.polls, asked.kinds_polls), (0, 0), "{asked:#?}");
        } else {
            wait_for(&tab, "the open panels polled", patience, |s| {
                s.polls > 0 && s.kinds_polls > 0
            })
            .await?;
        }
        // A wrong key: refused, said so.
        tab.eval(
            r#"document.getElementById("dead-key").value = "not-the-key";
               document.getElementById("dead-apply").click()"#,
        )
        .await?;
        wait_for(&tab, "the wrong key refused", patience, |s| {
            s.note.contains("API key was refused") && s.dead.is_empty()
        })
        .await?;
        // The right key: the dead jobs are listed, and a replay (sent with the key) runs.
        tab.eval(&format!(
            r#"document.getElementById("dead-key").value = "{KEY}";
               document.getElementById("dead-apply").click()"#
        ))
        .await?;
        let listed = wait_for(&tab, "the dead jobs with the key", patience, |s| {
            s.dead.len() == 2 && s.polls > 0 && s.kinds_polls > 0
        })
        .await?;
        assert!(listed.note.is_empty(), "{listed:#?}");
        let one = echo[0].to_string();
        tab.eval(&format!(
            r#"document.querySelector('#dead-body tr[data-job="{one}"] button.replay').click()"#
        ))
        .await?;
        wait_for(&tab, "the replayed job gone", patience, |s| {
            s.dead.len() == 1 && s.note == "replayed 1 job"
        })
        .await?;
        succeeded(&client, &base, &one).await?;
        // The key is not put into the page's address or the list's text.
        let shown = read(&tab).await?;
        assert!(
            !format!("{shown:?}").contains(KEY),
            "the key leaked into the page: {shown:#?}"
        );
        anyhow::Ok(())
    }
    .await;
    finish(browser, stop_server, server, outcome).await
}

/// One schedule row as shown.
#[derive(Debug, Clone, Deserialize)]
struct ScheduleRow {
    paused: bool,
    cells: Vec<String>,
    toggle: String,
}

const READ_SCHEDULES: &str = r##"(() => Object.fromEntries(
  [...document.querySelectorAll("#schedules-body tr[data-schedule]")].map((row) => [
    row.dataset.schedule,
    {
      paused: row.dataset.paused === "true",
      cells: [...row.cells].slice(0, 6).map((cell) => cell.textContent.trim()),
      toggle: row.querySelector("button[data-action=pause], button[data-action=resume]").dataset.action,
    },
  ])))()"##;

/// The recurring jobs card: each schedule with its pattern, zone, kind, next tick and last
/// job; its pause button pauses it (for the API too), resume resumes it, "run now" runs a
/// job that the card then shows as its last, triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_listed_paused_and_triggered_from_the_dashboard() -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    let config = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("dash")));
    std::fs::write(
        &config,
        "[schedules.every_second]\ncron = \"@every 1s\"\nkind = \"echo\"\n\n\
         [schedules.nightly]\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\nkind = \"echo\"\n",
    )?;
    let storage = Storage::connect(&testing::temp_sqlite_url()).await?;
    let path = config.display().to_string();
    let (base, stop_server, server) = start_ingress(storage, &["--config", &path]).await?;
    let browser = Browser::launch(&chromium).await?;
    let outcome = drive_schedules(&browser, &reqwest::Client::new(), &base).await;
    let _ = std::fs::remove_file(&config);
    finish(browser, stop_server, server, outcome).await
}

async fn drive_schedules(
    browser: &Browser,
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<()> {
    let tab = browser.tab(1280, 1300).await?;
    tab.navigate(&format!("{base}/")).await?;
    let patience = Duration::from_secs(30);
    type Rows = BTreeMap<String, ScheduleRow>;
    let wait = |what: &'static str, done: Box<dyn Fn(&Rows) -> bool>| {
        let tab = &tab;
        async move {
            tab.wait_for(
                READ_SCHEDULES,
                what,
                patience,
                |_| {},
                |rows: &Rows| done(rows),
            )
            .await
        }
    };
    let rows = wait(
        "both schedules, every_second with a succeeded job",
        Box::new(|rows| {
            rows.contains_key("nightly")
                && rows
                    .get("every_second")
                    .is_some_and(|r| r.cells[5].starts_with("succeeded"))
        }),
    )
    .await?;
    let nightly = &rows["nightly"];
    assert_eq!(
        nightly.cells[..4],
        ["nightly", "0 3 * * *", "Europe/Berlin", "echo"]
    );
    assert!(
        nightly.cells[4].ends_with(":00:00 UTC"),
        "next tick: {nightly:?}"
    );
    assert_eq!(nightly.cells[5], "–", "no job yet: {nightly:?}");
    assert_eq!(nightly.toggle, "pause");

    // Pause: the card and the API agree.
    tab.eval(r#"document.querySelector('#schedules-body tr[data-schedule="nightly"] button[data-action=pause]').click()"#)
        .await?;
    wait(
        "nightly paused",
        Box::new(|rows| {
            rows["nightly"].paused
                && rows["nightly"].cells[4] == "paused"
                && rows["nightly"].toggle == "resume"
        }),
    )
    .await?;
    let listed: Value = client
        .get(format!("{base}/schedules"))
        .send()
        .await?
        .json()
        .await?;
    let paused = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nightly")
        .unwrap();
    assert_eq!(paused["paused"], true, "{listed}");

    // Run now: its job runs and is shown as the last, triggered.
    tab.eval(r#"document.querySelector('#schedules-body tr[data-schedule="nightly"] button[data-action=trigger]').click()"#)
        .await?;
    wait(
        "the triggered job succeeded",
        Box::new(|rows| {
            rows["nightly"].cells[5].starts_with("succeeded")
                && rows["nightly"].cells[5].ends_with("(triggered)")
        }),
    )
    .await?;

    // Resume.
    tab.eval(r#"document.querySelector('#schedules-body tr[data-schedule="nightly"] button[data-action=resume]').click()"#)
        .await?;
    wait(
        "nightly running again",
        Box::new(|rows| !rows["nightly"].paused && rows["nightly"].toggle == "pause"),
    )
    .await?;
    let shot = tab.screenshot().await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("dashboard-schedules.png"), shot)?;
    Ok(())
}

/// One kind row of the kinds card as shown.
#[derive(Debug, Clone, Deserialize)]
struct PauseRow {
    paused: bool,
    cells: Vec<String>,
    toggle: String,
}

const READ_PAUSES: &str = r##"(() => Object.fromEntries(
  [...document.querySelectorAll("#pauses-body tr[data-kind]")].map((row) => [
    row.dataset.kind,
    {
      paused: row.dataset.paused === "true",
      cells: [...row.cells].slice(0, 6).map((cell) => cell.textContent.trim()),
      toggle: row.querySelector("button[data-action]").dataset.action,
    },
  ])))()"##;

/// The kinds card: a pause the target set (a stored row, as a worker writes it) is shown
/// with its end, source and reason; the pause button pauses a kind until resumed (the API
/// agrees), resume resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_are_shown_paused_and_resumed_from_the_dashboard() -> anyhow::Result<()> {
    use surge_common::storage::pauses::{KindPause, PauseSource};
    let Some(chromium) = chromium() else {
        return Ok(());
    };
    let storage = Storage::connect(&testing::temp_sqlite_url()).await?;
    let now = surge_common::clock::now_micros();
    storage
        .pause_kind(&KindPause {
            kind: "hash".into(),
            until_us: Some(now + 3_600_000_000),
            reason: "target answered 429 Too Many Requests (Retry-After)".into(),
            source: PauseSource::Target,
            set_at_us: now,
        })
        .await?;
    let (base, stop_server, server) = start_ingress(storage, &[]).await?;
    let browser = Browser::launch(&chromium).await?;
    let outcome = drive_pauses(&browser, &reqwest::Client::new(), &base).await;
    finish(browser, stop_server, server, outcome).await
}

async fn drive_pauses(
    browser: &Browser,
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<()> {
    let tab = browser.tab(1280, 1500).await?;
    tab.navigate(&format!("{base}/")).await?;
    let patience = Duration::from_secs(30);
    type Rows = BTreeMap<String, PauseRow>;
    let wait = |what: &'static str, done: Box<dyn Fn(&Rows) -> bool>| {
        let tab = &tab;
        async move {
            tab.wait_for(
                READ_PAUSES,
                what,
                patience,
                |_| {},
                |rows: &Rows| done(rows),
            )
            .await
        }
    };
    let rows = wait(
        "the kinds, hash paused",
        Box::new(|rows| rows.contains_key("echo") && rows.get("hash").is_some_and(|r| r.paused)),
    )
    .await?;
    let hash = &rows["hash"];
    assert_eq!(hash.cells[..3], ["hash", "builtin", "paused"], "{hash:?}");
    assert!(hash.cells[3].ends_with(" UTC"), "until: {hash:?}");
    assert_eq!(hash.cells[4], "target", "{hash:?}");
    assert!(hash.cells[5].contains("429"), "{hash:?}");
    assert_eq!(hash.toggle, "resume");
    let echo = &rows["echo"];
    assert_eq!(echo.cells[2], "running", "{echo:?}");
    assert_eq!(echo.toggle, "pause");

    // Pause echo from the page: until resumed, by the operator; the API agrees.
    tab.eval(r#"document.querySelector('#pauses-body tr[data-kind="echo"] button[data-action=pause]').click()"#)
        .await?;
    wait(
        "echo paused",
        Box::new(|rows| {
            rows["echo"].paused
                && rows["echo"].cells[3] == "until resumed"
                && rows["echo"].cells[4] == "operator"
                && rows["echo"].toggle == "resume"
        }),
    )
    .await?;
    let listed: Value = client
        .get(format!("{base}/kinds"))
        .send()
        .await?
        .json()
        .await?;
    let echo = listed["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "echo")
        .unwrap();
    assert_eq!(echo["paused"]["source"], "operator", "{listed}");
    let shot = tab.screenshot().await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("dashboard-pauses.png"), shot)?;

    // Resume both from the page.
    for kind in ["echo", "hash"] {
        tab.eval(&format!(
            r#"document.querySelector('#pauses-body tr[data-kind="{kind}"] button[data-action=resume]').click()"#
        ))
        .await?;
    }
    wait(
        "both running",
        Box::new(|rows| !rows["echo"].paused && !rows["hash"].paused),
    )
    .await?;
    let listed: Value = client
        .get(format!("{base}/kinds"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        listed["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["paused"].is_null()),
        "{listed}"
    );
    Ok(())
}

/// Closes the browser and stops the ingress, then fails on the scenario's error (with
/// Chromium's last log lines) or on any error the page reported.
async fn finish(
    browser: Browser,
    stop_server: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let problems = browser.finish(outcome.is_err()).await;
    let _ = stop_server.send(());
    server.await??;
    outcome?;
    assert!(
        problems.is_empty(),
        "the page reported errors: {problems:#?}"
    );
    Ok(())
}
