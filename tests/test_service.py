"""`batchml serve` for real: its own Prefect server, files scored as they land, status, and a
clean stop on SIGTERM."""

from __future__ import annotations

import json
import logging
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


# --- settings go down explicitly: `batchml serve` and `batchml train` leave os.environ alone ---


def test_serve_passes_settings_down_and_leaves_os_environ_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` (its own Prefect server) writes nothing into os.environ, not even while it
    runs; the service sees the Prefect API and the Prefect home through Prefect's settings
    context, which Prefect passes to the processes it starts (trainer flow runs)."""
    import contextlib

    from prefect.settings import get_current_settings

    from batchml import service as svc

    for name in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOGGING_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path / "home", train_uri=str(tmp_path / "t.parquet"),
                        valid_uri=str(tmp_path / "v.parquet"), feature_columns=["a", "b"],
                        lease_s=7)
    url = "http://127.0.0.1:9/api"
    seen: dict[str, object] = {}

    @contextlib.contextmanager
    def fake_server(s: Settings):  # type: ignore[no-untyped-def]
        seen["server_settings"] = s
        yield url

    async def fake_run(self: svc.Service, api_url: str | None = None) -> None:
        prefect = get_current_settings()
        seen.update(run_settings=self.settings, api_url=api_url, environ=dict(os.environ),
                    log_level=logging.getLogger("prefect").level,
                    prefect_api=prefect.api.url, prefect_home=str(prefect.home),
                    child_env=prefect.to_environment_variables(exclude_unset=True),
                    trainer=svc.trainer_parameters(self.settings))

    monkeypatch.setattr(svc, "local_prefect_server", fake_server)
    monkeypatch.setattr(svc.Service, "run", fake_run)
    before = dict(os.environ)
    level_before = logging.getLogger("prefect").level
    svc.serve(settings)
    assert dict(os.environ) == before  # after ...
    assert seen["environ"] == before  # ... and while the service ran
    assert seen["server_settings"] is settings and seen["run_settings"] is settings
    assert seen["api_url"] == seen["prefect_api"] == url
    assert seen["prefect_home"] == str(settings.home / "prefect")
    child_env = seen["child_env"]
    assert isinstance(child_env, dict)  # what Prefect's runner adds to a flow run's process
    assert child_env["PREFECT_API_URL"] == url
    assert child_env["PREFECT_HOME"] == str(settings.home / "prefect")
    assert not any(k.startswith("BATCHML_") for k in child_env)
    assert get_current_settings().api.url != url  # the settings ended with serve
    assert seen["log_level"] == logging.WARNING  # Prefect's loggers quiet while serving
    assert logging.getLogger("prefect").level == level_before

    # the nightly trainer's flow run gets the settings as its parameter, as Prefect stores
    # and validates it (JSON in the server, a Settings again in the flow run's process)
    from batchml.flows.train import train_flow

    params = seen["trainer"]
    assert isinstance(params, dict) and params["settings"] is settings
    stored = json.loads(json.dumps(train_flow.serialize_parameters(params)))
    received = train_flow.validate_parameters(stored)["settings"]
    assert isinstance(received, Settings) and received == settings
    assert (received.lease_s, received.feature_columns) == (7, ["a", "b"])


def test_serve_on_a_given_prefect_server_leaves_os_environ_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With PREFECT_API_URL set, `serve` uses it and still writes no BATCHML_* variable."""
    from batchml import service as svc

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    seen: dict[str, object] = {}

    async def fake_run(self: svc.Service, api_url: str | None = None) -> None:
        seen.update(api_url=api_url, environ=dict(os.environ))

    monkeypatch.setattr(svc.Service, "run", fake_run)
    before = dict(os.environ)
    svc.serve(Settings(home=tmp_path / "home"))
    assert dict(os.environ) == before and seen["environ"] == before
    assert seen["api_url"] == "http://127.0.0.1:9/api"


@pytest.mark.slow
def test_train_with_prefect_keeps_prefect_under_the_home_without_os_environ(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`batchml train` (a Prefect flow on Prefect's temporary server) in this process: the
    server's state lands under HOME/prefect (the setting reached the server's process) and
    os.environ is the same after."""
    from prefect.server.api.server import SubprocessASGIServer
    from typer.testing import CliRunner

    from batchml.cli import app

    for name in ("PREFECT_API_URL", "PREFECT_HOME"):
        monkeypatch.delenv(name, raising=False)
    # as in a fresh `batchml train` process: no temporary server left running by an earlier
    # test of this pytest process (Prefect would reuse it, with that test's PREFECT_HOME)
    SubprocessASGIServer().stop()
    data = tmp_path / "data"
    data.mkdir()
    synthetic_reviews(400, seed=1).to_parquet(data / "train.parquet")
    synthetic_reviews(200, seed=2).to_parquet(data / "valid.parquet")
    home = tmp_path / "home"
    before = dict(os.environ)
    try:
        result = CliRunner().invoke(app, [
            "train", "--train", str(data / "train.parquet"), "--valid",
            str(data / "valid.parquet"), "--candidates", "sklearn_text", "--home", str(home)])
    finally:  # stop Prefect's temporary server now, not at exit (after pytest's capture)
        SubprocessASGIServer().stop()
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    assert (home / "prefect" / "prefect.db").exists()
    assert Catalog.from_settings(Settings(home=home)).runs("train")[0].status == "completed"


@pytest.mark.slow
def test_sigterm_mid_batch_finishes_the_batch_and_exits_0(tagged_home: Settings,
                                                          tmp_path: Path) -> None:
    """SIGTERM while a batch (a Prefect flow run) is being scored: the service finishes that
    batch (every claimed file scored and recorded) and exits 0; Prefect's own SIGTERM handler
    (which would crash the flow run mid-batch) never sees it. The signal is sent while the
    service's process tree is frozen between two outputs of the batch, so it lands mid-batch
    however fast the machine is."""
    sys.path.insert(0, str(Path(__file__).parent / "reliability"))
    from relhelp import descendants

    settings = tagged_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["BATCHML_HOME"] = str(settings.home)
    inbox, outbox = Path(settings.inbox), Path(settings.outbox)
    inbox.mkdir(parents=True, exist_ok=True)
    files = 8
    for i in range(files):  # all there before the service starts: one batch takes them all
        synthetic_reviews(20_000, seed=60 + i).to_parquet(inbox / f"big-{i}.parquet")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(BIN / "batchml"), "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    outputs = lambda: len(list(outbox.rglob("*.parquet")))  # noqa: E731
    sent = False
    try:
        deadline = time.monotonic() + 240
        while not sent:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no batch caught between two outputs"
            if not 1 <= outputs() < files:
                time.sleep(0.002)
                continue
            tree = [proc.pid, *descendants(proc.pid)]
            for pid in tree:
                os.kill(pid, signal.SIGSTOP)
            try:
                if 1 <= outputs() < files:
                    proc.send_signal(signal.SIGTERM)
                    sent = True
            finally:
                for pid in tree:
                    os.kill(pid, signal.SIGCONT)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "TerminationSignal" not in text, text
    assert outputs() == files  # the batch in flight finished
    cat = Catalog(settings.catalog_file)
    states = cat.sql("SELECT state, count(*) AS n FROM files GROUP BY state")
    assert dict(zip(states["state"], states["n"], strict=True)) == {"scored": files}
    batches = cat.sql("SELECT status FROM prediction_batches")
    assert set(batches["status"]) == {"completed"}, batches
