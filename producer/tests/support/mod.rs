//! Shared by the process-level fault tests (`faults.rs`, `cluster.rs`, `kafka_cluster.rs`): the clients posting
//! jobs flat out, the final row check, and the helpers that start and watch the real
//! `surge-producer`/`surge-worker` processes.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use surge_common::storage::{JobResult, Storage};
use tokio::task::JoinSet;
use uuid::Uuid;

/// Concurrent clients posting jobs.
pub const CLIENTS: usize = 16;

/// What each posting client sends and watches for.
pub struct Posting {
    /// Milliseconds each job sleeps.
    pub job_ms: u64,
    /// Every this many requests carries an `Idempotency-Key` (so the ingress needs the
    /// database for it, too); `None`: no request does.
    pub idempotency_every: Option<u64>,
    /// Read each 503's body and count those coded `overloaded` ([`Load::overloaded`]).
    pub count_overloaded: bool,
}

/// Clients posting jobs as fast as the ingress answers, recording every answer.
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted_count: Arc<AtomicUsize>,
    /// `503 overloaded` answers so far (counted with [`Posting::count_overloaded`]).
    #[allow(dead_code)] // the cluster test does not shed load
    pub overloaded: Arc<AtomicUsize>,
    /// When the fault started ([`Load::mark_fault`]); 503s are timed from here.
    fault: Arc<Mutex<Option<Instant>>>,
    /// Longest wait in [`Load::wait_accepted`].
    patience: Duration,
    tasks: JoinSet<Outcome>,
}

/// What the clients saw.
#[derive(Default)]
pub struct Outcome {
    /// Ids answered 202.
    pub accepted: Vec<Uuid>,
    /// Other answers, by status.
    pub refused: BTreeMap<u16, usize>,
    /// 503 and 429 answers without a `Retry-After` header.
    pub without_retry_after: usize,
    /// Requests that got no HTTP answer (connection refused or reset).
    pub unanswered: usize,
    /// First and last 503 after [`Load::mark_fault`], measured from it.
    unavailable: Option<(Duration, Duration)>,
}

impl Outcome {
    fn note_503(&mut self, since_fault: Duration) {
        self.unavailable = Some(match self.unavailable {
            None => (since_fault, since_fault),
            Some((first, last)) => (first.min(since_fault), last.max(since_fault)),
        });
    }

