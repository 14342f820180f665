//! What a benchmark run found, as JSON (`results.json`) and Markdown (`results.md`).
//!
//! Over 500 lines on purpose: each row type sits next to the Markdown table that renders
//! it, so a field added to the JSON cannot be forgotten in the report.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::deploy::Cost;

/// How the run was made.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Meta {
    /// The command line.
    pub command: String,
    /// Smoke run (tiny counts: proves the harness, measures nothing).
    pub smoke: bool,
    /// Start, UTC.
    pub started: String,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// `/proc/loadavg` before and after.
    pub load_before: String,
    /// `/proc/loadavg` after.
    pub load_after: String,
    /// CPUs online.
    pub cpus: usize,
    /// The executables used for the ingress and the workers.
    pub executables: Vec<String>,
    /// The results database engine of the deployments.
    pub database: String,
    /// The broker servers measured, with their versions (see `procs::service_versions`).
    pub brokers: Vec<String>,
    /// Notes on method.
    pub notes: Vec<String>,
}

/// Scenario 1: one burst.
#[derive(Debug, Clone, Serialize)]
pub struct BurstRow {
    /// Backend.
    pub backend: String,
    /// Concurrent POSTs.
    pub jobs: usize,
    /// Capacity.
    pub capacity: u16,
    /// Job duration.
    pub job_ms: u64,
    /// `202`s.
    pub accepted: usize,
    /// Not accepted (other status or no answer).
    pub not_accepted: usize,
    /// Accept latency from the burst's start, ms.
    pub accept_p50_ms: f64,
    /// 99th percentile.
    pub accept_p99_ms: f64,
    /// Slowest.
    pub accept_max_ms: f64,
    /// Most handlers overlapping (stored start/finish times).
    pub peak_in_flight: u64,
    /// First POST to last result stored, ms.
    pub drain_ms: f64,
    /// `ceil(jobs / capacity) × job_ms`.
    pub ideal_ms: f64,
    /// Accepted jobs with a result.
    pub persisted: usize,
    /// Accepted jobs without one.
    pub lost: usize,
    /// Extra result writes from redeliveries.
    pub duplicates: u64,
    /// Connections opened during the burst (0: all pre-warmed).
    pub connections_opened: u64,
    /// CPU and memory.
    pub cost: Cost,
    /// The promises broken (empty: kept).
    pub violations: Vec<String>,
    /// `(ms since the burst, backlog, in flight)` every 10 ms.
    pub timeline: Vec<(f64, u64, u64)>,
}

/// Scenario 2: one open-loop step.
#[derive(Debug, Clone, Serialize)]
pub struct RateStep {
    /// Backend.
    pub backend: String,
    /// `ramp` (finding the max) or `measure` (at a share of it, fresh processes).
    pub phase: String,
    /// Share of the max rate, for `measure` steps.
    pub load_pct: Option<u32>,
    /// Offered jobs/s.
    pub offered: f64,
    /// Whether the system kept up (see the notes).
    pub sustainable: bool,
    /// Requests answered `202`.
    pub accepted: u64,
    /// Requests not accepted.
    pub errors: u64,
    /// Jobs/s end to end: stored results over first due send → last commit.
    pub completed_rate: f64,
    /// Accepted jobs without a result when the last answer arrived.
    pub backlog_end: u64,
    /// Accept latency from the intended send time, ms: p50, p99, p99.9, max.
    pub accept_ms: [f64; 4],
    /// End-to-end (intended send → result committed), ms: p50, p99, p99.9, max.
    pub e2e_ms: [f64; 4],
    /// Generator lag p99 (actual − intended send), ms.
    pub lag_p99_ms: f64,
    /// Accepted jobs with no result after the drain wait.
    pub lost: u64,
    /// Connections opened during the step.
    pub connections_opened: u64,
    /// CPU and memory.
    pub cost: Cost,
}

/// Scenario 2 per backend.
#[derive(Debug, Clone, Serialize)]
pub struct RateSummary {
    /// Backend.
    pub backend: String,
    /// The highest sustainable offered rate found, jobs/s.
    pub max_rate: f64,
    /// Every step.
    pub steps: Vec<RateStep>,
}

