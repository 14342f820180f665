//! The live dashboard in a real browser (issue 6, acceptance 3): the ingress with an
//! embedded worker serves `GET /`; headless Chromium loads it; a burst of jobs is POSTed;
//! the numbers the page's own JavaScript renders change (accepted 0 → N, processed 0 → N,
//! backlog / in flight seen during the burst, the worker listed); a screenshot is saved to
//! `target/artifacts/dashboard.png`.
//!
//! Needs Debian's `chromium` (`scripts/chromium.sh` installs it). Without it the test fails
//! when `CI=true` and is skipped loudly otherwise.

mod browser;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use browser::{chromium, Browser, Tab};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;

const JOBS: usize = 300;
const CAPACITY: u16 = 50;
const JOB_MS: u64 = 500;
const WORKER_ID: &str = "dashboard-test-worker";

/// What the page shows, read from the DOM by stable element ids.
#[derive(Debug, Clone, Deserialize)]
struct Shown {
    polls: u64,
    status: String,
    accepted: String,
    accepted_rate: String,
    processed: String,
    backlog: String,
    in_flight: String,
    capacity: String,
    accept_p50: String,
    e2e_p50: String,
    e2e_p99: String,
    errors: String,
    workers: Vec<Vec<String>>,
    /// Busiest keys as shown: key → jobs started.
    keys: std::collections::BTreeMap<String, String>,
}

const READ_PAGE: &str = r##"(() => {
  const t = (id) => document.getElementById(id).textContent.trim();
  return {
    polls: Number(document.body.dataset.polls || 0),
    status: t("status"),
    accepted: t("accepted-total"),
    accepted_rate: t("accepted-rate"),
    processed: t("processed-total"),
    backlog: t("backlog"),
    in_flight: t("in-flight"),
    capacity: t("capacity"),
    accept_p50: t("accept-p50"),
    e2e_p50: t("e2e-p50"),
    e2e_p99: t("e2e-p99"),
    errors: t("errors"),
    workers: [...document.querySelectorAll("#workers-body tr[data-worker]")]
      .map((row) => [...row.cells].map((cell) => cell.textContent.trim())),
    keys: Object.fromEntries([...document.querySelectorAll("#keys-body tr[data-key]")]
      .map((row) => [row.dataset.key, row.cells[1].textContent.trim()])),
  };
})()"##;

/// A count as displayed ("1,234"), or `None` for "–".
fn count(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|c| *c != ',').collect();
    digits.parse().ok()
}

async fn read(tab: &Tab<'_>) -> anyhow::Result<Shown> {
    tab.read(READ_PAGE).await
}

/// Polls the page until `done` holds, calling `seen` on every reading; fails after `limit`.
async fn wait_for(
    tab: &Tab<'_>,
    what: &str,
    limit: Duration,
    seen: impl FnMut(&Shown),
    done: impl Fn(&Shown) -> bool,
) -> anyhow::Result<Shown> {
    tab.wait_for(READ_PAGE, what, limit, seen, done).await
}

fn artifacts() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let producer = Path::new(env!("CARGO_MANIFEST_DIR"));
            producer.parent().unwrap_or(producer).join("target")
        });
    let dir = target.join("artifacts");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn save_png(path: &Path, png: &[u8]) -> anyhow::Result<()> {
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() < 10_000 {
        bail!(
            "the screenshot is not a plausible PNG ({} bytes)",
            png.len()
        );
    }
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_burst_in_headless_chromium() -> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return Ok(());
    };

    // The ingress with an embedded worker: memory broker, fresh SQLite file, started as
    // `surge-producer` starts it.
    let storage = Storage::connect(&testing::temp_sqlite_url()).await?;
    let broker = Arc::new(MemoryBroker::new());
    let args = ProducerArgs::try_parse_from([
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "memory",
        "--embedded-capacity",
        &CAPACITY.to_string(),
        "--embedded-worker-id",
        WORKER_ID,
    ])?;
    let ingress = Ingress::build_with(&args, broker, storage).await?;
    let base = format!("http://{}", ingress.local_addr());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ingress.run_until_stopped(async {
        let _ = server_stopped.await;
    }));

    // The page itself: self-contained HTML, no external URLs.
    let client = reqwest::Client::new();
    let page = client.get(format!("{base}/")).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()?
        .starts_with("text/html"));
    let html = page.text().await?;
    for id in ["accepted-total", "processed-total", "backlog", "in-flight"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no element #{id}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src="),
        "the page must not load anything from elsewhere"
    );

    let browser = Browser::launch(&chromium).await?;
    let outcome = drive(&browser, &client, &base).await;
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

