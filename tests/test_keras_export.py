"""keras_nbow's TensorFlow-free export scores exactly as the Keras model does.

Every comparison is against the Keras model itself (``_positive_keras``: the TensorFlow path),
on the real women's clothing reviews (../shared/testdata, raw and cleaned), on synthetic
reviews, and on adversarial strings. Artifacts are real files in tmp_path; a fresh Python
process checks that scoring an exported model never imports TensorFlow or Keras.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchml.datasets import clean_text, prepare_training_frame
from batchml.estimators import load_estimator, make_estimator
from batchml.estimators.keras_export import (
    EXPORT_ENTRY,
    ExportError,
    LinearTextExport,
    export_model,
    probe_texts,
)
from batchml.estimators.keras_text import KerasTextEstimator
from batchml.synthetic import synthetic_reviews

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT.parent / "shared" / "testdata" / "womens_clothing_reviews"
TOLERANCE = 1e-6

ADVERSARIAL = [
    "", " ", "   ", "\t\n\v\f\r", "<br />", "Great dress<br />", "<br /> Love it", "<br /><br />",
    "It&#039;s LOVELY &amp; soft &lt;br&gt; &quot;perfect&quot; &#x27;x&#x27; &nbsp;",
    "don't DON'T dont Don&#039;t", "[UNK] [unk] unk UNK", "love,great;perfect.soft!",
    "love , great ; perfect . soft !", "-love- --great-- ...soft...", "'''", "!!!???...",
    "ÉCOLE école Straße STRASSE İstanbul ΣΑΣ ǅ Ǆ ǆ", "LOVE\u00a0GREAT nbsp", "love\u2003great",
    "love\u3000great love\u2028great love\u0085great", "love\x1cgreat love\x1fgreat",
    "love\tgreat\nsoft\rperfect\x0bcomfy\x0cnice", "nul\x00byte love\x00", "emoji 😀 love 👍🏽 great",
    "don\u2019t \u201clove\u201d \u2014 great", "ｌｏｖｅ ＧＲＥＡＴ", "\\love\\ /great/ `soft` ~x~",
    "a" * 5000, ("love great " * 20_000).strip(), " ".join(["returned"] * 3000) + " <br />",
    "LOVE love Love lOvE", "x" + "!" * 1000 + "y", "\r\n\r\nlove\r\n",
]


def _texts(values: object) -> np.ndarray:
    return np.asarray(pd.Series(values).fillna("").astype(str).to_numpy(dtype=object))


def assert_matches_keras(est: KerasTextEstimator, texts: object) -> float:
    """The export's probabilities against TensorFlow's; returns the largest difference."""
    values = _texts(texts)
    keras = est._positive_keras(values)
    frame = pd.DataFrame({"review": values})
    fast = est.predict_proba(frame)[:, 1]
    arrow = est.predict_proba(pa.table({"review": pa.array(values, pa.string())}))[:, 1]
    np.testing.assert_array_equal(arrow, fast)
    worst = float(np.max(np.abs(fast - keras))) if len(values) else 0.0
    assert worst <= TOLERANCE, worst
    return worst


@pytest.fixture(scope="module")
def real() -> dict[str, pd.DataFrame]:
    if not REVIEWS.is_dir():
        pytest.fail(f"{REVIEWS} is missing: clone the project beside ../shared")
    return {split: pd.read_parquet(REVIEWS / f"{split}.parquet")
            for split in ("train", "valid", "predict")}


@pytest.fixture(scope="module")
def count_model(real: dict[str, pd.DataFrame]) -> KerasTextEstimator:
    """Trained as the train flow does: on cleaned text (scoring then sees raw text)."""
    x, y = prepare_training_frame(real["train"], label="labels", text_column="review")
    est = make_estimator("keras_nbow", text_column="review", epochs=4).fit(x, y)
    assert isinstance(est, KerasTextEstimator)
    return est


@pytest.fixture(scope="module")
def multi_hot_model() -> KerasTextEstimator:
    """multi_hot on synthetic reviews, raw: its vocabulary holds "br" and "it039s"."""
    train = synthetic_reviews(3000, seed=11)
    est = make_estimator("keras_nbow", text_column="review", epochs=3,
                         output_mode="multi_hot").fit(train[["review"]], train["labels"])
    assert isinstance(est, KerasTextEstimator)
    return est


def test_fitted_models_score_through_the_export(count_model: KerasTextEstimator,
                                                multi_hot_model: KerasTextEstimator) -> None:
    assert count_model.exported and multi_hot_model.exported
    assert count_model._export is not None and count_model._export.output_mode == "count"
    assert multi_hot_model._export is not None
    assert multi_hot_model._export.output_mode == "multi_hot"
    vocabulary = multi_hot_model._export.vocabulary  # raw training text: tag and entity debris
    assert "br" in vocabulary and any("039" in word for word in vocabulary)


@pytest.mark.parametrize("model", ["count_model", "multi_hot_model"])
def test_export_matches_keras_on_real_reviews(model: str, real: dict[str, pd.DataFrame],
                                              request: pytest.FixtureRequest) -> None:
    est = request.getfixturevalue(model)
    for split in ("train", "valid", "predict"):
        raw = real[split]["review"]
        assert_matches_keras(est, raw)
        assert_matches_keras(est, raw.map(lambda v: clean_text(v) if isinstance(v, str) else v))


@pytest.mark.parametrize("model", ["count_model", "multi_hot_model"])
def test_export_matches_keras_on_synthetic_reviews(model: str,
                                                   request: pytest.FixtureRequest) -> None:
    est = request.getfixturevalue(model)
    reviews = synthetic_reviews(20_000, seed=7)["review"]
    assert reviews.str.contains("<br />").any() and reviews.str.contains("&#039;").any()
    assert_matches_keras(est, reviews)


@pytest.mark.parametrize("model", ["count_model", "multi_hot_model"])
def test_export_matches_keras_on_adversarial_text(model: str,
                                                  request: pytest.FixtureRequest) -> None:
    est = request.getfixturevalue(model)
    assert est._export is not None
    vocabulary = est._export.vocabulary
    assert_matches_keras(est, ADVERSARIAL)
    assert_matches_keras(est, probe_texts(vocabulary, n=2000, seed=5))
    # every vocabulary word alone, upper-cased, glued to punctuation, and at the edges
    words = list(vocabulary[1:])
    assert_matches_keras(est, words + [w.upper() + "!" for w in words]
                         + [f" {w}<br />" for w in words] + [f"{w}&#039;s" for w in words])


def test_trailing_whitespace_after_stripping_is_no_token(
        multi_hot_model: KerasTextEstimator, count_model: KerasTextEstimator) -> None:
    """The old prototype's mismatch: Arrow's whitespace split yields "" for leading/trailing
    whitespace (a review ending in <br /> ends in a space once <, / and > are stripped), and
    counting "" as out-of-vocabulary shifted the logit by W[0]. TensorFlow counts nothing."""
    for est in (count_model, multi_hot_model):
        assert est._export is not None
        oov = est._export.weights[0]
        assert abs(oov) > 1e-4  # else the case would not show
        base = est._positive_keras(_texts(["love it"]))
        for text in ("love it />", "<> love it", " love it ", "love it\n", "love it - !!",
                     "... love it", "love  it"):
            got = est.predict_proba(pd.DataFrame({"review": [text]}))[0, 1]
            assert abs(got - base[0]) <= TOLERANCE
        empty = est.predict_proba(pd.DataFrame({"review": ["", " ", "<> /", " --- "]}))[:, 1]
        np.testing.assert_allclose(empty, 1 / (1 + np.exp(-est._export.bias)), atol=1e-12)


def test_arrow_inputs_of_every_string_type_and_nulls(count_model: KerasTextEstimator,
                                                     real: dict[str, pd.DataFrame]) -> None:
    texts = real["predict"]["review"].tolist() * 40  # > one slice: threads and slices
    want = count_model.predict_proba(pd.DataFrame({"review": texts}))
    plain = pa.array(texts, pa.string())
    for column in (plain, plain.cast(pa.large_string()), plain.cast(pa.string_view()),
                   plain.dictionary_encode(),
                   pa.chunked_array([plain.slice(0, 1000), plain.slice(1000)])):
        got = count_model._predict_proba_arrow(column)
        assert got is not None
        np.testing.assert_array_equal(got, want)
    export = count_model._export
    assert export is not None
    np.testing.assert_array_equal(export.positive(plain, threads=1),
                                  export.positive(plain, threads=4))
    with_nulls = pa.array(["love it", None, "", None], pa.string())
    np.testing.assert_array_equal(export.positive(with_nulls),
                                  export.positive(["love it", "", "", ""]))


def test_invalid_utf8_bytes_score_as_tensorflow_does(count_model: KerasTextEstimator) -> None:
    """Parquet readers do not validate UTF-8; TensorFlow takes bytes as they are."""
    import tensorflow as tf

    cases = [b"Great \xff\xfe dress!! Love it", b"\xc3 love!\xe2\x80 it.", b"lo\xffve",
             b"love\xc3!", b"\xf0\x9f\x98love, great"]
    data = b"".join(cases)
    offsets = np.cumsum([0] + [len(c) for c in cases]).astype(np.int32)
    column = pa.StringArray.from_buffers(len(cases), pa.py_buffer(offsets.tobytes()),
                                         pa.py_buffer(data))
    got = count_model._predict_proba_arrow(column)
    assert got is not None
    keras = np.asarray(count_model.model(tf.constant(np.array(cases, dtype=object)
                                                     .reshape(-1, 1))))[:, 0]
    np.testing.assert_allclose(got[:, 1], keras, atol=TOLERANCE, rtol=0)


def _strip_export(data: bytes) -> bytes:
    """The artifact as batchml wrote it before the export existed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != EXPORT_ENTRY:
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def _with_entry(data: bytes, name: str, text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info.filename))
        dst.writestr(name, text)
    return out.getvalue()