/// Scenario 6: one measurement (one kind, one round).
#[derive(Debug, Clone, Serialize)]
pub struct DispatchRun {
    /// `echo` or `http`.
    pub kind: String,
    /// 1, 2, …: echo and http alternate within a round.
    pub round: u32,
    /// Jobs accepted.
    pub jobs: u64,
    /// Results stored when the measurement ended.
    pub stored: u64,
    /// Of which `succeeded`.
    pub succeeded: u64,
    /// Stored results ÷ (last finish − first start).
    pub throughput: f64,
    /// CPU and memory while draining (`target`: the HTTP target's CPU).
    pub cost: Cost,
}

/// Scenario 6 on one backend: echo against an HTTP kind, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct DispatchRow {
    /// Backend.
    pub backend: String,
    /// Worker capacity (and the kind's `concurrency`).
    pub capacity: u16,
    /// Jobs per measurement.
    pub jobs: u64,
    /// Every measurement, in the order run.
    pub runs: Vec<DispatchRun>,
    /// Mean jobs/s of the echo runs.
    pub echo_rate: f64,
    /// Mean jobs/s of the HTTP runs.
    pub http_rate: f64,
    /// `http_rate ÷ echo_rate`.
    pub ratio: f64,
    /// Accepted jobs without a stored result, over all runs.
    pub lost: u64,
    /// Stored results that did not succeed, over all runs.
    pub failed: u64,
}

impl DispatchRow {
    /// Summarises `runs`.
    pub fn new(backend: &str, capacity: u16, jobs: u64, runs: Vec<DispatchRun>) -> DispatchRow {
        let mean = |kind: &str| {
            let rates: Vec<f64> = runs
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.throughput)
                .collect();
            rates.iter().sum::<f64>() / (rates.len().max(1) as f64)
        };
        let (echo_rate, http_rate) = (mean("echo"), mean("http"));
        DispatchRow {
            backend: backend.to_owned(),
            capacity,
            jobs,
            echo_rate,
            http_rate,
            ratio: http_rate / echo_rate.max(1e-9),
            lost: runs.iter().map(|r| r.jobs.saturating_sub(r.stored)).sum(),
            failed: runs
                .iter()
                .map(|r| r.stored.saturating_sub(r.succeeded))
                .sum(),
            runs,
        }
    }
}

/// Scenario 3: one replica count.
#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    /// Backend.
    pub backend: String,
    /// Worker processes (memory: capacity × replicas inside the ingress).
    pub replicas: u16,
    /// Capacity per replica.
    pub capacity: u16,
    /// Job duration (`sleep`).
    pub job_ms: u64,
    /// Jobs.
    pub jobs: u64,
    /// Jobs/s while the backlog lasted.
    pub throughput: f64,
    /// `replicas × capacity / job duration`.
    pub ideal: f64,
    /// Jobs handled by each replica.
    pub per_replica: Vec<u64>,
    /// Accepted jobs without a result.
    pub lost: u64,
    /// CPU and memory.
    pub cost: Cost,
}

/// Scenario 8: one fairness run.
#[derive(Debug, Clone, Serialize)]
pub struct FairnessRow {
    /// Backend.
    pub backend: String,
    /// `a-then-b` (one key's backlog, then 10 jobs of another) or `many-keys`.
    pub case: String,
    /// Worker processes (memory: capacity × workers inside the ingress).
    pub workers: u16,
    /// Capacity per worker.
    pub capacity: u16,
    /// Job duration (`sleep`).
    pub job_ms: u64,
    /// Jobs of the big key.
    pub big: u64,
    /// Jobs of the small keys, posted after the big key's.
    pub small: u64,
    /// Distinct small keys.
    pub small_keys: u64,
    /// Small keys' wait from their batch's 202 to the result, median.
    pub small_wait_p50_ms: f64,
    /// Small keys' longest wait.
    pub small_wait_max_ms: f64,
    /// The big key's drain (first post to last result) over `big × job / capacity`.
    pub big_drain_vs_ideal: f64,
    /// Accepted jobs without a result.
    pub lost: u64,
}

