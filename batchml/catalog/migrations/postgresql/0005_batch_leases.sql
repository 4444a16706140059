-- Which worker runs a batch, and until when its lease runs: a batch whose worker died (or lost
-- the catalog while recording its end) is closed as failed by the next claim once the lease ran
-- out, or once none of its files is claimed by that worker any more, instead of staying
-- 'running' for ever.
ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS worker VARCHAR;
ALTER TABLE prediction_batches ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ;
