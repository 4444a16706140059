"""The ``keras`` flavor: a neural bag-of-words text classifier (Keras 3 on TensorFlow).

``TextVectorization(max_tokens=750, output_mode="count")`` adapted on the training text, then
``Dense(1, sigmoid)``: binary only. Bytes: a native ``.keras`` zip with extra entries that Keras
ignores: ``batchml.json`` (signature, candidate, params, training history) and
``batchml_export.json`` (vocabulary, Dense weights and bias, tokenizer settings: see
:mod:`.keras_export`). Loading checks that the model holds only the layers we build.

Scoring: the model is linear over token counts, so with the export present (every model saved
since it was added) it is scored by :class:`~.keras_export.LinearTextExport` with pyarrow
string kernels and numpy, on every CPU, and TensorFlow is never imported: not to load, not to
predict. The export is checked against the Keras model on probe strings when it is made (at
fit, or when a model without one is saved) and against the saved layer config when it is
loaded; a model it does not describe exactly, or bytes saved without it, load through
``keras.models.load_model(safe_mode=True)`` and score with TensorFlow as before. The Keras
model of an export-scored estimator is still there: :attr:`KerasTextEstimator.model` loads it
from the saved bytes on first access.

TensorFlow is imported on first use, never at module import, so ``import batchml`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, DataError, ModelError
from .base import Contributions, Estimator, GlobalExplanation, linear_explanation, n_cpus
from .keras_export import EXPORT_ENTRY, ExportError, LinearTextExport, export_model

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("batchml.estimators.keras")

_META_ENTRY = "batchml.json"
_ALLOWED_LAYERS = frozenset({"InputLayer", "TextVectorization", "Dense"})

# Scoring calls the model through a tf.function over fixed-size slices (the last one padded
# with empty strings) so it is traced once. Within a slice the rows are split into one part
# per CPU: TensorFlow's string kernels are single-threaded, and independent parts run on
# separate inter-op threads. Measured on this 2-CPU machine (200k real reviews, median 300
# chars, other jobs running; 2 runs each):
#   tf.function, 8192-row slices in 2 parts   ~ 91-99k rows/s   <- used
#   tf.function, 8192-row slices, one part    ~ 50-65k rows/s
#   model.predict(batch_size=8192)            ~ 48-60k rows/s
#   model.predict (default batch_size=32)     ~ 12k rows/s
_SLICE_ROWS = 8192

_tf_ready = False


def _tf() -> tuple[Any, Any]:
    """(tensorflow, keras), imported and configured on first call."""
    global _tf_ready
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if not _tf_ready:
        _tf_ready = True
        threads = n_cpus()
        try:
            # TF's default sizes its pools from the machine's CPUs, not the affinity mask,
            # and oversubscribes a small container.
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # the TF runtime already started (someone else used TF first): keep its pools
    return tf, keras


class KerasTextEstimator(Estimator):
    """``keras_nbow``: word counts (or multi-hot) -> logistic regression, trained with Adam.

    Params: ``epochs`` (10), ``batch_size`` (32), ``max_tokens`` (750), ``output_mode``
    ("count" or "multi_hot"), ``learning_rate`` (0.003), ``validation_split`` (0.1: the part of
    the training rows held out for ``history["val_loss"]`` when ``fit`` gets no
    ``validation``; 0 to train on all rows).
    """

    flavor: ClassVar[str] = "keras"
    file_suffix: ClassVar[str] = ".keras"
    candidates: ClassVar[dict[str, dict[str, Any]]] = {
        "keras_nbow": {"epochs": 10, "batch_size": 32, "max_tokens": 750,
                       "output_mode": "count", "learning_rate": 0.003,
                       "validation_split": 0.1},
    }
    text_candidates: ClassVar[frozenset[str]] = frozenset({"keras_nbow"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.params["output_mode"] not in ("count", "multi_hot"):
            raise ConfigError(f"output_mode {self.params['output_mode']!r} is not supported.",
                            hint="Use 'count' or 'multi_hot'.")
        self._model: Any = None
        self._predict_fn: Any = None
        self._export: LinearTextExport | None = None
        """Scores without TensorFlow when set (see the module doc)."""
        self._saved: bytes | None = None
        """The bytes this estimator was loaded from (the Keras model is loaded from them on
        first use when the export scores)."""

    @property
    def model(self) -> Any:
        """The Keras model; loaded from the saved bytes (safe mode) on first access when the
        estimator was loaded for export scoring."""
        if self._model is None and self._saved is not None:
            self._model = _load_keras(self._saved)
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value
        self._predict_fn = None
        self._export = None
        self._saved = None

    @property
    def exported(self) -> bool:
        """True when predictions come from the TensorFlow-free export."""
        return self._export is not None

    # --- fitting -----------------------------------------------------------------------------

    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        if len(self.classes_) != 2:
            raise DataError(f"keras_nbow predicts two classes; the labels have "
                            f"{len(self.classes_)} ({', '.join(map(str, self.classes_))}).",
                            hint="Use the sklearn_text candidate for multi-class text.")
        tf, keras = _tf()
        p = self.params
        texts = _texts(x)
        target = y.astype(np.float32)
        val_data = None
        if validation is not None:
            val_data = (_texts(validation[0]), validation[1].astype(np.float32))
        elif p["validation_split"] and len(texts) >= 20:
            order = np.random.default_rng(self.seed).permutation(len(texts))
            n_val = max(1, int(round(len(texts) * float(p["validation_split"]))))
            held, kept = order[:n_val], order[n_val:]
            val_data = (texts[held], target[held])
            texts, target = texts[kept], target[kept]

        keras.utils.set_random_seed(self.seed)
        vectorizer = keras.layers.TextVectorization(max_tokens=int(p["max_tokens"]),
                                                    output_mode=p["output_mode"])
        vectorizer.adapt(tf.constant(texts))
        if vectorizer.vocabulary_size() <= 1:  # only the OOV token
            raise DataError(f"The text column {self.text_column!r} has no usable words.",
                            hint="Check that the column holds the text, not ids or empty "
                                 "strings.")
        inputs = keras.Input(shape=(1,), dtype="string", name="text")
        outputs = keras.layers.Dense(1, activation="sigmoid", name="positive")(vectorizer(inputs))
        model = keras.Model(inputs, outputs, name="keras_nbow")
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=float(p["learning_rate"])),
                      loss="binary_crossentropy")
        fit = model.fit(
            tf.constant(texts.reshape(-1, 1)), target,
            validation_data=None if val_data is None
            else (tf.constant(val_data[0].reshape(-1, 1)), val_data[1]),
            epochs=int(p["epochs"]), batch_size=int(p["batch_size"]), shuffle=True, verbose=0,
        )
        self.history = {k: [float(v) for v in vals] for k, vals in fit.history.items()}
        self.model = model
        export = _try_export(model)
        if export is not None:  # centre per-row contributions on the training texts
            export = replace(export, means=export.feature_means(_texts(x)))
        self._export = export

    # --- predicting --------------------------------------------------------------------------

    def _predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        if self._export is not None:
            column = x.iloc[:, 0]
            try:
                texts = pa.array(column, type=pa.string(), from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                texts = pa.array(_texts(x), type=pa.string())
            positive = self._positive_export(texts)
        else:
            positive = self._positive_keras(_texts(x))
        return np.column_stack([1.0 - positive, positive])

    def _predict_proba_arrow(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
        if self._export is None:
            return None  # TensorFlow scores through the DataFrame hook, as before
        positive = self._positive_export(column)
        return np.column_stack([1.0 - positive, positive])

    def _positive_export(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        assert self._export is not None
        try:
            return self._export.positive(texts, threads=n_cpus())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # input Arrow's kernels refuse: TensorFlow takes the bytes as they are
            values = texts.cast(pa.binary()).to_pylist()
            return self._positive_keras(np.array([b"" if v is None else v for v in values],
                                                 dtype=object))

    def _function(self) -> Any:
        if self._predict_fn is None:
            tf, _ = _tf()
            model = self.model
            parts = 1
            while parts * 2 <= min(n_cpus(), 4):
                parts *= 2

            @tf.function(input_signature=[tf.TensorSpec([_SLICE_ROWS, 1], tf.string)])
            def positive(texts: Any) -> Any:
                if parts == 1:
                    return model(texts, training=False)
                return tf.concat([model(t, training=False) for t in tf.split(texts, parts)],
                                 axis=0)

            self._predict_fn = positive
        return self._predict_fn

    def _positive_keras(self, texts: np.ndarray) -> np.ndarray:
        """Positive-class probabilities from the Keras model (TensorFlow)."""
        tf, _ = _tf()
        fn = self._function()
        positive = np.empty(len(texts), dtype=np.float64)
        for start in range(0, len(texts), _SLICE_ROWS):
            chunk = texts[start:start + _SLICE_ROWS]
            n = len(chunk)
            if n < _SLICE_ROWS:
                chunk = np.concatenate([chunk, np.full(_SLICE_ROWS - n, "", dtype=object)])
            out = fn(tf.constant(chunk.reshape(-1, 1)))
            positive[start:start + n] = out.numpy()[:n, 0]
        return positive

    # --- explaining ----------------------------------------------------------------------------

    def no_contributions_reason(self) -> str | None:
        if self._export is None:
            return "it is scored through TensorFlow (no linear export)"
        if self._export.means is None:
            return "it was saved before batchml recorded its tokens' training means; train it again"
        return None

    def contributions(self, frame: Any) -> Contributions:
        export = self._export
        if export is None or export.means is None:
            raise self.cannot_explain_rows()
        column = self.signature.coerce(frame, arrow=True).column(0)
        rows, index, values = export.features(column)
        return Contributions.linear(export.vocabulary, self.classes_[1:], export.weights[None],
                                    np.array([export.bias]), export.means, rows, index, values,
                                    len(column))

    def global_explanation(self, x: pd.DataFrame, y: Any, *, top: int = 20,
                           seed: int = 0) -> GlobalExplanation | None:
        """Token importances from the linear part: the Dense weight of each vocabulary
        entry (the export's, else the Keras layers')."""
        if self._export is not None:
            vocabulary, weights = list(self._export.vocabulary), self._export.weights
        else:
            _, vec, dense = self.model.layers
            vocabulary = [str(w) for w in vec.get_vocabulary(include_special_tokens=True)]
            weights = np.asarray(dense.get_weights()[0], dtype=np.float64)[:, 0]
        return linear_explanation(vocabulary, weights[None], self.classes_, top=top,
                                  details={"features": f"token {self.params['output_mode']}"})

    # --- saving ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The native ``.keras`` file plus ``batchml.json`` and, when the model has one,
        ``batchml_export.json`` (see the module doc)."""
        if self._saved is not None:  # loaded for export scoring: the bytes it came from
            with zipfile.ZipFile(BytesIO(self._saved)) as archive:
                unchanged = json.loads(archive.read(_META_ENTRY)) == self._meta()
            return self._saved if unchanged else \
                _replace_entry(self._saved, _META_ENTRY, json.dumps(self._meta()))
        if self._model is None:
            raise ModelError(f"Estimator {self.name!r} is not fitted.",
                             hint="Call fit(frame, labels) first.")
        with tempfile.TemporaryDirectory(prefix="batchml-keras-") as tmp:
            path = Path(tmp) / "model.keras"
            self._model.save(path)
            with zipfile.ZipFile(path, "a") as archive:
                archive.writestr(_META_ENTRY, json.dumps(self._meta()))
                export = self._export
                if export is None:
                    export = _try_export(self._model, json.loads(archive.read("config.json")))
                if export is not None:
                    archive.writestr(EXPORT_ENTRY, export.to_bytes())
            return path.read_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> KerasTextEstimator:
        """The estimator saved by :meth:`to_bytes`: scored by its export when it has one that
        matches the saved layer config (no TensorFlow), else ``keras.models.load_model`` in
        safe mode."""
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                meta = json.loads(archive.read(_META_ENTRY))
                config = json.loads(archive.read("config.json"))
                names = set(archive.namelist())
                exported = archive.read(EXPORT_ENTRY) if EXPORT_ENTRY in names else None
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"These bytes are not a batchml keras model ({type(exc).__name__}"
                             f": {exc}).", hint="Load it with the flavor recorded in the "
                             "catalog, or re-train the model.") from exc
        layers = _layer_classes(config)
        unexpected = sorted(layers - _ALLOWED_LAYERS)
        if unexpected:
            raise ModelError(f"Refusing to load the keras model: it contains layers outside "
                             f"the allowlist: {', '.join(unexpected)}.",
                             hint="Only load models trained by batchml.")
        estimator = cls._from_meta(meta)
        if exported is not None:
            try:
                export = LinearTextExport.from_bytes(exported)
                export.matches_config(config)
            except ExportError as exc:  # not one we can score exactly: TensorFlow does
                log.warning("keras model export ignored, scoring through TensorFlow: %s", exc)
                export = None
            if export is not None:
                estimator._export = export
                estimator._saved = data
                return estimator
        estimator._model = _load_keras(data)
        return estimator


