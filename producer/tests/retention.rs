//! Retention through the ingress on SQLite and PostgreSQL: with `--retain-succeeded 1s` a
//! finished job is pruned (its `GET` turns 404) and the pruner counts it on `/metrics`,
//! while a job kept forever (`--retain-dead 0`) stays; a bad window is refused at start,
//! naming the flag.

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::testing::{self};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;

async fn scenario(database_url: &str) {
    let args = ProducerArgs::try_parse_from([
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--retain-succeeded",
        "1s",
        "--retain-dead",
        "0",
    ])
    .unwrap();
    let ingress = Ingress::build(&args).await.unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let submitted: Value = http
        .post(format!("{base}/jobs"))
        .json(&json!({"kind": "echo", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().expect("an id").to_owned();
    let job: Value = http
        .get(format!("{base}/jobs/{id}?wait=30"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");

    // Pruned once older than a second: the pruner runs every second with this window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = http.get(format!("{base}/jobs/{id}")).send().await.unwrap();
        let status = response.status().as_u16();
        if status == 404 {
            break;
        }
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the succeeded job was never pruned: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pass counts what it pruned after its delete commits: the 404 can come first.
    let metrics = loop {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let counted = metrics
            .lines()
            .any(|l| l.starts_with("surge_storage_pruned_rows_total{what=\"succeeded\"}"));
        if counted {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pruned job was never counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("surge_storage_oldest_result_seconds"),
        "{metrics}"
    );
    for state in ["scheduled", "queued", "succeeded", "dead", "cancelled"] {
        let series = format!("surge_storage_jobs{{state=\"{state}\"}} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&series)),
            "{series}missing: {metrics}"
        );
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

#[test]
fn bad_windows_are_refused_naming_the_flag() {
    for bad in ["24", "1w", "-1h", "1.5d"] {
        let flag = format!("--retain-succeeded={bad}");
        let error = ProducerArgs::try_parse_from(["surge-producer", flag.as_str()])
            .expect_err(bad)
            .to_string();
        assert!(error.contains("--retain-succeeded"), "{bad}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    scenario(&testing::temp_sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    scenario(&url).await;
}
