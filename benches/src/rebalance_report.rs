//! Scenario 7's rows (Kafka rebalancing: workers joining mid-burst) and its section of
//! `results.md`; the scenario itself is `scenarios::rebalance`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// Shares of the backlog stored before worker 2 and worker 3 start.
pub const JOIN_AT: [f64; 2] = [0.2, 0.4];

/// One drain of the backlog.
#[derive(Debug, Clone, Serialize)]
pub struct RebalanceRun {
    /// `--kafka-assignment` of every worker.
    pub assignment: String,
    /// 1, 2, …: the values alternate within a round.
    pub round: u32,
    /// `joining` (workers 2 and 3 join mid-burst) or `baseline` (three from the start).
    pub mode: String,
    /// Jobs accepted.
    pub jobs: u64,
    /// Accepted jobs with a result row.
    pub stored: u64,
    /// Accepted jobs without one when the run stopped waiting.
    pub lost: u64,
    /// Jobs whose result was written more than once (they ran again).
    pub rerun_jobs: u64,
    /// Extra runs: `deliveries − 1` summed over the rows.
    pub duplicates: u64,
    /// First handler start → last finish, s.
    pub drain_s: f64,
    /// Largest gap between consecutive finishes, ms.
    pub longest_pause_ms: f64,
    /// When that gap began, s after the first start.
    pub pause_at_s: f64,
    /// Each joiner's start → its first finished job, s (`joining` runs).
    pub join_to_first_job_s: Vec<Option<f64>>,
    /// Rows per worker (by worker id).
    pub rows_by_worker: BTreeMap<String, u64>,
}

/// Scenario 7: every run, and a summary per assignment value.
#[derive(Debug, Clone, Serialize)]
pub struct RebalanceRow {
    /// `--kafka-assignment`.
    pub assignment: String,
    /// Jobs per run.
    pub jobs: u64,
    /// Job duration, ms.
    pub job_ms: u64,
    /// Capacity of each worker.
    pub capacity: u16,
    /// Every run of this value, in the order run.
    pub runs: Vec<RebalanceRun>,
}

impl RebalanceRow {
    fn of<'a>(&'a self, mode: &'a str) -> impl Iterator<Item = &'a RebalanceRun> + 'a {
        self.runs.iter().filter(move |r| r.mode == mode)
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / (v.len().max(1) as f64)
}

fn each(values: impl Iterator<Item = String>) -> String {
    values.collect::<Vec<_>>().join(", ")
}

/// The scenario's section of `results.md`.
pub fn markdown(md: &mut String, rows: &[RebalanceRow]) {
    let Some(first) = rows.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "\n## 7. Kafka rebalancing: workers joining mid-burst\n\n\
         A backlog of {} `sleep` jobs of {} ms on a fresh 6-partition topic; worker 1 \
         (capacity {}) starts, worker 2 joins when {:.0} % are stored and worker 3 at {:.0} %; \
         the baseline drains the same backlog with three workers started together. \
         Assignment values interleaved per round. Pause = largest gap between consecutive \
         finishes; rerun = jobs whose result was written more than once (extra runs in \
         brackets); joiners' wait = a joiner's start → its first finished job.\n\n\
         | assignment | joining: drain s (each run) | baseline: drain s (each run) | joining ÷ baseline | longest pause ms (each run) | pause at s | joiners' wait s (2nd / 3rd worker) | rerun (extra runs; b: baseline) | lost | rows per worker, joining runs (1st / 2nd / 3rd) |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        first.jobs,
        first.job_ms,
        first.capacity,
        JOIN_AT[0] * 100.0,
        JOIN_AT[1] * 100.0
    );
    for row in rows {
        let joining = mean(row.of("joining").map(|r| r.drain_s));
        let baseline = mean(row.of("baseline").map(|r| r.drain_s));
        let waits = each(row.of("joining").map(|r| {
            let w: Vec<String> = r
                .join_to_first_job_s
                .iter()
                .map(|w| w.map_or_else(|| "never".to_owned(), |s| format!("{s:.1}")))
                .collect();
            w.join(" / ")
        }));
        let per_worker = each(row.of("joining").map(|r| {
            let v: Vec<String> = r.rows_by_worker.values().map(u64::to_string).collect();
            v.join(" / ")
        }));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            row.assignment,
            each(row.of("joining").map(|r| format!("{:.2}", r.drain_s))),
            each(row.of("baseline").map(|r| format!("{:.2}", r.drain_s))),
            joining / baseline.max(1e-9),
            each(
                row.of("joining")
                    .map(|r| format!("{:.0}", r.longest_pause_ms))
            ),
            each(row.of("joining").map(|r| format!("{:.1}", r.pause_at_s))),
            waits,
            each(row.runs.iter().map(|r| format!(
                "{}{} ({})",
                if r.mode == "baseline" { "b:" } else { "" },
                r.rerun_jobs,
                r.duplicates
            ))),
            row.runs.iter().map(|r| r.lost).sum::<u64>(),
            per_worker
        );
    }
}
