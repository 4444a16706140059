"""Evaluating a fitted model on validation data: metrics and the plots a person looks at."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from .errors import ConfigError

PRIMARY_METRICS = ("roc_auc", "accuracy", "f1", "log_loss")
LOWER_IS_BETTER = {"log_loss"}
THRESHOLD_OBJECTIVES = ("balanced_accuracy", "f1", "fixed")


def predicted_index(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class positions the model predicts, by the rule scoring uses: binary compares the
    positive class's probability with ``threshold`` (default 0.5); multi-class takes the most
    probable class, ties going to the later class."""
    k = proba.shape[1]
    if k == 2:
        return (proba[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.intp)
    return k - 1 - np.argmax(proba[:, ::-1], axis=1)


def choose_threshold(y_true: Sequence[Any] | pd.Series, proba: np.ndarray,
                     classes: Sequence[Any], objective: str = "balanced_accuracy"
                     ) -> float | None:
    """The binary decision threshold that maximises ``objective`` (``balanced_accuracy`` or
    ``f1`` of the positive class) on these validation probabilities; None for multi-class.

    ``objective="fixed"`` keeps 0.5. Candidates are 0.5 and the midpoints between distinct
    probabilities; ties go to the candidate closest to 0.5, so a model with nothing to separate
    (one class only, constant probabilities) keeps 0.5.
    """
    if objective not in THRESHOLD_OBJECTIVES:
        raise ConfigError(f"Unknown threshold objective {objective!r}.",
                          hint=f"Use one of {', '.join(THRESHOLD_OBJECTIVES)}.")
    classes = list(classes)
    if len(classes) != 2:
        return None
    y = np.asarray(y_true) == classes[1]
    score = np.asarray(proba, dtype=np.float64)[:, 1]
    if objective == "fixed" or y.all() or not y.any() or len(y) == 0:
        return 0.5
    values = np.unique(score)
    cands = np.unique(np.concatenate([[0.5], (values[:-1] + values[1:]) / 2]))
    order = np.sort(score)
    pos_sorted = np.sort(score[y])
    # rows predicted positive at threshold t: score >= t
    pred_pos = len(order) - np.searchsorted(order, cands, side="left")
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, cands, side="left")
    fp = pred_pos - tp
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if objective == "balanced_accuracy":
        value = 0.5 * (tp / n_pos + (n_neg - fp) / n_neg)
    else:
        value = 2 * tp / (pred_pos + n_pos)  # F1 = 2TP / (2TP + FP + FN)
    best = value.max()
    ties = cands[np.isclose(value, best, rtol=0, atol=1e-12)]
    return float(ties[np.argmin(np.abs(ties - 0.5))])


def evaluate(y_true: Sequence[Any] | pd.Series, proba: np.ndarray, classes: Sequence[Any], *,
             threshold: float | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC (macro one-vs-rest for multi-class), precision,
    recall, F1 (binary: of the positive class; multi-class: macro), macro F1, log loss and the
    confusion matrix (as nested lists under ``confusion_matrix``).

    Label metrics are taken at ``threshold`` for a binary model (default 0.5; recorded as
    ``threshold``), at the most probable class otherwise.
    """
    y = np.asarray(y_true)
    classes = list(classes)
    binary = len(classes) == 2
    pred = np.asarray(classes, dtype=object)[predicted_index(proba, threshold)]
    pred = pred.astype(y.dtype) if y.dtype != object else pred
    average = "binary" if binary else "macro"
    kwargs: dict[str, Any] = {"average": average, "zero_division": 0}
    if binary:
        kwargs["pos_label"] = classes[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        balanced = float(skm.balanced_accuracy_score(y, pred))
    out: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": balanced,
        "precision": float(skm.precision_score(y, pred, **kwargs)),
        "recall": float(skm.recall_score(y, pred, **kwargs)),
        "f1": float(skm.f1_score(y, pred, **kwargs)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=classes,
                                       zero_division=0)),
        "log_loss": float(skm.log_loss(y, np.clip(proba, 1e-15, 1), labels=classes)),
    }
    if binary:
        out["threshold"] = 0.5 if threshold is None else float(threshold)
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
