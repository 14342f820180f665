-- Operating Surge after a bad deploy: GET /jobs lists jobs by status (and kind, and since a
-- time) newest first, one page at a time (keyset: time, then job id), and POST /jobs/replay
-- picks dead jobs the same way. Each filter is served by an index range read in order, never
-- a table scan (measured at 1,000,000 rows; see common/tests/listing.rs).
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).

-- Finished jobs (succeeded | dead | cancelled) by status, optionally by kind.
CREATE INDEX IF NOT EXISTS job_results_status_finished
    ON job_results (status, finished_at_us, job_id);
CREATE INDEX IF NOT EXISTS job_results_status_kind_finished
    ON job_results (status, kind, finished_at_us, job_id);
-- Finished jobs of one kind, whatever their status.
CREATE INDEX IF NOT EXISTS job_results_kind_finished
    ON job_results (kind, finished_at_us, job_id);
-- Jobs not finished yet (queued | running | retrying | waiting), by stage, optionally by kind.
CREATE INDEX IF NOT EXISTS job_status_status_updated
    ON job_status (status, updated_at_us, job_id);
CREATE INDEX IF NOT EXISTS job_status_status_kind_updated
    ON job_status (status, kind, updated_at_us, job_id);
