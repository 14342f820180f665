-- Recurring jobs (`[schedules.NAME]` in the config file; common/src/storage/recurring.rs).
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).

-- One row per schedule and tick, written in the same transaction as the tick's job
-- (a scheduled_jobs row, published by the ingress's scheduler): whichever ingress replica
-- inserts the row first owns the tick; the others' inserts do nothing. So a tick has one
-- job however many replicas compute it. `manual` rows are jobs triggered by hand
-- (POST /schedules/{name}/trigger), their `tick_us` the moment of the trigger.
-- Pruned past the schedule's catch-up window, always keeping each schedule's latest rows.
CREATE TABLE IF NOT EXISTS schedule_ticks (
    schedule        TEXT NOT NULL,
    manual          BIGINT NOT NULL,        -- 0 a tick of the pattern, 1 a trigger
    tick_us         BIGINT NOT NULL,        -- µs since the epoch
    job_id          TEXT NOT NULL,          -- derived from the schedule and tick (UUIDv5)
    recorded_at_us  BIGINT NOT NULL,
    PRIMARY KEY (schedule, manual, tick_us)
);

-- Paused schedules, shared by every ingress replica. A schedule without a row runs.
-- `changed_at_us` of a resumed schedule: ticks before it are not caught up.
CREATE TABLE IF NOT EXISTS schedule_state (
    schedule        TEXT PRIMARY KEY,
    paused          BIGINT NOT NULL,        -- 1 paused, 0 running
    changed_at_us   BIGINT NOT NULL
);
