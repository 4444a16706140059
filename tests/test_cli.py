"""The CLI: every command has help, errors are one clean line, SQL works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from batchml.cli import app

runner = CliRunner()


def all_commands(group: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix + (c.name or c.callback.__name__.replace("_", "-"),)  # type: ignore[union-attr]
             for c in group.registered_commands]
    for sub in group.registered_groups:
        found += all_commands(sub.typer_instance, prefix + (sub.name,))  # type: ignore[arg-type,operator]
    return found


@pytest.mark.parametrize("command", all_commands(app), ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


def test_top_level_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    for name in ("init", "runs", "run", "tag", "sql", "doctor"):
        assert name in result.output


@pytest.fixture
def home(tmp_path: Path) -> Path:
    result = runner.invoke(app, ["init", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_tag_run_and_query(home: Path) -> None:
    from batchml import Catalog

    cat = Catalog(home / "catalog.duckdb")
    run = cat.create_run("train")
    run.log_metrics({"accuracy": 0.75})
    run.finish()
    cat.db.close()
    assert runner.invoke(app, ["tag", "add", "train/1", "deployment_candidate",
                               "--home", str(home)]).exit_code == 0
    result = runner.invoke(app, ["sql", "select run_id, accuracy, tags from runs_overview",
                                 "--format", "json", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0]) == {
        "run_id": "train/1", "accuracy": 0.75, "tags": "deployment_candidate"}
    shown = runner.invoke(app, ["run", "show", "train/1", "--home", str(home)])
    assert "deployment_candidate" in shown.output and "accuracy" in shown.output
    assert "train/1" in runner.invoke(app, ["runs", "--home", str(home)]).output
    csv = runner.invoke(app, ["sql", "select 1 as a", "--format", "csv", "--home", str(home)])
    assert csv.stdout == "a\n1\n"


@pytest.mark.parametrize(("args", "message"), [
    (["run", "show", "train/99"], "error: No run 'train/99'"),
    (["tag", "add", "train/99", "x"], "error: No run 'train/99'"),
    (["tag", "add", "train/1", "bad tag"], "error: Invalid tag 'bad tag'"),
    (["sql", "select * from nowhere"], "SQL error"),
    (["sql", "delete from runs"], "read-only"),
])
def test_errors_are_one_clean_line(home: Path, args: list[str], message: str) -> None:
    from batchml import Catalog

    Catalog(home / "catalog.duckdb").create_run("train").finish()
    result = runner.invoke(app, [*args, "--home", str(home)])
    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_doctor_reports_ok(home: Path) -> None:
    result = runner.invoke(app, ["doctor", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output


COLD_PREDICT = """
import sys
from batchml.cli import app
try:
    app(["predict", sys.argv[1]])
except SystemExit as exc:
    assert not exc.code, exc.code
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.slow
def test_predict_in_a_fresh_process_imports_no_heavy_stack(tagged_home, tmp_path: Path) -> None:
    """Cold start: `batchml predict` with an exported text model needs neither
    scikit-learn, skops, TensorFlow nor Prefect (each costs ~0.5-5 s to import).

    pandas is not asserted: DuckDB 1.5's Python binding imports it (and numpy) the first
    time a statement is bound to parameters, ~0.37 s (`python -X importtime`); 2.0 did not.
    batchml itself still imports no pandas on this path; B7 measures the cold start."""
    import os
    import subprocess
    import sys

    from batchml.synthetic import synthetic_reviews

    data = tmp_path / "cold.parquet"
    synthetic_reviews(200, seed=5).to_parquet(data)
    env = {**os.environ, "BATCHML_HOME": str(tagged_home.home)}
    done = subprocess.run([sys.executable, "-c", COLD_PREDICT, str(data)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scored" in done.stdout
    modules = set(done.stdout.strip().splitlines()[-1].split())
    assert "batchml" in modules and "pyarrow" in modules
    heavy = {"sklearn", "skops", "tensorflow", "keras", "prefect"}
    assert not modules & heavy, sorted(modules & heavy)
