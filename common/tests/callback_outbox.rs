//! The callback outbox on SQLite and PostgreSQL: one callback per outcome (a replayed
//! job's new outcome is queued under a key of its own, a repeat of an outcome is not),
//! and rows queued before the per-outcome table keep working with their old key.

use std::borrow::Cow;

use sqlx::any::AnyPoolOptions;
use surge_common::storage::Storage;
use surge_common::testing::{self};
use uuid::Uuid;

/// The migration that made callbacks per outcome.
const PER_OUTCOME: i64 = 20261207024500;

async fn one_callback_per_outcome(storage: &Storage) {
    let id = Uuid::now_v7();
    let dead = r#"{"id":"x","status":"dead","finished_at_us":1}"#;
    let succeeded = r#"{"id":"x","status":"succeeded","finished_at_us":2}"#;
    storage
        .enqueue_callback(id, "https://hooks.example.com/a", dead)
        .await
        .unwrap();
    // A redelivery of the same outcome queues nothing.
    storage
        .enqueue_callback(id, "https://hooks.example.com/a", dead)
        .await
        .unwrap();
    let claimed = storage.claim_callbacks(60_000_000, 100).await.unwrap();
    let mine: Vec<_> = claimed.iter().filter(|c| c.job_id == id).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].key, format!("{id}:1"));
    storage.callback_delivered(&mine[0].key).await.unwrap();
    // The replayed run's outcome is a callback of its own, even once the first was
    // delivered.
    storage
        .enqueue_callback(id, "https://hooks.example.com/a", succeeded)
        .await
        .unwrap();
    storage
        .enqueue_callback(id, "https://hooks.example.com/a", dead)
        .await
        .unwrap();
    let claimed = storage.claim_callbacks(60_000_000, 100).await.unwrap();
    let mine: Vec<_> = claimed.iter().filter(|c| c.job_id == id).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].key, format!("{id}:2"));
    assert_eq!(mine[0].body, succeeded);
    storage
        .callback_failed(&mine[0].key, "receiver answered 500", 0)
        .await
        .unwrap();
    let states = storage.callbacks_of(id).await.unwrap();
    assert_eq!(states.len(), 2);
    assert!(states[0].delivered);
    assert!(!states[1].delivered);
    assert_eq!(
        states[1].last_error.as_deref(),
        Some("receiver answered 500")
    );
    assert_eq!(storage.callback_state(id).await.unwrap(), Some((false, 1)));
}

/// A database migrated up to before [`PER_OUTCOME`], with one undelivered callback in the
/// old table; then the rest of the migrations (by [`Storage::connect`]).
async fn upgraded_with_an_old_callback(url: &str) -> (Storage, Uuid) {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = Cow::Owned(
        before
            .migrations
            .iter()
            .filter(|m| m.version < PER_OUTCOME)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.unwrap();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO callbacks (job_id, url, body, attempts, next_at_us) \
         VALUES ($1, 'https://hooks.example.com/old', '{\"status\":\"dead\"}', 3, 0)",
    )
    .bind(id.to_string())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    (Storage::connect(url).await.unwrap(), id)
}

async fn old_rows_keep_working(storage: &Storage, id: Uuid) {
    let claimed = storage.claim_callbacks(60_000_000, 100).await.unwrap();
    let old = claimed.iter().find(|c| c.job_id == id).expect("old row");
    // Its key is the one it was (or would have been) sent with: the bare job id.
    assert_eq!(old.key, id.to_string());
    assert_eq!(old.attempts, 3);
    assert_eq!(old.url, "https://hooks.example.com/old");
    storage.callback_delivered(&old.key).await.unwrap();
    // A later outcome of the same job follows it.
    storage
        .enqueue_callback(
            id,
            "https://hooks.example.com/old",
            "{\"status\":\"succeeded\"}",
        )
        .await
        .unwrap();
    let keys: Vec<String> = storage
        .callbacks_of(id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys, [id.to_string(), format!("{id}:2")]);
}

#[tokio::test]
async fn on_sqlite() {
    let url = testing::temp_sqlite_url();
    let (storage, id) = upgraded_with_an_old_callback(&format!("{url}?mode=rwc")).await;
    old_rows_keep_working(&storage, id).await;
    one_callback_per_outcome(&storage).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    let (storage, id) = upgraded_with_an_old_callback(&url).await;
    old_rows_keep_working(&storage, id).await;
    one_callback_per_outcome(&storage).await;
}
