-- The cross-replica `concurrency` of each HTTP kind, recorded once so that replicas started
-- with a different value are refused (or, when no slot of the kind is held, adopted
-- explicitly) instead of silently resizing the slot rows under each other.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS dispatch_kinds (
    kind         TEXT PRIMARY KEY,
    concurrency  BIGINT NOT NULL
);

-- A database from before this table: the slot rows already say each kind's size.
INSERT INTO dispatch_kinds (kind, concurrency)
SELECT kind, COUNT(*) FROM dispatch_slots WHERE 1 = 1 GROUP BY kind  -- WHERE: SQLite's upsert parsing
ON CONFLICT (kind) DO NOTHING;
