"""Python models (issue 19 items 1 and 5): logged from a throwaway folder, loaded in a fresh
process, checksums and environments enforced, scored in batch (batchml predict, the worker and
its scorer process) and online (the HTTP app), gated, aliased; bad models fail their files,
never the service."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import batchml
from batchml import Catalog, ChecksumMismatch, Settings, open_store
from batchml.cli import app
from batchml.errors import ConfigError, ModelError
from batchml.estimators import load_estimator, python_bundle
from batchml.sources import DirectorySource
from batchml.worker import Worker

ROOT = Path(__file__).resolve().parents[1]

MODEL_CODE = '''
import os
from pathlib import Path

import pandas as pd

import batchml

if os.environ.get("KW_BREAK_IMPORT"):
    raise ImportError("no module named 'fancy_tokenizer'")


class Keyword(batchml.PythonModel):
    def load_context(self, context):
        self.words = Path(context.artifacts["words"]).read_text().split()
        Path(context.code_path, "..", "loaded").write_text("yes")

    def predict(self, context, df, params):
        text = df["review"].str.lower()
        if (text == "die").any():
            os._exit(3)  # a crash in native code, say: the scorer process dies
        if (text == "boom").any():
            raise ValueError("cannot score 'boom'")
        if (text == "short").any():
            return pd.DataFrame({"hits": [1]})
        if (text == "dict").any():
            return {"hits": 1}
        if (text == "letters").any():
            return pd.DataFrame({"hits": ["a"] * len(df), "flagged": [True] * len(df)})
        hits = text.apply(lambda t: sum(w in t for w in self.words))
        return pd.DataFrame({"hits": hits, "flagged": hits >= params["threshold"]})


class Scored(batchml.PythonModel):
    """A classifier: the positive probability rises with the keyword hits."""

    def load_context(self, context):
        self.words = Path(context.artifacts["words"]).read_text().split()

    def predict(self, context, df, params):
        hits = df["review"].str.lower().apply(lambda t: sum(w in t for w in self.words))
        p = (hits.clip(upper=2) / 2.0) * 0.9 + 0.05
        return 1.0 - p if os.environ.get("KW_INVERT") else p
'''

EXAMPLE = pd.DataFrame({"review": ["great dress", "bad fit", "love it, great"]})


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A throwaway folder with the model's code and one artifact."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "kw.py").write_text(MODEL_CODE)
    (folder / "words.txt").write_text("great love\n")
    EXAMPLE.to_parquet(folder / "example.parquet")
    return folder


def log_kw(cat: Catalog, folder: Path, **kw: Any) -> Any:
    options: dict[str, Any] = {"params": {"threshold": 1}, "alias": "champion",
                               "python_model": "kw:Keyword"}
    options.update(kw)
    return cat.log_model(name="kw", code=folder / "kw.py",
                         artifacts={"words": folder / "words.txt"}, input_example=EXAMPLE,
                         **options)


def outputs(est: Any, frame: pd.DataFrame) -> dict[str, list[Any]]:
    import pyarrow as pa

    batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
    proba = est.predict_proba(batch)
    cols = est.output_columns(batch, proba, est.label_index(proba))
    return {k: v.to_pylist() for k, v in cols.items()}


# --- logging and loading -------------------------------------------------------------------------


def test_log_registers_aliases_and_loads(catalog: Catalog, model_dir: Path) -> None:
    logged = log_kw(catalog, model_dir)
    assert logged.gate == "not evaluated" and logged.version.ref == "kw/1"
    assert logged.run.successful and logged.run.tags == set()  # no gate ran: not tagged
    assert logged.run.params["gate"] == "not evaluated"
    info = logged.run.models["model"]
    assert info["flavor"] == "python"
    assert [c["name"] for c in info["signature"]["outputs"]] == ["hits", "flagged"]
    manifest = json.loads(logged.run.fetch_artifact("python_model.json"))
    assert manifest["model_class"] == "kw:Keyword"
    assert manifest["code"]["files"]["kw.py"]["sha256"] == \
        python_bundle.sha256_bytes(MODEL_CODE.encode())
    assert manifest["environment"]["python"].startswith(f"{sys.version_info.major}.")
    assert "pandas" in manifest["environment"]["imports"]  # what the code imports
    assert catalog.model("kw").alias("champion").version == 1
    est = catalog.model("kw").alias("champion").load()
    got = outputs(est, pd.DataFrame({"review": ["Great!", "nothing", "great love"]}))
    assert got == {"hits": [1, 0, 2], "flagged": [True, False, True]}
    # a second version: the alias moves only when asked
    second = log_kw(catalog, model_dir, alias=None, params={"threshold": 2})
    assert second.version.version == 2
    assert catalog.model("kw").alias("champion").version == 1
    catalog.model("kw").promote(2)
    est2 = catalog.model("kw").alias("champion").load()
    assert outputs(est2, pd.DataFrame({"review": ["great"]}))["flagged"] == [False]


def test_load_in_a_fresh_process_from_a_deleted_folder(tmp_path: Path, model_dir: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    log_kw(cat, model_dir)
    cat.close()
    for f in model_dir.iterdir():  # the model needs nothing of its source folder any more
        f.unlink()
    script = textwrap.dedent(f"""
        import json, sys
        import pandas as pd
        from batchml import Catalog, open_store
        cat = Catalog({str(tmp_path / "c.duckdb")!r},
                      store=open_store({str(tmp_path / "artifacts")!r}))
        est = cat.model("kw").alias("champion").load()
        df = pd.DataFrame({{"review": ["I love it", "meh"]}})
        import pyarrow as pa
        b = pa.RecordBatch.from_pandas(df)
        p = est.predict_proba(b)
        cols = est.output_columns(b, p, est.label_index(p))
        print(json.dumps({{k: v.to_pylist() for k, v in cols.items()}}))
        print([m for m in sys.modules if m.startswith("kw")])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=tmp_path)
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[0]) == {"hits": [1, 0], "flagged": [True, False]}
    assert lines[1] == "[]"  # imported under a private package, not as 'kw'


