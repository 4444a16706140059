"""Explanations (issue 17 item 7): exact per-row contributions of linear models, permutation
importance of tree ensembles, the Keras model's token weights, the artifacts a training run
stores, and ``batchml predict --explain K``.

The data are made up here and assume no domain: texts of arbitrary tokens whose class shows
in a few marker tokens, and tables with an informative column, a noise column, a category and
a count.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchml.cli import app
from batchml.errors import ConfigError
from batchml.estimators import Estimator, load_estimator, make_estimator
from batchml.explanations import (
    JSON_ARTIFACT,
    PNG_ARTIFACT,
    check_explainable,
    explanation_column,
    global_explanation,
    top_contributions,
)
from batchml.params import threshold_param
from batchml.signature import (
    EXPLANATION_ARROW_TYPE,
    EXPLANATION_COLUMN,
    EXPLANATION_TYPE,
    ColumnSpec,
    Signature,
)

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def token_texts(n: int, seed: int, classes: list[Any]) -> pd.DataFrame:
    """Texts of filler tokens plus one or two marker tokens of the row's class (and sometimes
    one of another class); columns ``body`` and ``target``."""
    rng = np.random.default_rng(seed)
    filler = [f"w{i}" for i in range(80)]
    marks = {c: [f"m{k}x{i}" for i in range(4)] for k, c in enumerate(classes)}
    labels = [classes[i] for i in rng.integers(0, len(classes), n)]
    texts = []
    for label in labels:
        words = list(rng.choice(filler, int(rng.integers(4, 14))))
        words += list(rng.choice(marks[label], int(rng.integers(1, 3))))
        if rng.random() < 0.3:
            words.append(str(rng.choice(marks[classes[int(rng.integers(0, len(classes)))]])))
        rng.shuffle(words)
        texts.append(" ".join(words) + ("" if rng.random() < 0.8 else " W3, w3!"))
    return pd.DataFrame({"body": texts, "target": labels})


def table(n: int, seed: int, classes: int) -> pd.DataFrame:
    """``signal`` decides the label (with ``kind``), ``noise`` and ``count`` do not."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n),
                          "kind": rng.choice(["p", "q", "r"], n),
                          "count": rng.integers(0, 9, n)})
    score = 2 * frame["signal"] + np.where(frame["kind"] == "p", 1.0, 0.0) \
        + 0.2 * rng.normal(size=n)
    frame["outcome"] = np.digitize(score, [-1.0, 1.0]) if classes == 3 else \
        (score > 0.3).astype(np.int64)
    frame.loc[::17, "signal"] = np.nan  # an optional column: imputed
    return frame


FEATURES = ["signal", "noise", "kind", "count"]


def saved(est: Estimator) -> Estimator:
    """The estimator as scoring loads it (the feature means must survive saving)."""
    return load_estimator(est.flavor, est.to_bytes())


# --- linear models: contributions + base == the model's decision values ---------------------


@pytest.mark.parametrize("candidate", ["sklearn_text", "sklearn_text_nb"])
@pytest.mark.parametrize("classes", [[0, 1], ["k0", "k1", "k2"]], ids=["binary", "3-class"])
def test_text_contributions_sum_to_the_decision(candidate: str, classes: list[Any]) -> None:
    train, valid = token_texts(400, 1, classes), token_texts(150, 2, classes)
    est = saved(make_estimator(candidate, text_column="body").fit(train, train["target"]))
    assert est.explains_rows
    contrib = est.contributions(valid)
    # scikit-learn's own pipeline (its vectorizer, not batchml's) gives the decision values
    pipeline = est.model
    x = pipeline[:-1].transform(valid["body"].tolist())
    if candidate == "sklearn_text":
        decision = pipeline[-1].decision_function(x).reshape(len(valid), -1)
    else:
        decision = pipeline[-1].predict_joint_log_proba(x)
        if len(classes) == 2:  # the logit: log p(1) - log p(0)
            decision = decision[:, 1:] - decision[:, :1]
    assert list(contrib.decisions) == (classes[1:] if len(classes) == 2 else classes)
    assert contrib.totals().shape == decision.shape
    np.testing.assert_allclose(contrib.totals(), decision, rtol=0, atol=1e-6)
    for d in range(decision.shape[1]):  # every feature, present in the row or not
        dense = contrib.dense(d)
        assert dense.shape == (len(valid), len(pipeline[0].vocabulary_))
        np.testing.assert_allclose(dense.sum(axis=1) + contrib.base[d], decision[:, d],
                                   rtol=0, atol=1e-6)
    # the centring: a term's contribution is weight x (value - training mean)
    linear = est.linear
    assert linear is not None and linear.mean is not None
    weights, _ = linear.decision_weights()
    dense0 = contrib.dense(0)
    x = x.toarray()
    np.testing.assert_allclose(dense0, weights[0] * (x - linear.mean), rtol=0, atol=1e-9)


