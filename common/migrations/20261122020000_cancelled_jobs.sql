-- Jobs whose publish failed after the broker may already have stored them: the client got
-- a 503, so the job must never get a result. The result insert skips these ids.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS cancelled_jobs (
    job_id          TEXT PRIMARY KEY,
    cancelled_at_us BIGINT NOT NULL         -- µs since the epoch
);
