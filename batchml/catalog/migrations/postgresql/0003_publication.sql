-- PostgreSQL has no published copy: people query the server itself (psql, or DuckDB's
-- postgres extension through `batchml sql --duckdb-init`). catalog_info says so, with the
-- same columns as the DuckDB copy's view.
CREATE OR REPLACE VIEW catalog_info AS
SELECT now() AS published_at,
       interval '0' AS age,
       current_database() AS source_catalog,
       (SELECT max(version) FROM schema_migrations) AS schema_version,
       NULL::VARCHAR AS batchml_version,
       0::double precision AS publish_interval_s,
       'The live PostgreSQL catalog: every committed change is visible at once.'::VARCHAR
           AS note;