@pytest.mark.parametrize("classes", [2, 3], ids=["binary", "3-class"])
def test_tabular_logreg_contributions_sum_to_the_decision(classes: int) -> None:
    train, valid = table(400, 1, classes), table(200, 2, classes)
    est = saved(make_estimator("tabular_logreg", feature_columns=FEATURES).fit(
        train[FEATURES], train["outcome"]))
    assert est.explains_rows
    contrib = est.contributions(valid)
    decision = est.model.decision_function(valid[FEATURES]).reshape(len(valid), -1)
    np.testing.assert_allclose(contrib.totals(), decision, rtol=0, atol=1e-6)
    names = list(contrib.features)
    assert names == ["signal", "noise", "count", "kind=p", "kind=q", "kind=r"]
    # the numeric column's contribution: coefficient x (its scaled value - training mean)
    scaler = est.model[0].named_transformers_["num"].named_steps["scale"]
    impute = est.model[0].named_transformers_["num"].named_steps["impute"]
    raw = valid["signal"].fillna(impute.statistics_[0]).to_numpy()
    scaled = (raw - scaler.mean_[0]) / scaler.scale_[0]
    coef = est.model[-1].coef_
    for d in range(len(contrib.decisions)):
        expected = coef[d, 0] * (scaled - est.feature_means[0])
        np.testing.assert_allclose(contrib.dense(d)[:, 0], expected, rtol=0, atol=1e-9)
    # the top-3 per row through the output column: the row's predicted class's decision
    index = est.label_index(est.predict_proba(valid))
    column = explanation_column(est, pa.Table.from_pandas(valid), index, 3)
    assert column.type == EXPLANATION_ARROW_TYPE and len(column) == len(valid)
    for i in (0, 1, 7, len(valid) - 1):
        row = contrib.dense(int(index[i]) if len(contrib.decisions) > 1 else 0)[i]
        best = np.argsort(-np.abs(row), kind="stable")[:3]
        got = column[i].as_py()
        assert [e["feature"] for e in got] == [names[j] for j in best]
        np.testing.assert_allclose([e["contribution"] for e in got], row[best], atol=1e-12)


def test_top_contributions_match_a_dense_search() -> None:
    """The sparse search (a row's own features plus the largest offsets) finds what sorting
    every contribution finds, for K from 1 to more than the features a row has."""
    classes = ["a", "b", "c"]
    train, valid = token_texts(300, 3, classes), token_texts(60, 4, classes)
    est = make_estimator("sklearn_text", text_column="body").fit(train, train["target"])
    contrib = est.contributions(valid)
    decision = np.arange(len(valid)) % 3
    dense = [contrib.dense(d) for d in range(3)]
    for k in (1, 5, 40):
        offsets, cols, values = top_contributions(contrib, decision, k)
        assert np.diff(offsets).tolist() == [k] * len(valid)
        for i in range(len(valid)):
            got = values[offsets[i]:offsets[i + 1]]
            want = np.sort(np.abs(dense[decision[i]][i]))[::-1][:k]
            np.testing.assert_allclose(np.abs(got), want, rtol=0, atol=1e-12)
            np.testing.assert_allclose(got, dense[decision[i]][i][cols[offsets[i]:offsets[i + 1]]])


# --- trees: permutation importance; Keras: token weights -----------------------------------


