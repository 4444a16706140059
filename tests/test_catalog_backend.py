"""The catalog seam: backends are registered by URL scheme, and SQL lives in the backend only.

The object model (``Catalog``, ``Run``, ``Ledger``) talks to ``CatalogBackend``; the DuckDB
backend implements every method of it, and no module outside ``batchml/catalog/`` (nor the
object model inside it) writes SQL text.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from batchml import Catalog
from batchml.catalog import CatalogBackend, Ledger, open_backend, register_backend
from batchml.catalog import backend as backend_module
from batchml.catalog.duckdb_backend import DuckDBBackend
from batchml.errors import ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "batchml"
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|CHECKPOINT|ATTACH)\b")
# the modules that hold the statements; everything else calls them
SQL_HOMES = {"catalog/_db.py", "catalog/duckdb_backend.py", "catalog/duckdb_ledger.py",
             "catalog/duckdb_init.py", "catalog/migrations/__init__.py", "catalog/_pg.py",
             "catalog/postgres_backend.py", "catalog/postgres_ledger.py",
             "catalog/registry_sql.py", "catalog/labels_sql.py",
             "catalog/backfill_sql.py", "catalog/metrics_sql.py",
             "catalog/drift_sql.py"}


def _sql_strings(path: Path) -> list[str]:
    """String literals of ``path`` (f-string parts included) that read as SQL, docstrings
    left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and SQL.search(node.value)]


def test_sql_only_in_the_backend_modules() -> None:
    found = {str(p.relative_to(PACKAGE)): _sql_strings(p) for p in PACKAGE.rglob("*.py")
             if str(p.relative_to(PACKAGE)) not in SQL_HOMES}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_probe_sees_sql() -> None:
    assert _sql_strings(PACKAGE / "catalog" / "duckdb_backend.py")
    assert not _sql_strings(PACKAGE / "catalog" / "model.py")


def test_both_backends_implement_the_whole_interface() -> None:
    from batchml.catalog.postgres_backend import PostgresBackend

    assert CatalogBackend.__abstractmethods__  # the interface is abstract ...
    for backend in (DuckDBBackend, PostgresBackend):  # ... and each backend fills it
        assert not backend.__abstractmethods__
        assert issubclass(backend, CatalogBackend)


def test_a_path_and_a_duckdb_url_open_one_shared_database(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    by_path = Catalog(path)
    by_url = Catalog(f"duckdb://{path}")
    assert isinstance(by_path.backend, DuckDBBackend)
    assert by_url.path == path and by_url.db is by_path.db  # one connection per file
    run = by_path.create_run("train", metrics={"auc": 0.5}, tags=["x"])
    assert by_url.run(run.id).tags == {"x"}
    by_path.close()


def test_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nosuch://"):
        Catalog("nosuch://host/db")


def test_a_registered_backend_opens_its_urls(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "_BACKENDS", dict(backend_module._BACKENDS))
    opened: list[tuple[str, dict[str, object]]] = []

    def factory(location: str, **options: object) -> CatalogBackend:
        opened.append((location, options))
        return DuckDBBackend(tmp_path / "toy.duckdb")

    register_backend("toy", factory)
    cat = Catalog("toy://somewhere/catalog", lock_timeout_s=5)
    assert opened == [("toy://somewhere/catalog",
                       {"lock_timeout_s": 5, "published_path": None, "publish_interval_s": 1.0})]
    assert cat.path == tmp_path / "toy.duckdb" and cat.create_run("train").id == "train/1"
    cat.close()


def test_an_opened_backend_can_be_given(tmp_path: Path) -> None:
    backend = open_backend(tmp_path / "given.duckdb")
    cat = Catalog("ignored", backend=backend)
    assert cat.backend is backend and cat.path == tmp_path / "given.duckdb"
    cat.close()


def test_the_catalog_methods_that_replaced_callers_sql(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb")
    first = cat.create_run("train", tags=["keep"])
    first.finish()
    cat.create_run("train").finish("failed", "boom")
    cat.create_run("other")
    overview = cat.runs_overview()
    assert list(overview["run_id"]) == ["other/1", "train/2", "train/1"]
    assert list(cat.runs_overview("train", limit=1)["run_id"]) == ["train/2"]
    assert list(cat.runs_overview(tag="keep")["run_id"]) == ["train/1"]
    assert cat.recent_file_errors() == {"failed": 0, "quarantined": 0}
    assert Ledger(cat).counts()["discovered"] == 0
    cat.publish()
    assert cat.published_at() is not None
    assert cat.schema_version() >= 4
    cat.close()
