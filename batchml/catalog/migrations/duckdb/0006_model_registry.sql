-- The model registry: named models, numbered versions (each one training run's model),
-- aliases moved by compare-and-set, and every alias move kept (alias_moves; the alias_history
-- view adds when each holder was replaced). A prediction batch records the registered model,
-- version and alias it resolved, so "what was champion at T and what did it score" is a join.
CREATE TABLE IF NOT EXISTS registered_models (
    name        VARCHAR PRIMARY KEY,
    description VARCHAR,
    tags        JSON NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS model_versions (
    name        VARCHAR NOT NULL,
    version     BIGINT NOT NULL,
    run_id      VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,        -- the run's model (its primary one when registered)
    description VARCHAR,
    created_at  TIMESTAMPTZ NOT NULL,
    created_by  VARCHAR,
    deleted_at  TIMESTAMPTZ,             -- a deleted version keeps its number and history
    PRIMARY KEY (name, version)
);

CREATE TABLE IF NOT EXISTS model_aliases (
    name     VARCHAR NOT NULL,
    alias    VARCHAR NOT NULL,
    version  BIGINT NOT NULL,
    seq      BIGINT NOT NULL,            -- the alias_moves row that set it
    moved_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, alias)
);

CREATE TABLE IF NOT EXISTS alias_moves (
    name         VARCHAR NOT NULL,
    alias        VARCHAR NOT NULL,
    seq          BIGINT NOT NULL,        -- 1, 2, 3 ... per alias
    from_version BIGINT,                 -- NULL: the alias was not set
    to_version   BIGINT,                 -- NULL: the alias was removed
    moved_at     TIMESTAMPTZ NOT NULL,
    moved_by     VARCHAR NOT NULL,       -- user@host
    reason       VARCHAR,
    PRIMARY KEY (name, alias, seq)
);

ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS model_name VARCHAR;
ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS model_version BIGINT;
ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS model_alias VARCHAR;

-- Every alias move with the period its version held the alias: valid_to is the next move
-- (NULL while it still holds it).
CREATE OR REPLACE VIEW alias_history AS
SELECT m.name, m.alias, m.seq, m.from_version, m.to_version, v.run_id,
       m.moved_at AS valid_from,
       lead(m.moved_at) OVER (PARTITION BY m.name, m.alias ORDER BY m.seq) AS valid_to,
       m.moved_by, m.reason
FROM alias_moves m
LEFT JOIN model_versions v ON v.name = m.name AND v.version = m.to_version;

-- One row per version: its run, the run's status, the aliases it holds now.
CREATE OR REPLACE VIEW model_registry AS
SELECT v.name, v.version, v.run_id, v.model, r.status AS run_status, v.created_at,
       v.created_by, v.description, v.deleted_at,
       (SELECT string_agg(a.alias, ',' ORDER BY a.alias) FROM model_aliases a
        WHERE a.name = v.name AND a.version = v.version) AS aliases
FROM model_versions v
LEFT JOIN runs r ON r.run_id = v.run_id;

CREATE INDEX IF NOT EXISTS model_versions_by_run ON model_versions (run_id);
