-- Stored results per status that finished before a mark, counted by the retention pass
-- (the one ingress holding its lease). The dashboard's totals add a range count of the
-- rows at or after the mark (index `job_results_finished_at`) instead of counting the
-- whole table on every refresh. Every row of one count carries the same `below_us`.
CREATE TABLE IF NOT EXISTS result_counts (
    status    TEXT PRIMARY KEY,
    rows      BIGINT NOT NULL,
    below_us  BIGINT NOT NULL
);
