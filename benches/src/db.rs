//! A fresh results database per deployment, and what the benchmark reads back from it.
//!
//! End-to-end latency needs the moment a result was committed, which the schema does not
//! store. The benchmark's own database gets one extra column, `bench_committed_us`, filled
//! by the database itself when the row is inserted: on PostgreSQL a `clock_timestamp()`
//! default (the wall clock at the insert, inside the committing transaction, so at most one
//! group commit before the commit returns); on SQLite an `AFTER INSERT` trigger (SQLite's
//! clock has millisecond resolution). Surge's own code is untouched: it names its columns.

use std::time::Duration;

use anyhow::Context;
use sqlx::Row as _;
use surge_common::storage::Storage;
use uuid::Uuid;

/// Which database engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL; fresh databases are created next to this URL's.
    Postgres(String),
    /// A fresh SQLite file in the temp folder.
    Sqlite,
}

impl Engine {
    /// `postgres` or `sqlite`.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Postgres(_) => "postgres",
            Engine::Sqlite => "sqlite",
        }
    }
}

/// One stored result, as the benchmark needs it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The job.
    pub id: Uuid,
    /// Which worker wrote it.
    pub worker: String,
    /// Its kind.
    pub kind: String,
    /// `succeeded` or `dead`.
    pub status: String,
    /// When the handler started (µs since the epoch).
    pub started_us: i64,
    /// When the handler finished.
    pub finished_us: i64,
    /// When the row was inserted (see the module docs).
    pub committed_us: Option<i64>,
    /// Result writes for this job (more than 1: redelivered).
    pub deliveries: i64,
}

/// A database made for one deployment; [`BenchDb::remove`] deletes it.
#[derive(Debug)]
pub struct BenchDb {
    /// Its URL.
    pub url: String,
    engine: Engine,
    storage: Storage,
    /// Whether `bench_pruned` counts the finished rows retention deleted.
    pruned_counted: bool,
}

impl BenchDb {
    /// Creates the database, runs Surge's migrations and adds the commit stamp.
    pub async fn create(engine: &Engine) -> anyhow::Result<BenchDb> {
        BenchDb::create_with(engine, true).await
    }

    /// Creates the database and runs Surge's migrations; adds the commit stamp only when
    /// `stamp` (the database ceiling measures Surge's writes alone).
    pub async fn create_with(engine: &Engine, stamp: bool) -> anyhow::Result<BenchDb> {
        let url = match engine {
            Engine::Postgres(base) => surge_common::testing::fresh_postgres_database(base)
                .await
                .context("creating a PostgreSQL database")?,
            Engine::Sqlite => surge_common::testing::temp_sqlite_url(),
        };
        let storage = Storage::connect(&url)
            .await
            .context("opening the benchmark database")?;
        // The commit stamp: set when a job's row first gets its outcome (an insert of a
        // finished row, or the update that finishes it). And a count of the finished rows
        // retention deleted, so a run with a short `--retain-*` still counts every result
        // (`count`), instead of calling the pruned ones lost.
        let statements: &[&str] = match engine {
            Engine::Postgres(_) => &[
                "ALTER TABLE jobs ADD COLUMN bench_committed_us BIGINT",
                "CREATE FUNCTION bench_commit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.finished_at_us IS NOT NULL AND NEW.bench_committed_us IS NULL THEN \
                 NEW.bench_committed_us := \
                 (floor(extract(epoch FROM clock_timestamp()) * 1000000))::bigint; \
                 END IF; RETURN NEW; END $$",
                "CREATE TRIGGER bench_commit_stamp BEFORE INSERT OR UPDATE ON jobs \
                 FOR EACH ROW EXECUTE FUNCTION bench_commit_stamp()",
                "CREATE TABLE bench_pruned (n BIGINT NOT NULL)",
                "INSERT INTO bench_pruned (n) VALUES (0)",
                "CREATE FUNCTION bench_count_pruned() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN UPDATE bench_pruned SET n = n + (SELECT COUNT(*) FROM gone \
                 WHERE state IN ('succeeded', 'dead', 'cancelled')); RETURN NULL; END $$",
                "CREATE TRIGGER bench_count_pruned AFTER DELETE ON jobs \
                 REFERENCING OLD TABLE AS gone FOR EACH STATEMENT \
                 EXECUTE FUNCTION bench_count_pruned()",
            ],
            Engine::Sqlite => &[
                "ALTER TABLE jobs ADD COLUMN bench_committed_us BIGINT",
                "CREATE TRIGGER bench_commit_stamp AFTER INSERT ON jobs \
                 WHEN NEW.finished_at_us IS NOT NULL BEGIN \
                 UPDATE jobs SET bench_committed_us = \
                 CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER) \
                 WHERE rowid = NEW.rowid; END",
                "CREATE TRIGGER bench_commit_stamp_update AFTER UPDATE OF finished_at_us ON jobs \
                 WHEN NEW.finished_at_us IS NOT NULL AND OLD.finished_at_us IS NULL BEGIN \
                 UPDATE jobs SET bench_committed_us = \
                 CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER) \
                 WHERE rowid = NEW.rowid; END",
                "CREATE TABLE bench_pruned (n BIGINT NOT NULL)",
                "INSERT INTO bench_pruned (n) VALUES (0)",
                "CREATE TRIGGER bench_count_pruned AFTER DELETE ON jobs \
                 WHEN OLD.state IN ('succeeded', 'dead', 'cancelled') BEGIN \
                 UPDATE bench_pruned SET n = n + 1; END",
            ],
        };
        for statement in statements.iter().filter(|_| stamp) {
            sqlx::query(statement)
                .execute(storage.pool())
                .await
                .context("adding the commit stamp")?;
        }
        Ok(BenchDb {
            url,
            engine: engine.clone(),
            storage,
            pruned_counted: stamp,
        })
    }

