-- Text values cut to BATCHML_MAX_TEXT_CHARS while a file was scored (BATCHML_TEXT_OVERFLOW=
-- truncate): part of the batch's lineage, so a prediction made on cut text can be found.
ALTER TABLE batch_files ADD COLUMN IF NOT EXISTS truncated_values BIGINT DEFAULT 0;