def test_artifact_holds_keras_model_and_export(count_model: KerasTextEstimator,
                                               real: dict[str, pd.DataFrame]) -> None:
    data = count_model.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        export = json.loads(archive.read(EXPORT_ENTRY))
    assert {"config.json", "model.weights.h5", "batchml.json", EXPORT_ENTRY} <= names
    assert export["vocabulary"][0] == "[UNK]" and len(export["vocabulary"]) == len(
        export["weights"])
    assert export["standardize"] == "lower_and_strip_punctuation"
    assert export["split"] == "whitespace" and export["output_mode"] == "count"

    loaded = load_estimator("keras", data)
    assert isinstance(loaded, KerasTextEstimator) and loaded.exported
    frame = real["predict"][["review"]]
    np.testing.assert_array_equal(loaded.predict_proba(frame), count_model.predict_proba(frame))
    assert loaded.to_bytes() == data  # saved again unchanged
    # the Keras model is still there: loaded (safe mode) on first use, same predictions
    assert [type(layer).__name__ for layer in loaded.model.layers] == [
        "InputLayer", "TextVectorization", "Dense"]
    assert_matches_keras(loaded, frame["review"])


def test_old_artifact_without_export_scores_through_tensorflow(
        count_model: KerasTextEstimator, real: dict[str, pd.DataFrame]) -> None:
    old = _strip_export(count_model.to_bytes())
    loaded = load_estimator("keras", old)
    assert isinstance(loaded, KerasTextEstimator) and not loaded.exported
    frame = real["predict"][["review"]]
    assert loaded._predict_proba_arrow(pa.array(frame["review"])) is None
    np.testing.assert_allclose(loaded.predict_proba(frame), count_model.predict_proba(frame),
                               atol=TOLERANCE, rtol=0)
    # saving it again adds the export
    upgraded = load_estimator("keras", loaded.to_bytes())
    assert isinstance(upgraded, KerasTextEstimator) and upgraded.exported
    np.testing.assert_array_equal(upgraded.predict_proba(frame), count_model.predict_proba(frame))