@pytest.mark.parametrize("candidate", ["tabular_rf", "tabular_gb"])
def test_permutation_importance_ranks_the_informative_column_first(candidate: str) -> None:
    train, valid = table(400, 1, 2), table(300, 2, 2)
    est = make_estimator(candidate, feature_columns=FEATURES, n_estimators=30) \
        if candidate == "tabular_rf" else make_estimator(candidate, feature_columns=FEATURES,
                                                          max_iter=30)
    est.fit(train[FEATURES], train["outcome"])
    found = global_explanation(est, valid[FEATURES], valid["outcome"], seed=1)
    assert found is not None and json.loads(json.dumps(found)) == found
    assert found["method"] == "permutation_importance" and found["per_row"] is False
    ranked = {s["feature"]: s for s in found["groups"]["all"]}
    assert set(ranked) == set(FEATURES)
    assert found["groups"]["all"][0]["feature"] == "signal"
    assert ranked["signal"]["score"] > 0.1 > ranked["noise"]["score"]
    assert ranked["signal"]["score"] > ranked["noise"]["score"] + 5 * ranked["noise"]["spread"]
    assert not est.explains_rows


def test_keras_token_importances_and_contributions() -> None:
    train, valid = token_texts(300, 5, [0, 1]), token_texts(80, 6, [0, 1])
    est = saved(make_estimator("keras_nbow", text_column="body", epochs=5, max_tokens=200,
                               learning_rate=0.05)
                .fit(train, train["target"]))
    export = est._export
    assert export is not None and export.means is not None
    found = global_explanation(est, valid, valid["target"])
    assert found is not None and found["method"] == "coefficients"
    assert set(found["groups"]) == {"0", "1"}
    weight = dict(zip(export.vocabulary, export.weights, strict=True))
    for label, sign in (("1", 1.0), ("0", -1.0)):
        scores = found["groups"][label]
        assert [s["score"] for s in scores] == sorted((s["score"] for s in scores),
                                                      reverse=True)
        for s in scores:
            assert s["score"] == pytest.approx(sign * weight[s["feature"]])
        # the class's own marker tokens carry the largest weights toward it
        assert {s["feature"] for s in scores[:4]} & {f"m{label}x{i}" for i in range(4)}
    contrib = est.contributions(valid)
    logits = export.logits(pa.array(valid["body"].tolist()))
    np.testing.assert_allclose(contrib.totals()[:, 0], logits, rtol=0, atol=1e-6)
    proba = est.predict_proba(valid)[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-contrib.totals()[:, 0])), proba, atol=1e-9)


# --- the signature ----------------------------------------------------------------------------


def test_the_signature_describes_the_explanation_column() -> None:
    base = Signature(inputs=(ColumnSpec("body", "string"),),
                     outputs=(ColumnSpec("label", "int64"), ColumnSpec("proba", "float64")),
                     classes=(0, 1), params=(threshold_param(0.5),))
    assert base.with_explanation(0) is base
    sig = base.with_explanation(4)
    assert sig.output_names == ["label", "proba", EXPLANATION_COLUMN]
    assert sig.outputs[-1] == ColumnSpec("explanation", EXPLANATION_TYPE)
    assert sig.param_defaults == {"threshold": 0.5, "explain": 4}
    assert Signature.from_dict(sig.to_dict()) == sig
    assert sig.with_explanation(2).output_names.count(EXPLANATION_COLUMN) == 1
    with pytest.raises(ValueError, match="inputs are one of string, float64, int64, bool"):
        Signature(inputs=(ColumnSpec("x", EXPLANATION_TYPE),))