/// Scenario 4: one ceiling.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingRow {
    /// `http`, a backend, or a database engine.
    pub subject: String,
    /// What was measured.
    pub ceiling: String,
    /// Operations (jobs, requests, rows) per second.
    pub rate: f64,
    /// Operations done.
    pub ops: u64,
    /// Latency p99 per operation, ms, where meaningful.
    pub p99_ms: Option<f64>,
    /// CPU and memory.
    pub cost: Cost,
}

/// One target of the issue, checked.
#[derive(Debug, Clone, Serialize)]
pub struct TargetRow {
    /// The target.
    pub target: String,
    /// Backend or engine.
    pub subject: String,
    /// What was measured, with the ratio.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// Resident memory of each process at one moment of the soak.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// `VmRSS` in MiB by process (`ingress`, then each worker by id).
    pub rss_mb: BTreeMap<String, f64>,
}

/// Scenario 5 on one backend.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakRow {
    /// Backend.
    pub backend: String,
    /// Offered jobs/s.
    pub rate: f64,
    /// Seconds of load.
    pub secs: f64,
    /// Jobs answered 202.
    pub accepted: u64,
    /// Requests not accepted.
    pub errors: u64,
    /// Accepted jobs without a stored result after the drain.
    pub lost: u64,
    /// RSS over time.
    pub samples: Vec<SoakSample>,
}

impl SoakRow {
    /// `(process, first RSS, last RSS)` for each process sampled.
    pub fn start_end(&self) -> Vec<(String, f64, f64)> {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return Vec::new();
        };
        first
            .rss_mb
            .iter()
            .map(|(role, start)| {
                let end = last.rss_mb.get(role).copied().unwrap_or(f64::NAN);
                (role.clone(), *start, end)
            })
            .collect()
    }
}

/// Everything.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    /// How.
    pub meta: Meta,
    /// Scenario 1.
    pub burst: Vec<BurstRow>,
    /// Scenario 2.
    pub rate: Vec<RateSummary>,
    /// Scenario 3.
    pub scaling: Vec<ScalingRow>,
    /// Scenario 4.
    pub ceilings: Vec<CeilingRow>,
    /// Scenario 5.
    pub soak: Vec<SoakRow>,
    /// Scenario 6.
    pub dispatch: Vec<DispatchRow>,
    /// Scenario 7 (Kafka only).
    pub rebalance: Vec<crate::rebalance_report::RebalanceRow>,
    /// Scenario 8.
    pub fairness: Vec<FairnessRow>,
    /// The targets.
    pub targets: Vec<TargetRow>,
    /// Scenarios that could not run, with why.
    pub errors: Vec<String>,
}

fn cost_cpu(cost: &Cost) -> String {
    join(&cost.cpu_s_per_1k, |v| format!("{v:.3}"))
}

fn cost_rss(cost: &Cost) -> String {
    join(&cost.peak_rss_mb, |v| format!("{v:.1}"))
}

fn join(map: &std::collections::BTreeMap<String, f64>, f: impl Fn(f64) -> String) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {}", f(*v))).collect();
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(" / ")
    }
}

fn ms4(v: &[f64; 4]) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1}", v[0], v[1], v[2], v[3])
}