@pytest.mark.parametrize("change", ["output_mode", "vocabulary_size", "version", "garbage",
                                    "standardize", "weights"])
def test_export_that_does_not_fit_the_model_falls_back_to_tensorflow(
        change: str, count_model: KerasTextEstimator, real: dict[str, pd.DataFrame]) -> None:
    data = count_model.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        export = json.loads(archive.read(EXPORT_ENTRY))
        config = json.loads(archive.read("config.json"))
    text = ""
    if change == "output_mode":
        export["output_mode"] = "multi_hot"
    elif change == "vocabulary_size":
        export["vocabulary"].append("extra")
        export["weights"].append(0.5)
    elif change == "version":
        export["version"] = 99
    elif change == "standardize":
        export["standardize"] = "lower"
    elif change == "weights":
        export["weights"] = export["weights"][:-1]
    else:
        text = "{not json"
    tampered = _with_entry(data, EXPORT_ENTRY, text or json.dumps(export))
    loaded = load_estimator("keras", tampered)
    assert isinstance(loaded, KerasTextEstimator) and not loaded.exported
    frame = real["predict"][["review"]]
    np.testing.assert_allclose(loaded.predict_proba(frame), count_model.predict_proba(frame),
                               atol=TOLERANCE, rtol=0)
    # and a saved config the export does not describe (here: ngrams) is not export-scored
    layers = config["config"]["layers"]
    layers[1]["config"]["ngrams"] = [1, 2]
    with pytest.raises(ExportError, match="ngrams"):
        LinearTextExport.from_json(json.loads(count_model._export.to_bytes())  # type: ignore[union-attr]
                                   ).matches_config(config)


