//! The 400-against-200 burst keeps its promises on every backend: all accepted, never more
//! than the capacity in flight, every accepted job persisted exactly once.
//! (How fast is the benchmark's business; these tests assert no timing.)

use std::sync::Arc;
use std::time::Duration;

use surge_benches::burst::{self, BurstConfig};
use surge_benches::report::BurstReport;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};

fn config() -> BurstConfig {
    BurstConfig::sleep(400, 200, 2, 300, Duration::from_secs(120))
}

fn assert_kept_promises(report: &BurstReport) {
    println!("{report}");
    assert_eq!(report.accepted, 400, "{report}");
    assert_eq!(report.not_accepted(), 0, "{report}");
    assert_eq!(report.persisted, 400, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicates, 0, "{report}");
    assert!(report.peak_in_flight <= 200, "{report}");
    // The burst exceeds the capacity, so the workers must have run at it.
    assert!(report.peak_in_flight_gauge >= 100, "{report}");
    assert!(report.violations().is_empty(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_on_the_embedded_default() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let report = burst::run(Arc::new(MemoryBroker::new()), storage, &config())
        .await
        .unwrap();
    assert_kept_promises(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn burst_on_rabbitmq_and_postgres() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let broker = Arc::new(
        RabbitMqBroker::connect(&amqp, &testing::unique_name("burst"))
            .await
            .unwrap(),
    );
    let report = burst::run(broker.clone(), storage, &config())
        .await
        .unwrap();
    broker.delete_topology().await.unwrap();
    assert_kept_promises(&report);
}
