//! Scenario 7, Kafka rebalancing: what a worker joining mid-burst costs under each
//! `--kafka-assignment` value (`eager`, `cooperative-sticky`, `consumer`).
//!
//! Each measurement is a fresh deployment (topic of 6 partitions, database): a backlog of
//! `rebalance_jobs` `sleep` jobs is posted while no worker runs, then worker 1 starts;
//! worker 2 starts once 20 % of the jobs are stored and worker 3 at 40 % (each a child
//! process given `--kafka-assignment`). The same backlog drained by three workers started
//! together is the baseline. The values are interleaved — eager, cooperative-sticky,
//! consumer, then again — so the machine's load hits them alike.
//!
//! Per run, from the stored rows: jobs run more than once and the extra runs
//! (`deliveries − 1` summed), lost jobs (accepted without a row), the longest pause (the
//! largest gap between consecutive `finished_at_us` while jobs remained), the drain (first
//! handler start → last finish), each joiner's wait from its start to its first finished
//! job, and the rows per worker (a member left with no work shows here).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use surge_common::broker::KafkaAssignment;
use surge_common::clock::now_micros;
use uuid::Uuid;

use super::Sizes;
use crate::deploy::{Backend, Deployment, Env, Spec};
use crate::rebalance_report::{RebalanceRow, RebalanceRun, JOIN_AT};

/// Scenario 7 on Kafka (other backends have no rebalancing to measure).
pub async fn rebalance(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<Vec<RebalanceRow>> {
    anyhow::ensure!(
        backend == Backend::Kafka,
        "the rebalance scenario measures Kafka consumer groups only"
    );
    let mut rows: Vec<RebalanceRow> = KafkaAssignment::ALL
        .iter()
        .map(|a| RebalanceRow {
            assignment: a.as_str().to_owned(),
            jobs: sizes.rebalance_jobs,
            job_ms: sizes.rebalance_job_ms,
            capacity: sizes.rebalance_capacity,
            runs: Vec::new(),
        })
        .collect();
    for round in 1..=sizes.rebalance_rounds {
        for (i, assignment) in KafkaAssignment::ALL.iter().enumerate() {
            for joining in [true, false] {
                let run = measure(env, sizes, *assignment, round, joining).await?;
                eprintln!(
                    "    → {} {} round {round}: drain {:.2} s, longest pause {:.0} ms (at {:.1} s), \
                     rerun {} (extra runs {}), lost {}, joiners' first job after {:?} s, rows {:?}",
                    run.assignment,
                    run.mode,
                    run.drain_s,
                    run.longest_pause_ms,
                    run.pause_at_s,
                    run.rerun_jobs,
                    run.duplicates,
                    run.lost,
                    run.join_to_first_job_s,
                    run.rows_by_worker
                );
                rows[i].runs.push(run);
            }
        }
    }
    Ok(rows)
}

async fn measure(
    env: &Env,
    sizes: &Sizes,
    assignment: KafkaAssignment,
    round: u32,
    joining: bool,
) -> anyhow::Result<RebalanceRun> {
    let env = env.with_extra_args(vec![
        "--kafka-assignment".to_owned(),
        assignment.as_str().to_owned(),
    ]);
    let spec = Spec {
        backend: Backend::Kafka,
        label: format!("rebalance-{}", assignment.as_str()),
        workers: 0,
        capacity: sizes.rebalance_capacity,
    };
    let mut dep = Deployment::start(&env, &spec).await?;
    let result = measure_on(&mut dep, sizes, assignment, round, joining).await;
    dep.stop().await;
    result
}

async fn measure_on(
    dep: &mut Deployment,
    sizes: &Sizes,
    assignment: KafkaAssignment,
    round: u32,
    joining: bool,
) -> anyhow::Result<RebalanceRun> {
    let since_us = now_micros();
    let payload = serde_json::json!({ "ms": sizes.rebalance_job_ms });
    let ids =
        super::dispatch::post_backlog(dep.address, "sleep", &payload, sizes.rebalance_jobs).await?;
    let jobs = ids.len() as u64;
    let capacity = sizes.rebalance_capacity;
    let label = format!(
        "{} {} round {round}",
        assignment.as_str(),
        if joining { "joining" } else { "baseline" }
    );
    let started = Instant::now();
    let deadline = started + sizes.rebalance_timeout;
    let mut joined_us = Vec::new();
    if joining {
        dep.add_workers(1, capacity)?;
        for share in JOIN_AT {
            let target = (jobs as f64 * share).ceil() as u64;
            while dep.db.count().await? < target {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{label}: {target} results not stored within {:?}",
                    sizes.rebalance_timeout
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            joined_us.push(now_micros());
            dep.add_workers(1, capacity)?;
        }
    } else {
        dep.add_workers(3, capacity)?;
    }
    let left = sizes.rebalance_timeout.saturating_sub(started.elapsed());
    super::drain(&dep.db, jobs, left, &format!("    {label}")).await?;
    let rows = dep.db.rows_since(since_us).await?;
    let mine: Vec<_> = rows.iter().filter(|r| ids.contains(&r.id)).collect();
    let stored = mine.iter().map(|r| r.id).collect::<HashSet<Uuid>>().len() as u64;
    let first_start = mine.iter().map(|r| r.started_us).min().unwrap_or(0);
    let mut finishes: Vec<i64> = mine.iter().map(|r| r.finished_us).collect();
    finishes.sort_unstable();
    let (longest_pause_us, pause_from) = finishes
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((0, first_start));
    let last_finish = finishes.last().copied().unwrap_or(first_start);
    // Every worker started, also one that stored nothing.
    let mut rows_by_worker: BTreeMap<String, u64> = dep
        .pids()
        .into_iter()
        .filter_map(|(role, _)| role.strip_prefix("worker ").map(|id| (id.to_owned(), 0)))
        .collect();
    for row in &mine {
        *rows_by_worker.entry(row.worker.clone()).or_default() += 1;
    }
    // Worker ids are `<label>-w<n>`, in start order: w1 and w2 are the joiners.
    let join_to_first_job_s = joined_us
        .iter()
        .enumerate()
        .map(|(i, &joined)| {
            let suffix = format!("-w{}", i + 1);
            mine.iter()
                .filter(|r| r.worker.ends_with(&suffix))
                .map(|r| r.finished_us)
                .min()
                .map(|first| (first - joined) as f64 / 1e6)
        })
        .collect();
    Ok(RebalanceRun {
        assignment: assignment.as_str().to_owned(),
        round,
        mode: if joining { "joining" } else { "baseline" }.to_owned(),
        jobs,
        stored,
        lost: jobs.saturating_sub(stored),
        rerun_jobs: mine.iter().filter(|r| r.deliveries > 1).count() as u64,
        duplicates: mine
            .iter()
            .map(|r| u64::try_from(r.deliveries - 1).unwrap_or(0))
            .sum(),
        drain_s: (last_finish - first_start) as f64 / 1e6,
        longest_pause_ms: longest_pause_us as f64 / 1000.0,
        pause_at_s: (pause_from - first_start) as f64 / 1e6,
        join_to_first_job_s,
        rows_by_worker,
    })
}