def test_export_refuses_layer_configs_it_cannot_reproduce() -> None:
    import keras
    import tensorflow as tf

    texts = tf.constant(["love it", "hate it", "great dress", "cheap and baggy"])
    for kwargs in ({"ngrams": 2}, {"standardize": "lower"}, {"standardize": None},
                   {"split": "character"}, {"output_mode": "tf_idf"}):
        vec = keras.layers.TextVectorization(max_tokens=50, **{"output_mode": "count",
                                                                  **kwargs})
        vec.adapt(texts)
        inputs = keras.Input(shape=(1,), dtype="string")
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(vec(inputs)))
        with pytest.raises(ExportError):
            export_model(model)
    vec = keras.layers.TextVectorization(max_tokens=50, output_mode="count")
    vec.adapt(texts)
    inputs = keras.Input(shape=(1,), dtype="string")
    for dense in (keras.layers.Dense(1, activation="relu"), keras.layers.Dense(2),
                  keras.layers.Dense(1, activation="sigmoid", use_bias=False)):
        with pytest.raises(ExportError):
            export_model(keras.Model(inputs, dense(vec(inputs))))
    good = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(vec(inputs)))
    assert export_model(good).vocabulary[0] == "[UNK]"


def test_export_validation_rejects_malformed_exports() -> None:
    good = {"format": "batchml.keras_nbow.linear", "version": 1,
            "standardize": "lower_and_strip_punctuation", "split": "whitespace",
            "ngrams": None, "output_mode": "count", "oov_token": "[UNK]",
            "vocabulary": ["[UNK]", "love", "hate"], "weights": [0.1, 1.0, -1.0], "bias": 0.2,
            "activation": "sigmoid"}
    export = LinearTextExport.from_json(good)
    np.testing.assert_allclose(export.positive(["LOVE love", "hate!", "meh", ""]),
                               1 / (1 + np.exp(-np.array([2.2, -0.8, 0.3, 0.2]))))
    for bad in ({"vocabulary": ["love", "[UNK]", "hate"]}, {"vocabulary": ["[UNK]", "a", "a"]},
                {"vocabulary": ["[UNK]", "a b", "c"]}, {"vocabulary": ["[UNK]", "", "c"]},
                {"weights": [0.1, 1.0]}, {"weights": [0.1, "x", 1.0]},
                {"weights": [0.1, float("nan"), 1.0]}, {"bias": "0"}, {"output_mode": "int"},
                {"ngrams": 2}, {"split": None}, {"activation": "relu"}, {"format": "x"}):
        with pytest.raises(ExportError):
            LinearTextExport.from_json({**good, **bad})


