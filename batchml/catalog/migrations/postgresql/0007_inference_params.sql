-- Inference parameters (batchml/params.py): the values a batch was scored with, resolved over
-- the model's defaults and the deployment, inbox settings and batch overrides, as JSON text
-- (keys sorted). NULL for batches scored before parameters existed.
ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS params TEXT;

-- the readable view of outputs shows them beside each file (the column appended last)
CREATE OR REPLACE VIEW prediction_outputs AS
SELECT bf.source_uri, bf.output_uri, bf.model_run_id, m.flavor AS model_flavor,
       bf.rows, bf.positives, bf.status, bf.error, bf.duration_ms, bf.reprocess,
       bf.finished_at, bf.batch_id, bf.file_id, b.params
FROM batch_files bf
LEFT JOIN models m ON m.run_id = bf.model_run_id AND m.is_primary
LEFT JOIN prediction_batches b ON b.batch_id = bf.batch_id
ORDER BY bf.finished_at DESC;