    /// The Storage handle on it.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Results stored so far: the finished rows, plus those retention has deleted since.
    pub async fn count(&self) -> anyhow::Result<u64> {
        Ok(self.storage.count().await? + self.pruned().await?)
    }

    /// Finished rows retention has deleted (0 when not counted).
    pub async fn pruned(&self) -> anyhow::Result<u64> {
        if !self.pruned_counted {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar("SELECT n FROM bench_pruned")
            .fetch_one(self.storage.pool())
            .await
            .context("reading the pruned-rows count")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Waits until at least `n` results are stored, or `timeout`; returns the count.
    pub async fn wait_for(&self, n: u64, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let count = self.count().await?;
            if count >= n || tokio::time::Instant::now() > deadline {
                return Ok(count);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every stored result whose handler finished at or after `since_us`.
    pub async fn rows_since(&self, since_us: i64) -> anyhow::Result<Vec<Row>> {
        let rows = sqlx::query(
            "SELECT job_id, worker, kind, state AS status, started_at_us, finished_at_us, \
             deliveries, bench_committed_us FROM jobs WHERE finished_at_us >= $1",
        )
        .bind(since_us)
        .fetch_all(self.storage.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("job_id")?;
                Ok(Row {
                    id: Uuid::parse_str(&id)?,
                    worker: r.try_get("worker")?,
                    kind: r.try_get("kind")?,
                    status: r.try_get("status")?,
                    started_us: r.try_get("started_at_us")?,
                    finished_us: r.try_get("finished_at_us")?,
                    committed_us: r.try_get("bench_committed_us")?,
                    deliveries: r.try_get("deliveries")?,
                })
            })
            .collect()
    }

    /// Distinct worker names among the stored results.
    pub async fn workers_seen(&self) -> anyhow::Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT worker FROM jobs WHERE worker IS NOT NULL")
            .fetch_all(self.storage.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("worker")?))
            .collect()
    }

    /// Closes the pool and deletes the database.
    pub async fn remove(self) {
        self.storage.pool().close().await;
        match &self.engine {
            Engine::Postgres(base) => {
                use sqlx::Connection;
                let name = self.url.rsplit('/').next().unwrap_or_default().to_owned();
                if !name.starts_with("surge_test_") {
                    return;
                }
                if let Ok(mut admin) = sqlx::PgConnection::connect(base).await {
                    let _ = sqlx::Executor::execute(
                        &mut admin,
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                    )
                    .await;
                    let _ = admin.close().await;
                }
            }
            Engine::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}
