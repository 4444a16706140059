"""Third-party model flavors: a throwaway package, installed for real with pip into a temp
directory, declares flavors in the entry point group ``batchml.flavors``; batchml finds them
through :mod:`importlib.metadata`, records a run with one, and scores a file with it (through
``batchml predict`` and through the scorer child process), writing the flavor's own output
columns. Broken entry points are skipped with a warning naming them, and never break the
built-in flavors (docs/flavors.md)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml.errors import ConfigError, ModelError
from batchml.estimators import (
    BaselineEstimator,
    SklearnEstimator,
    builtin_registry,
    load_estimator,
    make_estimator,
)
from batchml.estimators.registry import ENTRY_POINT_GROUP, FlavorRegistry

KEYWORD_MODULE = '''
"""A toy batchml flavor: the positive class when the text holds a keyword."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from batchml.errors import ModelError
from batchml.estimators import Estimator


class KeywordEstimator(Estimator):
    flavor: ClassVar[str] = "keyword"
    file_suffix: ClassVar[str] = ".keyword.json"
    candidates: ClassVar[dict[str, dict[str, Any]]] = {"keyword_match": {"keyword": "great"}}
    text_candidates: ClassVar[frozenset[str]] = frozenset({"keyword_match"})

    def _matches(self, texts: Any) -> np.ndarray:
        word = str(self.params["keyword"]).lower()
        return np.array([t is not None and word in str(t).lower() for t in texts], dtype=bool)

    def _fit(self, x: Any, y: np.ndarray, validation: Any) -> None:
        if len(self.classes_) != 2:
            raise ValueError("the keyword flavor is binary")

    def _predict_proba(self, x: Any) -> np.ndarray:
        hit = self._matches(x[self.text_column].tolist())
        positive = np.where(hit, 0.9, 0.1)
        return np.column_stack([1.0 - positive, positive])

    def output_columns(self, batch: Any, proba: np.ndarray,
                       index: np.ndarray) -> dict[str, pa.Array]:
        cols = super().output_columns(batch, proba, index)
        texts = batch.column(self.text_column).to_pylist()
        word = str(self.params["keyword"])
        cols["matched_keyword"] = pa.array(
            [word if hit else None for hit in self._matches(texts)], pa.string())
        return cols

    def to_bytes(self) -> bytes:
        return json.dumps(self._meta()).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeywordEstimator:
        try:
            meta = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"not a keyword model ({exc})") from exc
        return cls._from_meta(meta)
