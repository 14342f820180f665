//! The founding story, measured: an API that handles only `limit` requests at a time
//! ([`crate::downstream`]) is hit by `jobs` concurrent clients twice —
//!
//! 1. **directly**: whatever finds the API full gets a `503` and is lost to its client;
//! 2. **through Surge**: the same requests become jobs of an HTTP kind declared in a
//!    generated configuration file (`concurrency = limit`), run by workers whose total
//!    capacity is the limit. Every request is accepted (`202`), every job ends
//!    `succeeded`, and the API, by its own count, never has more than `limit` requests in
//!    flight and refuses none.
//!
//! Both runs are judged from two sides: the API's own counters and timeline, and Surge's
//! database (every accepted id looked up).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use surge_common::broker::Broker;
use surge_common::storage::Storage;

use crate::burst::{self, BurstConfig};
use crate::downstream::{Downstream, DownstreamConfig, DownstreamStats};
use crate::report::BurstReport;

/// The HTTP kind the generated configuration file declares.
pub const KIND: &str = "api";

/// What to run.
#[derive(Debug, Clone)]
pub struct StoryConfig {
    /// Concurrent requests, in each run.
    pub jobs: usize,
    /// Requests the API handles at once; also the kind's `concurrency` and the workers'
    /// total capacity.
    pub limit: u16,
    /// Worker services sharing the capacity on a real broker (the memory broker runs the
    /// ingress's embedded worker).
    pub workers: u16,
    /// Time the API takes per request.
    pub job_ms: u64,
    /// Give up waiting for Surge's drain after this long.
    pub drain_timeout: Duration,
    /// Where the generated configuration file is written (removed afterwards).
    pub config_dir: PathBuf,
    /// Print progress to stderr.
    pub progress: bool,
}

/// The direct run: every client calls the API itself, once.
#[derive(Debug, Clone)]
pub struct DirectRun {
    /// Requests sent.
    pub sent: usize,
    /// Answered 2xx.
    pub succeeded: usize,
    /// Answered 503.
    pub refused: usize,
    /// Other answers or no answer.
    pub failed: usize,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// What the API saw.
    pub service: DownstreamStats,
}

/// Both runs.
#[derive(Debug, Clone)]
pub struct StoryReport {
    /// The API's limit.
    pub limit: u16,
    /// Time per request.
    pub job_ms: u64,
    /// Worker services (real brokers) sharing the limit.
    pub workers: u16,
    /// The direct run.
    pub direct: DirectRun,
    /// The run through Surge, from Surge's side (answers, database).
    pub surge: BurstReport,
    /// The run through Surge, from the API's side.
    pub service: DownstreamStats,
    /// The configuration file given to the ingress and workers (its text).
    pub config_text: String,
}

impl StoryReport {
    /// The promises the run through Surge broke; empty when it kept them all.
    pub fn violations(&self) -> Vec<String> {
        let mut broken = self.surge.violations();
        if self.surge.succeeded != self.surge.jobs {
            broken.push(format!(
                "{} of {} jobs did not end succeeded",
                self.surge.jobs.saturating_sub(self.surge.succeeded),
                self.surge.jobs
            ));
        }
        if self.service.peak > usize::from(self.limit) {
            broken.push(format!(
                "the API saw {} requests at once, over its limit of {}",
                self.service.peak, self.limit
            ));
        }
        if self.service.refused > 0 {
            broken.push(format!(
                "the API refused {} requests (503) through Surge",
                self.service.refused
            ));
        }
        broken
    }

    /// `ceil(jobs / limit) × job_ms`: the fastest any client-side scheme could finish.
    pub fn ideal(&self) -> Duration {
        burst::ideal_drain_for(self.surge.jobs, self.limit, self.job_ms)
    }
}