# --- a real training run and batchml predict --explain -------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One home with two real training runs: a text model and a tree ensemble on a table."""
    from batchml import Catalog, Settings
    from batchml import training as tr

    root = tmp_path_factory.mktemp("explain")
    data = root / "data"
    data.mkdir()
    token_texts(600, 7, [0, 1]).to_parquet(data / "text_train.parquet")
    token_texts(200, 8, [0, 1]).to_parquet(data / "text_valid.parquet")
    table(400, 9, 3).to_parquet(data / "table_train.parquet")
    table(200, 10, 3).to_parquet(data / "table_valid.parquet")
    settings = Settings(home=root / "home")
    catalog = Catalog.from_settings(settings)
    text = tr.train(catalog, tr.TrainingConfig(
        train_uri=str(data / "text_train.parquet"), valid_uri=str(data / "text_valid.parquet"),
        label="target", text_column="body", candidates=["sklearn_text"]))
    trees = tr.train(catalog, tr.TrainingConfig(
        train_uri=str(data / "table_train.parquet"), valid_uri=str(data / "table_valid.parquet"),
        label="outcome", feature_columns=FEATURES, candidates=["tabular_rf"],
        candidate_params={"tabular_rf": {"n_estimators": 30}}))
    catalog.close()
    return {"settings": settings, "root": root, "text": text.run.id, "trees": trees.run.id,
            "winners": {"text": text.decision.winner, "trees": trees.decision.winner}}


@pytest.mark.parametrize(("which", "method", "groups"), [
    ("text", "coefficients", {"0", "1"}),
    ("trees", "permutation_importance", {"all"}),
])
def test_training_stores_the_winners_explanation(trained: dict[str, Any], which: str,
                                                 method: str, groups: set[str]) -> None:
    from batchml import Catalog

    run = Catalog.from_settings(trained["settings"]).run(trained[which])
    assert run.artifacts[JSON_ARTIFACT]["kind"] == "report"
    assert run.artifacts[PNG_ARTIFACT]["kind"] == "plot"
    found = json.loads(run.fetch_artifact(JSON_ARTIFACT))  # checksum-verified
    assert found["model"] == trained["winners"][which] and found["method"] == method
    assert set(found["groups"]) == groups and all(found["groups"].values())
    if which == "trees":
        assert found["groups"]["all"][0]["feature"] == "signal"
    else:
        assert found["groups"]["1"][0]["feature"].startswith("m1x")
    assert run.fetch_artifact(PNG_ARTIFACT).startswith(PNG_MAGIC)


def _predict(trained: dict[str, Any], run: str, *args: str, name: str = "rows") -> Any:
    rows = token_texts(25, 11, [0, 1]) if run == "text" else table(25, 11, 3)
    source = trained["root"] / f"{name}.parquet"
    rows.drop(columns=["target", "outcome"], errors="ignore").to_parquet(source)
    out = trained["root"] / f"out-{name}"
    result = runner.invoke(app, ["predict", str(source), "--run", trained[run], "--output",
                                 str(out), *args, "--home", str(trained["settings"].home)],
                           env={"COLUMNS": "200"})
    return result, source, out


def test_predict_explain_adds_k_contributions_per_row(trained: dict[str, Any]) -> None:
    from batchml import Catalog

    result, source, out = _predict(trained, "text", "--explain", "3", name="explained")
    assert result.exit_code == 0, result.output
    (path,) = out.rglob("*.parquet")
    scored = pq.read_table(path)
    column = scored.column(EXPLANATION_COLUMN)
    assert column.type == EXPLANATION_ARROW_TYPE
    assert [len(v) for v in column.to_pylist()] == [3] * scored.num_rows == [3] * 25
    signature = json.loads(scored.schema.metadata[b"batchml.signature"])
    assert signature["outputs"][-1] == {"name": "explanation", "type": EXPLANATION_TYPE,
                                        "required": True}
    assert {p["name"]: p["default"] for p in signature["params"]}["explain"] == 3
    # the entries are the row's three largest contributions, largest first
    model = Catalog.from_settings(trained["settings"]).run(trained["text"]).load_model()
    contrib = model.contributions(pd.read_parquet(source))
    dense = contrib.dense(0)
    names = contrib.features.to_pylist()
    for i, entries in enumerate(column.to_pylist()):
        best = np.argsort(-np.abs(dense[i]), kind="stable")[:3]
        assert [e["feature"] for e in entries] == [names[j] for j in best]
        np.testing.assert_allclose([e["contribution"] for e in entries], dense[i][best],
                                   atol=1e-12)
    # without --explain the output has no such column (the fast path is unchanged)
    plain, _, plain_out = _predict(trained, "text", name="plain")
    assert plain.exit_code == 0, plain.output
    (plain_path,) = plain_out.rglob("*.parquet")
    plain_table = pq.read_table(plain_path)
    assert EXPLANATION_COLUMN not in plain_table.column_names
    assert b"batchml.signature" not in plain_table.schema.metadata
    assert plain_table.column("proba").to_pylist() == scored.column("proba").to_pylist()