def test_tampered_bundle_is_refused_before_anything_runs(tmp_path: Path,
                                                          model_dir: Path) -> None:
    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    logged = log_kw(cat, model_dir)
    uri = logged.run.artifacts["models/model.pymodel.zip"]["uri"]
    data = Path(uri).read_bytes()
    # 1. the stored artifact changed: the store refuses it against the catalog's sha256
    Path(uri).write_bytes(data + b"\0")
    with pytest.raises(ChecksumMismatch):
        cat.model("kw").version(1).load()
    # 2. a bundle consistent outside but whose code differs from its manifest: refused by the
    #    flavor before any file is written or imported
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename == "code/kw.py":
                body = b"open('/tmp/pwned','w')\n" + body
            z.writestr(item.filename, body)
    marker = model_dir.parent / "loaded"
    with pytest.raises(ChecksumMismatch, match=r"File code/kw\.py of the Python model has "
                                               r"sha256 [0-9a-f]{64}, its manifest says"):
        load_estimator("python", buf.getvalue())
    # 3. an extra member, or a path that leaves its folder
    for extra, message in (("code/evil.py", r"unlisted: code/evil\.py"),
                           ("../evil.py", r"unlisted: \.\./evil\.py")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for item in src.infolist():
                z.writestr(item.filename, src.read(item.filename))
            z.writestr(extra, b"import os\n")
        with pytest.raises(ChecksumMismatch, match=message):
            load_estimator("python", buf.getvalue())
    assert not marker.exists()


def _rebuilt(data: bytes, **env: Any) -> bytes:
    files = python_bundle.open_bundle(data)
    files.manifest["environment"].update(env)
    return python_bundle.write(files)


@pytest.mark.parametrize(("env", "message"), [
    ({"python": "2.7.18"}, r"the model was logged with Python 2\.7\.18 and this is Python "
                           r"3\.\d+\.\d+: run it with Python 2\.7, or log it again with "
                           r"Python 3\.\d+"),
    ({"requirements": {"pandas": "0.1.0"}}, r"requirement pandas was 0\.1\.0 when the model was "
                                            r"logged and [\d.]+ is installed here: pip install "
                                            r"pandas==0\.1\.0"),
    ({"requirements": {"surely-not-installed-pkg": "1.0"}},
     r"requirement surely-not-installed-pkg was 1\.0 when the model was logged and is not "
     r"installed here"),
], ids=["python", "requirement", "missing"])
def test_environment_mismatch_is_a_clear_model_error(tmp_path: Path, model_dir: Path,
                                                     env: dict[str, Any], message: str) -> None:
    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    data = log_kw(cat, model_dir).run.fetch_artifact("models/model.pymodel.zip")
    est = load_estimator("python", _rebuilt(data, **env))  # loads: the service keeps going
    assert est.load_error is not None
    with pytest.raises(ModelError, match=message):
        outputs(est, EXAMPLE)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"requirements": ["pandas==0.0.1"]}, r"Requirement 'pandas==0\.0\.1' asks for pandas "
                                          r"0\.0\.1, but [\d.]+ is installed here"),
    ({"requirements": ["surely-not-installed-pkg"]}, r"'surely-not-installed-pkg' is not "
                                                     r"installed here"),
    ({"python_model": "kw:Nope"}, r"Module 'kw' has no 'Nope'"),
    ({"python_model": "os:path"}, r"is not 'module:Class' in the shipped code"),
    ({"python_model": "kw"}, r"'kw' is not 'module:Class'"),
    ({"code": "missing.py"}, r"missing\.py does not exist"),
    ({"artifacts": {"words": "nope.txt"}}, r"Artifact 'words': .*nope\.txt does not exist"),
    ({"artifacts": {"../x": "words.txt"}}, r"Artifact name '\.\./x' is not allowed"),
    ({"input_example": EXAMPLE.rename(columns={"review": "text"})},
     r"predict raised KeyError: 'review'"),
], ids=["pin", "requirement", "class", "outside", "ref", "code", "artifact", "artifact-name",
        "example"])
