//! Scenario 2: open-loop ramp to the highest rate the deployment sustains with a bounded
//! backlog, then, on fresh processes, latency at shares of it, lowest load first (a step
//! past the machine's limit would leave backlog and memory to the lighter ones).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::{drain, ms, quantiles_ms, sleep_body, with_deployment, Sizes, WARM_UP};
use crate::deploy::{Backend, Cost, Deployment, Env, Spec};
use crate::http::{self, Pool};
use crate::load::{self, histogram};
use crate::results::{RateStep, RateSummary};

/// Scenario 2 on `backend`.
pub async fn rate(env: &Env, sizes: &Sizes, backend: Backend) -> anyhow::Result<RateSummary> {
    let spec = |label: &str| Spec {
        backend,
        label: format!("{label}-{}", backend.name()),
        workers: 1,
        capacity: sizes.rate_capacity,
    };
    let mut steps = Vec::new();
    let max_rate = with_deployment(env, spec("ramp"), async |dep| {
        dep.warm_up(WARM_UP).await?;
        let pool = Pool::new(dep.address);
        pool.prewarm(sizes.prewarm).await?;
        let request = http::post_json("/jobs", &sleep_body(0));
        let (mut good, mut bad) = (0.0f64, None::<f64>);
        let mut offered = sizes.ramp_start;
        for _ in 0..sizes.ramp_steps {
            let step = rate_step(dep, &pool, &request, sizes, offered, "ramp", None).await?;
            let ok = step.sustainable;
            steps.push(step);
            if ok {
                good = offered;
                offered *= sizes.ramp_factor;
            } else {
                bad = Some(offered);
                break;
            }
        }
        if let Some(mut hi) = bad {
            for _ in 0..sizes.bisect_steps {
                let mid = ((good + hi) / 2.0).round();
                let step = rate_step(dep, &pool, &request, sizes, mid, "ramp", None).await?;
                if step.sustainable {
                    good = mid;
                } else {
                    hi = mid;
                }
                steps.push(step);
            }
        }
        Ok(good)
    })
    .await?;
    eprintln!(
        "    {}: max sustainable rate {max_rate:.0} jobs/s",
        backend.name()
    );
    if max_rate > 0.0 {
        let measured = with_deployment(env, spec("measure"), async |dep| {
            dep.warm_up(WARM_UP).await?;
            let pool = Pool::new(dep.address);
            pool.prewarm(sizes.prewarm).await?;
            let request = http::post_json("/jobs", &sleep_body(0));
            let mut measured = Vec::new();
            for pct in &sizes.load_pcts {
                let offered = (max_rate * f64::from(*pct) / 100.0).max(1.0);
                measured.push(
                    rate_step(dep, &pool, &request, sizes, offered, "measure", Some(*pct)).await?,
                );
            }
            Ok(measured)
        })
        .await?;
        steps.extend(measured);
    }
    Ok(RateSummary {
        backend: backend.name().to_owned(),
        max_rate,
        steps,
    })
}

async fn rate_step(
    dep: &mut Deployment,
    pool: &Arc<Pool>,
    request: &http::Request,
    sizes: &Sizes,
    offered: f64,
    phase: &str,
    load_pct: Option<u32>,
) -> anyhow::Result<RateStep> {
    let duration = if phase == "ramp" {
        sizes.step
    } else {
        sizes.measure
    };
    dep.reset_peaks();
    let before = dep.snapshot();
    let label = format!(
        "{} {phase} {offered:.0}/s{}",
        dep.backend.name(),
        load_pct.map_or_else(String::new, |p| format!(" ({p}%)"))
    );
    let load = load::open_loop(pool, request, offered, duration, Some(&label)).await;
    let stored_at_end = dep.db.count().await?;
    dep.accepted_total += load.accepted;
    let backlog_end = dep.accepted_total.saturating_sub(stored_at_end);
    let stored = drain(
        &dep.db,
        dep.accepted_total,
        sizes.drain_timeout,
        "    draining",
    )
    .await?;
    let after = dep.snapshot();
    let rows = dep.db.rows_since(load.start_us).await?;
    let due: HashMap<Uuid, i64> = load.jobs.iter().map(|j| (j.id, j.intended_us)).collect();
    let mut e2e = histogram();
    let mut last_commit = load.start_us;
    let mut done = 0u64;
    for row in &rows {
        if let (Some(intended), Some(committed)) = (due.get(&row.id), row.committed_us) {
            e2e.saturating_record(u64::try_from(committed - intended).unwrap_or(0));
            last_commit = last_commit.max(committed);
            done += 1;
        }
    }
    let completed_rate = done as f64 / ((last_commit - load.start_us) as f64 / 1e6).max(1e-9);
    let late = load.elapsed.saturating_sub(duration);
    let bound = (offered * 0.5).max(f64::from(sizes.rate_capacity)) as u64;
    let sustainable = load.not_accepted() == 0
        && backlog_end <= bound
        && late <= Duration::from_millis(500).max(duration / 10)
        && stored >= dep.accepted_total;
    eprintln!(
        "    → accepted {} errors {} backlog at end {backlog_end} (bound {bound}) late {:.0} ms e2e {completed_rate:.0}/s: {}",
        load.accepted,
        load.not_accepted(),
        late.as_secs_f64() * 1000.0,
        if sustainable { "sustainable" } else { "NOT sustainable" }
    );
    if let Some(error) = &load.first_error {
        eprintln!("    first error: {error}");
    }
    Ok(RateStep {
        backend: dep.backend.name().to_owned(),
        phase: phase.to_owned(),
        load_pct,
        offered,
        sustainable,
        accepted: load.accepted,
        errors: load.not_accepted(),
        completed_rate,
        backlog_end,
        accept_ms: quantiles_ms(&load.latency),
        e2e_ms: quantiles_ms(&e2e),
        lag_p99_ms: ms(load.lag.value_at_quantile(0.99)),
        lost: load.accepted.saturating_sub(done),
        connections_opened: load.connections_opened,
        cost: Cost::between(&before, &after, load.accepted),
    })
}
