-- The published read-only copy (batchml/publication.py) says what it is and how fresh.
CREATE TABLE IF NOT EXISTS publication (
    id INTEGER PRIMARY KEY,
    published_at TIMESTAMPTZ NOT NULL,
    source_catalog VARCHAR NOT NULL,
    publish_interval_s DOUBLE NOT NULL,
    batchml_version VARCHAR
);

CREATE OR REPLACE VIEW catalog_info AS
SELECT p.published_at,
       now() - p.published_at AS age,
       p.source_catalog,
       (SELECT max(version) FROM schema_migrations) AS schema_version,
       p.batchml_version,
       p.publish_interval_s,
       'A copy batchml publishes within about publish_interval_s of each change; '
       || 'reconnect to see newer data.' AS note
FROM publication p;
