//! A process refuses a database migrated by a newer Surge, with a message that says what to
//! do, on SQLite and PostgreSQL: without the check sqlx's own error ("migration … was
//! previously applied but is missing in the resolved migrations") named no cause or remedy.

use surge_common::storage::{Storage, StorageError};
use surge_common::testing;

/// A migration version no build of today has.
const FUTURE: i64 = 99_991_231_000_000;

async fn refuses_a_newer_schema(url: &str) {
    let storage = Storage::connect(url).await.unwrap();
    // What a newer build leaves in sqlx's bookkeeping after migrating.
    sqlx::query(
        "INSERT INTO _sqlx_migrations \
           (version, description, success, checksum, execution_time) \
         VALUES ($1, 'from a newer surge', TRUE, $2, 0)",
    )
    .bind(FUTURE)
    .bind(vec![0u8; 48])
    .execute(storage.pool())
    .await
    .unwrap();
    storage.pool().close().await;

    let Err(refused) = Storage::connect(url).await else {
        panic!("a database migrated by a newer Surge was accepted");
    };
    assert!(
        matches!(refused, StorageError::NewerSchema { version } if version == FUTURE),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(message.contains("newer Surge"), "{message}");
    assert!(message.contains(&FUTURE.to_string()), "{message}");
    assert!(message.contains("Upgrades"), "{message}");
}

#[tokio::test]
async fn sqlite() {
    refuses_a_newer_schema(&testing::temp_sqlite_url()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    refuses_a_newer_schema(&url).await;
}