impl Results {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.meta;
        let _ = writeln!(
            md,
            "# Surge benchmark{}\n",
            if m.smoke {
                " (smoke run: tiny counts, numbers mean nothing)"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "`{}`\n", m.command);
        let _ = writeln!(
            md,
            "Started {} UTC, {:.0} s; {} CPUs; load average before `{}`, after `{}`; results database: {}; processes: {}.\n",
            m.started, m.duration_s, m.cpus, m.load_before, m.load_after, m.database, m.executables.join(", ")
        );
        if !m.brokers.is_empty() {
            let _ = writeln!(md, "Brokers: {}.\n", m.brokers.join("; "));
        }
        for note in &m.notes {
            let _ = writeln!(md, "- {note}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(
                md,
                "\n## Targets\n\n| target | subject | measured | met |\n|---|---|---|---|"
            );
            for t in &self.targets {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    t.target,
                    t.subject,
                    t.measured,
                    if t.met { "yes" } else { "**no**" }
                );
            }
        }
        if !self.burst.is_empty() {
            let _ = writeln!(md, "\n## 1. Burst\n\n![burst](burst.svg)\n\n| backend | accepted | accept p50 / p99 / max ms | peak in flight | drain ÷ ideal | lost | dup | conns opened | CPU s/1k jobs | peak RSS MiB | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|");
            for b in &self.burst {
                let _ = writeln!(
                    md,
                    "| {} | {}/{} | {:.1} / {:.1} / {:.1} | {}/{} | {:.0} ms ÷ {:.0} = {:.2} | {} | {} | {} | {} | {} | {} |",
                    b.backend, b.accepted, b.jobs, b.accept_p50_ms, b.accept_p99_ms, b.accept_max_ms,
                    b.peak_in_flight, b.capacity, b.drain_ms, b.ideal_ms, b.drain_ms / b.ideal_ms.max(1e-9),
                    b.lost, b.duplicates, b.connections_opened, cost_cpu(&b.cost), cost_rss(&b.cost),
                    if b.violations.is_empty() { "OK".to_owned() } else { b.violations.join("; ") }
                );
            }
        }
        if !self.rate.is_empty() {
            let _ = writeln!(md, "\n## 2. Max sustainable rate and latency\n\n![latency](latency.svg)\n\n| backend | max rate jobs/s | load | offered /s | e2e jobs/s | accept ms p50 / p99 / p99.9 / max | end-to-end ms p50 / p99 / p99.9 / max | lag p99 ms | conns opened | lost | CPU s/1k jobs | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.rate {
                for s in r.steps.iter().filter(|s| s.phase == "measure") {
                    let _ = writeln!(
                        md,
                        "| {} | {:.0} | {}% | {:.0} | {:.0} | {} | {} | {:.2} | {} | {} | {} | {} |",
                        r.backend, r.max_rate, s.load_pct.unwrap_or(0), s.offered, s.completed_rate,
                        ms4(&s.accept_ms), ms4(&s.e2e_ms), s.lag_p99_ms, s.connections_opened, s.lost,
                        cost_cpu(&s.cost), cost_rss(&s.cost)
                    );
                }
            }
            let _ = writeln!(md, "\nRamp steps (offered → sustainable?):\n");
            for r in &self.rate {
                let steps: Vec<String> = r
                    .steps
                    .iter()
                    .filter(|s| s.phase == "ramp")
                    .map(|s| format!("{:.0}{}", s.offered, if s.sustainable { "✓" } else { "✗" }))
                    .collect();
                let _ = writeln!(md, "- {}: {}", r.backend, steps.join(" → "));
            }
        }
        if !self.scaling.is_empty() {
            let _ = writeln!(md, "\n## 3. Scaling (I/O-bound job)\n\n![scaling](scaling.svg)\n\n| backend | replicas × capacity | job | jobs | jobs/s | ideal | ÷ ideal | per replica | lost | CPU s/1k jobs | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|");
            for s in &self.scaling {
                let per: Vec<String> = s.per_replica.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    md,
                    "| {} | {} × {} | sleep {} ms | {} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {} |",
                    s.backend, s.replicas, s.capacity, s.job_ms, s.jobs, s.throughput, s.ideal,
                    s.throughput / s.ideal.max(1e-9), per.join("+"), s.lost, cost_cpu(&s.cost), cost_rss(&s.cost)
                );
            }
        }
        if !self.fairness.is_empty() {
            let _ = writeln!(md, "\n## 8. Fairness (one key's backlog, then other keys)\n\n| backend | case | workers × capacity | job | big key | small keys × jobs | small wait p50 ms | small wait max ms | big drain ÷ ideal | lost |\n|---|---|---|---|---|---|---|---|---|---|");
            for f in &self.fairness {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} × {} | sleep {} ms | {} | {} × {} | {:.0} | {:.0} | {:.2} | {} |",
                    f.backend, f.case, f.workers, f.capacity, f.job_ms, f.big, f.small_keys,
                    f.small / f.small_keys.max(1), f.small_wait_p50_ms, f.small_wait_max_ms,
                    f.big_drain_vs_ideal, f.lost
                );
            }
        }
        if !self.ceilings.is_empty() {
            let _ = writeln!(md, "\n## 4. Ceilings\n\n![ceilings](ceilings.svg)\n\n| subject | ceiling | ops/s | ops | p99 ms | CPU s/1k ops | peak RSS MiB |\n|---|---|---|---|---|---|---|");
            for c in &self.ceilings {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {} | {} | {} | {} |",
                    c.subject,
                    c.ceiling,
                    c.rate,
                    c.ops,
                    c.p99_ms.map_or_else(|| "–".into(), |v| format!("{v:.2}")),
                    cost_cpu(&c.cost),
                    cost_rss(&c.cost)
                );
            }
        }
        if !self.dispatch.is_empty() {
            let _ = writeln!(md, "\n## 6. HTTP dispatch: an HTTP kind against echo\n\nEach job POSTed to a target answering `200 {{}}` at once (a process of its own), against `echo`; same broker, one worker process, measurements alternated (echo, http, echo, …), each a fresh deployment draining a backlog of the given size.\n\n| backend | capacity | jobs per run | echo jobs/s (each run) | http jobs/s (each run) | http ÷ echo | lost | not succeeded | worker CPU s/1k jobs echo → http (memory: the ingress, which runs them) | target CPU s/1k |\n|---|---|---|---|---|---|---|---|---|---|");
            for d in &self.dispatch {
                let each = |kind: &str| {
                    let rates: Vec<String> = d
                        .runs
                        .iter()
                        .filter(|r| r.kind == kind)
                        .map(|r| format!("{:.0}", r.throughput))
                        .collect();
                    rates.join(", ")
                };
                let cpu = |kind: &str, role: &str| {
                    let v: Vec<f64> = d
                        .runs
                        .iter()
                        .filter(|r| r.kind == kind)
                        .filter_map(|r| r.cost.cpu_s_per_1k.get(role).copied())
                        .collect();
                    if v.is_empty() {
                        "–".to_owned()
                    } else {
                        format!("{:.3}", v.iter().sum::<f64>() / v.len() as f64)
                    }
                };
                let role = if d.backend == "memory" {
                    "ingress"
                } else {
                    "workers"
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} ({}) | {:.0} ({}) | **{:.2}** | {} | {} | {} → {} | {} |",
                    d.backend, d.capacity, d.jobs, d.echo_rate, each("echo"), d.http_rate, each("http"),
                    d.ratio, d.lost, d.failed, cpu("echo", role), cpu("http", role), cpu("http", "target")
                );
            }
        }
        if !self.soak.is_empty() {
            let _ = writeln!(md, "\n## 5. Soak: resident memory at a fixed rate, nobody scraping /metrics\n\n| backend | process | load | accepted | errors | lost | RSS MiB over time | start → end |\n|---|---|---|---|---|---|---|---|");
            for s in &self.soak {
                for (role, start, end) in s.start_end() {
                    let series: Vec<String> = s
                        .samples
                        .iter()
                        .filter_map(|x| x.rss_mb.get(&role).map(|mb| format!("{mb:.1}")))
                        .collect();
                    let every = s.samples.get(1).map_or(0.0, |x| x.t_s);
                    let _ = writeln!(
                        md,
                        "| {} | {role} | {:.0}/s × {:.0} s | {} | {} | {} | every {every:.0} s: {} | {start:.1} → {end:.1} ({:+.1}) |",
                        s.backend, s.rate, s.secs, s.accepted, s.errors, s.lost, series.join(" "), end - start
                    );
                }
            }
        }
        crate::rebalance_report::markdown(&mut md, &self.rebalance);
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Could not run\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }
}

