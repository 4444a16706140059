"""`batchml sql --duckdb-init`: an S3 outbox's predictions in the user's own DuckDB session.

Real prediction parquet is written to an S3 outbox on moto's server (over HTTP) by a real
`batchml predict`; the printed init script is then run by the real `duckdb` CLI (the PyPI
duckdb-cli in .venv/bin, the version users install) and by the Python duckdb package, on the
published copy of the catalog opened read-only, with the README's example query joining
`predictions` to `prediction_outputs`.

With a PostgreSQL catalog (the session's real PostgreSQL server), the script attaches it
read-only through DuckDB's postgres extension (the packaged file) in the real CLI with no
database file: the catalog's views by plain name, predictions from a local outbox and from an
S3 outbox, writes refused, and the password never printed but taken from libpq's own sources."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import psycopg
import pytest
from typer.testing import CliRunner

from batchml import Catalog, Settings
from batchml.catalog.duckdb_init import duckdb_init_sql
from batchml.cli import app
from batchml.synthetic import synthetic_reviews

if TYPE_CHECKING:
    from pgserver import PostgresServer

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


# --- a PostgreSQL catalog: the postgres extension, read-only, and the outputs ---------------

PG_PASSWORD = "pw123"
LOCAL_INPUTS = 3
S3_INPUTS = 2
WAITING = "s3://elsewhere/waiting.parquet"  # a ledger row written with the Ledger API


@dataclass
class PgScored:
    """A PostgreSQL catalog with two runs (one tagged, with a model; one failed, its tag
    removed), a discovered ledger row, and real prediction parquet: three inputs scored into a
    local outbox, two into an S3 outbox on moto's server."""

    url: str  # postgresql://batchml@127.0.0.1:PORT/DB, no password
    home: Path
    inbox: Path
    local_outbox: Path
    s3_outbox: str
    endpoint: str
    bucket: str
    tagged: str  # run ids
    failed: str

    def url_with_password(self) -> str:
        return self.url.replace("batchml@", f"batchml:{PG_PASSWORD}@", 1)

    def env(self, outbox: str) -> dict[str, str]:
        return {"BATCHML_HOME": str(self.home), "BATCHML_CATALOG_URL": self.url_with_password(),
                "BATCHML_OUTBOX": outbox, "BATCHML_S3_ENDPOINT_URL": self.endpoint,
                "BATCHML_S3_REGION": "us-east-1"}

    def catalog(self) -> Catalog:
        return Catalog(self.url)


