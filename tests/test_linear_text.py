"""The linear export of the scikit-learn text models scores exactly like scikit-learn, loads
without scikit-learn/skops/pandas, and old skops-only files still load."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io as sio

from batchml.errors import ModelError, SchemaMismatch
from batchml.estimators import load_estimator, make_estimator
from batchml.estimators._arrays import from_numpy, strings, to_numpy
from batchml.estimators.linear_text import MEMBER, SLICE_ROWS, LinearTextModel, from_pipeline
from batchml.synthetic import synthetic_reviews

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT.parent / "shared" / "testdata" / "womens_clothing_reviews"
ODD = ["Café crème, naïve ÉTÉ test__x 12 a b", "", "x", "ÄÖÜ straße Straße STRASSE",
       "tabs\tand\nnewlines", "emoji 😀 word_with_underscore", "數字 123 ４５ ٣٤",
       "a-b c.d e'f", "İstanbul ǅemal Ǆ ΣΑΣ σας", "ﬁne Ⅻ x² ½", "e\u0301 combining",
       "zero\u200bwidth nbsp\u00a0space", "MiXeD CaSe WORDS words Words", "it&#039;s <br />",
       "a" * 300, "the the the the dress dress", "__ _a a_ 1 22 333"]


def real_reviews() -> tuple[list[str], np.ndarray, list[str]]:
    train = pd.read_parquet(REVIEWS / "train.parquet")
    valid = pd.read_parquet(REVIEWS / "valid.parquet")
    predict = pd.read_parquet(REVIEWS / "predict.parquet")
    texts = train["review"].astype(str).tolist() + ODD * 2
    labels = np.concatenate([train["labels"].to_numpy(), np.arange(2 * len(ODD)) % 2])
    return texts, labels, valid["review"].astype(str).tolist() + \
        predict["review"].astype(str).tolist() + ODD


@pytest.fixture(scope="module")
def real() -> dict[str, object]:
    texts, labels, score = real_reviews()
    frame = pd.DataFrame({"review": texts})
    return {"frame": frame, "labels": labels, "score": score}


def assert_same_as_sklearn(est: object, texts: list[str]) -> None:
    model = est.model  # type: ignore[attr-defined]
    linear = est.linear  # type: ignore[attr-defined]
    assert linear is not None
    expected = model.predict_proba(texts)  # scikit-learn's own vectorizer, end to end
    got = linear.predict_proba(pa.array(texts, pa.string()))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["sklearn_text", "sklearn_text_nb"])
def test_real_reviews_match_scikit_learn(real: dict[str, object], name: str) -> None:
    est = make_estimator(name, text_column="review").fit(real["frame"], real["labels"])
    assert_same_as_sklearn(est, real["score"])  # type: ignore[arg-type]
    # the public path (arrow in, DataFrame in) gives the same numbers
    table = pa.table({"review": pa.array(real["score"], pa.string())})
    np.testing.assert_allclose(est.predict_proba(table),
                               est.model.predict_proba(real["score"]), rtol=0, atol=1e-9)
    frame = pd.DataFrame({"review": real["score"]})
    np.testing.assert_allclose(est.predict_proba(frame), est.predict_proba(table), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("name", ["sklearn_text", "sklearn_text_nb"])
def test_multiclass_synthetic_and_many_slices(name: str) -> None:
    train = synthetic_reviews(3_000, seed=5)
    labels = np.where(train["labels"] == 1, "good",
                      np.where(train.index % 3 == 0, "meh", "bad"))
    est = make_estimator(name, text_column="review").fit(train[["review"]], labels)
    assert est.linear is not None and est.classes_ == ["bad", "good", "meh"]
    # more rows than one slice, so several threads each score a part
    texts = synthetic_reviews(2 * SLICE_ROWS + 123, seed=6)["review"].tolist() + ODD
    assert_same_as_sklearn(est, texts)


def test_saved_file_is_still_a_skops_file_and_loads_without_skops(tmp_path: Path) -> None:
    train = synthetic_reviews(2_000, seed=1)
    est = make_estimator("sklearn_text", text_column="review").fit(train[["review"]],
                                                                 train["labels"])
    data = est.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert MEMBER in zf.namelist()
    # skops itself still reads the file (the extra member is ignored)
    payload = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert set(payload) == {"meta", "model"}
    reloaded = load_estimator("sklearn", data)
    assert reloaded.linear is not None and reloaded._model is None  # pipeline not read yet
    texts = synthetic_reviews(500, seed=2)["review"].tolist() + ODD
    np.testing.assert_allclose(reloaded.predict_proba(pd.DataFrame({"review": texts})),
                               est.model.predict_proba(texts), rtol=0, atol=1e-9)
    assert reloaded.model is not None  # on demand, through skops and its allowlist
    assert reloaded.signature == est.signature

    # a fresh process loads and scores arrow input without scikit-learn, skops, scipy or
    # pandas (the batchml package __init__ is skipped: it belongs to other modules)
    model_file = tmp_path / "model.skops"
    model_file.write_bytes(data)
    pq.write_table(pa.table({"review": texts}), tmp_path / "in.parquet")
    script = f"""
