-- Late labels and shadow scoring (issue 20 items 2 and 3).
-- label_files: the labels inbox's own ledger (each label file ingested exactly once, with
-- claims and leases like input files). label_matches / label_score_bins: the sufficient
-- statistics of live metrics per label file, model version (as output or shadow) and
-- prediction day: counts correct, and per class 1000 score bins with positives, negatives and
-- the scores' sum (AUC and calibration over any window). shadow_comparisons / shadow_bins:
-- champion against challenger per scored file.
CREATE TABLE IF NOT EXISTS label_files (
    file_id          VARCHAR PRIMARY KEY,
    source_uri       VARCHAR NOT NULL,
    etag             VARCHAR,
    size             BIGINT,
    mtime            TIMESTAMPTZ,
    state            VARCHAR NOT NULL CHECK (state IN
                       ('discovered', 'claimed', 'ingested', 'quarantined', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            VARCHAR,
    claimed_by       VARCHAR,
    lease_expires_at TIMESTAMPTZ,
    discovered_at    TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    rows             BIGINT,
    matched          BIGINT,
    unknown_ids      BIGINT,
    duplicate_ids    BIGINT,
    bad_labels       BIGINT,
    report           VARCHAR             -- JSON: {reason: rows}
);

CREATE TABLE IF NOT EXISTS label_matches (
    file_id       VARCHAR NOT NULL,
    model_run_id  VARCHAR NOT NULL,
    role          VARCHAR NOT NULL CHECK (role IN ('output', 'shadow')),
    day           DATE NOT NULL,         -- the day the predictions were made (UTC)
    model_name    VARCHAR,
    model_version BIGINT,
    n             BIGINT NOT NULL,
    correct       BIGINT NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (file_id, model_run_id, role, day)
);

CREATE TABLE IF NOT EXISTS label_score_bins (
    file_id      VARCHAR NOT NULL,
    model_run_id VARCHAR NOT NULL,
    role         VARCHAR NOT NULL,
    day          DATE NOT NULL,
    class        VARCHAR NOT NULL,       -- binary: the positive class only
    bin          INTEGER NOT NULL,       -- floor(score * 1000), 0 .. 999
    positives    BIGINT NOT NULL,
    negatives    BIGINT NOT NULL,
    score_sum    DOUBLE NOT NULL,
    PRIMARY KEY (file_id, model_run_id, role, day, class, bin)
);

CREATE TABLE IF NOT EXISTS shadow_comparisons (
    batch_id           VARCHAR NOT NULL,
    file_id            VARCHAR NOT NULL,
    source_uri         VARCHAR NOT NULL,
    model_name         VARCHAR,
    champion_version   BIGINT,
    champion_run_id    VARCHAR,
    challenger_version BIGINT,
    challenger_run_id  VARCHAR,
    status             VARCHAR NOT NULL CHECK (status IN ('scored', 'failed')),
    rows               BIGINT,
    agreed             BIGINT,
    output_uri         VARCHAR,
    shadow_uri         VARCHAR,
    error              VARCHAR,
    recorded_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, file_id)
);

CREATE TABLE IF NOT EXISTS shadow_bins (
    batch_id   VARCHAR NOT NULL,
    file_id    VARCHAR NOT NULL,
    bin        INTEGER NOT NULL,         -- binary: tenths of proba; else the predicted class
    champion   BIGINT NOT NULL,
    challenger BIGINT NOT NULL,
    PRIMARY KEY (batch_id, file_id, bin)
);

-- Per model version and prediction day: labelled rows, accuracy, AUC (one class against the
-- rest, averaged over classes; ties within a 1/1000 score bin count half) and expected
-- calibration error (10 equal-width bins, averaged over classes).
CREATE OR REPLACE VIEW live_performance AS
WITH acc AS (
    SELECT model_name, model_version, model_run_id, role, day,
           sum(n) AS n, sum(correct) AS correct
    FROM label_matches GROUP BY model_name, model_version, model_run_id, role, day),
bins AS (
    SELECT model_run_id, role, day, class, bin, sum(positives) AS pos, sum(negatives) AS neg,
           sum(score_sum) AS ssum
    FROM label_score_bins GROUP BY model_run_id, role, day, class, bin),
ranked AS (
    SELECT *, coalesce(sum(pos) OVER (PARTITION BY model_run_id, role, day, class ORDER BY bin
                       DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS above,
           sum(pos) OVER (PARTITION BY model_run_id, role, day, class) AS p_all,
           sum(neg) OVER (PARTITION BY model_run_id, role, day, class) AS n_all
    FROM bins),
auc AS (
    SELECT model_run_id, role, day, class,
           CASE WHEN max(p_all) > 0 AND max(n_all) > 0
                THEN sum(neg * (above + 0.5 * pos)) / (max(p_all) * max(n_all)) END AS auc
    FROM ranked GROUP BY model_run_id, role, day, class),
coarse AS (
    SELECT model_run_id, role, day, class, CAST(floor(bin / 100.0) AS INTEGER) AS cbin,
           sum(ssum) AS ssum, sum(pos) AS pos, sum(pos + neg) AS cnt
    FROM bins GROUP BY model_run_id, role, day, class, CAST(floor(bin / 100.0) AS INTEGER)),
cal AS (
    SELECT model_run_id, role, day, class, sum(abs(ssum - pos)) / sum(cnt) AS ece
    FROM coarse GROUP BY model_run_id, role, day, class),
per_class AS (
    SELECT a.model_run_id, a.role, a.day, avg(a.auc) AS auc, avg(c.ece) AS ece
    FROM auc a JOIN cal c USING (model_run_id, role, day, class)
    GROUP BY a.model_run_id, a.role, a.day)
SELECT acc.model_name, acc.model_version, acc.model_run_id, acc.role, acc.day, acc.n,
       CAST(acc.correct AS DOUBLE) / nullif(acc.n, 0) AS accuracy,
       CAST(p.auc AS DOUBLE) AS auc, CAST(p.ece AS DOUBLE) AS calibration_error
FROM acc LEFT JOIN per_class p USING (model_run_id, role, day);

-- Per batch: champion against challenger over the files both scored, with the population
-- stability index of the challenger's scores against the champion's (bins smoothed by 0.5).
CREATE OR REPLACE VIEW shadow_batches AS
WITH b AS (
    SELECT batch_id, bin, sum(champion) AS c, sum(challenger) AS s
    FROM shadow_bins GROUP BY batch_id, bin),
t AS (
    SELECT batch_id, sum(c) AS c_all, sum(s) AS s_all, count(*) AS k FROM b GROUP BY batch_id),
psi AS (
    SELECT b.batch_id,
           sum(((b.s + 0.5) / (t.s_all + 0.5 * t.k) - (b.c + 0.5) / (t.c_all + 0.5 * t.k))
               * ln(((b.s + 0.5) / (t.s_all + 0.5 * t.k))
                    / ((b.c + 0.5) / (t.c_all + 0.5 * t.k)))) AS psi
    FROM b JOIN t USING (batch_id) GROUP BY b.batch_id)
SELECT s.batch_id, min(s.model_name) AS model_name,
       min(s.champion_version) AS champion_version,
       min(s.challenger_version) AS challenger_version,
       min(s.challenger_run_id) AS challenger_run_id,
       count(*) FILTER (WHERE s.status = 'scored') AS files,
       count(*) FILTER (WHERE s.status = 'failed') AS failed,
       sum(s.rows) AS rows,
       CAST(sum(s.agreed) AS DOUBLE) / nullif(sum(s.rows), 0) AS agreement,
       CAST(min(psi.psi) AS DOUBLE) AS psi,
       max(s.recorded_at) AS recorded_at
FROM shadow_comparisons s LEFT JOIN psi USING (batch_id)
GROUP BY s.batch_id;
