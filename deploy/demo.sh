#!/usr/bin/env bash
# The main job end to end on the embedded default: a local inbox directory, a local DuckDB
# catalog, no server to start by hand. Run it with `make demo` (which sets up .venv first).
#   generate data -> train and tag -> start the service -> drop files -> query -> stop
set -euo pipefail
BIN="${BIN:-.venv/bin}"
export BATCHML_HOME="${BATCHML_HOME:-.batchml-demo}"
export PREFECT_LOGGING_LEVEL=WARNING
rm -rf "$BATCHML_HOME"
DATA="$BATCHML_HOME/data"

echo "== 1. create the catalog and folders"
"$BIN/batchml" init

echo "== 2. generate synthetic (made-up) labelled reviews"
"$BIN/batchml" demo-data "$DATA"

echo "== 3. train a baseline and candidates, gate, tag (a Prefect flow)"
"$BIN/batchml" train --train "$DATA/train.parquet" --valid "$DATA/valid.parquet" \
  --text-column review --label labels

echo "== 4. start the service (it starts its own Prefect server on 127.0.0.1)"
"$BIN/batchml" serve > "$BATCHML_HOME/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill -TERM $SERVE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  "$BIN/batchml" status > /dev/null 2>&1 && break
  kill -0 $SERVE_PID 2>/dev/null || { cat "$BATCHML_HOME/serve.log"; exit 1; }
  sleep 1
done
"$BIN/batchml" status

echo "== 5. drop files into the inbox (write a temp name, then rename: the landing contract)"
INBOX="$BATCHML_HOME/inbox"
n=0
for f in "$DATA"/predict/*.parquet; do
  cp "$f" "$INBOX/.$(basename "$f").tmp"
  mv "$INBOX/.$(basename "$f").tmp" "$INBOX/reviews-$(date +%F)-$(basename "$f")"
  n=$((n + 1))
done
printf 'bad bytes' > "$INBOX/.broken.tmp" && mv "$INBOX/.broken.tmp" "$INBOX/broken.parquet"
n=$((n + 1))

echo "== 6. wait until all $n files are scored or quarantined"
for _ in $(seq 1 120); do
  done_files=$("$BIN/batchml" sql "select count(*) as n from files where state in ('scored','quarantined')" --format csv | tail -1)
  [ "$done_files" -ge "$n" ] && break
  sleep 1
done
"$BIN/batchml" files

echo "== 7. query the outputs in SQL"
"$BIN/batchml" sql "select source_uri, model_run_id, model_flavor, rows, positives from prediction_outputs where status = 'scored' order by source_uri"
"$BIN/batchml" sql "select model_run_id, sum(rows) as rows, round(sum(positives) / sum(rows), 3) as positive_rate from prediction_outputs where status = 'scored' group by all"
"$BIN/batchml" sql "select p.review_id, p.label, round(p.proba, 3) as proba, o.model_run_id from predictions p join prediction_outputs o on o.source_uri = p.input_uri order by p.review_id limit 5"

echo "== 7b. the same from the duckdb CLI, on the published copy, while the service runs"
"$BIN/duckdb" -readonly "$BATCHML_HOME/catalog.readonly.duckdb" -c "select published_at, age from catalog_info" \
  -c "select source_uri, model_run_id, rows from prediction_outputs where status = 'scored' order by source_uri"

echo "== 8. stop the service"
kill -TERM $SERVE_PID
wait $SERVE_PID || true
trap - EXIT
echo "demo done: catalog at $BATCHML_HOME/catalog.duckdb (try: $BIN/duckdb -readonly $BATCHML_HOME/catalog.readonly.duckdb)"