    /// The 503 window after the fault, for the report line.
    #[allow(dead_code)] // only the cluster test marks its fault
    pub fn window(&self) -> String {
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
    /// Starts [`CLIENTS`] clients posting to the ingress on `port`.
    pub fn start(port: u16, posting: Posting, patience: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted_count = Arc::new(AtomicUsize::new(0));
        let overloaded = Arc::new(AtomicUsize::new(0));
        let fault: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let url = format!("http://127.0.0.1:{port}/jobs");
        let Posting {
            job_ms,
            idempotency_every,
            count_overloaded,
        } = posting;
        let mut tasks = JoinSet::new();
        for _ in 0..CLIENTS {
            let (stop, count, overloaded, fault, client, url) = (
                stop.clone(),
                accepted_count.clone(),
                overloaded.clone(),
                fault.clone(),
                client.clone(),
                url.clone(),
            );
            tasks.spawn(async move {
                let mut outcome = Outcome::default();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({ "kind": "sleep", "payload": { "ms": job_ms } });
                    let mut request = client.post(&url).json(&body);
                    sent += 1;
                    if idempotency_every.is_some_and(|every| sent.is_multiple_of(every)) {
                        // Some requests need the database at the ingress, too.
                        request = request.header("idempotency-key", Uuid::new_v4().to_string());
                    }
                    match request.send().await {
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
                                let faulted_at = *fault.lock().expect("fault clock");
                                if let Some(at) = faulted_at {
                                    outcome.note_503(at.elapsed());
                                }
                                if count_overloaded {
                                    let answer: serde_json::Value =
                                        response.json().await.unwrap_or_default();
                                    if answer["error"]["code"] == "overloaded" {
                                        overloaded.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            *outcome.refused.entry(status).or_default() += 1;
                            // Back off a little, as Retry-After asks (but keep probing).
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => {
                            outcome.unanswered += 1;
                            // The ingress is restarting: try again shortly.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                outcome
            });
        }
        Load {
            stop,
            accepted_count,
            overloaded,
            fault,
            patience,
            tasks,
        }
    }

    /// Jobs accepted so far, by all clients.
    pub fn accepted(&self) -> usize {
        self.accepted_count.load(Ordering::Relaxed)
    }

    /// Notes that the fault starts now: later 503s are timed from here ([`Outcome::window`]).
    #[allow(dead_code)] // only the cluster test reports a 503 window
    pub fn mark_fault(&self) {
        *self.fault.lock().expect("fault clock") = Some(Instant::now());
    }

    /// Waits until `n` jobs have been accepted in all.
    pub async fn wait_accepted(&self, n: usize) {
        let patience = self.patience;
        let deadline = Instant::now() + patience;
        while self.accepted() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} jobs accepted within {patience:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the clients; what they saw, all together.
    pub async fn stop(mut self) -> Outcome {
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

/// What the database says about a run's accepted jobs.
pub struct Verdict {
    /// Accepted jobs with a row.
    pub with_row: usize,
    /// Rows in the table.
    pub stored: u64,
    /// Rows beyond one per job id (the primary key makes this 0 unless the schema breaks).
    pub duplicate_rows: usize,
    /// Jobs whose result was written more than once (redelivered after commit, before ack).
    pub redelivered: usize,
}

/// Waits (up to `patience`) for every accepted job's row, then counts.
pub async fn verify(storage: &Storage, outcome: &Outcome, patience: Duration) -> Verdict {
    let rows = wait_for_rows(storage, &outcome.accepted, patience).await;
    let unique: HashSet<Uuid> = rows.iter().map(|r| r.job_id).collect();
    Verdict {
        with_row: unique.len(),
        stored: storage.count().await.expect("rows are countable"),
        duplicate_rows: rows.len() - unique.len(),
        redelivered: rows.iter().filter(|r| r.deliveries > 1).count(),
    }
}

/// Waits until every accepted id has a row; returns the rows.
async fn wait_for_rows(storage: &Storage, ids: &[Uuid], patience: Duration) -> Vec<JobResult> {
    let deadline = Instant::now() + patience;
    loop {
        match storage.get_many(ids).await {
            Ok(rows) if rows.len() >= ids.len() => return rows,
            Ok(rows) => assert!(
                Instant::now() < deadline,
                "only {} of {} accepted jobs have results after {patience:?}",
                rows.len(),
                ids.len()
            ),
            Err(e) => assert!(Instant::now() < deadline, "results unreadable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints the report line and appends it to `target/tmp/<file>`, starting a fresh file
/// with `header` (if any).
pub fn publish_report(file: &str, header: Option<&str>, line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(file);
    let fresh = !path.exists();
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        if let Some(header) = header.filter(|_| fresh) {
            let _ = writeln!(file, "{header}");
        }
        let _ = writeln!(file, "{line}");
    }
}

/// Waits (up to `patience`) until the ingress on `port` answers `/readyz` with 200 (broker
/// and database reachable).
pub async fn wait_ready(http: &reqwest::Client, port: u16, patience: Duration) {
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + patience;
    loop {
        if let Ok(response) = http.get(&url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ingress was not ready within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `scenario` to its end on a fresh four-thread Tokio runtime.
pub fn block_on(scenario: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
        .block_on(scenario);
}

/// `surge-worker`, built next to `surge-producer` by `cargo test --workspace`.
pub fn worker_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_surge-producer")).with_file_name("surge-worker");
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p surge-worker` first)",
        path.display()
    );
    path
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `RUST_LOG` for the processes under test: `SURGE_FAULTS_LOG`, else `error`.
pub fn child_log_level() -> String {
    std::env::var("SURGE_FAULTS_LOG").unwrap_or_else(|_| "error".to_owned())
}

/// Sends `SIGname` to `child` (if it still runs).
#[allow(dead_code)] // the cluster tests stop their workers this way; faults.rs has its own
pub fn signal(child: &tokio::process::Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status();
    }
}
