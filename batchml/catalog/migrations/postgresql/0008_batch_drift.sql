-- Drift per batch (batchml/drift.py): one row per metric of each input feature and of the
-- score, measured against the model's training reference while the batch was scored.
CREATE TABLE IF NOT EXISTS batch_drift (
    batch_id      VARCHAR NOT NULL,
    feature       VARCHAR NOT NULL,       -- an input column, or score:<class>
    metric        VARCHAR NOT NULL,       -- psi | js | length_psi | oov_rate | token_js
    kind          VARCHAR NOT NULL,       -- numeric | categorical | text | score
    files         INTEGER NOT NULL,       -- files of the batch counted
    rows          BIGINT NOT NULL,
    model_run_id  VARCHAR,
    model_name    VARCHAR,
    model_version BIGINT,
    value         DOUBLE PRECISION,
    threshold     DOUBLE PRECISION,
    alert         BOOLEAN NOT NULL,
    note          VARCHAR,                -- all missing, constant, too few rows ...
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, feature, metric)
);

-- Drift as people read it: newest batch first, its alerts first.
CREATE OR REPLACE VIEW batch_drift_overview AS
SELECT d.created_at, d.batch_id,
       coalesce(d.model_name || '/' || CAST(d.model_version AS VARCHAR), d.model_run_id)
           AS model,
       d.feature, d.kind, d.metric, round(CAST(d.value AS NUMERIC), 4) AS value, d.threshold, d.alert, d.note,
       d.files, d.rows, b.started_at AS batch_started_at
FROM batch_drift d LEFT JOIN prediction_batches b ON b.batch_id = d.batch_id
ORDER BY d.created_at DESC, d.batch_id, d.alert DESC, d.feature, d.metric;
