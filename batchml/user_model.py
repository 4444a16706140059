"""What users subclass to bring their own model: :class:`PythonModel` and the
:class:`PythonModelContext` it is given (docs/custom-models.md).

Kept apart from the ``python`` flavor (:mod:`batchml.estimators.python_model`) so that
``import batchml`` stays light: nothing here imports pandas or the estimators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class PythonModelContext:
    """What a :class:`PythonModel` gets: ``artifacts`` maps each artifact's name to its local
    path (the file, or the folder of a folder artifact), ``params`` the declared inference
    parameters with their defaults, ``code_path`` the folder holding the shipped code."""

    artifacts: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    code_path: str = ""


class PythonModel:
    """Subclass this to bring your own model (see docs/custom-models.md).

    batchml builds your class with no arguments, calls :meth:`load_context` once, then
    :meth:`predict` for each batch of rows. Keep state that must travel with the model in
    artifacts, read in :meth:`load_context`.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Read artifacts (``context.artifacts[name]`` is a local path); the default does
        nothing."""

    def predict(self, context: PythonModelContext, df: pd.DataFrame,
                params: dict[str, Any]) -> Any:
        """Predictions for ``df`` (the signature's input columns), one row per row of ``df``:
        class probabilities for a model with classes, else a DataFrame, Series, ndarray or
        list. ``params`` holds the inference parameters (defaults, overridden per call)."""
        raise NotImplementedError("Implement predict(context, df, params).")