@pytest.fixture(scope="module")
def pg_scored(tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer,
              moto_server: str) -> Iterator[PgScored]:
    from batchml.catalog import FileRef, Ledger
    from batchml.estimators import make_estimator
    from batchml.store import s3_client

    name = f"t_init_{os.getpid()}"
    url = pg_server.create_database(name)
    base = tmp_path_factory.mktemp("duckdb-init-pg")
    home, inbox = base / "home", base / "inbox"
    bucket = f"duckdb-init-pg-{os.getpid()}"
    scored = PgScored(url=url, home=home, inbox=inbox, local_outbox=base / "out[1]",
                      s3_outbox=f"s3://{bucket}/preds", endpoint=moto_server, bucket=bucket,
                      tagged="", failed="")
    try:
        catalog = Catalog.from_settings(Settings(home=home, catalog_url=url))
        train = synthetic_reviews(600, seed=1)
        model = make_estimator("sklearn_text", text_column="review").fit(train, train["labels"])
        run = catalog.create_run("train", params={"c": 1.0})
        run.log_model("sklearn_text", model, primary=True)
        run.log_metrics({"accuracy": 0.875, "roc_auc": 0.9})
        run.finish()
        run.add_tag("deployment_candidate", note="gate passed")
        failed = catalog.create_run("train")
        failed.finish("failed", error="boom")
        failed.add_tag("baseline")
        failed.remove_tag("baseline")  # history only: not a current tag
        scored.tagged, scored.failed = run.id, failed.id
        catalog.close()
        inbox.mkdir(parents=True)
        for i in range(LOCAL_INPUTS + S3_INPUTS):
            synthetic_reviews(ROWS, seed=30 + i).assign(
                review_id=lambda f, i=i: f.review_id + 100 * i).to_parquet(inbox / f"in{i}.parquet")
        with pytest.MonkeyPatch.context() as mp:
            _aws_env(mp)
            s3_client(moto_server, "us-east-1").create_bucket(Bucket=bucket)
            for outbox, inputs in ((str(scored.local_outbox), range(LOCAL_INPUTS)),
                                   (scored.s3_outbox, range(LOCAL_INPUTS, LOCAL_INPUTS + S3_INPUTS))):
                for key, value in scored.env(outbox).items():
                    mp.setenv(key, value)
                predicted = CliRunner().invoke(
                    app, ["predict", *(str(inbox / f"in{i}.parquet") for i in inputs)])
                assert predicted.exit_code == 0, predicted.output
        # not outputs: a hidden temp file and a marker the view must skip (garbage would fail)
        for junk in (".tmp-x.parquet", "_partial.parquet"):
            next(scored.local_outbox.rglob("in0-*.parquet")).with_name(junk).write_bytes(
                b"PAR1 not parquet PAR1")
        catalog = scored.catalog()
        Ledger(catalog).discover([FileRef(WAITING, etag="e1")])
        catalog.close()
        yield scored
    finally:
        pg_server.drop_database(name)


