"""The ``python`` flavor: a model written by the user as a :class:`PythonModel` subclass.

The user's class lives in code shipped with the model (a ``.py`` file or a package folder),
stored with its artifacts in one checksummed bundle (:mod:`.python_bundle`). Loading checks
every file's sha256, writes the files to a private temporary folder, checks the recorded
environment, imports the code under a private package name (``_batchml_pymodel_<id>``, so two
models with a module of the same name never meet in ``sys.modules``), builds the class with
no arguments and calls its ``load_context(context)`` once.

Two kinds of model:

- **classifier** (``classes`` declared): ``predict`` returns class probabilities, one row per
  input row (a DataFrame with a column per class, an array of shape (rows, classes), or for a
  binary model the positive class's probability); the model gets the built-in classifiers'
  output columns (``label``, ``proba``, ``proba_<class>``), threshold and gate checks.
- **outputs** (no classes): ``predict`` returns a DataFrame, Series, ndarray or list with one
  row per input row; the signature's outputs (inferred when the model was logged) say the
  columns and their types.

A model whose code cannot be imported, whose ``load_context`` raises or whose environment
differs from the one recorded loads *broken*: the failure is logged and raised as a
:class:`ModelError` by every prediction, so a service scoring with it keeps running and
files fail with the model's error. A bundle whose checksums differ is refused at load.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import tempfile
import types
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import BatchMLError, ModelError
from ..signature import ColumnSpec, Signature
from ..user_model import PythonModel, PythonModelContext
from . import python_bundle
from .base import Estimator, Frame

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("batchml.estimators")

CANDIDATE = "python_model"
RESERVED_OUTPUTS = frozenset({"row_index", "model_run_id", "model_flavor", "input_uri",
                              "input_etag", "batch_id", "scored_at", "explanation"})


class PythonEstimator(Estimator):
    """A :class:`PythonModel` behind the :class:`Estimator` interface (flavor ``python``)."""

    flavor = "python"
    file_suffix = ".pymodel.zip"
    candidates = {CANDIDATE: {}}

    _bundle: bytes = b""
    _manifest: dict[str, Any]
    _model: PythonModel | None = None
    _context: PythonModelContext | None = None
    _load_error: ModelError | None = None

    # --- building and loading ----------------------------------------------------------------

    @classmethod
    def activate(cls, files: python_bundle.BundleFiles, *, strict: bool) -> PythonEstimator:
        """An estimator over checked bundle files: extracted, environment checked, code
        imported, ``load_context`` called. ``strict`` raises a failure; otherwise it is kept
        and raised by every prediction (see the module docstring)."""
        meta = files.manifest.get("estimator")
        est = cls._from_meta(meta) if meta is not None else cls(CANDIDATE)
        est._manifest = files.manifest
        folder = Path(tempfile.mkdtemp(prefix="batchml-pymodel-"))
        package = f"_batchml_pymodel_{uuid.uuid4().hex[:12]}"
        weakref.finalize(est, _cleanup, str(folder), package)
        try:
            est._load(files, folder, package)
        except ModelError as exc:
            if strict:
                raise
            est._load_error = exc
            log.error("python model %s cannot score: %s", files.manifest.get("model_class"),
                      exc)
        return est

    def _load(self, files: python_bundle.BundleFiles, folder: Path, package: str) -> None:
        manifest = files.manifest
        ref = str(manifest.get("model_class", ""))
        errors, warnings = python_bundle.environment_problems(manifest.get("environment", {}))
        for w in warnings:
            log.warning("python model %s: %s", ref, w)
        if errors:
            raise ModelError(f"Python model {ref} cannot load here: " + "; ".join(errors) + ".",
                             hint="Match the environment it was logged in, or log it again.")
        code, artifacts = python_bundle.extract(files, folder)
        model_cls = import_class(code, ref, package, manifest["code"]["module"])
        try:
            model = model_cls()
        except Exception as exc:
            raise ModelError(f"Python model {ref} could not be built ({model_cls.__name__}() "
                             f"raised {type(exc).__name__}: {exc}).",
                             hint="batchml builds the class with no arguments; fix it and log "
                                  "the model again.") from exc
        params = self._signature.param_defaults if self._signature is not None else {}
        context = PythonModelContext(artifacts, params, str(code))
        try:
            model.load_context(context)
        except Exception as exc:
            raise ModelError(f"Python model {ref}: load_context raised "
                             f"{type(exc).__name__}: {exc}",
                             hint="Fix the model's code or artifacts and log it again.") from exc
        self._model, self._context = model, context

    @classmethod
    def from_bytes(cls, data: bytes) -> PythonEstimator:
        """The model in ``data``; a bundle that differs from its manifest is refused
        (:class:`~batchml.errors.ChecksumMismatch`), any other failure is kept and raised by
        every prediction."""
        files = python_bundle.open_bundle(data)
        if "estimator" not in files.manifest:
            raise ModelError("This Python model bundle has no signature.",
                             hint="Log it with batchml log-model / Catalog.log_model.")
        est = cls.activate(files, strict=False)
        est._bundle = data
        return est

    def to_bytes(self) -> bytes:
        if not self._bundle:
            raise ModelError("This Python model has no bundle yet.",
                             hint="Log it with batchml log-model / Catalog.log_model.")
        return self._bundle

    def seal(self, files: python_bundle.BundleFiles, signature: Signature) -> None:
        """Fix the signature and write the final bundle (what :meth:`to_bytes` returns)."""
        self._signature = signature
        self.classes_ = list(signature.classes)
        if signature.param("threshold") is not None:
            self.params["threshold"] = float(signature.param_defaults["threshold"])
        files.manifest["estimator"] = self._meta()
        self._manifest = files.manifest
        if self._context is not None:
            self._context.params = signature.param_defaults
        self._bundle = python_bundle.write(files)

    # --- the user's code -------------------------------------------------------------------

    @property
    def load_error(self) -> ModelError | None:
        """Why this model cannot score (None when it can)."""
        return self._load_error

    @property
    def model_class(self) -> str:
        return str(self._manifest.get("model_class", ""))

    @property
    def is_classifier(self) -> bool:
        return bool(self.classes_)

    def call(self, frame: Frame | pd.DataFrame, params: Mapping[str, Any] | None = None) -> Any:
        """The user's ``predict`` on the coerced inputs of ``frame`` with every inference
        parameter resolved (defaults overridden by ``params``, checked): any failure of the
        model is a :class:`ModelError` naming the model and what it raised."""
        if self._load_error is not None:
            raise self._load_error
        assert self._model is not None and self._context is not None
        df = self.signature.coerce(frame)
        resolved = self.resolve_params(params)
        try:
            return self._model.predict(self._context, df, resolved)
        except BatchMLError:
            raise
        except Exception as exc:
            raise ModelError(f"Python model {self.model_class}: predict raised "
                             f"{type(exc).__name__}: {exc}",
                             hint="Fix the model's code and log a new version; then "
                                  "`batchml reprocess` the files it failed.") from exc

    # --- the Estimator interface -----------------------------------------------------------

    def fit(self, frame: pd.DataFrame, labels: Any, *, validation: Any = None) -> PythonEstimator:
        raise ModelError("A Python model is not trained by batchml.",
                         hint="Log it with batchml log-model or Catalog.log_model(...).")

    def _fit(self, x: pd.DataFrame, y: np.ndarray, validation: Any) -> None:
        raise ModelError("A Python model is not trained by batchml.")

    def predict_proba(self, frame: Frame, *, params: Mapping[str, Any] | None = None
                      ) -> np.ndarray:
        """Classifier: the user's probabilities, checked. Otherwise an empty (rows, 0) array
        (the outputs come from :meth:`output_columns`)."""
        n = frame.num_rows if isinstance(frame, pa.Table | pa.RecordBatch) else len(frame)
        if not self.is_classifier:
            if self._load_error is not None:
                raise self._load_error
            return np.zeros((n, 0), dtype=np.float64)
        if n == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float64)
        return as_proba(self.call(frame, params), n, self.classes_, self.model_class)

    def _predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(x)

    def label_index(self, proba: np.ndarray, *, threshold: float | None = None,
                    params: Mapping[str, Any] | None = None) -> np.ndarray:
        if not self.is_classifier:
            return np.zeros(len(proba), dtype=np.intp)
        return super().label_index(proba, threshold=threshold, params=params)

    def output_columns(self, batch: pa.RecordBatch | pa.Table, proba: np.ndarray,
                       index: np.ndarray, *, params: Mapping[str, Any] | None = None
                       ) -> dict[str, pa.Array]:
        if self.is_classifier:
            return super().output_columns(batch, proba, index, params=params)
        frame = as_frame(self.call(batch, params), batch.num_rows, self.model_class)
        return arrow_outputs(frame, self.signature.outputs, self.model_class)


def _cleanup(folder: str, package: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        sys.modules.pop(name, None)


def import_class(code: Path, ref: str, package: str, top: str) -> type[PythonModel]:
    """The class ``module:Class`` from the code under ``code``, imported inside the private
    package ``package``; a :class:`ModelError` says what failed."""
    module_name, _, qualname = ref.partition(":")
    if not qualname or module_name.split(".")[0] != top:
        raise ModelError(f"The model class {ref!r} is not 'module:Class' in the shipped code "
                         f"(whose module is {top!r}).",
                         hint=f"Name it like {top}:MyModel.")
    root = types.ModuleType(package)
    root.__path__ = [str(code)]
    root.__package__ = package
    sys.modules[package] = root
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except Exception as exc:
        raise ModelError(f"The Python model's code {module_name!r} failed to import: "
                         f"{type(exc).__name__}: {exc}",
                         hint="Fix the code (imports inside a package are relative: "
                              "from . import x) or install what it needs, then log the model "
                              "again.") from exc
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelError(f"Module {module_name!r} has no {qualname!r}.",
                             hint=f"Pass the class as {module_name}:ClassName.")
    if not (isinstance(obj, type) and issubclass(obj, PythonModel)):
        raise ModelError(f"{ref} is not a subclass of batchml.PythonModel.",
                         hint="Subclass batchml.PythonModel and implement predict().")
    return obj


# --- what predict returns ------------------------------------------------------------------


def _wrong(ref: str, what: str) -> ModelError:
    return ModelError(f"Python model {ref}: predict returned {what}.",
                      hint="Return one row per input row: a DataFrame, Series, ndarray or "
                           "list (probabilities per class for a model with classes).")


def as_proba(result: Any, n: int, classes: list[Any], ref: str) -> np.ndarray:
    """Probabilities (n, classes) from what a classifier's predict returned."""
    import pandas as pd

    k = len(classes)
    if isinstance(result, pd.DataFrame):
        names = [str(c) for c in classes]
        cols = [str(c) for c in result.columns]
        if set(names) <= set(cols):
            result = result.set_axis(cols, axis=1)[names]
        values: Any = result.to_numpy()
    elif isinstance(result, pd.Series | np.ndarray | list | tuple):
        values = np.asarray(result)
    else:
        raise _wrong(ref, f"a {type(result).__name__}")
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise _wrong(ref, "values that are not probabilities (numbers)") from None
    if values.ndim == 1 and k == 2:
        values = np.column_stack([1.0 - values, values])
    if values.ndim != 2 or values.shape[0] != n or values.shape[1] != k:
        raise _wrong(ref, f"an array of shape {values.shape} for {n} rows; expected ({n}, {k})"
                          f" probabilities for classes {classes}")
    if not np.isfinite(values).all():
        raise _wrong(ref, "probabilities that are not finite")
    return values


