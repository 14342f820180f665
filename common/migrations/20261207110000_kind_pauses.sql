-- Paused kinds (common/src/storage/pauses.rs): a kind with a row whose pause has not
-- ended is not dispatched by any worker replica; its jobs wait in the broker, no attempt
-- used. Set by the target (a 429/503 with Retry-After) or by an operator
-- (POST /kinds/{name}/pause). One row per kind at most: nothing grows without bound.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS kind_pauses (
    kind             TEXT PRIMARY KEY,
    paused_until_us  BIGINT,                -- µs since the epoch; NULL = until resumed
    reason           TEXT NOT NULL,
    source           TEXT NOT NULL,         -- 'target' or 'operator'
    set_at_us        BIGINT NOT NULL
);
