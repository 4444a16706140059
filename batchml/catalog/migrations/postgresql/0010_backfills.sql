-- PostgreSQL dialect of duckdb/0010_backfills.sql.
-- Backfills: past inputs scored again by a chosen model into a new output version. Earlier
-- outputs stay; the current output of an input is its latest scored one (current_outputs).
CREATE TABLE backfills (
    backfill_id   VARCHAR PRIMARY KEY,
    model_ref     VARCHAR NOT NULL,       -- as asked: NAME@ALIAS, NAME/VERSION, a run id
    model_run_id  VARCHAR NOT NULL,       -- what it resolved to when created (kept on resume)
    model_name    VARCHAR,
    model_version INTEGER,
    since         TIMESTAMPTZ NOT NULL,   -- files discovered in [since, until)
    until         TIMESTAMPTZ,
    source        VARCHAR NOT NULL,       -- the source's URI prefix ('' : any)
    status        VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    running_key   VARCHAR UNIQUE,         -- set while running: one unfinished backfill per ask
    files         INTEGER NOT NULL DEFAULT 0,
    scored        INTEGER NOT NULL DEFAULT 0,
    missing       INTEGER NOT NULL DEFAULT 0,
    quarantined   INTEGER NOT NULL DEFAULT 0,
    failed        INTEGER NOT NULL DEFAULT 0,
    rows          BIGINT NOT NULL DEFAULT 0,
    created_at    TIMESTAMPTZ NOT NULL,
    created_by    VARCHAR,
    updated_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ
);

-- Each input of a backfill, claimed exactly once under it (claims with leases, like files).
CREATE TABLE backfill_files (
    backfill_id      VARCHAR NOT NULL,
    file_id          VARCHAR NOT NULL,
    source_uri       VARCHAR NOT NULL,
    etag             VARCHAR,
    size             BIGINT,
    mtime            TIMESTAMPTZ,
    state            VARCHAR NOT NULL CHECK (state IN
                       ('pending', 'claimed', 'scored', 'missing', 'quarantined', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            VARCHAR,
    claimed_by       VARCHAR,
    lease_expires_at TIMESTAMPTZ,
    batch_id         VARCHAR,
    output_uri       VARCHAR,
    rows             BIGINT,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (backfill_id, file_id)
);

ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS backfill_id VARCHAR;
ALTER TABLE batch_files ADD COLUMN IF NOT EXISTS backfill_id VARCHAR;

-- Every scored output of every input, numbered per input in the order they were recorded.
CREATE OR REPLACE VIEW output_history AS
SELECT bf.file_id, bf.source_uri, bf.output_uri, bf.model_run_id, bf.batch_id,
       bf.backfill_id, bf.rows, bf.positives, bf.finished_at,
       row_number() OVER (PARTITION BY bf.file_id ORDER BY bf.finished_at, bf.batch_id)
           AS output_version,
       row_number() OVER (PARTITION BY bf.file_id
                          ORDER BY bf.finished_at DESC, bf.batch_id DESC) = 1 AS is_current,
       substring(bf.output_uri from '[^/]+/[^/]+$') AS output_key
FROM batch_files bf
WHERE bf.status = 'scored' AND bf.output_uri IS NOT NULL;

-- The output each input reads as now: its latest scored one.
CREATE OR REPLACE VIEW current_outputs AS
SELECT file_id, source_uri, output_uri, output_version, model_run_id, batch_id, backfill_id,
       rows, positives, finished_at
FROM output_history WHERE is_current;

-- Outputs no longer current (their key, OUTBOX-relative: <model run>/<name>.parquet): the
-- predictions view leaves them out; predictions_history has every version.
CREATE OR REPLACE VIEW superseded_outputs AS
SELECT DISTINCT output_key FROM output_history
WHERE NOT is_current AND output_key IS NOT NULL
  AND output_key NOT IN (SELECT output_key FROM output_history
                         WHERE is_current AND output_key IS NOT NULL);