fn ceiling<'a>(results: &'a Results, subject: &str, starts: &str) -> Option<&'a CeilingRow> {
    results
        .ceilings
        .iter()
        .find(|c| c.subject == subject && c.ceiling.starts_with(starts))
}

/// Checks the targets against one run's figures (`engine`: the deployments'
/// database, whose batched ceiling bounds the end-to-end rate).
pub fn evaluate_targets(results: &Results, engine: &str) -> Vec<TargetRow> {
    let mut out = Vec::new();
    let mut push = |target: &str, subject: &str, measured: String, met: bool| {
        out.push(TargetRow {
            target: target.to_owned(),
            subject: subject.to_owned(),
            measured,
            met,
        });
    };
    let batched_db = ceiling(results, engine, "ResultWriter").map(|c| c.rate);
    for r in &results.rate {
        let b = r.backend.as_str();
        let broker = ceiling(results, b, "raw publish + consume").map(|c| c.rate);
        if let (Some(broker), Some(db)) = (broker, batched_db) {
            let bound = broker.min(db);
            push(
                "end-to-end ≥ 0.7 × min(broker, batched DB ceiling)",
                b,
                format!(
                    "{:.0}/s ÷ min({broker:.0}, {db:.0}) = {:.2}",
                    r.max_rate,
                    r.max_rate / bound.max(1e-9)
                ),
                r.max_rate >= 0.7 * bound,
            );
        }
        if let Some(s) = r.steps.iter().find(|s| s.load_pct == Some(50)) {
            push(
                "at 50 %: accept p99 ≤ 5 ms",
                b,
                format!("{:.2} ms at {:.0}/s", s.accept_ms[1], s.offered),
                s.accept_ms[1] <= 5.0,
            );
            push(
                "at 50 %: end-to-end p99 ≤ 25 ms",
                b,
                format!("{:.2} ms at {:.0}/s", s.e2e_ms[1], s.offered),
                s.e2e_ms[1] <= 25.0,
            );
        }
        if let Some(s) = r.steps.iter().find(|s| s.load_pct == Some(100)) {
            for role in ["ingress", "workers"] {
                if let Some(rss) = s.cost.peak_rss_mb.get(role) {
                    push(
                        &format!("peak RSS ≤ 25 MB, {role} at max rate"),
                        b,
                        format!("{rss:.1} MiB at {:.0}/s", s.offered),
                        *rss <= 25.0 / 1.048_576,
                    );
                }
            }
        }
    }
    for c in results
        .ceilings
        .iter()
        .filter(|c| c.ceiling.starts_with("ingress accept"))
    {
        if let Some(raw) = ceiling(results, &c.subject, "raw confirmed publish") {
            push(
                "ingress accept ≥ 0.8 × raw confirmed publish",
                &c.subject,
                format!(
                    "{:.0}/s ÷ {:.0}/s = {:.2}",
                    c.rate,
                    raw.rate,
                    c.rate / raw.rate.max(1e-9)
                ),
                c.rate >= 0.8 * raw.rate,
            );
        }
    }
    for engine in ["sqlite", "postgres"] {
        if let (Some(single), Some(batched)) = (
            ceiling(results, engine, "Storage::record,"),
            ceiling(results, engine, "ResultWriter"),
        ) {
            push(
                "batched writes ≥ 20 × single-row",
                engine,
                format!(
                    "{:.0}/s ÷ {:.0}/s = {:.1}",
                    batched.rate,
                    single.rate,
                    batched.rate / single.rate.max(1e-9)
                ),
                batched.rate >= 20.0 * single.rate,
            );
        }
    }
    for b in &results.burst {
        push(
            "burst: all accepted, peak in flight ≤ capacity, none lost",
            &b.backend,
            format!(
                "{}/{} accepted, peak {}/{}, lost {}",
                b.accepted, b.jobs, b.peak_in_flight, b.capacity, b.lost
            ),
            b.accepted == b.jobs && b.peak_in_flight <= u64::from(b.capacity) && b.lost == 0,
        );
        push(
            "burst: accept p99 ≤ 5 ms",
            &b.backend,
            format!("{:.2} ms", b.accept_p99_ms),
            b.accept_p99_ms <= 5.0,
        );
        let ratio = b.drain_ms / b.ideal_ms.max(1e-9);
        push(
            "burst: drain ≤ 1.1 × ideal",
            &b.backend,
            format!("{:.0} ms ÷ {:.0} ms = {ratio:.2}", b.drain_ms, b.ideal_ms),
            ratio <= 1.1,
        );
    }
    out
}