def as_frame(result: Any, n: int, ref: str) -> pd.DataFrame:
    """A DataFrame of outputs from what predict returned, one row per input row."""
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        frame = result.reset_index(drop=True)
    elif isinstance(result, pd.Series):
        frame = pd.DataFrame({"prediction": result.reset_index(drop=True)})
    elif isinstance(result, np.ndarray | list | tuple):
        values = np.asarray(result) if not isinstance(result, list | tuple) else result
        if isinstance(values, np.ndarray) and values.ndim == 2:
            frame = pd.DataFrame({f"prediction_{i}": values[:, i]
                                  for i in range(values.shape[1])})
        elif isinstance(values, np.ndarray) and values.ndim != 1:
            raise _wrong(ref, f"an array of {values.ndim} dimensions")
        else:
            frame = pd.DataFrame({"prediction": pd.Series(list(values))})
    else:
        raise _wrong(ref, f"a {type(result).__name__}")
    if len(frame) != n:
        raise _wrong(ref, f"{len(frame)} rows for {n} input rows")
    return frame


_ARROW = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(),
          "bool": pa.bool_()}


def arrow_outputs(frame: pd.DataFrame, outputs: tuple[ColumnSpec, ...],
                  ref: str) -> dict[str, pa.Array]:
    """The signature's output columns from ``frame`` as Arrow arrays of their types."""
    names = [str(c) for c in frame.columns]
    missing = [s.name for s in outputs if s.name not in names]
    if missing:
        raise _wrong(ref, f"columns {names}, without {missing} of its signature")
    frame = frame.set_axis(names, axis=1)
    cols: dict[str, pa.Array] = {}
    for spec in outputs:
        series = frame[spec.name]
        try:
            values = pa.Array.from_pandas(series, type=_ARROW[spec.type])
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise _wrong(ref, f"column {spec.name!r} with values that are not {spec.type} "
                              f"({exc})") from None
        if spec.type in ("float64", "int64") and pd_kind(series) not in (
                "floating", "integer", "mixed-integer-float", "empty"):
            raise _wrong(ref, f"column {spec.name!r} holding {pd_kind(series)} values, "
                              f"not {spec.type}")
        cols[spec.name] = values
    return cols


def pd_kind(series: pd.Series) -> str:
    import pandas as pd

    return str(pd.api.types.infer_dtype(series, skipna=True))


def infer_outputs(frame: pd.DataFrame, ref: str) -> tuple[ColumnSpec, ...]:
    """Output columns (name, type) from what predict returned on the input example."""
    from ..errors import ConfigError
    from ..signature import column_type

    specs = []
    for name in frame.columns:
        if not isinstance(name, str) or name in RESERVED_OUTPUTS:
            raise ConfigError(f"Python model {ref}: output column {name!r} is not allowed "
                              f"(outputs are named by strings other than "
                              f"{', '.join(sorted(RESERVED_OUTPUTS))}).",
                              hint="Rename it in the DataFrame predict returns.")
        try:
            kind = column_type(frame[name])
        except BatchMLError as exc:
            raise ConfigError(f"Python model {ref}: output {exc}",
                              hint="Return string, float64, int64 or bool columns.") from exc
        specs.append(ColumnSpec(name, kind, not bool(frame[name].isna().any())))
    return tuple(specs)
