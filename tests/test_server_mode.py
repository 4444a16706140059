"""Server mode for real: `prefect server start` on loopback, `prefect deploy` from
deploy/prefect.yaml, a process worker, an event-triggered prediction and a scheduled training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from batchml import Catalog, Settings
from batchml.service import local_prefect_server
from batchml.synthetic import synthetic_reviews

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_for(predicate, timeout: float, what: str, step: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.mark.slow
def test_deploy_worker_event_trigger_and_schedule(tagged_home: Settings, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tagged_home
    home = settings.home
    data = tmp_path / "data"

    # the scheduler loops every few seconds so a short interval fires within the test
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "2")
    monkeypatch.setenv("PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS", "2")
    # the deployment's smoke examples come from BATCHML_SMOKE_PATH (deploy/prefect.yaml)
    smoke = tmp_path / "smoke.csv"
    smoke.write_text("review,labels\nlove it great perfect soft beautiful,1\n"
                     "poor baggy cheap itchy returned disappointed,0\n")
    started = time.monotonic()
    with local_prefect_server(settings) as api_url:
        startup_s = time.monotonic() - started
        env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home / "prefect"),
               "BATCHML_HOME": str(home), "BATCHML_PROJECT_DIR": str(ROOT),
               "BATCHML_TRAIN_URI": str(data / "train.parquet"),
               "BATCHML_VALID_URI": str(data / "valid.parquet"),
               "BATCHML_SMOKE_PATH": str(smoke),
               "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

        def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            out = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=300)
            if check:
                assert out.returncode == 0, out.stdout + out.stderr
            return out

        # the real deploy file, with the nightly cron swapped for a 10 s interval and fast
        # candidates, so the schedule fires within the test
        spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
        for dep in spec["deployments"]:
            if dep["name"] == "train-nightly":
                dep["schedules"] = [{"interval": 10}]
                dep["parameters"]["candidates"] = ["sklearn_text"]
            if dep["name"] == "bridge":
                dep["schedules"] = []
        deploy_file = tmp_path / "prefect.yaml"
        deploy_file.write_text(yaml.safe_dump(spec))
        marks = {"server": startup_s}
        t = time.monotonic()
        cli(str(BIN / "prefect"), "work-pool", "create", "batchml", "--type", "process")
        deployed = cli(str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                       "--prefect-file", str(deploy_file))
        assert "predict-on-landing" in deployed.stdout + deployed.stderr
        marks["deploy"] = time.monotonic() - t
        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "batchml"],
                                  env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            inbox = Path(settings.inbox)
            inbox.mkdir(parents=True, exist_ok=True)
            tmp = inbox / ".landing.tmp"
            synthetic_reviews(100, seed=9).to_parquet(tmp)
            landed = inbox / "landed.parquet"
            tmp.rename(landed)
            t0 = time.monotonic()
            emitted = cli(str(BIN / "batchml"), "bridge", "--once")
            assert "emitted 1 batchml.file.landed" in emitted.stdout

            def scored() -> object:
                cat = Catalog(settings.catalog_file)
                try:
                    rows = cat.sql("SELECT b.prefect_flow_run_id, f.rows FROM files f JOIN"
                                   " prediction_batches b USING (batch_id) WHERE"
                                   " f.source_uri = ? AND f.state = 'scored'", [str(landed)])
                finally:
                    cat.db.close()
                return rows if len(rows) else None

            rows = wait_for(scored, 240, "the triggered prediction run to score the file")
            latency_s = time.monotonic() - t0
            assert rows["rows"].tolist() == [100]
            assert rows["prefect_flow_run_id"][0]  # scored inside a Prefect flow run

            def trained_by_schedule() -> object:
                cat = Catalog(settings.catalog_file)
                try:
                    runs = cat.sql("SELECT run_id FROM runs WHERE flow = 'train' AND"
                                   " prefect_flow_run_id IS NOT NULL AND status = 'completed'")
                finally:
                    cat.db.close()
                return len(runs) or None

            t = time.monotonic()
            wait_for(trained_by_schedule, 240, "a scheduled training run to complete")
            marks["scheduled training"] = time.monotonic() - t
            cat = Catalog(settings.catalog_file)
            try:
                run = cat.runs("train", limit=1)[0]
                assert run.params["smoke_uri"] == str(smoke)  # from the deployment
                report = json.loads(run.fetch_artifact("gate.json"))
            finally:
                cat.db.close()
            assert [s["expected"] for s in report["smoke"]] == [1, 0], report["smoke"]
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
    marks["event to scored"] = latency_s
    print(" ".join(f"{k}={v:.1f}s" for k, v in marks.items()))
    shutil.rmtree(home / "prefect", ignore_errors=True)