/// Starts the API, runs both halves of the story and stops everything it started.
/// `broker` and `storage` are Surge's, for the second run.
pub async fn run(
    broker: Arc<dyn Broker>,
    storage: Storage,
    config: &StoryConfig,
) -> anyhow::Result<StoryReport> {
    let limit = config.limit.max(1);
    let service = Downstream::start(DownstreamConfig {
        limit: usize::from(limit),
        work: Duration::from_millis(config.job_ms),
        timeline: true,
    })
    .await
    .context("starting the downstream API")?;
    let result = both_runs(&service, broker, storage, config, limit).await;
    service.stop().await;
    result
}

async fn both_runs(
    service: &Downstream,
    broker: Arc<dyn Broker>,
    storage: Storage,
    config: &StoryConfig,
    limit: u16,
) -> anyhow::Result<StoryReport> {
    if config.progress {
        eprintln!(
            "  1. {} clients call the API directly ({} at a time, {} ms each)…",
            config.jobs, limit, config.job_ms
        );
    }
    let direct = direct(service, config.jobs, config.job_ms).await?;

    service.reset();
    if config.progress {
        eprintln!("  2. the same {} requests through Surge…", config.jobs);
    }
    let config_text = config_file_text(&service.url(), limit, config.job_ms);
    let path = config.config_dir.join(format!(
        "surge-demo-{}.toml",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::write(&path, &config_text).with_context(|| format!("writing {}", path.display()))?;
    let burst = BurstConfig {
        jobs: config.jobs,
        capacity: limit,
        workers: config.workers,
        job_ms: config.job_ms,
        kind: KIND.to_owned(),
        payload: json!({ "order": "demo" }),
        config_file: Some(path.clone()),
        drain_timeout: config.drain_timeout,
        progress: config.progress,
    };
    let surge = burst::run(broker, storage, &burst).await;
    let _ = std::fs::remove_file(&path);
    let surge = surge?;
    Ok(StoryReport {
        limit,
        job_ms: config.job_ms,
        workers: config.workers,
        direct,
        surge,
        service: service.stats(),
        config_text,
    })
}

/// The configuration file of the run through Surge: one HTTP kind pointing at the API,
/// allowed as many requests in flight as the API handles.
pub fn config_file_text(url: &str, limit: u16, job_ms: u64) -> String {
    // Generous: a request waits for nothing but the API's own work.
    let timeout_ms = job_ms.saturating_mul(10).clamp(30_000, 3_600_000);
    format!(
        "# Generated by surge-demo: the API it started, as an HTTP kind.\n\
         [kinds.{KIND}]\n\
         url = \"{url}\"\n\
         concurrency = {limit}\n\
         timeout_ms = {timeout_ms}\n\
         description = \"an API that handles only {limit} requests at a time\"\n"
    )
}

async fn direct(service: &Downstream, jobs: usize, job_ms: u64) -> anyhow::Result<DirectRun> {
    // Default pool settings: `pool_max_idle_per_host(0)` was measured to hold about half
    // of a 400-request burst back by ~1 s, which let them in after the first wave.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(job_ms) * 10 + Duration::from_secs(30))
        .build()?;
    let url = service.url();
    let started = Instant::now();
    let answers = futures::future::join_all((0..jobs).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({ "order": i }))
                .send()
                .await
                .map(|r| r.status())
        })
    }))
    .await;
    let elapsed = started.elapsed();
    let (mut succeeded, mut refused, mut failed) = (0, 0, 0);
    for answer in answers {
        match answer.context("a client task panicked")? {
            Ok(status) if status.is_success() => succeeded += 1,
            Ok(status) if status.as_u16() == 503 => refused += 1,
            Ok(_) | Err(_) => failed += 1,
        }
    }
    Ok(DirectRun {
        sent: jobs,
        succeeded,
        refused,
        failed,
        elapsed,
        service: service.stats(),
    })
}

