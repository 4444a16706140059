-- PostgreSQL dialect of duckdb/0001_initial.sql: the same tables, columns and meanings.
-- Runs are facts: once ended they do not change. Ids are path-like: "<flow>/<number>".
CREATE TABLE runs (
    run_id              VARCHAR PRIMARY KEY,
    flow                VARCHAR NOT NULL,
    number              BIGINT NOT NULL,
    status              VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    started_at          TIMESTAMPTZ NOT NULL,
    ended_at            TIMESTAMPTZ,
    params              JSONB NOT NULL DEFAULT '{}',
    error               VARCHAR,
    prefect_flow_run_id VARCHAR,
    code_fingerprint    VARCHAR,
    data_fingerprint    VARCHAR
);
CREATE UNIQUE INDEX runs_flow_number ON runs (flow, number);

-- The last number given to a run of each flow: numbering takes this row's lock, so two hosts
-- starting runs at once get consecutive numbers without a table lock (DuckDB has no need:
-- its writes are serialised).
CREATE TABLE run_numbers (
    flow        VARCHAR PRIMARY KEY,
    last_number BIGINT NOT NULL
);

CREATE TABLE metrics (
    run_id      VARCHAR NOT NULL,
    key         VARCHAR NOT NULL,
    value       DOUBLE PRECISION,
    step        BIGINT NOT NULL DEFAULT 0,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

-- Tags are opinions that change: a row per time a tag was put on a run; removing sets removed_at.
CREATE SEQUENCE tag_seq;
CREATE TABLE tags (
    tag_id     BIGINT PRIMARY KEY DEFAULT nextval('tag_seq'),
    run_id     VARCHAR NOT NULL,
    tag        VARCHAR NOT NULL,
    added_at   TIMESTAMPTZ NOT NULL,
    removed_at TIMESTAMPTZ,
    note       VARCHAR
);
CREATE INDEX tags_run ON tags (run_id);
CREATE INDEX tags_tag ON tags (tag);
-- A run carries a tag at most once at a time.
CREATE UNIQUE INDEX tags_one_current ON tags (run_id, tag) WHERE removed_at IS NULL;
-- The latest tagged run of a flow, newest number first, without reading other runs (flow
-- names cannot contain '/').
CREATE INDEX tags_current_by_number ON tags
    (tag, split_part(run_id, '/', 1), (split_part(run_id, '/', 2)::BIGINT) DESC)
    WHERE removed_at IS NULL;

CREATE TABLE artifacts (
    run_id     VARCHAR NOT NULL,
    name       VARCHAR NOT NULL,
    uri        VARCHAR NOT NULL,
    sha256     VARCHAR NOT NULL,
    bytes      BIGINT NOT NULL,
    kind       VARCHAR NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE models (
    run_id     VARCHAR NOT NULL,
    name       VARCHAR NOT NULL,
    flavor     VARCHAR NOT NULL,
    signature  JSONB NOT NULL,
    artifact   VARCHAR NOT NULL,
    is_primary BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, name)
);

-- The input-file ledger: one row per file identity (URI + etag/size/mtime).
CREATE TABLE files (
    file_id          VARCHAR PRIMARY KEY,
    source_uri       VARCHAR NOT NULL,
    etag             VARCHAR,
    size             BIGINT,
    mtime            TIMESTAMPTZ,
    state            VARCHAR NOT NULL CHECK (state IN
                       ('discovered', 'claimed', 'scored', 'quarantined', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            VARCHAR,
    claimed_by       VARCHAR,
    claimed_at       TIMESTAMPTZ,
    lease_expires_at TIMESTAMPTZ,
    discovered_at    TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    model_run_id     VARCHAR,
    batch_id         VARCHAR,
    output_uri       VARCHAR,
    rows             BIGINT
);
CREATE INDEX files_state ON files (state);
CREATE INDEX files_source ON files (source_uri);
-- What claims read: the waiting files in claim order.
CREATE INDEX files_claimable ON files (discovered_at, source_uri)
    WHERE state IN ('discovered', 'claimed');

CREATE TABLE prediction_batches (
    batch_id            VARCHAR PRIMARY KEY,
    model_run_id        VARCHAR,
    status              VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    started_at          TIMESTAMPTZ NOT NULL,
    ended_at            TIMESTAMPTZ,
    files               INTEGER NOT NULL DEFAULT 0,
    rows                BIGINT NOT NULL DEFAULT 0,
    duration_ms         DOUBLE PRECISION,
    error               VARCHAR,
    prefect_flow_run_id VARCHAR
);

-- One row per (batch, file) attempt: the lineage of every output ever written.
CREATE TABLE batch_files (
    batch_id     VARCHAR NOT NULL,
    file_id      VARCHAR NOT NULL,
    source_uri   VARCHAR NOT NULL,
    model_run_id VARCHAR,
    status       VARCHAR NOT NULL CHECK (status IN ('scored', 'quarantined', 'failed')),
    output_uri   VARCHAR,
    rows         BIGINT,
    positives    BIGINT,
    duration_ms  DOUBLE PRECISION,
    error        VARCHAR,
    reprocess    BOOLEAN NOT NULL DEFAULT false,
    finished_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, file_id)
);