'''

BROKEN_MODULES = {
    "batchml_broken_import": "import no_such_module_for_batchml_tests  # fails\n",
    "batchml_not_estimator": "class NotAnEstimator:\n    flavor = 'not_estimator'\n",
    "batchml_clash": "from batchml.estimators import BaselineEstimator\n\n\n"
                     "class Clash(BaselineEstimator):\n    flavor = 'sklearn'\n",
}
BROKEN_ENTRY_POINTS = {
    "broken_import": "batchml_broken_import:Whatever",
    "not_estimator": "batchml_not_estimator:NotAnEstimator",
    "sklearn": "batchml_clash:Clash",
}


def _package(root: Path, dist: str, modules: dict[str, str], entry_points: dict[str, str]
             ) -> Path:
    """A source tree of distribution ``dist``: one module per entry of ``modules``, and
    ``entry_points`` in group batchml.flavors, built by setuptools from a pyproject."""
    root.mkdir(parents=True)
    eps = "\n".join(f'{name} = "{value}"' for name, value in entry_points.items())
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1"

        [tool.setuptools]
        py-modules = {json.dumps(sorted(modules))}

        [project.entry-points."{ENTRY_POINT_GROUP}"]
        """) + eps + "\n")
    for name, text in modules.items():
        (root / f"{name}.py").write_text(text)
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the two throwaway packages are pip-installed into (offline, no build
    isolation: setuptools comes from this venv): ``batchml-keyword`` (a working flavor) and
    ``batchml-broken-flavors`` (three bad entry points)."""
    tmp = tmp_path_factory.mktemp("flavors")
    good = _package(tmp / "keyword", "batchml-keyword", {"batchml_keyword": KEYWORD_MODULE},
                    {"keyword": "batchml_keyword:KeywordEstimator"})
    bad = _package(tmp / "broken", "batchml-broken-flavors", BROKEN_MODULES,
                   BROKEN_ENTRY_POINTS)
    target = tmp / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target),
         str(good), str(bad)],
        capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    # installed for real: dist-info with the entry points, not a path hack
    eps = sorted(p.name for p in target.glob("*.dist-info/entry_points.txt"))
    assert len(eps) == 2, sorted(p.name for p in target.iterdir())
    return target


def _run(site: Path, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """``python args`` with the throwaway site on PYTHONPATH (so importlib.metadata sees it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, env=env, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


RECORD = """
import sys
import pandas as pd
from batchml import Catalog, Settings
from batchml.estimators import default_registry, make_estimator

frame = pd.DataFrame({"review": ["a great film", "dull", "GREAT cast", "meh", "not great",
                                 "boring"]})
labels = [1, 0, 1, 0, 1, 0]
est = make_estimator("keyword_match", text_column="review").fit(frame, labels)
assert type(est).__module__ == "batchml_keyword", type(est)
catalog = Catalog.from_settings(Settings(home=sys.argv[1]))
run = catalog.create_run("train")
run.log_model("keyword_match", est, primary=True)
run.finish("completed")
run.add_tag("deployment_candidate")
print(run.id)
"""

ISOLATED = """
import sys
from pathlib import Path
from batchml import Catalog, Settings
from batchml.sources import DirectorySource
from batchml.worker import Worker

settings = Settings(home=sys.argv[1], inbox=sys.argv[2], outbox=sys.argv[3])
source = DirectorySource(settings.inbox, use_events=False, settle_s=0)
worker = Worker(Catalog.from_settings(settings), source, settings, run_id=sys.argv[4],
                isolate=True)
try:
    worker.discover()
    rep = worker.run_batch(limit=4)
finally:
    worker.close()
assert worker.scorer is not None
print(rep.outcomes[0].status, rep.outcomes[0].error, rep.outcomes[0].output_uri)
"""

TEXTS = ["Great service", "awful", "", "it was great", "fine"]


def _input(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(TEXTS))),
                             "review": pa.array(TEXTS, pa.string())}), path)
    return path


def _check_output(table: pa.Table, run_id: str) -> None:
    got = table.to_pylist()
    hits = ["great" in t.lower() for t in TEXTS]
    assert [r["id"] for r in got] == list(range(len(TEXTS)))  # carried through
    assert [r["label"] for r in got] == [int(h) for h in hits]
    assert [r["proba"] for r in got] == pytest.approx([0.9 if h else 0.1 for h in hits])
    assert [r["matched_keyword"] for r in got] == ["great" if h else None for h in hits]
    assert {r["model_flavor"] for r in got} == {"keyword"}
    assert {r["model_run_id"] for r in got} == {run_id}
    # the flavor's columns sit where the default ones do: after the carried-through columns,
    # before the lineage
    names = table.column_names
    assert names[:6] == ["row_index", "id", "label", "proba", "proba_0", "proba_1"]
    assert names[6] == "matched_keyword" and names[7] == "model_run_id"


@pytest.fixture(scope="module")
def recorded(site: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A batchml home whose catalog (DuckDB) holds a completed, tagged run whose primary
    model is of the toy ``keyword`` flavor; (home, run id)."""
    home = tmp_path_factory.mktemp("home")
    run_id = _run(site, ["-c", RECORD, str(home)]).stdout.strip().splitlines()[-1]
    return home, run_id


def test_batchml_predict_scores_with_a_flavor_from_an_entry_point(
        recorded: tuple[Path, str], site: Path, tmp_path: Path) -> None:
    home, run_id = recorded
    source = _input(tmp_path / "in" / "reviews.parquet")
    out = tmp_path / "out"
    _run(site, ["-c", "from batchml.cli import main; main()", "predict", str(source),
                "--run", run_id, "--output", str(out), "--home", str(home)])
    outputs = sorted(out.rglob("*.parquet"))
    assert len(outputs) == 1, outputs
    _check_output(pq.read_table(outputs[0]), run_id)


def test_the_scorer_child_loads_the_flavor_too(recorded: tuple[Path, str], site: Path,
                                               tmp_path: Path) -> None:
    home, run_id = recorded
    _input(tmp_path / "inbox" / "reviews.parquet")
    done = _run(site, ["-c", ISOLATED, str(home), str(tmp_path / "inbox"),
                       str(tmp_path / "outbox"), run_id])
    status, error, output = done.stdout.strip().splitlines()[-1].split(" ", 2)
    assert status == "scored", error
    _check_output(pq.read_table(output), run_id)


def test_without_the_package_the_flavor_is_unknown(recorded: tuple[Path, str]) -> None:
    # this process never saw the throwaway site: the recorded model names a flavor it lacks
    from batchml import Catalog, Settings

    home, run_id = recorded
    with pytest.raises(ModelError, match="Unknown model flavor 'keyword'.*baseline, keras"):
        Catalog.from_settings(Settings(home=home)).run(run_id).load_model()


PROBE = """
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("batchml").addHandler(Keep())
from batchml.estimators import default_registry, load_estimator, make_estimator

registry = default_registry()
try:
    cls = registry.get(sys.argv[1])
    error = None
    got = f"{cls.__module__}.{cls.__qualname__}"
except Exception as exc:
    error, got = f"{type(exc).__name__}: {exc}", None
# the built-ins still work, in the same registry and through the module functions
import pandas as pd
frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
est = make_estimator("baseline", registry=registry).fit(frame, [0, 1, 1, 1])
again = load_estimator("baseline", est.to_bytes(), registry=registry)
assert again.predict(frame).tolist() == [1, 1, 1, 1]
keyword = registry.get("keyword").__module__
print(json.dumps({"error": error, "got": got, "warnings": records, "names": registry.names(),
                  "keyword": keyword}))
"""


@pytest.mark.parametrize(("flavor", "error"), [
    ("broken_import", "ModelError: Model flavor 'broken_import' could not be loaded: entry "
     "point 'broken_import = batchml_broken_import:Whatever' (distribution "
     "batchml-broken-flavors 0.1) in group 'batchml.flavors': importing it failed "
     "(ModuleNotFoundError: No module named 'no_such_module_for_batchml_tests')."),
    ("not_estimator", "ModelError: Model flavor 'not_estimator' could not be loaded: entry "
     "point 'not_estimator = batchml_not_estimator:NotAnEstimator' (distribution "
     "batchml-broken-flavors 0.1) in group 'batchml.flavors': it loads <class "
     "'batchml_not_estimator.NotAnEstimator'>, which is not a subclass of "
     "batchml.estimators.Estimator."),
    ("sklearn", None),  # the built-in wins; the clashing entry point is skipped
])
def test_a_broken_entry_point_is_skipped_with_a_warning_naming_it(
        site: Path, flavor: str, error: str | None) -> None:
    found = json.loads(_run(site, ["-c", PROBE, flavor]).stdout.strip().splitlines()[-1])
    if error is None:
        assert found["got"] == "batchml.estimators.sklearn_models.SklearnEstimator"
    else:
        assert found["error"].startswith(error), found["error"]
        assert "Fix or uninstall the package" in found["error"]
    point = f"entry point '{flavor} = {BROKEN_ENTRY_POINTS[flavor]}'"
    warned = [w for w in found["warnings"] if point in w]
    assert len(warned) == 1, found["warnings"]  # once, naming the entry point and the fix
    assert warned[0].startswith(f"Skipping model flavor {flavor!r}: {point}")
    assert "Fix or uninstall" in warned[0]
    if flavor == "sklearn":
        assert "taken by batchml.estimators.sklearn_models.SklearnEstimator" in warned[0]
    # the built-ins and the working third-party flavor are all there
    assert found["names"] == ["baseline", "keras", "sklearn", "python", "encoder", "keyword"]
    assert found["keyword"] == "batchml_keyword"


# --- the registry object, in this process -----------------------------------------------------


def test_builtin_lookups_do_not_read_entry_points() -> None:
    def boom() -> list[EntryPoint]:
        raise AssertionError("entry points read for a built-in name")

    registry = builtin_registry(discover=boom)
    assert registry.get("sklearn") is SklearnEstimator
    assert registry.get("baseline") is BaselineEstimator
    assert registry.candidate("tabular_rf") is SklearnEstimator
    assert registry.candidate("keras_nbow").flavor == "keras"  # keras declared its candidates


def test_unreadable_metadata_leaves_the_builtins(caplog: pytest.LogCaptureFixture) -> None:
    def unreadable() -> list[EntryPoint]:
        raise OSError("metadata on fire")

    registry = builtin_registry(discover=unreadable)
    with caplog.at_level(logging.WARNING, logger="batchml.estimators"):
        assert registry.names() == ["baseline", "keras", "sklearn", "python", "encoder"]
    assert "metadata on fire" in caplog.text


def test_register_checks_the_class() -> None:
    registry = FlavorRegistry()
    registry.register(BaselineEstimator)
    with pytest.raises(ConfigError, match="registered already"):
        registry.register(BaselineEstimator)
    with pytest.raises(ConfigError, match="not a subclass"):
        registry.register(dict)

    class Twin(BaselineEstimator):
        flavor = "twin"

    with pytest.raises(ConfigError, match="Candidate 'baseline' of flavor 'twin'"):
        registry.register(Twin)

    class Fresh(BaselineEstimator):
        flavor = "fresh"
        candidates = {"fresh": {}}

    assert registry.register(Fresh) is Fresh
    assert registry.names() == ["baseline", "fresh"]
    est = make_estimator("fresh", registry=registry)
    assert type(est) is Fresh
    with pytest.raises(ConfigError, match="Unknown candidate 'sklearn_text'"):
        make_estimator("sklearn_text", registry=registry)


def test_a_flavor_may_not_answer_to_another_name() -> None:
    class Misnamed(BaselineEstimator):
        flavor = "other"
        candidates = {"misnamed": {}}

    registry = FlavorRegistry()
    registry.register_lazy("misnamed", lambda: Misnamed, source="entry point 'misnamed = x:y'")
    with pytest.raises(ModelError, match="has flavor 'other', not 'misnamed'"):
        registry.get("misnamed")


def test_default_output_columns_are_unchanged() -> None:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    binary = make_estimator("baseline").fit(frame, ["no", "yes", "yes"])
    proba = binary.predict_proba(frame)
    cols = binary.output_columns(pa.table(frame), proba, binary.label_index(proba))
    assert list(cols) == ["label", "proba", "proba_no", "proba_yes"]
    assert cols["label"].to_pylist() == ["yes"] * 3
    multi = make_estimator("baseline").fit(frame, [3, 1, 2])
    proba = multi.predict_proba(frame)
    cols = multi.output_columns(pa.table(frame), proba, multi.label_index(proba))
    assert list(cols) == ["label", "proba_1", "proba_2", "proba_3"]
    np.testing.assert_allclose(cols["proba_1"].to_numpy(), [1 / 3] * 3)
    assert load_estimator("baseline", multi.to_bytes()).output_columns(
        pa.table(frame), proba, multi.label_index(proba))["label"].equals(cols["label"])