SCORE_SCRIPT = """
import json, sys
import pyarrow.parquet as pq
from batchml.estimators import load_estimator
est = load_estimator("keras", open(sys.argv[1], "rb").read())
proba = est.predict_proba(pq.read_table(sys.argv[2]))
print(json.dumps({"exported": est.exported, "proba": proba[:, 1].tolist(),
                  "tf": sorted(m for m in sys.modules
                               if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))}))
"""


def test_fresh_process_scores_exported_model_without_tensorflow(
        count_model: KerasTextEstimator, real: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    model_file = tmp_path / "model.keras"
    model_file.write_bytes(count_model.to_bytes())
    data_file = tmp_path / "predict.parquet"
    pq.write_table(pa.Table.from_pandas(real["predict"], preserve_index=False), data_file)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", SCORE_SCRIPT,
                           str(model_file), str(data_file)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["exported"] is True and answer["tf"] == []
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert imported and not [m for m in imported
                             if m.lstrip().split(".")[0] in ("tensorflow", "keras")]
    np.testing.assert_array_equal(np.array(answer["proba"]),
                                  count_model.predict_proba(real["predict"][["review"]])[:, 1])


def test_catalog_made_before_the_export_still_scores(count_model: KerasTextEstimator,
                                                     real: dict[str, pd.DataFrame],
                                                     tmp_path: Path) -> None:
    """A run logged with an artifact lacking the export: `batchml predict` scores it (through
    TensorFlow) to the same probabilities."""
    from batchml import Catalog, Settings
    from batchml.catalog import utcnow

    home = tmp_path / "home"
    catalog = Catalog.from_settings(Settings(home=home))
    run = catalog.create_run("train", params={"candidate": "keras_nbow"})
    artifact = "models/keras_nbow.keras"
    run.log_artifact(artifact, _strip_export(count_model.to_bytes()), kind="model")
    with catalog.db.write() as con:  # the row log_model writes
        con.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [run.id, "keras_nbow", "keras",
                     json.dumps(count_model.signature.to_dict()), artifact, True, utcnow()])
    run.finish()
    run.add_tag("deployment_candidate")
    catalog.db.close()

    data_file = tmp_path / "in" / "predict.parquet"
    data_file.parent.mkdir()
    pq.write_table(pa.Table.from_pandas(real["predict"], preserve_index=False), data_file)
    out = tmp_path / "out.parquet"
    env = {**os.environ, "BATCHML_HOME": str(home), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", "from batchml.cli import main; main()", "predict",
                    str(data_file),
                    "--output", str(out)], cwd=ROOT, env=env, timeout=300, check=True,
                   capture_output=True)
    outputs = [out] if out.is_file() else sorted(out.rglob("*.parquet"))
    assert len(outputs) == 1
    scored = pq.read_table(outputs[0]).to_pandas().sort_values("row_index")
    assert set(scored["model_flavor"]) == {"keras"}
    np.testing.assert_allclose(scored["proba"].to_numpy(),
                               count_model.predict_proba(real["predict"][["review"]])[:, 1],
                               atol=TOLERANCE, rtol=0)
