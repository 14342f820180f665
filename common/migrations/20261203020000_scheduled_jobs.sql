-- Jobs scheduled for later (`delay_ms` / `run_at`): they wait here, not in the broker, until
-- due; the ingress's scheduler publishes them then (see common/src/storage/schedule.rs).
CREATE TABLE IF NOT EXISTS scheduled_jobs (
    job_id           TEXT PRIMARY KEY,
    due_at_us        BIGINT NOT NULL,        -- run no earlier (µs since the epoch)
    job              TEXT NOT NULL,          -- the job's wire encoding
    claimed_until_us BIGINT                  -- a scheduler is publishing it until then
);
CREATE INDEX IF NOT EXISTS scheduled_jobs_due ON scheduled_jobs (due_at_us);
