//! Recurring jobs in the database, on SQLite and PostgreSQL: of many concurrent records of
//! one tick exactly one wins and stores the tick's job (scheduled, due, claimable once);
//! pauses are shared; pruning keeps each schedule's latest tick and trigger.

use serde_json::json;
use surge_common::job::Job;
use surge_common::storage::Storage;
use surge_common::testing::{self};
use uuid::Uuid;

const SECOND: i64 = 1_000_000;

fn job(id: Uuid) -> Job {
    let mut job = Job::new("echo", json!({"n": 1}), None);
    job.id = id;
    job
}

async fn behaves(storage: Storage) {
    let tick = 1_800_000_000 * SECOND;
    let id = Uuid::new_v4();
    // Sixteen concurrent records of one tick (as from sixteen replicas): one wins.
    let won = futures::future::join_all((0..16).map(|_| {
        let storage = storage.clone();
        async move {
            storage
                .record_tick("nightly", tick, false, &job(id))
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    // Its job is due at once, claimed once.
    let claimed = storage.claim_due(60 * SECOND, 100).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    assert!(storage
        .claim_due(60 * SECOND, 100)
        .await
        .unwrap()
        .is_empty());
    // A trigger at the same instant is another row.
    let trigger = Uuid::new_v4();
    assert!(storage
        .record_tick("nightly", tick, true, &job(trigger))
        .await
        .unwrap());
    let cursors = storage.schedule_cursors().await.unwrap();
    assert_eq!(
        cursors["nightly"].last_tick_us,
        Some(tick),
        "triggers are not ticks"
    );
    assert!(!cursors["nightly"].paused);

    // Paused for everyone; resuming records when.
    storage.set_schedule_paused("nightly", true).await.unwrap();
    storage.set_schedule_paused("nightly", true).await.unwrap();
    let paused = storage.schedule_cursors().await.unwrap()["nightly"].clone();
    assert!(paused.paused);
    storage.set_schedule_paused("nightly", false).await.unwrap();
    let resumed = storage.schedule_cursors().await.unwrap()["nightly"].clone();
    assert!(!resumed.paused);
    assert!(resumed.changed_at_us >= paused.changed_at_us);

    // Later ticks; pruning before the last keeps the latest tick and the latest trigger.
    for n in 1..=5 {
        assert!(storage
            .record_tick("nightly", tick + n * SECOND, false, &job(Uuid::new_v4()))
            .await
            .unwrap());
    }
    let removed = storage
        .prune_ticks("nightly", tick + 10 * SECOND)
        .await
        .unwrap();
    assert_eq!(removed, 5, "five older ticks; the only trigger stays");
    let left = storage.schedule_ticks("nightly", 0, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, tick + 5 * SECOND);
    let last = storage.last_schedule_job("nightly").await.unwrap().unwrap();
    assert_eq!((last.id, last.manual), (left[0].1, false));
    assert_eq!(last.status, "scheduled");
    assert!(storage.last_schedule_job("other").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    behaves(Storage::connect(&testing::temp_sqlite_url()).await.unwrap()).await;
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
    behaves(Storage::connect(&url).await.unwrap()).await;
}
