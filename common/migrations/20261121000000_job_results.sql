-- One row per job, written by the worker in the same commit that precedes the ack.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS job_results (
    job_id          TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,          -- succeeded | dead
    result          TEXT,                   -- JSON, when succeeded
    error           TEXT,                   -- last error, when dead
    attempts        BIGINT NOT NULL,        -- attempt that settled the job (1-based)
    deliveries      BIGINT NOT NULL DEFAULT 1, -- times a terminal result was written (>1: redelivered)
    worker          TEXT NOT NULL,
    enqueued_at_us  BIGINT NOT NULL,
    started_at_us   BIGINT NOT NULL,
    finished_at_us  BIGINT NOT NULL
);
