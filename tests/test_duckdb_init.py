"""`batchml sql --duckdb-init`: an S3 outbox's predictions in the user's own DuckDB session.

Real prediction parquet is written to an S3 outbox on moto's server (over HTTP) by a real
`batchml predict`; the printed init script is then run by the real `duckdb` CLI (the PyPI
duckdb-cli in .venv/bin, the version users install) and by the Python duckdb package, on the
published copy of the catalog opened read-only, with the README's example query joining
`predictions` to `prediction_outputs`."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from batchml import Catalog, Settings
from batchml.cli import app
from batchml.synthetic import synthetic_reviews

ROOT = Path(__file__).resolve().parents[1]
DUCKDB_CLI = Path(sys.executable).with_name("duckdb")
# a secret with a quote in it: the script must escape it (moto accepts any credentials)
SECRET = "s3cr3t-it's-a-test"
KEY_ID = "AKIDBATCHMLTEST"
INPUTS = 3
ROWS = 10


def readme_query(title: str) -> str:
    """The README's example query under the comment ``-- title`` (without its semicolon)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("### Three example queries", 1)[1].split("```sql", 1)[1].split("```")[0]
    match = re.search(rf"-- {re.escape(title)}\n(.*?);", block, re.S)
    assert match, f"README has no example query {title!r}"
    return " ".join(match.group(1).split())


JOINED = readme_query("the predictions themselves joined to their lineage")
JOINED_SORTED = f"SELECT * FROM ({JOINED}) ORDER BY review_id"


@dataclass
class Scored:
    """A batchml home whose S3 outbox holds real prediction parquet."""

    home: Path
    inbox: Path
    outbox: str
    endpoint: str
    bucket: str
    via_pyarrow: pd.DataFrame | None = None  # the README join through `batchml sql`

    @property
    def catalog(self) -> Path:
        """The published copy, what people open (batchml keeps catalog.duckdb to itself)."""
        return self.home / "catalog.readonly.duckdb"

    def env(self) -> dict[str, str]:
        return {"BATCHML_HOME": str(self.home), "BATCHML_OUTBOX": self.outbox,
                "BATCHML_S3_ENDPOINT_URL": self.endpoint, "BATCHML_S3_REGION": "us-east-1"}


