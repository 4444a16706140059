"""B11: the encoder candidate (``encoder_minilm``: all-MiniLM-L6-v2 embeddings + logistic
regression, the ``batchml[transformers]`` extra) on the CPU, with every core of the machine.

In a fresh child process (``python -m bench.b11_encoder train``): fit the candidate on
``b11_rows[0]`` synthetic reviews (the training time: tokenising, embedding, the logistic
regression), then score ``b11_rows[1]`` other reviews as arrow, the way the scorer does
(``predict_proba`` on a record batch: signature check, shortest texts first, forward passes of
32, the head), ``b11_reps`` times. The floor is the raw encoder on the same texts
(``SentenceEncoder.embed``: tokeniser + forward pass + pooling, nothing of batchml's around it).

With ``b11_auc`` (full runs): ``batchml.training.train`` on the shared women's clothing reviews
(``../shared/testdata/womens_clothing_reviews``: 1,049 train / 225 valid real reviews, label
``labels`` = recommended) with the baseline, keras_nbow, sklearn_text, sklearn_text_nb and
encoder_minilm side by side: each candidate's validation ROC AUC and seconds.

Without the extra, B11 reports no figures (a log line says why).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import PYTHON, ROOT, Context, Figure, figure, run_child

REVIEWS = ROOT.parent / "shared" / "testdata" / "womens_clothing_reviews"
CANDIDATES = ["keras_nbow", "sklearn_text", "sklearn_text_nb", "encoder_minilm"]


def estimate(sizes: dict[str, Any]) -> float:
    """Rough seconds for B11 at ``sizes`` (~60 texts/s through the encoder on 2 busy cores;
    the clothing comparison ~2 min)."""
    n_train, n_score = sizes["b11_rows"]
    return 15 + (n_train + 2 * sizes["b11_reps"] * n_score) / 60 + (
        120 if sizes["b11_auc"] else 0)


def run(ctx: Context) -> list[Figure]:
    from batchml.errors import ExtraNotInstalled
    from batchml.estimators.sentence_encoder import installed_encoder

    try:
        installed_encoder()
    except ExtraNotInstalled as exc:
        ctx.log(f"  B11 skipped: {exc}")
        return []
    n_train, n_score = ctx.sizes["b11_rows"]
    ans = _child("train", {"n_train": n_train, "n_score": n_score,
                           "reps": ctx.sizes["b11_reps"]})
    ctx.log(f"  B11 fit {ans['fit_s']:.1f} s on {n_train:,} reviews; scoring "
            f"{ans['score_rps']}; floor {ans['floor_rps']}; threads {ans['threads']}")
    floor = sorted(ans["floor_rps"])[len(ans["floor_rps"]) // 2]
    figs = [
        figure("B11", "fit", f"encoder_minilm fit on {n_train:,} synthetic reviews (embed + "
               "logistic regression)", [ans["fit_s"]], "s",
               notes=f"{n_train / ans['fit_s']:,.0f} reviews/s; torch threads "
                     f"{ans['threads']}; fresh process, encoder load {ans['load_s']:.1f} s "
                     "included"),
        figure("B11", "score", f"encoder_minilm predict_proba on {n_score:,} reviews (arrow)",
               ans["score_rps"], "rows/s", floor=floor,
               notes="floor: the raw encoder (tokeniser + forward pass + pooling) on the same "
                     "texts"),
    ]
    if ctx.sizes["b11_auc"]:
        if not (REVIEWS / "train.parquet").exists():
            ctx.log(f"  B11: no {REVIEWS}; validation AUC comparison skipped")
            return figs
        auc = _child("auc", {"dir": str(ctx.tmp / "b11")})
        if auc["errors"]:
            raise RuntimeError(f"candidates failed or were skipped: {auc['errors']}")
        ctx.log(f"  B11 clothing reviews: winner {auc['winner']}; "
                + ", ".join(f"{k} AUC {v['roc_auc']:.4f} ({v['seconds']:.1f} s)"
                            for k, v in auc["candidates"].items()))
        for name, got in auc["candidates"].items():
            figs.append(figure("B11", f"auc.{name}", f"validation ROC AUC of {name}, women's "
                               "clothing reviews (1,049 train / 225 valid)", [got["roc_auc"]],
                               "AUC", notes=f"fit + evaluate {got['seconds']:.1f} s"))
    return figs


def _child(command: str, payload: dict[str, Any]) -> Any:
    result = run_child([PYTHON, "-m", "bench.b11_encoder", command, json.dumps(payload)],
                       timeout_s=7200).check()
    return result.json()


# --- the child process ------------------------------------------------------------------------


def train_child(p: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa
    import torch

    from batchml.estimators import make_estimator
    from batchml.estimators.sentence_encoder import load_encoder
    from batchml.synthetic import synthetic_reviews

    train = synthetic_reviews(int(p["n_train"]), seed=1)
    score = synthetic_reviews(int(p["n_score"]), seed=3)
    est = make_estimator("encoder_minilm", text_column="review")
    start = time.perf_counter()
    load_start = time.perf_counter()
    est._encoder = load_encoder()
    load_s = time.perf_counter() - load_start
    est.fit(train[["review"]], train["labels"])
    fit_s = time.perf_counter() - start
    batch = pa.RecordBatch.from_pandas(score[["review"]], preserve_index=False)
    texts = score["review"].tolist()
    est.predict_proba(batch.slice(0, 64))  # warm
    score_rps, floor_rps = [], []
    for _ in range(int(p["reps"])):
        t = time.perf_counter()
        est.predict_proba(batch)
        score_rps.append(len(texts) / (time.perf_counter() - t))
        t = time.perf_counter()
        est.encoder.embed(texts, max_length=128, batch_size=32, normalize=True)
        floor_rps.append(len(texts) / (time.perf_counter() - t))
    return {"fit_s": fit_s, "load_s": load_s, "score_rps": score_rps, "floor_rps": floor_rps,
            "threads": torch.get_num_threads()}


def auc_child(p: dict[str, Any]) -> dict[str, Any]:
    from batchml import Catalog, open_store
    from batchml.training import TrainingConfig, train

    home = Path(p["dir"]) if p.get("dir") else Path(tempfile.mkdtemp())
    home.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(home / "catalog.duckdb", store=open_store(str(home / "artifacts")))
    config = TrainingConfig(train_uri=str(REVIEWS / "train.parquet"),
                            valid_uri=str(REVIEWS / "valid.parquet"), label="labels",
                            text_column="review", candidates=CANDIDATES)
    outcome = train(catalog, config)
    metrics = outcome.run.metrics
    return {"winner": outcome.decision.winner, "tagged": outcome.decision.tagged,
            "errors": {r.name: r.error or r.skipped for r in outcome.results
                       if r.error or r.skipped},
            "candidates": {r.name: {"roc_auc": metrics.get(f"{r.name}.roc_auc"),
                                    "seconds": metrics.get(f"{r.name}.seconds")}
                           for r in outcome.results}}


if __name__ == "__main__":
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    answer = {"train": train_child, "auc": auc_child}[command](payload)
    sys.stdout.write(json.dumps(answer) + "\n")
