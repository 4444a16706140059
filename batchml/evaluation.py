"""Evaluating a fitted model on validation data: metrics and the plots a person looks at."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

PRIMARY_METRICS = ("roc_auc", "accuracy", "f1", "log_loss")
LOWER_IS_BETTER = {"log_loss"}


def evaluate(y_true: Sequence[Any] | pd.Series, proba: np.ndarray, classes: Sequence[Any]) -> dict[str, Any]:
    """Accuracy, ROC AUC (macro one-vs-rest for multi-class), precision, recall, F1, log loss
    and the confusion matrix (as nested lists under ``confusion_matrix``)."""
    y = np.asarray(y_true)
    classes = list(classes)
    pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    pred = pred.astype(y.dtype) if y.dtype != object else pred
    binary = len(classes) == 2
    average = "binary" if binary else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = classes[1]
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, **kwargs)),
        "recall": float(skm.recall_score(y, pred, **kwargs)),
        "f1": float(skm.f1_score(y, pred, **kwargs)),
        "log_loss": float(skm.log_loss(y, np.clip(proba, 1e-15, 1), labels=classes)),
    }
    present = set(np.unique(y).tolist())
    if len(present) < 2:
        out["roc_auc"] = float("nan")
    elif binary:
        out["roc_auc"] = float(skm.roc_auc_score(y == classes[1], proba[:, 1]))
    else:
        out["roc_auc"] = float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro",
                                                 labels=classes))
    out["confusion_matrix"] = skm.confusion_matrix(y, pred, labels=classes).tolist()
    return out


def better(metric: str, a: float, b: float, margin: float = 0.0) -> bool:
    """True when ``a`` beats ``b`` on ``metric`` by more than ``margin``."""
    if np.isnan(a):
        return False
    if np.isnan(b):
        return True
    return a < b - margin if metric in LOWER_IS_BETTER else a > b + margin


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_plots(y_true: Sequence[Any] | pd.Series, probas: dict[str, np.ndarray],
                classes: Sequence[Any]) -> dict[str, bytes]:
    """ROC and precision-recall curves of every candidate (binary: positive class; multi-class:
    micro-averaged one-vs-rest), as PNG bytes keyed ``roc_curve.png`` / ``pr_curve.png``."""
    plt = _plt()
    y = np.asarray(y_true)
    classes = list(classes)
    onehot = np.stack([y == c for c in classes], axis=1)
    figs = {}
    for name, title in (("roc_curve.png", "ROC curve"), ("pr_curve.png", "Precision-recall")):
        fig, ax = plt.subplots(figsize=(5, 4))
        for cand, proba in probas.items():
            truth = onehot[:, 1] if len(classes) == 2 else onehot.ravel()
            score = proba[:, 1] if len(classes) == 2 else proba.ravel()
            if truth.all() or not truth.any():
                continue
            if name == "roc_curve.png":
                fpr, tpr, _ = skm.roc_curve(truth, score)
                ax.plot(fpr, tpr, label=f"{cand} (AUC {skm.auc(fpr, tpr):.3f})")
                ax.set_xlabel("false positive rate")
                ax.set_ylabel("true positive rate")
            else:
                prec, rec, _ = skm.precision_recall_curve(truth, score)
                ax.plot(rec, prec, label=cand)
                ax.set_xlabel("recall")
                ax.set_ylabel("precision")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="best")
        figs[name] = _png(fig)
    return figs


def confusion_plot(matrix: list[list[int]], classes: Sequence[Any], title: str) -> bytes:
    """A confusion matrix heat map as PNG bytes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.5))
    data = np.asarray(matrix)
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > data.max() / 2 else "black")
    ax.set_title(title)
    return _png(fig)


def history_plot(history: dict[str, list[float]], title: str) -> bytes:
    """Training curves (loss and any other per-epoch series) as PNG bytes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, values in sorted(history.items()):
        ax.plot(range(1, len(values) + 1), values, label=key)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)
