-- Flow control for HTTP kinds, shared by every worker replica through the results database.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).

-- Concurrency: `concurrency` rows per kind (slots 0..concurrency-1, written at start-up).
-- A request may be sent only by the holder of a slot; a slot is free when `holder` is NULL
-- or its lease ran out (a crashed worker's slot comes back after the lease).
CREATE TABLE IF NOT EXISTS dispatch_slots (
    kind            TEXT NOT NULL,
    slot            BIGINT NOT NULL,
    holder          TEXT,                   -- random token of the acquisition, NULL when free
    lease_until_us  BIGINT NOT NULL DEFAULT 0, -- µs since the epoch; free after this
    PRIMARY KEY (kind, slot)
);

-- Rate: one GCRA row per kind with a `rate`. `tat_us` is the theoretical arrival time: the
-- earliest moment the next request may start (µs since the epoch).
CREATE TABLE IF NOT EXISTS dispatch_rate (
    kind            TEXT PRIMARY KEY,
    tat_us          BIGINT NOT NULL
);