def pg_init_script(scored: PgScored, outbox: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`batchml sql --duckdb-init` with the password in BATCHML_CATALOG_URL."""
    _aws_env(monkeypatch)
    for key, value in scored.env(outbox).items():
        monkeypatch.setenv(key, value)
    script = init_script()
    assert PG_PASSWORD not in script
    return script


def run_duckdb(init: Path, query: str, home: Path, extra_env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    """The real duckdb CLI, no database file, with ``init``: no AWS, BATCHML or PG variables
    and an empty HOME, so the script alone carries what the session needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BATCHML_", "PG"))}
    env["HOME"] = str(home)
    env.update(extra_env or {})
    return subprocess.run([str(DUCKDB_CLI), "-init", str(init), "-json", "-c", query],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def duckdb_results(init: Path, query: str, home: Path) -> list[list[dict[str, Any]]]:
    """The result sets of ``query`` (one per statement) as lists of rows."""
    done = run_duckdb(init, query, home)
    assert done.returncode == 0, done.stderr
    # CREATE SECRET in the init file prints its "Success" table (in the default box mode)
    # before the -json results
    text = done.stdout[done.stdout.index("\n[") + 1:] if not done.stdout.startswith("[") \
        else done.stdout
    decoder, text, results = json.JSONDecoder(), text.strip(), []
    while text:
        value, end = decoder.raw_decode(text)
        results.append(value)
        text = text[end:].lstrip()
    return results


def write_init(tmp_path: Path, script: str) -> Path:
    init = tmp_path / "init.sql"
    init.touch(mode=0o600)
    init.write_text(script)
    return init


def check_catalog_views(results: list[list[dict[str, Any]]], scored: PgScored) -> None:
    """runs_overview, current_tags, tag_history and file_status as the Catalog API wrote them."""
    overview, current, history, files = results
    assert {r["run_id"]: (r["status"], r["tags"], r["accuracy"], r["model"], r["error"])
            for r in overview} == {
        scored.tagged: ("completed", "deployment_candidate", 0.875,
                        "sklearn_text (sklearn)", None),
        scored.failed: ("failed", None, None, None, "boom")}
    assert [(r["run_id"], r["flow"], r["tag"], r["note"]) for r in current] == [
        (scored.tagged, "train", "deployment_candidate", "gate passed")]
    assert sorted((r["run_id"], r["tag"], r["state"]) for r in history) == sorted([
        (scored.tagged, "deployment_candidate", "current"), (scored.failed, "baseline", "removed")])
    by_uri = {r["source_uri"]: r for r in files}
    assert set(by_uri) == {WAITING} | {str(scored.inbox / f"in{i}.parquet")
                                       for i in range(LOCAL_INPUTS + S3_INPUTS)}
    assert by_uri.pop(WAITING)["state"] == "discovered"
    assert {(r["state"], r["rows"], r["model_run_id"]) for r in by_uri.values()} == {
        ("scored", ROWS, scored.tagged)}
    # the same rows the catalog gives through psycopg
    catalog = scored.catalog()
    try:
        from batchml.catalog import Ledger

        api = Ledger(catalog).files()
        assert sorted(api["file_id"]) == sorted(r["file_id"] for r in files)
        assert sorted(catalog.runs_overview()["run_id"]) == sorted(r["run_id"] for r in overview)
    finally:
        catalog.close()


VIEWS_QUERY = ("SELECT * FROM runs_overview; SELECT * FROM current_tags; "
               "SELECT * FROM tag_history; SELECT * FROM file_status;")


def check_predictions(joined: list[dict[str, Any]], scored: PgScored, inputs: range) -> None:
    frame = pd.DataFrame(joined)
    assert len(frame) == len(inputs) * ROWS
    assert sorted(frame["review_id"]) == [100 * i + r for i in inputs for r in range(ROWS)]
    assert set(frame["source_uri"]) == {str(scored.inbox / f"in{i}.parquet") for i in inputs}
    assert set(frame["model_flavor"]) == {"sklearn"}
    assert frame["proba"].between(0, 1).all()
    assert set(frame["label"]) <= {0, 1}


def test_pg_script_attaches_read_only_without_the_password(
        pg_scored: PgScored, monkeypatch: pytest.MonkeyPatch) -> None:
    script = pg_init_script(pg_scored, str(pg_scored.local_outbox), monkeypatch)
    assert "SET autoinstall_known_extensions = false;" in script
    loads = re.findall(r"^LOAD '([^']+)';$", script, re.M)
    assert len(loads) == 1 and loads[0].endswith(
        "duckdb_extension_postgres_scanner/extensions/v1.5.5/postgres_scanner.duckdb_extension")
    assert Path(loads[0]).is_file()
    statements = [line for line in script.splitlines() if not line.startswith("--")]
    assert statements[2:4] == [
        f"ATTACH OR REPLACE '{pg_scored.url}' AS batchml_catalog (TYPE postgres, READ_ONLY);",
        "SET search_path = 'main,batchml_catalog.public';"]
    assert "PGPASSWORD, ~/.pgpass or the file PGPASSFILE" in script
    assert "is deliberately not copied" in script
    port = pg_scored.url.split(":")[-1].split("/")[0]
    assert f"--   127.0.0.1:{port}:{pg_scored.url.rsplit('/', 1)[1]}:batchml:PASSWORD" in script
    assert "SECRET" not in script and "httpfs" not in script  # a local outbox needs neither
    root = f"{pg_scored.local_outbox.resolve().parent}/out[[]1[]]"  # glob characters escaped
    assert f"read_parquet(\n    '{root}/**/[!._]*.parquet', union_by_name = true);" in script
    # the password from anywhere settings take it: never printed
    for settings in (
            Settings(home=pg_scored.home, catalog_url=pg_scored.url_with_password()),
            Settings(home=pg_scored.home, catalog_url=pg_scored.url,
                     catalog_password=PG_PASSWORD),  # type: ignore[arg-type]
            Settings(home=pg_scored.home,
                     catalog_url=f"{pg_scored.url}?sslmode=disable&password={PG_PASSWORD}")):
        text = duckdb_init_sql(settings)
        assert PG_PASSWORD not in text
        assert "is deliberately not copied" in text
    text = duckdb_init_sql(Settings(home=pg_scored.home, catalog_url=pg_scored.url))
    assert "is deliberately not copied" not in text
    assert f"ATTACH OR REPLACE '{pg_scored.url}' AS" in text
    text = duckdb_init_sql(Settings(
        home=pg_scored.home, catalog_url=f"{pg_scored.url}?sslmode=disable&password=x%3Dy"))
    assert f"ATTACH OR REPLACE '{pg_scored.url}?sslmode=disable' AS" in text


def test_pg_catalog_and_local_outputs_in_the_duckdb_cli(
        pg_scored: PgScored, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The catalog's views by plain name and a local outbox's predictions, in the real CLI."""
    init = write_init(tmp_path, pg_init_script(pg_scored, str(pg_scored.local_outbox),
                                               monkeypatch))
    home = tmp_path / "home"
    results = duckdb_results(init, VIEWS_QUERY + "SELECT count(*) AS n FROM predictions;"
                             + JOINED_SORTED, home)
    check_catalog_views(results[:4], pg_scored)
    assert results[4] == [{"n": LOCAL_INPUTS * ROWS}]
    check_predictions(results[5], pg_scored, range(LOCAL_INPUTS))
    assert not (home / ".duckdb").exists()  # nothing installed or downloaded


def test_pg_catalog_and_s3_outputs_in_the_duckdb_cli(
        pg_scored: PgScored, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same with an S3 outbox on moto: httpfs and a secret beside the attached catalog."""
    script = pg_init_script(pg_scored, pg_scored.s3_outbox, monkeypatch)
    loads = re.findall(r"^LOAD '([^']+)';$", script, re.M)
    assert [Path(p).name for p in loads] == ["postgres_scanner.duckdb_extension",
                                             "httpfs.duckdb_extension"]
    assert "CREATE OR REPLACE TEMPORARY SECRET batchml_outbox (" in script
    assert f"'s3://{pg_scored.bucket}/preds/**/[!._]*.parquet'" in script
    init = write_init(tmp_path, script)
    home = tmp_path / "home"
    results = duckdb_results(init, VIEWS_QUERY + "SELECT count(*) AS n FROM predictions;"
                             + JOINED_SORTED, home)
    check_catalog_views(results[:4], pg_scored)
    assert results[4] == [{"n": S3_INPUTS * ROWS}]
    check_predictions(results[5], pg_scored,
                      range(LOCAL_INPUTS, LOCAL_INPUTS + S3_INPUTS))
    assert not (home / ".duckdb").exists()


@pytest.mark.parametrize("statement", [
    "INSERT INTO runs (run_id, flow, number, status, started_at) "
    "VALUES ('train/99', 'train', 99, 'completed', now())",
    "DELETE FROM runs",
    "UPDATE tags SET note = 'changed'",
    "CREATE TABLE batchml_catalog.notes (x INTEGER)",  # unqualified: the session's own
])
def test_pg_attachment_refuses_writes(pg_scored: PgScored, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path, statement: str) -> None:
    init = write_init(tmp_path, pg_init_script(pg_scored, str(pg_scored.local_outbox),
                                               monkeypatch))
    done = run_duckdb(init, statement, tmp_path / "home")
    assert done.returncode != 0
    assert 'on database "batchml_catalog" which is attached in read-only mode' in done.stderr
    catalog = pg_scored.catalog()
    try:
        assert sorted(catalog.runs_overview()["run_id"]) == sorted(
            [pg_scored.tagged, pg_scored.failed])
        assert catalog.run(pg_scored.tagged).tags == {"deployment_candidate"}
        notes = catalog.sql("SELECT note FROM tags WHERE removed_at IS NULL")["note"]
        assert list(notes) == ["gate passed"]
    finally:
        catalog.close()


def test_pg_empty_outbox_still_attaches_the_catalog(
        pg_scored: PgScored, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No output yet: no view (DuckDB cannot make one over no files), the catalog still there."""
    (tmp_path / "empty").mkdir()
    script = pg_init_script(pg_scored, str(tmp_path / "empty"), monkeypatch)
    assert "holds no prediction parquet yet" in script
    assert not re.search(r"^CREATE .*VIEW", script, re.M)
    # the session's own tables still work: an unqualified CREATE goes to its own database
    results = duckdb_results(write_init(tmp_path, script),
                             "SELECT count(*) AS n FROM runs_overview; CREATE TABLE scratch AS "
                             "SELECT 7 AS a; SELECT database_name, a FROM duckdb_tables() "
                             "JOIN scratch ON table_name = 'scratch'", tmp_path / "home")
    assert results[0] == [{"n": 2}]
    assert results[-1] == [{"database_name": "memory", "a": 7}]


def test_pg_missing_postgres_extension_package(pg_scored: PgScored, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in pg_scored.env(str(pg_scored.local_outbox)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(sys.modules, "duckdb_extension_postgres_scanner", None)
    result = CliRunner().invoke(app, ["sql", "--duckdb-init"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.stderr.split())
    assert ("The DuckDB postgres extension package (duckdb-extension-postgres-scanner) is not "
            "installed. Install it: pip install 'duckdb-extension-postgres-scanner==1.5.5'"
            ) in text
    assert result.stdout == "" and PG_PASSWORD not in result.stderr


def test_pg_password_comes_from_libpq_sources(tmp_path: Path) -> None:
    """On a server that asks for a password (its own, so the shared one stays trust-only),
    as a role with SELECT only: the session connects with the password from PGPASSWORD,
    PGPASSFILE or ~/.pgpass and fails without one; a write smuggled past DuckDB's read-only
    check through postgres_execute is refused by the server."""
    from pgserver import PostgresServer

    with PostgresServer() as server:
        url = server.create_database("cat")
        catalog = Catalog(url)
        catalog.create_run("train").finish()
        catalog.close()
        with server.admin() as admin:
            admin.execute(f"CREATE ROLE reader LOGIN PASSWORD '{PG_PASSWORD}'")
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
        hba = server.datadir / "pg_hba.conf"  # reader needs a password, over TCP
        hba.write_text(f"host all reader 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")
        with server.admin() as admin:
            admin.execute("SELECT pg_reload_conf()")
        reader_url = url.replace("batchml@", f"reader:{PG_PASSWORD}@", 1)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url.replace("batchml@", "reader:wrong@", 1)).close()
        script = duckdb_init_sql(Settings(home=tmp_path / "h", catalog_url=reader_url))
        assert PG_PASSWORD not in script
        init = write_init(tmp_path, script)
        home = tmp_path / "home"
        home.mkdir()
        query = "SELECT count(*) AS n FROM runs_overview"

        missing = run_duckdb(init, query, home)
        assert missing.returncode != 0
        assert "no password supplied" in missing.stderr
        assert PG_PASSWORD not in missing.stderr + missing.stdout

        assert run_duckdb(init, query, home, {"PGPASSWORD": PG_PASSWORD}).returncode == 0
        port = url.split(":")[-1].split("/")[0]
        line = f"127.0.0.1:{port}:cat:reader:{PG_PASSWORD}\n"
        passfile = tmp_path / "pgpass"
        passfile.touch(mode=0o600)
        passfile.write_text(line)
        by_file = run_duckdb(init, query, home, {"PGPASSFILE": str(passfile)})
        assert by_file.returncode == 0, by_file.stderr
        (home / ".pgpass").touch(mode=0o600)
        (home / ".pgpass").write_text(line)
        by_home = run_duckdb(init, query, home)
        assert by_home.returncode == 0, by_home.stderr
        assert json.loads(by_home.stdout) == [{"n": 1}]

        smuggled = run_duckdb(init, "CALL postgres_execute('batchml_catalog', "
                              "'COMMIT; DELETE FROM tags')", home)
        assert smuggled.returncode != 0
        assert "permission denied for table tags" in smuggled.stderr
