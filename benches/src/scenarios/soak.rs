//! Scenario 5, soak: a fixed rate for minutes, nobody scraping `/metrics`, with the
//! resident memory (`VmRSS`) of every process sampled as it goes. A process that keeps
//! something per job (histogram samples nobody drains, an unbounded map) shows as a slope;
//! a healthy one is flat once warm.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{drain, sleep_body, with_deployment, Sizes, WARM_UP};
use crate::deploy::{Backend, Spec};
use crate::http::{self, Pool};
use crate::load;
use crate::results::{SoakRow, SoakSample};

/// Resident memory of `pid` now (`VmRSS`), MiB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn sample(pids: &[(String, u32)], started: Instant) -> SoakSample {
    SoakSample {
        t_s: started.elapsed().as_secs_f64(),
        rss_mb: pids
            .iter()
            .filter_map(|(role, pid)| rss_mb(*pid).map(|mb| (role.clone(), mb)))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Scenario 5 on `backend`: after the warm-up, `sizes.soak_rate` jobs/s (open loop) for
/// `sizes.soak`, the RSS of the ingress and each worker process sampled about 20 times.
pub async fn soak(
    env: &crate::deploy::Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<SoakRow> {
    let spec = Spec {
        backend,
        label: format!("soak-{}", backend.name()),
        workers: 1,
        capacity: sizes.rate_capacity,
    };
    with_deployment(env, spec, async |dep| {
        dep.warm_up(WARM_UP).await?;
        let pool = Pool::new(dep.address);
        pool.prewarm(sizes.prewarm).await?;
        let request = http::post_json("/jobs", &sleep_body(0));
        let pids = dep.pids();
        let every = (sizes.soak / 20).max(Duration::from_secs(1));
        let started = Instant::now();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let sampler = {
            let pids = pids.clone();
            tokio::spawn(async move {
                let mut samples = vec![sample(&pids, started)];
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        _ = ticker.tick() => samples.push(sample(&pids, started)),
                        _ = &mut stopped => break,
                    }
                }
                samples.push(sample(&pids, started));
                samples
            })
        };
        let label = format!("{} soak {:.0}/s", backend.name(), sizes.soak_rate);
        let load =
            load::open_loop(&pool, &request, sizes.soak_rate, sizes.soak, Some(&label)).await;
        let _ = stop.send(());
        if let Some(error) = &load.first_error {
            eprintln!("    first error: {error}");
        }
        let samples = sampler.await?;
        dep.accepted_total += load.accepted;
        let stored = drain(
            &dep.db,
            dep.accepted_total,
            sizes.drain_timeout,
            "    draining",
        )
        .await?;
        let row = SoakRow {
            backend: backend.name().to_owned(),
            rate: sizes.soak_rate,
            secs: sizes.soak.as_secs_f64(),
            accepted: load.accepted,
            errors: load.not_accepted(),
            lost: dep.accepted_total.saturating_sub(stored),
            samples,
        };
        for (role, start, end) in row.start_end() {
            eprintln!("    → {role}: RSS {start:.1} → {end:.1} MiB");
        }
        Ok(row)
    })
    .await
}
