"""One model reference and one resolver: parsing, and which failures are transient (nothing
tagged yet: wait) and which are terminal (a named run that cannot score: say so at once)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from batchml import Catalog, ModelNotFound, Settings
from batchml.errors import ConfigError, RunCannotScore, is_transient
from batchml.resolve import ModelRef, ModelResolver
from batchml.scoring import ModelCache

BATCHML = str(Path(sys.executable).parent / "batchml")


@pytest.mark.parametrize(("text", "kind", "name", "qualifier"), [
    ("train/12", "run", "train/12", None),
    ("run:train/12", "run", "train/12", None),
    ("run:other/3", "run", "other/3", None),
    ("tag:deployment_candidate", "tag", "deployment_candidate", None),
    ("  tag:champion ", "tag", "champion", None),
    ("reviews@champion", "alias", "reviews", "champion"),
    ("reviews/3", "version", "reviews", "3"),
])
def test_parse_valid(text: str, kind: str, name: str, qualifier: str | None) -> None:
    ref = ModelRef.parse(text)
    assert (ref.kind, ref.name, ref.qualifier) == (kind, name, qualifier)
    assert ModelRef.parse(str(ref)) == ref or ref.kind == "run"  # run:X prints as X
    assert ref.run_id == (name if kind == "run" else None)
    assert ref.tag == (name if kind == "tag" else None)


def test_parse_flow_decides_run_or_version() -> None:
    assert ModelRef.parse("nightly/4", flow="nightly").kind == "run"
    assert ModelRef.parse("train/4", flow="nightly").kind == "version"


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty model reference"),
    ("   ", "empty model reference"),
    ("deployment_candidate", "is not a model reference"),
    ("tag:", "is not a tag"),
    ("tag: spaced", "is not a tag"),
    ("run:train", "is not a run id"),
    ("run:train/x", "is not a run id"),
    ("@champion", "is not a model alias reference"),
    ("reviews@", "is not a model alias reference"),
    ("train/", "is not a model reference"),
    ("a b/3", "is not a model reference"),
])
def test_parse_invalid(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ModelRef.parse(text)
    assert "train/12" in str(info.value) or "e.g." in str(info.value)  # says what to write


@pytest.mark.parametrize(("run_id", "tag", "default", "expected"), [
    ("train/3", None, "deployment_candidate", ModelRef("run", "train/3")),
    ("train/3", "other", "deployment_candidate", ModelRef("run", "train/3")),  # run wins
    (None, "other", "deployment_candidate", ModelRef("tag", "other")),
    (None, None, "deployment_candidate", ModelRef("tag", "deployment_candidate")),
])
def test_from_options(run_id: str | None, tag: str | None, default: str,
                      expected: ModelRef) -> None:
    assert ModelRef.from_options(run_id, tag, default_tag=default) == expected


def test_from_options_needs_a_choice() -> None:
    with pytest.raises(ConfigError, match="No model chosen"):
        ModelRef.from_options()
    with pytest.raises(ConfigError, match="is not a run id"):
        ModelRef.from_options("garbage")


def _registered_run(catalog: Catalog) -> str:
    run = catalog.create_run("train")
    catalog.backend.record_model(run.id, "m", flavor="baseline", signature={},
                                 artifact="model.bin", primary=True)
    run.finish()
    return run.id


def test_registry_refs_resolve_through_the_registry(catalog: Catalog) -> None:
    first, second = _registered_run(catalog), _registered_run(catalog)
    model = catalog.model("reviews")
    model.register(first), model.register(second)
    resolver = ModelResolver(catalog)
    assert resolver.run(ModelRef.parse("reviews/1")).id == first
    model.set_alias("champion", 2, expect=None)
    run, name = resolver.resolve(ModelRef.parse("reviews@champion"))
    assert (run.id, name) == (second, "m")
    model.set_alias("champion", 1, expect=2)
    assert resolver.run(ModelRef.parse("reviews@champion")).id == first


@pytest.mark.parametrize(("text", "error", "message", "transient"), [
    ("reviews@champion", ModelNotFound, r"reviews@champion is not set: .* Promote a version",
     True),
    ("unknown@champion", ModelNotFound, "unknown@champion is not set", True),
    ("reviews@staging", ModelNotFound, "--alias staging", True),
    ("reviews/7", RunCannotScore, "Model 'reviews' has no version 7", False),
    ("unknown/1", RunCannotScore, "Model 'unknown' has no version 1", False),
])
def test_registry_refs_that_resolve_to_nothing(catalog: Catalog, text: str, error: type,
                                                message: str, transient: bool) -> None:
    """An alias not set yet is transient (files wait for a promotion); a version that is not
    there is terminal (named explicitly: waiting cannot create it)."""
    catalog.model("reviews").register(_registered_run(catalog))
    with pytest.raises(error, match=message) as info:
        ModelCache(catalog).resolve(ModelRef.parse(text))
    assert is_transient(info.value) is transient


def test_from_options_model_reference() -> None:
    assert ModelRef.from_options(model="reviews@champion") == ModelRef("alias", "reviews",
                                                                       "champion")
    assert ModelRef.from_options("train/2", model="reviews@champion").kind == "run"
    assert ModelRef.from_options(default_model="reviews/2", default_tag="t") == ModelRef(
        "version", "reviews", "2")
    assert ModelRef.from_options(tag="t", default_model="reviews/2").tag == "t"  # tag given


def test_nothing_tagged_is_transient(catalog: Catalog) -> None:
    catalog.create_run("train").finish()  # completed, but not tagged
    with pytest.raises(ModelNotFound, match="tagged 'deployment_candidate'") as info:
        ModelCache(catalog).resolve(ModelRef.for_tag("deployment_candidate"))
    assert is_transient(info.value)


@pytest.mark.parametrize(("status", "message"), [
    ("failed", r"Run train/1 failed"),
    ("running", r"Run train/1 is still running"),
    ("completed", r"Run train/1 is completed but has no primary model"),
])
def test_named_run_that_cannot_score_is_terminal(catalog: Catalog, status: str,
                                                 message: str) -> None:
    run = catalog.create_run("train", tags=["deployment_candidate"])
    if status != "running":
        run.finish(status)
    start = time.monotonic()
    with pytest.raises(RunCannotScore, match=message) as info:
        ModelCache(catalog).resolve(run_id=run.id)
    assert time.monotonic() - start < 5
    assert not is_transient(info.value)
    assert isinstance(info.value, LookupError)
    assert (info.value.run_id, info.value.status) == (run.id, status)
    assert "batchml run" in str(info.value)  # says what to do next


def test_tagged_run_without_model_stays_transient(catalog: Catalog) -> None:
    catalog.create_run("train", tags=["deployment_candidate"]).finish()
    with pytest.raises(ModelNotFound, match="has no primary model") as info:
        ModelCache(catalog).resolve(tag="deployment_candidate")
    assert is_transient(info.value)


def test_run_that_does_not_exist_is_terminal(catalog: Catalog) -> None:
    with pytest.raises(RunCannotScore, match="Run train/99 does not exist") as info:
        ModelResolver(catalog).resolve(ModelRef.parse("train/99"))
    assert info.value.status == "missing"
    assert not is_transient(info.value)


def _cli(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}
    env.update(BATCHML_HOME=str(home), BATCHML_ISOLATE_SCORING="false", COLUMNS="200")
    return subprocess.run([BATCHML, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_watch_failed_run_exits_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    cat = Catalog.from_settings(settings)
    run = cat.create_run("train")
    run.finish("failed", error="boom")
    cat.db.close()
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"review": ["fine"]}).to_parquet(inbox / "a.parquet")
    start = time.monotonic()
    done = _cli("watch", "--run", run.id, "--once", home=home, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr
    assert time.monotonic() - start < 60
    assert f"Run {run.id} failed" in done.stderr, done.stderr
    assert "waiting" not in done.stderr


def test_predict_named_good_run_scores(tagged_home: Settings, tmp_path: Path) -> None:
    cat = Catalog.from_settings(tagged_home)
    run_id = cat.latest_run(tagged_home.train_flow, tag=tagged_home.model_tag).id
    cat.db.close()
    data = tmp_path / "in.parquet"
    pd.DataFrame({"review": ["great dress, fits well", "awful, it ripped"]}).to_parquet(data)
    done = _cli("predict", str(data), "--run", run_id, "--output", str(tmp_path / "out"),
                home=tagged_home.home)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = list((tmp_path / "out").rglob("*.parquet"))
    assert len(outputs) == 1
    frame = pd.read_parquet(outputs[0])
    assert len(frame) == 2 and set(frame["model_run_id"]) == {run_id}


def test_predict_with_a_registered_alias_records_the_version(tagged_home: Settings,
                                                            tmp_path: Path) -> None:
    """`batchml predict --model NAME@ALIAS` scores with the version the alias points at and
    the batch records name, version and alias."""
    cat = Catalog.from_settings(tagged_home)
    run_id = cat.latest_run(tagged_home.train_flow, tag=tagged_home.model_tag).id
    model = cat.model("reviews")
    model.register(run_id)
    model.set_alias("production", 1, expect=None)
    cat.close()
    data = tmp_path / "in.parquet"
    pd.DataFrame({"review": ["great dress, fits well", "awful, it ripped"]}).to_parquet(data)
    done = _cli("predict", str(data), "--model", "reviews@production", "--output",
                str(tmp_path / "out"), home=tagged_home.home)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = pd.read_parquet(next((tmp_path / "out").rglob("*.parquet")))
    assert set(frame["model_run_id"]) == {run_id}
    batches = Catalog.from_settings(tagged_home).sql(
        "SELECT model_run_id, model_name, model_version, model_alias FROM prediction_batches")
    assert batches.values.tolist() == [[run_id, "reviews", 1, "production"]]
    missing = _cli("predict", str(data), "--model", "reviews/9", "--output",
                   str(tmp_path / "out2"), home=tagged_home.home)
    assert missing.returncode != 0
    assert "Model 'reviews' has no version 9" in missing.stdout + missing.stderr
