"""7. Model integrity: a model artifact with one byte flipped, or swapped for another run's model
file, is refused before deserialisation (``ChecksumMismatch`` naming the run and the artifact);
a Keras model whose config was changed to hold a ``Lambda`` layer, or a lambda / foreign
function in a layer's config, is refused even when its checksum was updated to match.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import relhelp

from batchml import Catalog, ChecksumMismatch, Settings
from batchml.catalog import Ledger
from batchml.errors import ModelError
from batchml.sources import DirectorySource
from batchml.synthetic import synthetic_reviews
from batchml.worker import Worker

pytestmark = pytest.mark.reliability


@pytest.fixture
def private(rel_base: Any, tmp_path: Path) -> Settings:
    """A home with its own copy of the artifacts (the tests below damage them)."""
    home = tmp_path / "home"
    relhelp.copy_catalog(rel_base.catalog_file, home / "catalog.duckdb")
    shutil.copytree(rel_base.artifact_root, home / "artifacts")
    settings = Settings(home=home, catalog_path=home / "catalog.duckdb",
                        artifact_root=str(home / "artifacts"))
    cat = Catalog.from_settings(settings)
    cat.sql("UPDATE artifacts SET uri = replace(uri, ?, ?)",
            [str(rel_base.artifact_root), str(home / "artifacts")], write=True)
    cat.db.close()
    return settings


@pytest.fixture
def no_deserialisation(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to deserialise model bytes."""
    import skops.io

    import batchml.estimators as estimators

    calls: list[str] = []

    def refuse(name: str) -> Any:
        def fn(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called on unverified bytes")
        return fn

    monkeypatch.setattr(estimators, "load_estimator", refuse("load_estimator"))
    monkeypatch.setattr(skops.io, "loads", refuse("skops.io.loads"))
    monkeypatch.setattr(skops.io, "load", refuse("skops.io.load"))
    return calls


def model_file(cat: Catalog, run_id: str) -> tuple[str, Path]:
    run = cat.run(run_id)
    name = next(n for n, m in run.models.items() if m["is_primary"])
    artifact = run.models[name]["artifact"]
    return artifact, Path(run.artifacts[artifact]["uri"])


def assert_refused(cat: Catalog, run_id: str, artifact: str, calls: list[str]) -> None:
    with pytest.raises(ChecksumMismatch) as info:
        cat.run(run_id).load_model()
    message = str(info.value)
    assert run_id in message and artifact in message, message
    assert "refusing to load" in message
    assert calls == []  # refused before any deserialiser saw the bytes


def test_flipped_byte_is_refused_before_deserialisation(private: Settings,
                                                        rel_base: Any,
                                                        no_deserialisation: list[str]) -> None:
    cat = Catalog.from_settings(private)
    artifact, path = model_file(cat, rel_base.old_run)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_refused(cat, rel_base.old_run, artifact, no_deserialisation)


def test_model_swapped_for_another_runs_is_refused(private: Settings, rel_base: Any,
                                                   no_deserialisation: list[str]) -> None:
    cat = Catalog.from_settings(private)
    artifact, path = model_file(cat, rel_base.old_run)
    other_artifact, other = model_file(cat, rel_base.new_run)
    assert artifact == other_artifact and path != other
    shutil.copyfile(other, path)  # a valid model, but not this run's
    assert_refused(cat, rel_base.old_run, artifact, no_deserialisation)


def test_worker_with_tampered_model_scores_nothing(private: Settings, rel_base: Any) -> None:
    cat = Catalog.from_settings(private)
    _, path = model_file(cat, rel_base.old_run)
    path.write_bytes(path.read_bytes() + b"\0")
    settings = private.model_copy(update={"inbox": str(Path(private.home) / "inbox")})
    relhelp.land(Path(settings.inbox) / "a.parquet", synthetic_reviews(10))
    worker = Worker(cat, DirectorySource(settings.inbox, use_events=False), settings)
    worker.discover()
    with pytest.raises(ChecksumMismatch, match=rel_base.old_run):
        worker.run_batch()
    assert Ledger(cat).counts()["discovered"] == 1  # nothing claimed, nothing scored
    assert relhelp.committed_outputs(Path(settings.outbox)) == []


# --- Keras -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_bytes() -> dict[str, Any]:
    """A real batchml Keras model (1 epoch) and a Keras model holding a Lambda layer."""
    import tempfile

    import keras

    from batchml.estimators import make_estimator

    frame = synthetic_reviews(200, seed=4)
    est = make_estimator("keras_nbow", text_column="review", epochs=1).fit(frame,
                                                                          frame["labels"])
    inputs = keras.Input(shape=(1,))
    outputs = keras.layers.Lambda(lambda t: t * 2, name="evil")(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        keras.Model(inputs, outputs).save(Path(tmp) / "lambda.keras")
        with zipfile.ZipFile(Path(tmp) / "lambda.keras") as z:
            lambda_config = json.loads(z.read("config.json"))
    lambda_layer = next(layer for layer in lambda_config["config"]["layers"]
                        if layer["class_name"] == "Lambda")
    return {"estimator": est, "bytes": est.to_bytes(), "lambda_layer": lambda_layer}


def rewrite_config(data: bytes, edit: Any) -> bytes:
    """The same .keras zip with config.json changed by ``edit(config)``."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(body)
                edit(config)
                body = json.dumps(config).encode()
            dst.writestr(item, body)
    return out.getvalue()


def keras_run(cat: Catalog, est: Any) -> Any:
    run = cat.create_run("train")
    run.log_model("keras_nbow", est, primary=True)
    run.finish()
    return run


def tamper(cat: Catalog, run: Any, data: bytes, *, update_checksum: bool) -> None:
    """Replace the run's model bytes; optionally also the recorded sha256 (an attacker who
    can write the catalog too, or a model logged by a compromised trainer)."""
    from batchml.store import sha256_bytes

    artifact = run.models["keras_nbow"]["artifact"]
    Path(run.artifacts[artifact]["uri"]).write_bytes(data)
    if update_checksum:
        cat.sql("UPDATE artifacts SET sha256 = ?, bytes = ? WHERE run_id = ? AND name = ?",
                [sha256_bytes(data), len(data), run.id, artifact], write=True)
    run.refresh()


def _add_lambda_layer(layer: dict[str, Any]) -> Any:
    def edit(config: dict[str, Any]) -> None:
        layers = config["config"]["layers"]
        evil = json.loads(json.dumps(layer))
        dense = next(x for x in layers if x["class_name"] == "Dense")
        evil["inbound_nodes"] = dense["inbound_nodes"]
        layers.append(evil)
    return edit


def _nest_lambda_layer(layer: dict[str, Any]) -> Any:
    def edit(config: dict[str, Any]) -> None:
        layers = config["config"]["layers"]
        inner = {"module": "keras.layers", "class_name": "Dense",
                 "config": {"name": "inner", "layers": [json.loads(json.dumps(layer))]}}
        layers.append(inner)
    return edit


def _activation(value: Any) -> Any:
    def edit(config: dict[str, Any]) -> None:
        dense = next(x for x in config["config"]["layers"] if x["class_name"] == "Dense")
        dense["config"]["activation"] = value
    return edit


@pytest.mark.slow
def test_keras_model_with_lambda_is_refused(private: Settings, keras_bytes: dict[str, Any],
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog.from_settings(private)
    run = keras_run(cat, keras_bytes["estimator"])
    assert run.load_model().flavor == "keras"  # the untouched model loads
    layer = keras_bytes["lambda_layer"]
    lambda_fn = layer["config"]["function"]
    system_calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: system_calls.append(a) or 0)
    cases = {
        "lambda layer added": (_add_lambda_layer(layer), "outside the allowlist: Lambda"),
        "lambda layer nested": (_nest_lambda_layer(layer), "outside the allowlist: Lambda"),
        "lambda as activation": (_activation(lambda_fn), "lambda. This carries a potential "
                                 "risk of arbitrary code execution"),
        "os.system as activation": (_activation({"module": "os", "class_name": "function",
                                                 "config": "system",
                                                 "registered_name": "function"}),
                                    "Could not locate function 'system'"),
    }
    for label, (edit, fragment) in cases.items():
        data = rewrite_config(keras_bytes["bytes"], edit)
        # the config edited, checksum not updated: refused by the checksum
        tamper(cat, run, data, update_checksum=False)
        with pytest.raises(ChecksumMismatch, match=run.id):
            run.load_model()
        # the checksum updated too: refused by the layer allowlist / Keras safe mode
        tamper(cat, run, data, update_checksum=True)
        with pytest.raises(ModelError) as info:
            run.load_model()
        assert fragment in str(info.value), (label, str(info.value))
    assert system_calls == []