@pytest.mark.parametrize(("run", "args", "message"), [
    ("trees", ["--explain", "3"], "Model 'tabular_rf' (flavor 'sklearn') cannot explain single "
                                  "rows: it is not a linear model."),
    ("text", ["--explain", "-1"], "Invalid value for '--explain'"),
], ids=["tree-ensemble", "negative"])
def test_predict_explain_refusals(trained: dict[str, Any], run: str, args: list[str],
                                  message: str) -> None:
    from batchml import Catalog
    from batchml.catalog import Ledger

    result, source, out = _predict(trained, run, *args, name=f"refused-{run}")
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not list(out.rglob("*.parquet"))
    # refused before any file was claimed: nothing quarantined, nothing in the ledger
    files = Ledger(Catalog.from_settings(trained["settings"])).files()
    assert str(source) not in set(files["source_uri"]) and source.exists()


@pytest.mark.parametrize(("make", "k", "message"), [
    (lambda: make_estimator("baseline", feature_columns=FEATURES), 3,
     "Model 'baseline' (flavor 'baseline') cannot explain single rows: its flavor has no "
     "per-row contributions."),
    (lambda: make_estimator("tabular_gb", feature_columns=FEATURES, max_iter=5), 3,
     "Model 'tabular_gb' (flavor 'sklearn') cannot explain single rows: it is not a linear "
     "model."),
    (lambda: make_estimator("tabular_logreg", feature_columns=FEATURES), -2,
     "--explain takes a number of features, 0 or more; got -2."),
], ids=["baseline", "gradient-boosting", "negative"])
def test_check_explainable_refusals(make: Any, k: int, message: str) -> None:
    train = table(120, 12, 2)
    est = make().fit(train[FEATURES], train["outcome"])
    with pytest.raises(ConfigError) as caught:
        check_explainable(est, k)
    assert caught.value.message == message
    if k > 0:
        assert "Score without --explain" in (caught.value.hint or "")
        check_explainable(est, 0)  # no explanation asked: any model scores


def test_a_model_saved_without_means_is_refused_naming_the_fix() -> None:
    train = token_texts(200, 13, [0, 1])
    est = make_estimator("sklearn_text", text_column="body").fit(train, train["target"])
    assert est.linear is not None
    est.linear.mean = None  # as a model saved before the means were recorded
    old = saved(est)
    assert not old.explains_rows
    with pytest.raises(ConfigError, match="saved before batchml recorded its features' "
                                          "training means; train it again"):
        old.contributions(train)


def test_explanation_column_over_several_chunks_of_large_strings() -> None:
    """A batch longer than one chunk of rows, its text as large_string (what pandas' string
    dtype writes): every chunk is explained, the same as the rows one by one."""
    from batchml.explanations import CHUNK_ROWS

    train = token_texts(300, 14, [0, 1])
    est = make_estimator("sklearn_text", text_column="body").fit(train, train["target"])
    rows = token_texts(CHUNK_ROWS + 150, 15, [0, 1])
    batch = pa.table({"body": pa.array(rows["body"].tolist(), pa.large_string())})
    column = explanation_column(est, batch, np.zeros(len(rows), np.int64), 2)
    assert len(column) == len(rows)
    for i in (0, CHUNK_ROWS - 1, CHUNK_ROWS, len(rows) - 1):
        one = est.contributions(rows.iloc[[i]])
        dense = one.dense(0)[0]
        best = np.argsort(-np.abs(dense), kind="stable")[:2]
        assert [e["feature"] for e in column[i].as_py()] == \
            [one.features[j].as_py() for j in best]