async fn drive(browser: &Browser, client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let tab = browser.tab(1280, 600).await?;
    tab.navigate(&format!("{base}/")).await?;

    // Before the burst: the page's JS has polled and shows zeros and the live worker.
    let before = wait_for(
        &tab,
        "zero totals and one live worker",
        Duration::from_secs(20),
        |_| {},
        |s| {
            s.polls >= 1
                && count(&s.accepted) == Some(0)
                && count(&s.processed) == Some(0)
                && count(&s.capacity) == Some(u64::from(CAPACITY))
                && s.workers.iter().any(|w| w[0] == WORKER_ID && w[5] == "up")
        },
    )
    .await?;
    assert_eq!(before.status, "live");
    assert_eq!(
        before.e2e_p50, "–",
        "no result yet, so no end-to-end latency"
    );

    // The burst: all POSTs at once.
    let burst = {
        let client = client.clone();
        let url = format!("{base}/jobs");
        tokio::spawn(async move {
            // Three in four jobs are tenant A's: the busiest keys must say so.
            let posts = (0..JOBS).map(|i| {
                let key = if i % 4 == 0 { "tenant-b" } else { "tenant-a" };
                client
                    .post(&url)
                    .json(&json!({ "kind": "sleep", "payload": { "ms": JOB_MS }, "key": key }))
                    .send()
            });
            futures::future::join_all(posts).await
        })
    };

    // The page follows it: backlog and in flight rise, then everything is processed.
    let (mut peak_in_flight, mut peak_backlog) = (0u64, 0u64);
    let mut accepted_seen = Vec::new();
    let mut during: Option<Vec<u8>> = None;
    let mut keys_seen = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let s = read(&tab).await?;
        peak_in_flight = peak_in_flight.max(count(&s.in_flight).unwrap_or(0));
        peak_backlog = peak_backlog.max(count(&s.backlog).unwrap_or(0));
        if let Some(n) = count(&s.accepted) {
            if accepted_seen.last() != Some(&n) {
                accepted_seen.push(n);
            }
        }
        if !s.keys.is_empty() {
            keys_seen = s.keys.clone();
        }
        if during.is_none() && count(&s.in_flight).unwrap_or(0) > 0 {
            during = Some(tab.screenshot().await?);
        }
        if count(&s.accepted) == Some(JOBS as u64) && count(&s.processed) == Some(JOBS as u64) {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the page did not show {JOBS} accepted and processed in time: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for response in burst.await? {
        assert_eq!(response?.status(), 202);
    }
    eprintln!(
        "page showed accepted {accepted_seen:?}, peak backlog {peak_backlog}, \
         peak in flight {peak_in_flight}, then {after:#?}"
    );
    assert!(
        peak_backlog > 0 || peak_in_flight > 0,
        "the page never showed the burst in progress (backlog or in flight above 0)"
    );
    assert!(peak_in_flight <= u64::from(CAPACITY));
    let started = |key: &str| keys_seen.get(key).and_then(|n: &String| count(n));
    assert!(
        started("tenant-a") > started("tenant-b") && started("tenant-b") > Some(0),
        "the busiest keys showed {keys_seen:?}"
    );
    assert_ne!(after.accept_p50, "–", "accept latency after the burst");
    assert_ne!(after.accepted_rate, "–");
    assert_ne!(after.e2e_p50, "–", "end-to-end latency after the burst");
    assert_ne!(after.e2e_p99, "–");
    assert!(after.errors.is_empty(), "errors shown: {}", after.errors);

    // Settled: the worker's heartbeat reports it idle and all jobs processed.
    let settled = wait_for(
        &tab,
        "the drained state",
        Duration::from_secs(20),
        |_| {},
        |s| {
            count(&s.backlog) == Some(0)
                && count(&s.in_flight) == Some(0)
                && s.workers
                    .iter()
                    .any(|w| w[0] == WORKER_ID && count(&w[3]) == Some(JOBS as u64) && w[5] == "up")
        },
    )
    .await?;
    eprintln!("settled: {settled:#?}");

    let dir = artifacts()?;
    if let Some(png) = during {
        save_png(&dir.join("dashboard-during-burst.png"), &png)?;
    }
    save_png(&dir.join("dashboard.png"), &tab.screenshot().await?)?;

    // The JSON the page reads agrees.
    let api: Value = client
        .get(format!("{base}/api/dashboard"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(api["accepted"]["total"], JOBS);
    assert_eq!(api["processed"]["succeeded"], JOBS);
    assert_eq!(api["processed"]["dead"], 0);
    assert_eq!(api["workers"][0]["id"], WORKER_ID);
    assert!(api["history"].as_array().is_some_and(|h| !h.is_empty()));
    Ok(())
}
