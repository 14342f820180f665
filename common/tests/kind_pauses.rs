//! Paused kinds in the database, on SQLite and PostgreSQL: an operator's pause wins over
//! the target's, a target's pause only lengthens its own, a resume ends any, one row per
//! kind; and a process's cache (`KindPauses`) sees another replica's pause and resume
//! within its refresh, while a pause it records itself holds at once.

use std::time::Duration;

use surge_common::clock::now_micros;
use surge_common::kinds::pause::{KindPauses, MAX_DEFER, REFRESH};
use surge_common::storage::pauses::{KindPause, PauseSource};
use surge_common::storage::Storage;
use surge_common::testing::{self};

const SECOND: i64 = 1_000_000;

fn pause(kind: &str, source: PauseSource, until_us: Option<i64>, now: i64) -> KindPause {
    KindPause {
        kind: kind.to_owned(),
        until_us,
        reason: format!("{} says so", source.as_str()),
        source,
        set_at_us: now,
    }
}

async fn rows(storage: &Storage) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM kind_pauses")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    n
}

/// Polls `condition` every 50 ms for up to `patience`.
async fn eventually(patience: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn behaves(storage: Storage) {
    let now = now_micros();
    assert!(storage.kind_pauses(now).await.unwrap().is_empty());

    // A target's pause, then a longer one of its own; a shorter one does not shorten it.
    let target = pause("thumb", PauseSource::Target, Some(now + 5 * SECOND), now);
    assert!(storage.pause_kind(&target).await.unwrap());
    let longer = pause("thumb", PauseSource::Target, Some(now + 9 * SECOND), now);
    assert!(storage.pause_kind(&longer).await.unwrap());
    let shorter = pause("thumb", PauseSource::Target, Some(now + 2 * SECOND), now);
    assert!(!storage.pause_kind(&shorter).await.unwrap());
    assert_eq!(
        storage.kind_pauses(now).await.unwrap(),
        vec![longer.clone()]
    );

    // The operator's pause (until resumed) replaces it, and a target cannot undo that.
    let operator = pause("thumb", PauseSource::Operator, None, now);
    assert!(storage.pause_kind(&operator).await.unwrap());
    let later = pause("thumb", PauseSource::Target, Some(now + 60 * SECOND), now);
    assert!(!storage.pause_kind(&later).await.unwrap());
    assert_eq!(storage.kind_pauses(now).await.unwrap(), vec![operator]);
    assert_eq!(rows(&storage).await, 1, "one row per kind");

    // An ended pause is not listed, and a target may pause over it.
    let other = pause("resize", PauseSource::Operator, Some(now + SECOND), now);
    assert!(storage.pause_kind(&other).await.unwrap());
    let listed = storage.kind_pauses(now + 2 * SECOND).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>(),
        ["thumb"]
    );
    let after = pause(
        "resize",
        PauseSource::Target,
        Some(now + 10 * SECOND),
        now + 2 * SECOND,
    );
    assert!(storage.pause_kind(&after).await.unwrap());
    assert_eq!(rows(&storage).await, 2);

    // Resume ends any pause; resuming twice is harmless.
    assert!(storage.resume_kind("thumb").await.unwrap());
    assert!(!storage.resume_kind("thumb").await.unwrap());
    assert!(storage.resume_kind("resize").await.unwrap());
    assert!(storage.kind_pauses(now).await.unwrap().is_empty());
    assert_eq!(rows(&storage).await, 0);

    // The cache: another replica's pause is seen within the refresh, its resume too.
    let cache = KindPauses::new(storage.clone());
    assert!(cache.deferral("thumb").await.is_none());
    let now = now_micros();
    storage
        .pause_kind(&pause("thumb", PauseSource::Operator, None, now))
        .await
        .unwrap();
    let patience = REFRESH * 3;
    assert!(
        eventually(patience, async || cache.deferral("thumb").await.is_some()).await,
        "the cache never saw the operator's pause"
    );
    let (after, reason) = cache.deferral("thumb").await.unwrap();
    assert_eq!(after, MAX_DEFER, "until resumed: deferred the longest");
    assert!(reason.contains("operator"), "{reason}");
    storage.resume_kind("thumb").await.unwrap();
    assert!(
        eventually(patience, async || cache.deferral("thumb").await.is_none()).await,
        "the cache never saw the resume"
    );

    // A pause recorded in this process holds at once, and is stored for the others.
    let now = now_micros();
    cache
        .record(pause(
            "thumb",
            PauseSource::Target,
            Some(now + 5 * SECOND),
            now,
        ))
        .await;
    let (after, _) = cache.deferral("thumb").await.expect("held at once");
    assert!(
        after <= Duration::from_secs(5) && after > Duration::from_secs(3),
        "{after:?}"
    );
    let stored = storage.kind_pauses(now).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].source, PauseSource::Target);
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