def _aws_env(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        mp.delenv(name, raising=False)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Scored:
    """Log a small tagged model, then `batchml predict` three files into an S3 outbox whose
    prefix has glob characters (``preds[1]``), beside objects the view must not read."""
    from batchml.estimators import make_estimator
    from batchml.store import s3_client

    home = tmp_path_factory.mktemp("duckdb-init") / "home"
    # the model is logged directly (no training gate: not what is tested here)
    train = synthetic_reviews(600, seed=1)
    model = make_estimator("sklearn_text", text_column="review").fit(train, train["labels"])
    run = Catalog.from_settings(Settings(home=home)).create_run("train")
    run.log_model("sklearn_text", model, primary=True)
    run.finish()
    run.add_tag("deployment_candidate")
    inbox = home.parent / "inbox"
    inbox.mkdir()
    for i in range(INPUTS):
        synthetic_reviews(ROWS, seed=30 + i).assign(review_id=lambda f, i=i: f.review_id + 100 * i
                                                    ).to_parquet(inbox / f"in{i}.parquet")
    bucket = f"duckdb-init-{os.getpid()}"
    result = Scored(home=home, inbox=inbox, outbox=f"s3://{bucket}/preds[1]",
                    endpoint=moto_server, bucket=bucket)
    with pytest.MonkeyPatch.context() as mp:
        _aws_env(mp)
        for key, value in result.env().items():
            mp.setenv(key, value)
        client = s3_client(moto_server, "us-east-1")
        client.create_bucket(Bucket=bucket)
        predicted = CliRunner().invoke(app, ["predict", str(inbox)])
        assert predicted.exit_code == 0, predicted.output
        result.via_pyarrow = expected(result)  # before the junk below: batchml sql's pyarrow
        # listing (Outbox.dataset) does not skip '.'/'_' names on S3
        # not outputs: a hidden temp object, a marker, and a sibling prefix that the unescaped
        # glob `preds[1]` would match; the view reads none of them (garbage fails read_parquet)
        for key in ("preds[1]/train/9/.tmp-x.parquet", "preds[1]/train/9/_SUCCESS",
                    "preds[1]/_partial.parquet", "preds1/train/1/x.parquet"):
            client.put_object(Bucket=bucket, Key=key, Body=b"PAR1 not parquet PAR1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sum(bool(re.fullmatch(r"preds\[1\]/[^/]+/in\d-\w+\.parquet", k)) for k in keys
               ) == INPUTS, keys  # OUTBOX/<model run>/<input name>-<input id>.parquet
    catalog = Catalog.from_settings(Settings(home=home))
    assert catalog.publish() == result.catalog  # the copy the sessions below open read-only
    catalog.db.close()
    return result


@pytest.fixture
def s3_env(scored: Scored, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Scored:
    _aws_env(monkeypatch)
    for key, value in scored.env().items():
        monkeypatch.setenv(key, value)
    return scored


def init_script(caplog: pytest.LogCaptureFixture | None = None) -> str:
    result = CliRunner().invoke(app, ["sql", "--duckdb-init"])
    assert result.exit_code == 0, result.output
    if caplog is not None:  # the secret goes to stdout only, never to a log (botocore's own
        assert SECRET not in caplog.text  # DEBUG log of a signed request names the key id)
    return result.stdout


def expected(scored: Scored) -> pd.DataFrame:
    """The same query through `batchml sql` (S3 outbox registered through pyarrow)."""
    result = CliRunner().invoke(app, ["sql", JOINED_SORTED, "--format", "json"])
    assert result.exit_code == 0, result.output
    frame = pd.read_json(io.StringIO(result.stdout), lines=True)
    Catalog.from_settings(Settings(home=scored.home)).db.close()
    return frame


def check_rows(frame: pd.DataFrame, scored: Scored) -> None:
    assert len(frame) == INPUTS * ROWS
    assert sorted(frame["review_id"]) == [100 * i + r for i in range(INPUTS) for r in range(ROWS)]
    assert set(frame["source_uri"]) == {str(scored.inbox / f"in{i}.parquet")
                                        for i in range(INPUTS)}
    assert set(frame["model_flavor"]) == {"sklearn"}
    assert frame["proba"].between(0, 1).all()
    assert set(frame["label"]) <= {0, 1}


def test_script_sets_up_httpfs_secret_and_view(s3_env: Scored,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    script = init_script(caplog)
    host = s3_env.endpoint.split("://", 1)[1]
    assert "SET autoinstall_known_extensions = false;" in script
    load = re.search(r"^LOAD '([^']+)';$", script, re.M)
    assert load and load.group(1).endswith("/v1.5.5/httpfs.duckdb_extension")
    assert Path(load.group(1)).is_file()
    assert "must be version v1.5.5" in script and "duckdb-cli==1.5.5" in script
    assert "CREATE OR REPLACE TEMPORARY SECRET batchml_outbox (" in script
    for option in (f"KEY_ID '{KEY_ID}'", "SECRET 's3cr3t-it''s-a-test'", "REGION 'us-east-1'",
                   f"ENDPOINT '{host}'", "USE_SSL false", "URL_STYLE 'path'",
                   f"SCOPE 's3://{s3_env.bucket}/'"):
        assert f"    {option}" in script, option
    assert "SESSION_TOKEN" not in script
    assert (f"read_parquet(\n    's3://{s3_env.bucket}/preds[[]1[]]/**/[!._]*.parquet', "
            "union_by_name = true);") in script


def test_real_duckdb_cli_queries_s3_predictions(s3_env: Scored, tmp_path: Path) -> None:
    """The README's join, in the real duckdb CLI on the read-only catalog, with the script."""
    assert DUCKDB_CLI.is_file(), "the dev dependency duckdb-cli provides .venv/bin/duckdb"
    init = tmp_path / "s3-init.sql"
    init.touch(mode=0o600)
    init.write_text(init_script())
    # no AWS variables and an empty HOME: the script alone carries credentials and extension
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BATCHML_"))}
    env["HOME"] = str(tmp_path / "home")
    cmd = [str(DUCKDB_CLI), "-readonly", str(s3_env.catalog), "-init", str(init), "-csv"]
    version = subprocess.run([str(DUCKDB_CLI), "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert version.stdout.startswith("v1.5.5"), version
    count = subprocess.run(cmd + ["-c", "SELECT count(*) AS n FROM predictions"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert count.returncode == 0, count.stderr
    assert count.stdout.splitlines()[-2:] == ["n", str(INPUTS * ROWS)]
    joined = subprocess.run(cmd + ["-c", JOINED_SORTED], capture_output=True, text=True,
                            env=env, timeout=120)
    assert joined.returncode == 0, joined.stderr
    csv = joined.stdout[joined.stdout.index("review_id,"):]
    frame = pd.read_csv(io.StringIO(csv))
    check_rows(frame, s3_env)
    # the same rows as batchml's own pyarrow path
    want = s3_env.via_pyarrow
    assert want is not None
    pd.testing.assert_frame_equal(frame[want.columns].reset_index(drop=True), want,
                                  check_dtype=False, atol=1e-12)
    assert not (tmp_path / "home" / ".duckdb").exists()  # nothing installed or downloaded


def test_python_duckdb_runs_the_script(s3_env: Scored, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    """The same script in the Python duckdb package (a user's own Python process), with
    temporary credentials (a session token) this time."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-from-sts")
    script = init_script()
    assert "    SESSION_TOKEN 'token-from-sts'" in script
    init = tmp_path / "s3-init.sql"
    init.touch(mode=0o600)
    init.write_text(script)
    code = (
        "import duckdb, sys\n"
        "con = duckdb.connect(sys.argv[1], read_only=True)\n"
        "con.execute(open(sys.argv[2]).read())\n"
        "con.execute(sys.argv[3]).df().to_json(sys.stdout, orient='records', lines=True)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BATCHML_"))}
    env["HOME"] = str(tmp_path / "home")
    done = subprocess.run([sys.executable, "-c", code, str(s3_env.catalog), str(init),
                           JOINED_SORTED], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    frame = pd.read_json(io.StringIO(done.stdout), lines=True)
    check_rows(frame, s3_env)


def _no_credentials(mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            mp.delenv(name)
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    mp.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _no_httpfs_package(mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp.setitem(sys.modules, "duckdb_extension_httpfs", None)  # import fails as if uninstalled


def _empty_outbox(mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp.setenv("BATCHML_OUTBOX", "s3://{bucket}/nothing-yet")


def _local_outbox(mp: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp.setenv("BATCHML_OUTBOX", str(tmp_path / "outbox"))


@pytest.mark.parametrize(("setup", "args", "code", "message"), [
    pytest.param(_local_outbox, [], 0, "is a local directory, not an s3:// outbox",
                 id="no-s3-outbox"),
    pytest.param(_no_credentials, [], 1, "No AWS credentials could be resolved",
                 id="no-credentials"),
    pytest.param(_no_httpfs_package, [], 1,
                 "duckdb-extension-httpfs) is not installed. Install it: pip install "
                 "'duckdb-extension-httpfs==1.5.5'", id="no-httpfs-package"),
    pytest.param(_empty_outbox, [], 0, "holds no prediction parquet yet", id="empty-outbox"),
    pytest.param(None, ["SELECT 1"], 2, "Give either a query or --duckdb-init, not both",
                 id="query-and-init"),
])
def test_cases_without_a_working_s3_script(s3_env: Scored, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, setup, args,
                                           code: int, message: str) -> None:
    if setup is not None:
        setup(monkeypatch, tmp_path)
    if os.environ["BATCHML_OUTBOX"].startswith("s3://{bucket}"):
        monkeypatch.setenv("BATCHML_OUTBOX", os.environ["BATCHML_OUTBOX"].format(
            bucket=s3_env.bucket))
    result = CliRunner().invoke(app, ["sql", *args, "--duckdb-init"])
    assert result.exit_code == code, result.output
    text = " ".join((result.stdout if code == 0 else result.stderr).split())
    assert message in text
    assert SECRET not in result.stderr
    # no view over no files: DuckDB cannot create one, and -init would stop on the error
    assert not re.search(r"^CREATE .*VIEW", result.stdout, re.M)
    if setup is _local_outbox:  # comments only: harmless as an init file, no credentials
        assert all(line.startswith("--") for line in result.stdout.splitlines())


def test_query_is_required_without_init(s3_env: Scored) -> None:
    result = CliRunner().invoke(app, ["sql"])
    assert result.exit_code == 2
    assert "Give a query (or --duckdb-init)" in result.stderr
