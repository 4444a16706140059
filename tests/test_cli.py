"""The CLI: every command has help, errors are one clean line, SQL works."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from batchml.cli import app

runner = CliRunner()


def command_tree(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the click tree typer builds (groups included), with its path."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from command_tree(sub, (*path, name))


def _flat(text: str) -> str:
    """Help text as words: rich's box drawing removed, wrapped lines joined."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def help_problems(root: typer.Typer, path: tuple[str, ...], command: Any) -> list[str]:
    """What the help of ``command`` (at ``path`` under ``root``) fails to say."""
    where = " ".join(("batchml", *path))
    problems: list[str] = []
    purpose = _flat(command.help or "").split(". ")[0]
    if not purpose:
        problems.append(f"{where}: no help text")
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    for param in params:
        if not (getattr(param, "help", None) or "").strip():
            problems.append(f"{where}: {param.name} has no help text")
    result = runner.invoke(root, [*path, "--help"], env={"COLUMNS": "200"})
    if result.exit_code != 0 or "Usage" not in result.output:
        return [*problems, f"{where} --help failed: {result.output}"]
    shown = _flat(result.output)
    if purpose and purpose not in shown:
        problems.append(f"{where} --help does not state its purpose {purpose!r}")
    for param in params:
        names = [*param.opts, *getattr(param, "secondary_opts", [])]
        for name in names:
            if name not in shown:
                problems.append(f"{where} --help does not name {name}")
        text = _flat(getattr(param, "help", None) or "")
        if text and text not in shown:
            problems.append(f"{where} --help does not explain {names[0]}: {text!r}")
    for name in getattr(command, "commands", {}):
        if name not in shown:
            problems.append(f"{where} --help does not list its command {name!r}")
    return problems


COMMANDS = list(command_tree(typer.main.get_command(app)))


def test_the_command_tree_is_complete() -> None:
    paths = {path for path, _ in COMMANDS}
    for path in [(), ("init",), ("runs",), ("run", "show"), ("tag", "add"), ("tag", "rm"),
                 ("sql",), ("doctor",), ("train",), ("predict",), ("watch",), ("serve",),
                 ("reprocess",), ("files",), ("status",)]:
        assert path in paths


@pytest.mark.parametrize(("path", "command"), COMMANDS,
                         ids=[" ".join(("batchml", *p)) for p, _ in COMMANDS])
def test_every_command_has_help(path: tuple[str, ...], command: Any) -> None:
    assert help_problems(app, path, command) == []


def _toy_app() -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    def good(name: str = typer.Option("x", "--name", help="A name.")) -> None:
        """Do a good thing."""

    @toy.command()
    def bare(count: int = typer.Option(1, "--count")) -> None:
        pass

    @toy.command()
    def terse(flag: bool = typer.Option(False, "--flag")) -> None:
        """Say little."""

    return toy


@pytest.mark.parametrize(("name", "expected"), [
    ("good", []),
    ("bare", ["batchml bare: no help text", "batchml bare: count has no help text"]),
    ("terse", ["batchml terse: flag has no help text"]),
])
def test_a_command_without_help_is_caught(name: str, expected: list[str]) -> None:
    toy = _toy_app()
    command = typer.main.get_command(toy).commands[name]  # type: ignore[attr-defined]
    assert help_problems(toy, (name,), command) == expected


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
