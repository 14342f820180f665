//! Scenario 3: a backlog of I/O-bound jobs drained by 1, 2, 4 worker processes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;
use surge_common::clock::now_micros;
use uuid::Uuid;

use super::{drain, with_deployment, Sizes, WARM_UP};
use crate::db::Row;
use crate::deploy::{Backend, Cost, Env, Spec};
use crate::http::{self, Pool};
use crate::results::ScalingRow;

/// Scenario 3 on `backend`: for each replica count, a backlog of `sleep` jobs drained by
/// that many worker processes (memory: that many times the capacity inside the ingress,
/// since the memory broker cannot be shared between processes).
pub async fn scaling(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<Vec<ScalingRow>> {
    let mut out = Vec::new();
    for &replicas in &sizes.replicas {
        let spec = Spec {
            backend,
            label: format!("scale{replicas}-{}", backend.name()),
            workers: replicas,
            capacity: if backend == Backend::Memory {
                sizes.scale_capacity * replicas
            } else {
                sizes.scale_capacity
            },
        };
        let row = with_deployment(env, spec, async |dep| {
            dep.warm_up(WARM_UP).await?;
            dep.reset_peaks();
            let before = dep.snapshot();
            let pool = Pool::new(dep.address);
            let started_us = now_micros();
            let mut ids = HashSet::new();
            let mut left = sizes.scale_jobs;
            while left > 0 {
                let n = left.min(500);
                let batch: Vec<serde_json::Value> = (0..n)
                    .map(|_| json!({"kind": "sleep", "payload": {"ms": sizes.scale_job_ms}}))
                    .collect();
                let request = http::post_json("/jobs/batch", &serde_json::to_string(&batch)?);
                let response = pool.send(&request).await?;
                anyhow::ensure!(
                    response.status == 202,
                    "batch answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
                let accepted: serde_json::Value = serde_json::from_slice(&response.body)?;
                for job in accepted["jobs"].as_array().into_iter().flatten() {
                    if let Some(id) = job["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                        ids.insert(id);
                    }
                }
                left -= n;
            }
            dep.accepted_total += ids.len() as u64;
            let ideal = f64::from(replicas) * f64::from(sizes.scale_capacity) * 1000.0
                / sizes.scale_job_ms.max(1) as f64;
            let timeout = Duration::from_secs_f64(sizes.scale_jobs as f64 / ideal * 4.0)
                + Duration::from_secs(60);
            drain(
                &dep.db,
                dep.accepted_total,
                timeout,
                &format!("{} × {replicas}", backend.name()),
            )
            .await?;
            let after = dep.snapshot();
            let rows: Vec<Row> = dep
                .db
                .rows_since(started_us)
                .await?
                .into_iter()
                .filter(|r| ids.contains(&r.id))
                .collect();
            let first = rows.iter().map(|r| r.started_us).min().unwrap_or(0);
            let last = rows.iter().map(|r| r.finished_us).max().unwrap_or(0);
            let mut per: BTreeMap<String, u64> = BTreeMap::new();
            for r in &rows {
                *per.entry(r.worker.clone()).or_default() += 1;
            }
            Ok(ScalingRow {
                backend: backend.name().to_owned(),
                replicas,
                capacity: sizes.scale_capacity,
                job_ms: sizes.scale_job_ms,
                jobs: ids.len() as u64,
                throughput: rows.len() as f64 / ((last - first) as f64 / 1e6).max(1e-9),
                ideal,
                per_replica: per.into_values().collect(),
                lost: (ids.len() as u64).saturating_sub(rows.len() as u64),
                cost: Cost::between(&before, &after, ids.len() as u64),
            })
        })
        .await?;
        eprintln!(
            "    → {replicas} replica(s): {:.0} jobs/s (ideal {:.0})",
            row.throughput, row.ideal
        );
        out.push(row);
    }
    Ok(out)
}
