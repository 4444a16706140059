"""`batchml serve` for real: its own Prefect server, files scored as they land, status, and a
clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchml import Catalog, Settings
from batchml.synthetic import synthetic_reviews

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_serve_scores_landed_files_and_stops_cleanly(tagged_home: Settings,
                                                    tmp_path: Path) -> None:
    settings = tagged_home
    home = settings.home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["BATCHML_HOME"] = str(home)

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "batchml"), "status", "--format", "json"], env=env,
                              capture_output=True, text=True, timeout=120)

    assert status().returncode == 1  # nothing running yet
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(BIN / "batchml"), "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while status().returncode != 0:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "service did not come up"
            time.sleep(1)
        inbox = Path(settings.inbox)
        for i in range(3):
            tmp = inbox / f".f{i}.tmp"
            synthetic_reviews(200, seed=40 + i).to_parquet(tmp)
            tmp.rename(inbox / f"landed-{i}.parquet")
        (inbox / ".bad.tmp").write_bytes(b"not parquet at all")
        (inbox / ".bad.tmp").rename(inbox / "bad.parquet")
        deadline = time.monotonic() + 120
        while True:
            info = json.loads(status().stdout)
            if info["files"]["scored"] == 3 and info["files"]["quarantined"] == 1:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.5)
        assert info["service"]["up"] and info["current_model"] == "train/1"
        assert info["service"]["prefect_api_url"].startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    after = status()
    assert after.returncode == 1 and json.loads(after.stdout)["service"]["state"] == "stopped"
    cat = Catalog(settings.catalog_file)
    assert cat.sql("SELECT count(*) AS n FROM files WHERE state = 'claimed'")["n"][0] == 0
    batches = cat.sql("SELECT prefect_flow_run_id FROM prediction_batches")
    assert batches["prefect_flow_run_id"].notna().all()  # scored through the prediction flow
    assert not list(Path(settings.outbox).rglob(".tmp-*"))
    assert len(list(Path(settings.outbox).rglob("*.parquet"))) == 3
    assert list(Path(settings.quarantine).glob("*bad.parquet.error.json"))
