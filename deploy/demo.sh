#!/usr/bin/env bash
# The main job end to end on the embedded default: a local directory, a local DuckDB file,
# no server to start by hand. Run it with `make demo` (which sets up .venv first).
set -euo pipefail
BIN="${BIN:-.venv/bin}"
export BATCHML_HOME="${BATCHML_HOME:-.batchml-demo}"
rm -rf "$BATCHML_HOME"

echo "== 1. create the catalog"
"$BIN/batchml" init

echo "== 2. log a run"
"$BIN/python" - <<'PY'
from batchml import Catalog, Settings
catalog = Catalog.from_settings(Settings())
run = catalog.create_run("train", params={"model": "demo"})
run.log_metrics({"accuracy": 0.5, "roc_auc": 0.5})
run.add_tag("deployment_candidate")
run.finish()
print("logged", run.id)
PY

echo "== 3. query it"
"$BIN/batchml" sql "select run_id, status, accuracy, roc_auc, tags from runs_overview"