def test_log_refusals(catalog: Catalog, model_dir: Path, kwargs: dict[str, Any],
                      message: str) -> None:
    options: dict[str, Any] = {"python_model": "kw:Keyword", "code": model_dir / "kw.py",
                               "artifacts": {"words": model_dir / "words.txt"},
                               "input_example": EXAMPLE, "params": {"threshold": 1}}
    options.update(kwargs)
    for key in ("code",):
        if isinstance(options[key], str):
            options[key] = model_dir / options[key]
    options["artifacts"] = {k: model_dir / v for k, v in options["artifacts"].items()}
    with pytest.raises((ConfigError, ModelError), match=message):
        catalog.log_model(name="kw", **options)
    assert not catalog.model("kw").exists and catalog.runs() == []


def test_import_error_at_log_time_is_refused(catalog: Catalog, model_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KW_BREAK_IMPORT", "1")
    with pytest.raises(ModelError, match=r"The Python model's code 'kw' failed to import: "
                                         r"ImportError: no module named 'fancy_tokenizer'"):
        log_kw(catalog, model_dir)


def test_class_objects_and_instances(tmp_path: Path, model_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    monkeypatch.syspath_prepend(str(model_dir))
    import kw  # type: ignore[import-not-found]

    logged = log_kw(cat, model_dir, python_model=kw.Keyword)
    assert logged.run.params["model_class"] == "kw:Keyword"
    assert log_kw(cat, model_dir, python_model=kw.Keyword()).version.version == 2
    stateful = kw.Keyword()
    stateful.words = ["x"]
    with pytest.raises(ConfigError, match=r"The Keyword instance holds state \(words\)"):
        log_kw(cat, model_dir, python_model=stateful)

    class Local(batchml.PythonModel):
        pass

    with pytest.raises(ConfigError, match=r"lives in module 'test_python_model', not in the "
                                          r"shipped code \(module 'kw'\)"):
        log_kw(cat, model_dir, python_model=Local)


def test_package_folder_with_relative_imports(tmp_path: Path, model_dir: Path) -> None:
    pkg = tmp_path / "kwpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "rules.py").write_text("def count(t, words):\n    return sum(w in t for w in words)\n")
    (pkg / "sub" / "model.py").write_text(textwrap.dedent("""
        import batchml
        from ..rules import count

        class M(batchml.PythonModel):
            def load_context(self, context):
                self.words = open(context.artifacts["lex"] + "/a.txt").read().split()

            def predict(self, context, df, params):
                return [count(t, self.words) for t in df["review"]]
    """))
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"x")
    lex = tmp_path / "lex"
    lex.mkdir()
    (lex / "a.txt").write_text("fit dress")
    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    logged = cat.log_model(name="pkg", python_model="kwpkg.sub.model:M", code=pkg,
                           artifacts={"lex": lex}, input_example=EXAMPLE)
    manifest = json.loads(logged.run.fetch_artifact("python_model.json"))
    assert sorted(manifest["code"]["files"]) == ["kwpkg/__init__.py", "kwpkg/rules.py",
                                                 "kwpkg/sub/__init__.py", "kwpkg/sub/model.py"]
    assert manifest["artifacts"]["lex"]["kind"] == "folder"
    est = logged.version.load()
    assert outputs(est, EXAMPLE) == {"prediction": [1, 1, 0]}


def test_params_reach_predict_and_are_checked(tmp_path: Path, model_dir: Path) -> None:
    from batchml.params import InvalidParams, ParamSpec

    cat = Catalog(tmp_path / "c.duckdb", store=open_store(str(tmp_path / "artifacts")))
    spec = ParamSpec("threshold", "int", 1, minimum=0, maximum=5, description="hits needed")
    est = log_kw(cat, model_dir, params=[spec]).version.load()
    assert est.signature.param("threshold") == spec
    assert {p.name for p in est.signature.params} == {"threshold", "explain", "batch_size"}
    import pyarrow as pa

    batch = pa.RecordBatch.from_pandas(pd.DataFrame({"review": ["great", "meh"]}))
    proba = est.predict_proba(batch)
    index = est.label_index(proba)
    cols = est.output_columns(batch, proba, index, params={"threshold": 0})
    assert cols["flagged"].to_pylist() == [True, True]
    with pytest.raises(InvalidParams, match="threshold"):
        est.output_columns(batch, proba, index, params={"threshold": 9})
    with pytest.raises(ConfigError, match=r"Parameter 'words' has default \['a'\] \(list\)"):
        log_kw(cat, model_dir, params={"threshold": 1, "words": ["a"]})


# --- gate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("invert", "gate"), [(False, "passed"), (True, "failed")])
def test_gate_on_labelled_validation(catalog: Catalog, model_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch, invert: bool,
                                     gate: str) -> None:
    if invert:
        monkeypatch.setenv("KW_INVERT", "1")
    texts = ["great", "love it", "great love", "so great", "love", "bad", "awful", "meh",
             "poor fit", "no"] * 3
    validation = pd.DataFrame({"review": texts, "label": ([1] * 5 + [0] * 5) * 3})
    logged = catalog.log_model(name="scored", python_model="kw:Scored",
                               code=model_dir / "kw.py",
                               artifacts={"words": model_dir / "words.txt"},
                               input_example=EXAMPLE, classes=[0, 1], validation=validation,
                               alias="champion")
    assert logged.gate == gate
    assert logged.run.params["gate"] == gate
    names = {c.name: c.outcome for c in logged.checks}
    assert set(names) >= {"probabilities_valid", "predictions_vary", "holdout_agreement"} \
        or len(names) >= 4
    if invert:
        assert logged.version is None and not catalog.model("scored").exists
        assert "deployment_candidate" not in logged.run.tags
        assert any("holdout_agreement" in r for r in logged.reasons)
        return
    assert "deployment_candidate" in logged.run.tags
    assert logged.run.metrics["balanced_accuracy"] == 1.0
    est = catalog.model("scored").alias("champion").load()
    got = outputs(est, pd.DataFrame({"review": ["great love", "bad"]}))
    assert got["label"] == [1, 0] and got["proba"] == pytest.approx([0.95, 0.05])
    assert set(got) == {"label", "proba", "proba_0", "proba_1"}


def test_validation_needs_classes(catalog: Catalog, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="Validation data gates a model with classes"):
        log_kw(catalog, model_dir, validation=EXAMPLE.assign(label=1))


# --- batch scoring: batchml predict, the worker and its scorer process -------------------------


def _home(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", isolate_scoring=True)


def test_cli_log_model_and_predict(tmp_path: Path, model_dir: Path) -> None:
    runner = CliRunner()
    home = str(tmp_path / "home")
    result = runner.invoke(app, [
        "log-model", "--code", str(model_dir / "kw.py"), "--class", "kw:Keyword",
        "--name", "kw", "--input-example", str(model_dir / "example.parquet"),
        "--artifacts", f"words={model_dir / 'words.txt'}", "--param", "threshold=1",
        "--alias", "champion", "--home", home])
    assert result.exit_code == 0, result.output
    assert "kw/1 (kw@champion): run train/1, gate not evaluated" in result.output
    data = tmp_path / "in.parquet"
    pd.DataFrame({"review": ["great", "meh", "love great"], "id": [7, 8, 9]}).to_parquet(data)
    result = runner.invoke(app, ["predict", "--model", "kw@champion", str(data),
                                 "--output", str(tmp_path / "out"), "--home", home])
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(next((tmp_path / "out").rglob("*.parquet")))
    assert out[["id", "hits", "flagged"]].to_dict("list") == {
        "id": [7, 8, 9], "hits": [1, 0, 2], "flagged": [True, False, True]}
    assert set(out["model_flavor"]) == {"python"}
    # a batch's parameters reach predict(context, df, params)
    again = tmp_path / "again.parquet"  # a file is scored once; this is another one
    again.write_bytes(data.read_bytes())
    result = runner.invoke(app, ["predict", "--model", "kw@champion", str(again), "--param",
                                 "threshold=2", "--output", str(tmp_path / "out2"),
                                 "--home", home])
    assert result.exit_code == 0, result.output
    out2 = pd.read_parquet(next((tmp_path / "out2").rglob("*.parquet")))
    assert out2["flagged"].tolist() == [False, False, True]
    refused = runner.invoke(app, ["predict", "--model", "kw@champion", str(again), "--param",
                                  "threshold=many", "--home", home])
    assert refused.exit_code != 0 and "threshold" in refused.output
    bad = runner.invoke(app, ["log-model", "--code", str(model_dir / "kw.py"), "--class",
                              "kw:Keyword", "--name", "kw", "--input-example",
                              str(model_dir / "example.parquet"), "--artifacts", "words",
                              "--home", home])
    assert bad.exit_code == 1 and "--artifacts 'words' is not NAME=VALUE" in bad.output


@pytest.mark.parametrize(("invert", "code", "said"), [
    (False, 0, "scored/1: run train/1, gate passed"),
    (True, 1, "run train/1: gate failed, not registered: check holdout_agreement failed"),
])
def test_cli_gate(tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                  invert: bool, code: int, said: str) -> None:
    if invert:
        monkeypatch.setenv("KW_INVERT", "1")
    validation = tmp_path / "valid.parquet"
    pd.DataFrame({"review": ["great", "love it", "great love", "bad", "awful", "meh"] * 5,
                  "label": [1, 1, 1, 0, 0, 0] * 5}).to_parquet(validation)
    result = CliRunner().invoke(app, [
        "log-model", "--code", str(model_dir / "kw.py"), "--class", "kw:Scored",
        "--name", "scored", "--input-example", str(model_dir / "example.parquet"),
        "--artifacts", f"words={model_dir / 'words.txt'}", "--classes", "0", "--classes", "1",
        "--validation", str(validation), "--home", str(tmp_path / "home")])
    assert result.exit_code == code, result.output
    assert said in " ".join(result.output.split())


def _drop(inbox: Path | str, name: str, reviews: list[str]) -> None:
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.tmp"
    pd.DataFrame({"review": reviews}).to_parquet(tmp)
    tmp.rename(inbox / f"{name}.parquet")


BAD = [
    ("predict-raises", ["great", "boom"], {},
     r"Python model kw:Keyword: predict raised ValueError: cannot score 'boom'"),
    ("wrong-rows", ["great", "short", "x"], {},
     r"Python model kw:Keyword: predict returned 1 rows for 3 input rows"),
    ("wrong-type", ["dict"], {}, r"Python model kw:Keyword: predict returned a dict"),
    ("wrong-column-type", ["letters"], {},
     r"predict returned column 'hits' with values that are not int64"),
    ("import-error", ["great"], {"KW_BREAK_IMPORT": "1"},
     r"The Python model's code 'kw' failed to import: ImportError: no module named "
     r"'fancy_tokenizer'"),
]


@pytest.mark.parametrize("isolate", [True, False], ids=["scorer-process", "in-process"])
@pytest.mark.parametrize(("case", "reviews", "env", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_model_fails_its_file_and_the_worker_goes_on(
        tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, isolate: bool,
        case: str, reviews: list[str], env: dict[str, str], message: str) -> None:
    settings = Settings(home=tmp_path / "home", isolate_scoring=isolate, model="kw@champion")
    cat = Catalog.from_settings(settings)
    log_kw(cat, model_dir)
    for key, value in env.items():  # after logging: the model breaks where it is scored
        monkeypatch.setenv(key, value)
    src = DirectorySource(settings.inbox, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(cat, src, settings, model=settings.model, isolate=isolate)
    try:
        _drop(settings.inbox, "bad", reviews)
        worker.discover()
        report = worker.run_batch(limit=1)
        [outcome] = report.outcomes
        assert outcome.status == "quarantined"
        assert re.search(message, outcome.error or ""), outcome.error
        # the worker keeps scoring: a good file after the bad one
        _drop(settings.inbox, "good", ["great", "meh"])
        worker.discover()
        report = worker.run_batch(limit=1)
        [outcome] = report.outcomes
        if case == "import-error":  # every file fails with the model's error, none is lost
            assert outcome.status == "quarantined" and re.search(message, outcome.error or "")
        else:
            assert outcome.status == "scored", outcome.error
            out = pd.read_parquet(outcome.output_uri)
            assert out["hits"].tolist() == [1, 0]
    finally:
        worker.close()


def test_a_model_that_kills_its_scorer_is_retried_then_quarantined(
        tmp_path: Path, model_dir: Path) -> None:
    settings = Settings(home=tmp_path / "home", isolate_scoring=True, model="kw@champion",
                        poison_attempts=2)
    cat = Catalog.from_settings(settings)
    log_kw(cat, model_dir)
    src = DirectorySource(settings.inbox, quarantine_dir=settings.quarantine, use_events=False)
    worker = Worker(cat, src, settings, model=settings.model, isolate=True)
    try:
        _drop(settings.inbox, "die", ["great", "die"])
        worker.discover()
        first = worker.run_batch(limit=1)
        assert first.retried == 1 and not first.outcomes  # given back for another attempt
        second = worker.run_batch(limit=1)
        [outcome] = second.outcomes
        assert outcome.status == "quarantined"
        assert re.search(r"die\.parquet is poison: the scorer process died .*exited with code 3",
                         outcome.error or ""), outcome.error
        _drop(settings.inbox, "good", ["love"])
        worker.discover()
        [good] = worker.run_batch(limit=1).outcomes  # a new scorer process scores on
        assert good.status == "scored", good.error
    finally:
        worker.close()


# --- online ------------------------------------------------------------------------------------


def test_online_scoring_and_model_errors(tmp_path: Path, model_dir: Path) -> None:
    from batchml.api import create_app

    settings = Settings(home=tmp_path / "home", api_log_predictions=False)
    cat = Catalog.from_settings(settings)
    log_kw(cat, model_dir)
    with TestClient(create_app(settings, "kw@champion")) as client:
        ok = client.post("/invocations", json={"dataframe_records": [
            {"review": "great"}, {"review": "meh"}]})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"predictions": [{"hits": 1, "flagged": True},
                                             {"hits": 0, "flagged": False}]}
        boom = client.post("/invocations", json={"instances": ["boom"]})
        assert boom.status_code == 500
        assert "predict raised ValueError: cannot score 'boom'" in boom.json()["message"]
        short = client.post("/invocations", json={"instances": ["short", "a"]})
        assert short.status_code == 500 and "1 rows for 2 input rows" in short.text
        lenient = client.post("/invocations", json={"instances": ["great", "meh"],
                                                    "params": {"threshold": 0}})
        assert lenient.status_code == 200, lenient.text
        assert [p["flagged"] for p in lenient.json()["predictions"]] == [True, True]
        bad = client.post("/invocations", json={"instances": ["great"],
                                                "params": {"threshold": "many"}})
        assert bad.status_code == 400 and "threshold" in bad.text
        again = client.post("/invocations", json={"instances": ["love"]})  # still serving
        assert again.status_code == 200 and again.json()["predictions"][0]["hits"] == 1
        meta = client.get("/v2/models/kw").json()
        assert [o["name"] for o in meta["outputs"]][:2] == ["hits", "flagged"]


def test_online_with_a_model_broken_here(tmp_path: Path, model_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Code that does not import where it is served: metadata still answers (from the
    signature), every request gets the model's error, the server stays up."""
    from batchml.api import create_app

    settings = Settings(home=tmp_path / "home", api_log_predictions=False)
    log_kw(Catalog.from_settings(settings), model_dir)
    monkeypatch.setenv("KW_BREAK_IMPORT", "1")
    with TestClient(create_app(settings, "kw@champion")) as client:
        meta = client.get("/v2/models/kw")
        assert meta.status_code == 200, meta.text
        assert [(o["name"], o["datatype"]) for o in meta.json()["outputs"]] == [
            ("hits", "INT64"), ("flagged", "BOOL")]
        for _ in range(2):
            answer = client.post("/invocations", json={"instances": ["great"]})
            assert answer.status_code == 500
            assert "failed to import: ImportError: no module named 'fancy_tokenizer'" in \
                answer.json()["message"]
        assert client.get("/ping").status_code == 200


# --- the docs page ------------------------------------------------------------------------------


def test_docs_page_runs_as_printed(tmp_path: Path) -> None:
    """docs/custom-models.md's quick start, exactly as printed (<= 30 lines), in a fresh
    folder: the class written to keyword_model.py, then the shell session (log, score a file,
    serve, an HTTP answer from the real server)."""
    text = (ROOT / "docs" / "custom-models.md").read_text()
    quick = text.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", quick, re.S)
    assert [lang for lang, _ in blocks] == ["python", "bash"]
    lines = sum(len(b.strip().splitlines()) for _, b in blocks)
    assert lines <= 30, f"the quick start has {lines} lines"
    (tmp_path / "keyword_model.py").write_text(blocks[0][1])
    env = {**os.environ, "BATCHML_HOME": str(tmp_path / "home"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[1][1]], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer == {"predictions": [{"hits": 1, "flagged": True},
                                      {"hits": 0, "flagged": False}]}
    assert "keyword/1 (keyword@champion): run train/1, gate not evaluated" in proc.stdout
    [scored] = (tmp_path / "home" / "outbox").rglob("*.parquet")
    assert pd.read_parquet(scored)["flagged"].tolist() == [True, False]
