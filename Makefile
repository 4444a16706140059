# Every target creates or reuses the local virtual environment in .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_HOME ?= .batchml-demo

.PHONY: demo test test-all lint bench bench-quick prefect-postgres clean

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=78.1.1'  # venv's 65.5 has CVEs
# [transformers]: the encoder candidate's extra. constraints.txt pins torch==2.13.0, for which
# pip takes the CPU build (an unpinned torch pulls a CUDA build of several GB).
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,transformers]'
# The tests start their own throwaway PostgreSQL server: without pg_ctl (on PATH or in Debian's
# /usr/lib/postgresql/*/bin), install Debian's postgresql package (sudo when not root).
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || command -v sudo); $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || { $$S apt-get update -q && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }; }
# The web page's end-to-end test drives Debian's chromium with Playwright (launched by path:
# Playwright downloads no browser); install it when missing.
	@command -v chromium >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || command -v sudo); $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || { $$S apt-get update -q && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; }
	@touch $(STAMP)

## The main job end to end on the embedded default (local directories, local DuckDB file).
demo: $(STAMP)
	BATCHML_HOME=$(DEMO_HOME) bash deploy/demo.sh

## The whole test suite, on two processes (pytest-xdist; each test file stays on one process).
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30 -n 2 --dist loadfile

## Lint and type checks.
lint: $(STAMP)
	$(BIN)/ruff check batchml flows tests bench
	$(BIN)/mypy

## Prefect on PostgreSQL end to end: throwaway PostgreSQL, prefect server, two process workers.
prefect-postgres: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/test_prefect_postgres.py tests/test_deploy_files.py

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .mypy_cache .ruff_cache
