"""The curated public API stays small, documented and importable without the heavy stack."""

import json
import subprocess
import sys

import pytest

import batchml

CURATED = [
    "AliasConflict",
    "ArtifactNotFound",
    "BatchMLError",
    "Catalog",
    "CatalogBusy",
    "ChecksumMismatch",
    "DataError",
    "ModelNotFound",
    "ModelVersion",
    "PythonModel",
    "PythonModelContext",
    "RegisteredModel",
    "RegistryError",
    "Run",
    "RunCannotScore",
    "RunNotFound",
    "SchemaMismatch",
    "Settings",
    "is_transient",
    "open_store",
]

# Imported lazily by the code paths that need them (seconds of cold start each).
HEAVY = ("pandas", "sklearn", "tensorflow", "keras", "prefect")


def test_all_is_exactly_the_curated_list() -> None:
    assert batchml.__all__ == CURATED  # sorted, no duplicates, nothing added by accident


@pytest.mark.parametrize("name", CURATED)
def test_every_exported_name_is_public_and_documented(name: str) -> None:
    assert not name.startswith("_")
    obj = getattr(batchml, name)
    assert obj.__module__.split(".")[0] == "batchml", obj.__module__  # ours, not a re-export
    # its own docstring (a class's __doc__ is not inherited), saying something
    assert obj.__doc__ is not None and len(obj.__doc__.strip()) > 10, f"{name} is undocumented"


PROBE = """
import json, sys
before = {{m.split(".")[0] for m in sys.modules}}
from batchml import *
import batchml
{after}
missing = [n for n in batchml.__all__ if n not in globals()]
print(json.dumps({{"missing": missing, "all": batchml.__all__,
                  "new": sorted({{m.split(".")[0] for m in sys.modules}} - before)}}))
"""


def _probe(after: str = "") -> dict:
    """What ``from batchml import *`` (then ``after``) imports, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(after=after)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_in_a_fresh_process_brings_every_name_and_no_heavy_stack() -> None:
    found = _probe()
    assert found["all"] == CURATED and found["missing"] == []
    assert "batchml" in found["new"] and "duckdb" in found["new"]  # the probe sees imports
    assert [m for m in HEAVY if m in found["new"]] == []


@pytest.mark.parametrize("module", ["pandas", "sklearn"])
def test_the_heavy_stack_probe_can_fail(module: str) -> None:
    # the same probe, with a heavy import after batchml's, reports it: the check above is
    # not vacuous
    found = _probe(f"import {module}")
    assert module in found["new"] and found["missing"] == []


def test_every_error_derives_from_base_and_a_builtin() -> None:
    import inspect

    from batchml import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.BatchMLError) and c is not errors.BatchMLError]
    assert len(classes) >= 10
    for cls in classes:
        builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins"
                         and b not in (Exception, BaseException, object)]
        assert builtin_bases, cls
        assert isinstance(cls.transient, bool)


def test_transient_marks() -> None:
    from batchml import errors

    assert errors.is_transient(errors.CatalogBusy("x"))
    assert errors.is_transient(errors.StorageUnavailable("x"))
    assert not errors.is_transient(errors.ChecksumMismatch("x"))
    assert not errors.is_transient(errors.SchemaMismatch("x"))
    assert errors.is_transient(ConnectionResetError())
    assert not errors.is_transient(KeyError("x"))