def _load_keras(data: bytes) -> Any:
    """``keras.models.load_model(safe_mode=True)`` of ``.keras`` bytes (the caller checked
    the layer allowlist)."""
    _, keras = _tf()
    with tempfile.TemporaryDirectory(prefix="batchml-keras-") as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        try:
            return keras.models.load_model(path, safe_mode=True)
        except Exception as exc:
            raise ModelError(f"Keras could not load the model ({type(exc).__name__}: "
                             f"{exc}).", hint="Re-train and log the model again.") from exc


def _try_export(model: Any, config: dict[str, Any] | None = None) -> LinearTextExport | None:
    """The model's checked export, or None (then TensorFlow scores it)."""
    try:
        return export_model(model, config)
    except ExportError as exc:
        log.warning("keras_nbow scores through TensorFlow: no export (%s)", exc)
        return None


def _replace_entry(data: bytes, name: str, text: str) -> bytes:
    """Zip ``data`` with entry ``name`` replaced by ``text`` (other entries copied as is)."""
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info.filename))
        dst.writestr(name, text)
    return out.getvalue()


def _layer_classes(config: Any) -> set[str]:
    """Class names of every layer in a Keras model config (outer model excluded)."""
    found: set[str] = set()
    layers = (config.get("config") or {}).get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise ModelError("The keras model config lists no layers.",
                         hint="Re-train and log the model again.")
    for layer in layers:
        if not isinstance(layer, dict):
            found.add(repr(layer))
            continue
        module = str(layer.get("module", ""))
        if module != "keras" and not module.startswith("keras."):
            found.add(f"{module}.{layer.get('class_name')}")  # never matches the allowlist
            continue
        found.add(str(layer.get("class_name")))
        inner = layer.get("config")
        if isinstance(inner, dict) and "layers" in inner:
            found |= _layer_classes(layer)
    return found


def _texts(x: pd.DataFrame) -> np.ndarray:
    """The single input column as an object array of str (NaN of an optional column -> "")."""
    column = x.iloc[:, 0]
    return column.fillna("").astype(str).to_numpy(dtype=object)
