//! Scenario 8: fairness under a burst (issue 21). Key A posts a backlog of `sleep` jobs,
//! then key B posts 10; on 1 and 3 worker processes of one capacity. Reported: B's wait
//! from its batch's 202 to each result (p50, max) and A's drain against the ideal. Then
//! the many-keys case on one worker: one key's big backlog, then many keys of one job
//! each; their wait p50 / max and the big key's drain.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use surge_common::clock::now_micros;
use uuid::Uuid;

use super::{drain, with_deployment, Sizes, WARM_UP};
use crate::deploy::{Backend, Env, Spec, KAFKA_PARTITIONS};
use crate::http::{self, Pool};
use crate::results::FairnessRow;

/// A tenant key that shares neither `a`'s RabbitMQ fairness lane nor its Kafka partition
/// (CRC-32 of the key modulo the partitions: librdkafka's default partitioner), so the
/// a-then-b case measures two tenants that do not collide (one in 8 lanes, one in 6
/// partitions would); the many-keys case measures collisions.
fn apart_from(a: &str) -> String {
    let partition = |key: &str| crc32fast::hash(key.as_bytes()) % KAFKA_PARTITIONS.unsigned_abs();
    #[cfg(feature = "rabbitmq")]
    let lane = surge_common::broker::rabbitmq::lane_of;
    #[cfg(not(feature = "rabbitmq"))]
    let lane = |_: &str| 0;
    (0..1_000)
        .map(|k| format!("tenant-{k}"))
        .find(|key| lane(key) != lane(a) && partition(key) != partition(a))
        .unwrap_or_else(|| "tenant-b".to_owned())
}

/// Posts `jobs` (`sleep` of `job_ms`, the key each one names) in batches of 500; returns
/// the ids accepted and when the last batch was answered (µs since the epoch).
async fn post(pool: &Pool, keys: &[String], job_ms: u64) -> anyhow::Result<(Vec<Uuid>, i64)> {
    let mut ids = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let batch: Vec<serde_json::Value> = chunk
            .iter()
            .map(|key| json!({"kind": "sleep", "payload": {"ms": job_ms}, "key": key}))
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
                ids.push(id);
            }
        }
    }
    Ok((ids, now_micros()))
}

fn quantile_ms(sorted_us: &[i64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// One run: `big` jobs of one key, then `small_keys` keys of `small_each` jobs, on
/// `workers` workers.
#[allow(clippy::too_many_arguments)]
async fn run(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
    case: &str,
    workers: u16,
    big: usize,
    small_keys: usize,
    small_each: usize,
) -> anyhow::Result<FairnessRow> {
    let capacity = sizes.fair_capacity;
    let spec = Spec {
        backend,
        label: format!("fair-{case}-{workers}-{}", backend.name()),
        workers,
        capacity: if backend == Backend::Memory {
            capacity * workers
        } else {
            capacity
        },
    };
    let job_ms = sizes.fair_job_ms;
    with_deployment(env, spec, async |dep| {
        dep.warm_up(WARM_UP).await?;
        let pool = Pool::new(dep.address);
        let a_keys = vec!["tenant-a".to_owned(); big];
        let b_keys: Vec<String> = if small_keys == 1 {
            vec![apart_from("tenant-a"); small_each]
        } else {
            (0..small_keys)
                .flat_map(|k| std::iter::repeat_n(format!("tenant-{k}"), small_each))
                .collect()
        };
        let a_started = now_micros();
        let (a_ids, _) = post(&pool, &a_keys, job_ms).await?;
        let (b_ids, b_posted) = post(&pool, &b_keys, job_ms).await?;
        dep.accepted_total += (a_ids.len() + b_ids.len()) as u64;
        let ideal_s =
            a_ids.len() as f64 * job_ms as f64 / 1000.0 / f64::from(capacity * workers).max(1.0);
        let timeout = Duration::from_secs_f64(ideal_s * 4.0) + Duration::from_secs(60);
        drain(
            &dep.db,
            dep.accepted_total,
            timeout,
            &format!("{} fairness {case} × {workers}", backend.name()),
        )
        .await?;
        let rows = dep.db.rows_since(a_started).await?;
        let a: HashSet<Uuid> = a_ids.iter().copied().collect();
        let b: HashSet<Uuid> = b_ids.iter().copied().collect();
        let mut b_waits: Vec<i64> = rows
            .iter()
            .filter(|r| b.contains(&r.id))
            .map(|r| r.finished_us - b_posted)
            .collect();
        b_waits.sort_unstable();
        let a_last = rows
            .iter()
            .filter(|r| a.contains(&r.id))
            .map(|r| r.finished_us)
            .max()
            .unwrap_or(a_started);
        let a_stored = rows.iter().filter(|r| a.contains(&r.id)).count();
        let a_drain_s = (a_last - a_started) as f64 / 1e6;
        Ok(FairnessRow {
            backend: backend.name().to_owned(),
            case: case.to_owned(),
            workers,
            capacity,
            job_ms,
            big: a_ids.len() as u64,
            small: b_ids.len() as u64,
            small_keys: small_keys as u64,
            small_wait_p50_ms: quantile_ms(&b_waits, 0.5),
            small_wait_max_ms: quantile_ms(&b_waits, 1.0),
            big_drain_vs_ideal: a_drain_s / ideal_s.max(1e-9),
            lost: (a_ids.len() + b_ids.len()).saturating_sub(a_stored + b_waits.len()) as u64,
        })
    })
    .await
}

/// Scenario 8 on `backend` (see the module docs).
pub async fn fairness(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<Vec<FairnessRow>> {
    let mut out = Vec::new();
    for workers in [1, 3] {
        let row = run(
            env,
            sizes,
            backend,
            "a-then-b",
            workers,
            sizes.fair_big * usize::from(workers),
            1,
            10,
        )
        .await?;
        eprintln!(
            "    → {} × {workers}: B p50 {:.0} ms, max {:.0} ms; A drain {:.2}× ideal; lost {}",
            backend.name(),
            row.small_wait_p50_ms,
            row.small_wait_max_ms,
            row.big_drain_vs_ideal,
            row.lost
        );
        out.push(row);
    }
    let row = run(
        env,
        sizes,
        backend,
        "many-keys",
        1,
        sizes.fair_many_big,
        sizes.fair_many_keys,
        1,
    )
    .await?;
    eprintln!(
        "    → {} many keys: p50 {:.0} ms, max {:.0} ms; big key drain {:.2}× ideal; lost {}",
        backend.name(),
        row.small_wait_p50_ms,
        row.small_wait_max_ms,
        row.big_drain_vs_ideal,
        row.lost
    );
    out.push(row);
    Ok(out)
}
