"""One settings object, resolved at the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from batchml import Settings


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.catalog_file == tmp_path / "catalog.duckdb"
    assert s.inbox == str(tmp_path / "inbox") and s.outbox == str(tmp_path / "outbox")
    assert s.artifact_root == str(tmp_path / "artifacts")


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHML_HOME", str(tmp_path))
    monkeypatch.setenv("BATCHML_ARTIFACT_ROOT", "s3://bucket/prefix")
    monkeypatch.setenv("BATCHML_LEASE_S", "12.5")
    s = Settings()
    assert (s.home, s.artifact_root, s.lease_s) == (tmp_path, "s3://bucket/prefix", 12.5)


def test_explicit_values_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHML_MODEL_TAG", "from-env")
    assert Settings(model_tag="explicit").model_tag == "explicit"


def test_every_field_is_described() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHML_LOCK_TIMEOUT_S", "-1")
    with pytest.raises(ValidationError, match="lock_timeout_s"):
        Settings()


def test_importing_batchml_reads_no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    code = ("import os; os.environ['BATCHML_LEASE_S']='not-a-number'; import batchml, "
            "batchml.cli; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
