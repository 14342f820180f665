-- Per-key limits of HTTP kinds (`concurrency_per_key`, `rate_per_key`), shared by every
-- worker replica through the results database (common/src/storage/dispatch_keys.rs).
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
-- `key_hash` is the SHA-256 (hex) of the job's fairness key: fixed length, whatever the key.
-- Neither table grows with jobs or keys: a row lives while it means something, and the
-- expired ones are deleted by the workers' sweeps and the ingress's retention pass.

-- Concurrency: a row per slot HELD (slot < concurrency_per_key); none for a free slot.
-- Released by deleting the row (only by its holder); a crashed holder's row is taken over
-- once its lease ran out, or deleted.
CREATE TABLE IF NOT EXISTS dispatch_key_slots (
    kind            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,
    slot            BIGINT NOT NULL,
    holder          TEXT NOT NULL,          -- random token of the acquisition
    lease_until_us  BIGINT NOT NULL,        -- µs since the epoch (database clock)
    PRIMARY KEY (kind, key_hash, slot)
);
CREATE INDEX IF NOT EXISTS dispatch_key_slots_lease
    ON dispatch_key_slots (lease_until_us);

-- Rate: one GCRA row per (kind, key) while its theoretical arrival time is ahead; a row
-- whose time has passed means the same as no row and is deleted.
CREATE TABLE IF NOT EXISTS dispatch_key_rate (
    kind            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,
    tat_us          BIGINT NOT NULL,        -- µs since the epoch (database clock)
    PRIMARY KEY (kind, key_hash)
);
CREATE INDEX IF NOT EXISTS dispatch_key_rate_tat
    ON dispatch_key_rate (tat_us);

-- Paused keys: a 429/503 with Retry-After on a kind with per-key limits pauses only the key
-- of the job that drew it, until `until_us`. A row per key while its pause runs; an ended
-- one is deleted like the others.
CREATE TABLE IF NOT EXISTS dispatch_key_pauses (
    kind            TEXT NOT NULL,
    key_hash        TEXT NOT NULL,
    until_us        BIGINT NOT NULL,        -- µs since the epoch (database clock)
    PRIMARY KEY (kind, key_hash)
);
CREATE INDEX IF NOT EXISTS dispatch_key_pauses_until
    ON dispatch_key_pauses (until_us);
