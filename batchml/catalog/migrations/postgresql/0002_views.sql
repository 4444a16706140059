-- PostgreSQL dialect of duckdb/0002_views.sql: the views a person reads from psql (or from
-- DuckDB with the postgres extension), same names and columns.
CREATE OR REPLACE VIEW current_tags AS
SELECT t.run_id, r.flow, t.tag, t.added_at, t.note
FROM tags t JOIN runs r USING (run_id)
WHERE t.removed_at IS NULL;

CREATE OR REPLACE VIEW tag_history AS
SELECT t.run_id, t.tag, t.added_at, t.removed_at, t.note,
       CASE WHEN t.removed_at IS NULL THEN 'current' ELSE 'removed' END AS state
FROM tags t;

CREATE OR REPLACE VIEW runs_overview AS
SELECT r.run_id, r.flow, r.status, r.started_at, r.ended_at,
       round((extract(epoch FROM r.ended_at) - extract(epoch FROM r.started_at))::numeric, 3)
           ::double precision AS seconds,
       (SELECT m.name || ' (' || m.flavor || ')' FROM models m
         WHERE m.run_id = r.run_id AND m.is_primary) AS model,
       max(CASE WHEN x.key = 'accuracy' THEN x.value END) AS accuracy,
       max(CASE WHEN x.key = 'roc_auc' THEN x.value END) AS roc_auc,
       max(CASE WHEN x.key = 'f1' THEN x.value END) AS f1,
       max(CASE WHEN x.key = 'log_loss' THEN x.value END) AS log_loss,
       (SELECT string_agg(t.tag, ', ' ORDER BY t.tag) FROM tags t
         WHERE t.run_id = r.run_id AND t.removed_at IS NULL) AS tags,
       r.error
FROM runs r LEFT JOIN metrics x ON x.run_id = r.run_id AND x.step = 0
GROUP BY r.run_id
ORDER BY r.started_at DESC;

CREATE OR REPLACE VIEW file_status AS
SELECT f.source_uri, f.state, f.attempts, f.rows, f.model_run_id, f.output_uri,
       f.error, f.claimed_by, f.lease_expires_at, f.discovered_at, f.updated_at, f.file_id
FROM files f
ORDER BY f.updated_at DESC;

CREATE OR REPLACE VIEW prediction_outputs AS
SELECT bf.source_uri, bf.output_uri, bf.model_run_id, m.flavor AS model_flavor,
       bf.rows, bf.positives, bf.status, bf.error, bf.duration_ms, bf.reprocess,
       bf.finished_at, bf.batch_id, bf.file_id
FROM batch_files bf
LEFT JOIN models m ON m.run_id = bf.model_run_id AND m.is_primary
ORDER BY bf.finished_at DESC;