/// Writes the API's in-flight requests over time, one panel per run, to `path`.
pub fn write_chart(report: &StoryReport, path: &Path) -> anyhow::Result<()> {
    let through = format!(
        "through Surge: {} accepted, {} succeeded, {} × 503",
        report.surge.accepted, report.surge.succeeded, report.service.refused
    );
    let direct = format!(
        "direct: {} succeeded, {} × 503",
        report.direct.succeeded, report.direct.refused
    );
    crate::charts::in_flight_timelines(
        path,
        &format!(
            "Requests in flight at the API (limit {}, {} ms each), {} concurrent clients",
            report.limit, report.job_ms, report.direct.sent
        ),
        u64::from(report.limit),
        &[
            (direct.as_str(), report.direct.service.timeline.as_slice()),
            (through.as_str(), report.service.timeline.as_slice()),
        ],
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl fmt::Display for StoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, s) = (&self.direct, &self.surge);
        writeln!(
            f,
            "An API that handles only {} requests at a time ({} ms each), {} concurrent requests — {} broker",
            self.limit, self.job_ms, d.sent, s.broker
        )?;
        writeln!(f)?;
        let row = |f: &mut fmt::Formatter<'_>, label: &str, a: String, b: String| {
            writeln!(f, "  {label:<26} {a:<22} {b}")
        };
        row(f, "", "direct".into(), "through Surge".into())?;
        row(
            f,
            "requests",
            format!("{} POST /work", d.sent),
            format!("{} POST /jobs → {} accepted (202)", s.jobs, s.accepted),
        )?;
        row(
            f,
            "succeeded",
            d.succeeded.to_string(),
            format!("{} (status in the database)", s.succeeded),
        )?;
        let other = if d.failed > 0 {
            format!(" + {} other", d.failed)
        } else {
            String::new()
        };
        row(
            f,
            "failed",
            format!("{} × 503{other}", d.refused),
            format!(
                "{} (lost {}, not succeeded {}, duplicates {})",
                s.lost + s.persisted.saturating_sub(s.succeeded) + s.not_accepted(),
                s.lost,
                s.persisted.saturating_sub(s.succeeded),
                s.duplicates
            ),
        )?;
        row(
            f,
            "API's peak in flight",
            format!("{} (limit {})", d.service.peak, self.limit),
            format!("{} (limit {})", self.service.peak, self.limit),
        )?;
        row(
            f,
            "503s the API answered",
            d.service.refused.to_string(),
            self.service.refused.to_string(),
        )?;
        row(
            f,
            "requests the API served",
            d.service.served.to_string(),
            self.service.served.to_string(),
        )?;
        row(
            f,
            "done in",
            format!("{} (all answered)", secs(d.elapsed)),
            format!(
                "{} (last result stored; ideal ceil({}/{}) × {} ms = {} → {:.2}×)",
                secs(s.drain),
                s.jobs,
                self.limit,
                self.job_ms,
                secs(self.ideal()),
                s.drain.as_secs_f64() / self.ideal().as_secs_f64().max(f64::EPSILON)
            ),
        )?;
        writeln!(
            f,
            "  {:<26} {:<22} p50 {:.1} ms, p99 {:.1} ms (the client is answered once the broker has the job)",
            "Surge's accept latency",
            "",
            s.accept_p50.as_secs_f64() * 1000.0,
            s.accept_p99.as_secs_f64() * 1000.0
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  Directly, {} of {} clients got a 503 and would have to retry on their own.",
            d.refused + d.failed,
            d.sent
        )?;
        writeln!(
            f,
            "  Through Surge, the HTTP kind `{KIND}` (concurrency {}) fed the API at its pace: it never saw more than {} at once.",
            self.limit, self.service.peak
        )?;
        let broken = self.violations();
        if broken.is_empty() {
            write!(
                f,
                "  verdict: OK — every request accepted, every job succeeded, the API never over its limit and never refused"
            )
        } else {
            write!(f, "  verdict: FAILED — {}", broken.join("; "))
        }
    }
}