import sys, types
pkg = types.ModuleType("batchml"); pkg.__path__ = [{str(ROOT / "batchml")!r}]
sys.modules["batchml"] = pkg
import pyarrow.parquet as pq
from batchml.estimators import load_estimator
est = load_estimator("sklearn", open({str(model_file)!r}, "rb").read())
proba = est.predict_proba(pq.ParquetFile({str(tmp_path / "in.parquet")!r}).read())
print(proba.shape[0], sorted({{m.split(".")[0] for m in sys.modules}}
                            & {{"pandas", "sklearn", "skops", "scipy"}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"{len(texts)} []"


def test_old_skops_only_files_still_load() -> None:
    train = synthetic_reviews(2_000, seed=1)
    est = make_estimator("sklearn_text_nb", text_column="review").fit(train[["review"]],
                                                                    train["labels"])
    old = sio.dumps({"meta": __import__("json").dumps(est._meta()), "model": est.model})
    with zipfile.ZipFile(io.BytesIO(old)) as zf:
        assert MEMBER not in zf.namelist()
    reloaded = load_estimator("sklearn", old)
    # loaded through skops (allowlist and all), then given the same checked export
    assert reloaded.model is not None and reloaded.linear is not None
    texts = synthetic_reviews(300, seed=4)["review"].tolist() + ODD
    table = pa.table({"review": texts})
    np.testing.assert_allclose(reloaded.predict_proba(table), est.model.predict_proba(texts),
                               rtol=0, atol=1e-9)


def test_tampered_export_is_refused() -> None:
    train = synthetic_reviews(1_000, seed=1)
    est = make_estimator("sklearn_text", text_column="review").fit(train[["review"]],
                                                                 train["labels"])
    data = est.to_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            dst.writestr(item, content[: len(content) // 2] if item.filename == MEMBER
                         else content)
    with pytest.raises(ModelError, match="linear text export"):
        load_estimator("sklearn", buffer.getvalue())


def test_arrow_input_types_nulls_and_errors() -> None:
    train = synthetic_reviews(1_000, seed=1)
    est = make_estimator("sklearn_text", text_column="review").fit(train[["review"]],
                                                                 train["labels"])
    texts = ["love it, great", "poor and cheap", "Straße ÉTÉ", ""]
    expected = est.model.predict_proba(texts)
    for column in (pa.array(texts, pa.string()), pa.array(texts, pa.large_string()),
                   pa.array(texts, pa.string()).dictionary_encode(),
                   pa.chunked_array([texts[:1], texts[1:]], pa.string()),
                   pa.array(texts, pa.string_view())):
        got = est.predict_proba(pa.table({"review": column, "other": range(4)}))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    with pytest.raises(SchemaMismatch, match=r"1 null value \(first at row 1\)"):
        est.predict_proba(pa.table({"review": pa.array(["a", None], pa.string())}))
    with pytest.raises(SchemaMismatch, match="column 'review' is missing"):
        est.predict_proba(pa.table({"text": ["a"]}))
    assert est.predict_proba(pa.table({"review": pa.array([], pa.string())})).shape == (0, 2)


def test_export_refuses_what_it_cannot_reproduce() -> None:
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts, labels = ["red shirt", "blue shirt", "red hat", "blue hat"], [0, 1, 0, 1]
    for vec in (CountVectorizer(stop_words="english"), TfidfVectorizer(norm="l1"),
                CountVectorizer(ngram_range=(1, 3))):
        pipe = Pipeline([("v", vec), ("clf", LogisticRegression())]).fit(texts, labels)
        assert from_pipeline(pipe) is None
    pipe = Pipeline([("v", TfidfVectorizer(use_idf=False, sublinear_tf=False)),
                     ("clf", LogisticRegression())]).fit(texts, labels)
    linear = from_pipeline(pipe)
    assert linear is not None
    np.testing.assert_allclose(linear.predict_proba(pa.array(texts + ["red red blue"])),
                               pipe.predict_proba(texts + ["red red blue"]), atol=1e-12)
    again, meta = LinearTextModel.from_ipc(linear.to_ipc({"k": 1}))
    assert meta == {"k": 1}
    np.testing.assert_array_equal(again.predict_proba(pa.array(texts)),
                                  linear.predict_proba(pa.array(texts)))


def test_array_helpers_round_trip() -> None:
    for values in (np.arange(5, dtype=np.int64), np.linspace(0, 1, 7),
                   np.array([True, False, True] * 5), np.arange(3, dtype=np.int32)):
        arr = from_numpy(values)
        np.testing.assert_array_equal(to_numpy(arr), values)
        np.testing.assert_array_equal(to_numpy(arr.slice(1, 3)), values[1:4])
    with_nulls = pa.array([1, None, 3], pa.int32())
    np.testing.assert_array_equal(to_numpy(with_nulls.slice(1), null=-1), [-1, 3])
    assert strings(["a", "Straße", ""]).to_pylist() == ["a", "Straße", ""]


def test_without_the_export_scoring_uses_the_pipeline_in_slices() -> None:
    train = synthetic_reviews(1_000, seed=1)
    est = make_estimator("sklearn_text", text_column="review").fit(train[["review"]],
                                                                 train["labels"])
    est.linear = None  # what a pipeline the export cannot reproduce gets
    texts = synthetic_reviews(SLICE_ROWS + 50, seed=8)["review"].tolist()
    got = est.predict_proba(pa.table({"review": texts}))
    np.testing.assert_allclose(got, est.model.predict_proba(texts), rtol=0, atol=1e-12)
