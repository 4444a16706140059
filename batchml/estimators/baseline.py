"""The ``baseline`` flavor: always the majority class, with the training class frequencies.

Bytes: UTF-8 JSON, ``{"format": "batchml", "flavor": "baseline", "signature": ...,
"priors": [...], ...}``. Every real candidate has to beat it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ModelError
from .base import Estimator

if TYPE_CHECKING:
    import pandas as pd


class BaselineEstimator(Estimator):
    """Predicts the training class frequencies for every row (so the majority class; a tie
    goes to the larger label). Reads text or tabular data alike: its inputs only serve to
    check that scoring data looks like the training data."""

    flavor: ClassVar[str] = "baseline"
    file_suffix: ClassVar[str] = ".json"
    candidates: ClassVar[dict[str, dict[str, Any]]] = {"baseline": {}}

    priors: np.ndarray | None = None

    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        counts = np.bincount(y, minlength=len(self.classes_)).astype(np.float64)
        self.priors = counts / counts.sum()

    def _predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        assert self.priors is not None
        return np.tile(self.priors, (len(x), 1))

    def to_bytes(self) -> bytes:
        """The model as UTF-8 JSON."""
        meta = self._meta()  # raises ModelError when not fitted
        assert self.priors is not None
        meta["priors"] = [float(p) for p in self.priors]
        return json.dumps(meta, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> BaselineEstimator:
        """The baseline saved by :meth:`to_bytes`."""
        try:
            meta = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"These bytes are not a baseline model (not JSON: {exc}).",
                             hint="Load it with the flavor recorded in the catalog.") from exc
        estimator = cls._from_meta(meta)
        try:
            priors = np.asarray(meta["priors"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError("The baseline model has no valid class priors.",
                             hint="Re-train and log the model again.") from exc
        if priors.shape != (len(estimator.classes_),) or not np.isclose(priors.sum(), 1.0):
            raise ModelError(f"The baseline model's priors {priors.tolist()} do not match its "
                             f"classes {estimator.classes_}.",
                             hint="Re-train and log the model again.")
        estimator.priors = priors
        return estimator
