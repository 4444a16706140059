"""TensorFlow-free scoring of the ``keras_nbow`` model.

The model is linear over token counts::

    positive = sigmoid(counts(tokens(standardize(text))) @ W + b)

so it can be scored with pyarrow's string kernels and numpy once its vocabulary and Dense
weights are exported. :func:`export_model` reads them from a fitted Keras model (only for the
one layer configuration batchml builds, see :func:`_supported_config`) and checks the export
against the Keras model on probe strings before it is used; :class:`LinearTextExport` scores.

Exactness. ``TextVectorization(standardize="lower_and_strip_punctuation",
split="whitespace")`` does, in TensorFlow:

1. ``tf.strings.lower`` with its default empty encoding: ASCII letters only (``É`` stays);
   here ``pc.ascii_lower`` (``utf8_lower`` would differ).
2. ``tf.strings.regex_replace`` of :data:`STRIP_PUNCTUATION` (RE2) with ""; here
   ``pc.replace_substring_regex`` with the same pattern (Arrow uses RE2 as well).
3. ``tf.strings.split`` with no separator: runs of ASCII whitespace (space, \t \n \v \f \r)
   separate tokens; leading / trailing whitespace and an empty string give no token.
   ``pc.ascii_split_whitespace`` splits on the same six bytes (``utf8_split_whitespace``
   would also split on NBSP, U+2003, \x1c ...), but yields an EMPTY token for leading or
   trailing whitespace and for an empty string.
4. Vocabulary lookup with one OOV index (0, ``[UNK]``) and the mask token "" dropped;
   ``count`` adds the token's row of ``W`` once per occurrence, ``multi_hot`` once per row.

Here the raw text is split first (step 3), and only the distinct tokens of a slice are
lower-cased, stripped and looked up (steps 1, 2, 4): the same tokens, since steps 1 and 2
neither add nor remove whitespace. A token that is empty (Arrow's edge tokens) or becomes
empty (only punctuation: TensorFlow's split would see whitespace there) looks up to a slot of
weight 0. Counting those empty tokens as out-of-vocabulary (weight ``W[0]``) was the cause of
the first prototype's mismatch (66 of 20,000 synthetic reviews off by up to 1.3e-3): a review
ending in ``<br />`` ends in whitespace once ``<``, ``/`` and ``>`` are stripped.

Everything here runs without importing TensorFlow or Keras.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EXPORT_ENTRY = "batchml_export.json"
"""Name of the export inside the ``.keras`` zip (Keras ignores entries it does not know)."""

EXPORT_FORMAT = "batchml.keras_nbow.linear"
EXPORT_VERSION = 1

STRIP_PUNCTUATION = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'
"""Keras' ``DEFAULT_STRIP_REGEX`` (keras/src/layers/preprocessing/text_vectorization.py)."""

OOV_TOKEN = "[UNK]"
OUTPUT_MODES = ("count", "multi_hot")

# Rows per unit of work. Small enough that a 64k-row batch splits across both cores and the
# intermediate arrays stay in cache-friendly sizes; large enough that per-call overhead of the
# Arrow kernels is negligible.
_SLICE_ROWS = 8192
_MAX_EXPORT_DIFF = 1e-5
"""Largest |export - keras| accepted on the probe strings before the export is used."""


class ExportError(ValueError):
    """The export is missing, malformed, or does not describe the Keras model."""


@dataclass(frozen=True)
class LinearTextExport:
    """Vocabulary (index 0 = the OOV token) and Dense weights of a ``keras_nbow`` model."""

    vocabulary: tuple[str, ...]
    weights: np.ndarray  # float64 copy of the float32 kernel, one per vocabulary entry
    bias: float
    output_mode: str
    means: np.ndarray | None = field(default=None, compare=False)
    """Each vocabulary entry's mean Dense input (count, or 0/1 for multi_hot) on the training
    texts: what per-row contributions are centred on (None in exports saved before)."""
    _value_set: pa.Array = field(init=False, repr=False, compare=False)
    _lookup_weights: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.output_mode not in OUTPUT_MODES:
            raise ExportError(f"output_mode {self.output_mode!r} is not supported")
        vocab = self.vocabulary
        if len(vocab) < 1 or vocab[0] != OOV_TOKEN:
            raise ExportError("the vocabulary must start with the OOV token")
        words = vocab[1:]
        if any(not isinstance(w, str) or not w for w in words) or len(set(words)) != len(words):
            raise ExportError("vocabulary entries must be distinct non-empty strings")
        if OOV_TOKEN in words:
            raise ExportError("the OOV token appears twice in the vocabulary")
        if any(_has_ascii_space(w) for w in words):
            raise ExportError("a vocabulary entry holds whitespace; it can never be a token")
        weights = np.asarray(self.weights, dtype=np.float64)
        if weights.shape != (len(vocab),) or not np.isfinite(weights).all():
            raise ExportError(f"weights have shape {weights.shape}, expected ({len(vocab)},)")
        if not math.isfinite(self.bias):
            raise ExportError("the bias is not finite")
        object.__setattr__(self, "weights", weights)
        if self.means is not None:
            means = np.asarray(self.means, dtype=np.float64)
            if means.shape != (len(vocab),) or not np.isfinite(means).all():
                raise ExportError(f"means have shape {means.shape}, expected ({len(vocab)},)")
            object.__setattr__(self, "means", means)
        # value set: the words, then "" (the empty token Arrow's split yields; weight 0).
        # index_in gives a word's position p in it, null when not found (filled with -1), so
        # the lookup weights are W[1:], then 0.0 for "", then W[0]: index -1 is the OOV slot.
        object.__setattr__(self, "_value_set", _strings([*words, ""]))
        object.__setattr__(self, "_lookup_weights",
                           np.concatenate([weights[1:], [0.0], weights[:1]]))

    # --- serialisation -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "standardize": "lower_and_strip_punctuation", "split": "whitespace",
            "ngrams": None, "output_mode": self.output_mode, "oov_token": OOV_TOKEN,
            "vocabulary": list(self.vocabulary),
            "weights": [float(w) for w in self.weights], "bias": float(self.bias),
            "activation": "sigmoid",
        }
        if self.means is not None:
            out["means"] = [float(m) for m in self.means]
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_json(cls, obj: Any) -> LinearTextExport:
        """The export described by ``obj``; raises :class:`ExportError` for anything else."""
        if not isinstance(obj, dict) or obj.get("format") != EXPORT_FORMAT:
            raise ExportError("not a batchml keras_nbow export")
        if obj.get("version") != EXPORT_VERSION:
            raise ExportError(f"export version {obj.get('version')!r} is not understood")
        expected = {"standardize": "lower_and_strip_punctuation", "split": "whitespace",
                    "ngrams": None, "oov_token": OOV_TOKEN, "activation": "sigmoid"}
        for key, value in expected.items():
            if obj.get(key, "<missing>") != value:
                raise ExportError(f"export {key} is {obj.get(key)!r}, expected {value!r}")
        vocabulary = obj.get("vocabulary")
        weights = obj.get("weights")
        bias = obj.get("bias")
        if not isinstance(vocabulary, list) or not isinstance(weights, list) \
                or isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise ExportError("export vocabulary, weights or bias malformed")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) for w in weights):
            raise ExportError("export weights must be numbers")
        means = obj.get("means")
        if means is not None and (not isinstance(means, list) or any(
                isinstance(m, bool) or not isinstance(m, (int, float)) for m in means)):
            raise ExportError("export means must be a list of numbers")
        return cls(tuple(vocabulary), np.asarray(weights, dtype=np.float64), float(bias),
                   str(obj.get("output_mode")),
                   None if means is None else np.asarray(means, dtype=np.float64))

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearTextExport:
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ExportError(f"export is not JSON ({exc})") from exc
        return cls.from_json(obj)

    def matches_config(self, config: Any) -> None:
        """Raise :class:`ExportError` unless the Keras model config (``config.json``) is the
        configuration this export scores exactly (see :func:`_supported_config`)."""
        layers = (config.get("config") or {}).get("layers") if isinstance(config, dict) \
            else None
        if not isinstance(layers, list):
            raise ExportError("the model config lists no layers")
        vec, dense = _supported_config(layers)
        if vec.get("output_mode") != self.output_mode:
            raise ExportError("output_mode differs between export and model")
        size = vec.get("vocabulary_size")
        if size is not None and size != len(self.vocabulary):
            raise ExportError(f"vocabulary size {len(self.vocabulary)} differs from the "
                              f"model's {size}")
        del dense

    # --- scoring -----------------------------------------------------------------------------

    def positive(self, texts: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[str],
                 *, threads: int = 1) -> np.ndarray:
        """Probability of the positive class per text (float64), as Keras computes it.

        ``texts``: Arrow strings (nulls count as "") or a sequence of ``str``. Work is split
        into slices scored on up to ``threads`` threads (Arrow kernels and numpy release the
        GIL). Raises ``pa.ArrowInvalid`` for input Arrow cannot process as UTF-8 text.
        """
        column = _as_arrow(texts)
        n = len(column)
        out = np.empty(n, dtype=np.float64)
        starts = range(0, n, _SLICE_ROWS)
        if threads <= 1 or n <= _SLICE_ROWS:
            for start in starts:
                self._score_slice(column, start, out)
        else:
            pool = _executor(threads)
            for future in [pool.submit(self._score_slice, column, s, out) for s in starts]:
                future.result()
        return out

    def _score_slice(self, column: pa.Array | pa.ChunkedArray, start: int,
                     out: np.ndarray) -> None:
        piece = column.slice(start, _SLICE_ROWS)
        if isinstance(piece, pa.ChunkedArray):
            piece = piece.combine_chunks() if piece.num_chunks != 1 else piece.chunk(0)
        out[start:start + len(piece)] = _sigmoid(self.logits(piece))

    def logits(self, texts: pa.Array) -> np.ndarray:
        """``counts @ W + b`` for one Arrow string array (no threads).

        Tokens are split off the raw text first and only the distinct ones are standardised
        and looked up (a slice of 8k reviews has ~2% distinct tokens). Same tokens as
        TensorFlow's standardise-then-split: lower-casing and stripping never touch
        whitespace, so they move no token boundary; a token made only of punctuation
        becomes "" (weight 0), where TensorFlow's split sees no token at all.
        """
        n = len(texts)
        if texts.null_count:
            texts = pc.fill_null(texts, _EMPTY_STRING)
        tokens = pc.ascii_split_whitespace(texts)
        encoded = pc.list_flatten(tokens).dictionary_encode()
        standard = pc.replace_substring_regex(pc.ascii_lower(encoded.dictionary),
                                              STRIP_PUNCTUATION, "")
        found = pc.index_in(standard, value_set=self._value_set)
        distinct = _int32s(pc.fill_null(found, _MINUS_ONE))  # slot per distinct token
        token = _int32s(encoded.indices)  # distinct token per token
        offsets = _int32s(tokens, buffer=1, extra=1)
        counts = np.diff(offsets)
        weights = self._lookup_weights
        if self.output_mode == "multi_hot":  # each distinct slot of a row counts once
            width = len(weights)
            row = np.repeat(np.arange(n, dtype=np.int64), counts)
            key = np.unique(row * width + distinct[token] % width)
            return np.bincount(key // width, weights=weights[key % width], minlength=n) \
                + self.bias
        values = weights[distinct][token]
        if n and counts.min() > 0:  # always: Arrow's split gives every row a token ("")
            # reduceat sums each row's range [start, next start)
            return np.add.reduceat(values, offsets[:-1] - offsets[0]) + self.bias
        row = np.repeat(np.arange(n, dtype=np.int64), counts)
        return np.bincount(row, weights=values, minlength=n) + self.bias


    # --- explaining --------------------------------------------------------------------------

    def features(self, texts: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Dense layer's non-zero inputs for ``texts`` as (row, vocabulary index, value):
        a token's count in the row (1 for multi_hot); index 0 counts out-of-vocabulary
        tokens. The same tokens as :meth:`logits`."""
        column = _as_arrow(texts)
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        n = len(column)
        if column.null_count:
            column = pc.fill_null(column, _EMPTY_STRING)
        tokens = pc.ascii_split_whitespace(column)
        encoded = pc.list_flatten(tokens).dictionary_encode()
        standard = pc.replace_substring_regex(pc.ascii_lower(encoded.dictionary),
                                              STRIP_PUNCTUATION, "")
        found = pc.index_in(standard, value_set=self._value_set)
        slot = _int32s(pc.fill_null(found, _MINUS_ONE)).astype(np.int64)[
            _int32s(encoded.indices)]
        offsets = _int32s(tokens, buffer=1, extra=1)
        row = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        # value-set position p: word p (vocabulary index p + 1); len(words): "" (no token,
        # weight 0); -1: out of vocabulary (index 0)
        keep = slot != len(self.vocabulary) - 1
        index = np.where(slot[keep] < 0, 0, slot[keep] + 1)
        width = len(self.vocabulary)
        keys, counts = np.unique(row[keep] * width + index, return_counts=True)
        values = np.ones(len(keys)) if self.output_mode == "multi_hot" else \
            counts.astype(np.float64)
        return keys // width, keys % width, values

    def feature_means(self, texts: pa.Array | pa.ChunkedArray | np.ndarray | Sequence[str]
                      ) -> np.ndarray:
        """Each vocabulary entry's mean Dense input over ``texts`` (for :attr:`means`)."""
        column = _as_arrow(texts)
        total = np.zeros(len(self.vocabulary), dtype=np.float64)
        for start in range(0, len(column), _SLICE_ROWS):
            _, index, values = self.features(column.slice(start, _SLICE_ROWS))
            total += np.bincount(index, weights=values, minlength=len(self.vocabulary))
        return total / max(1, len(column))


# Arrays and scalars are built from buffers and read through them: pa.array(), pa.scalar()
# and Array.to_numpy() import pandas on first use, ~0.5 s of a cold start.

def _strings(values: Sequence[str]) -> pa.Array:
    """Python strings as an Arrow string array (no nulls)."""
    encoded = [v.encode("utf-8", "surrogatepass") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


def _int32s(arr: pa.Array, *, buffer: int = 1, extra: int = 0) -> np.ndarray:
    """The int32 buffer ``buffer`` of ``arr`` as numpy (``len + extra`` values from the
    array's offset): the values of a null-free int32 array, or a list array's offsets."""
    n = len(arr) + extra
    data = arr.buffers()[buffer]
    if data is None or n == 0:
        return np.zeros(n, dtype=np.int32)
    return np.frombuffer(data, dtype=np.int32)[arr.offset:arr.offset + n]


_EMPTY_STRING = _strings([""])[0]
_MINUS_ONE = pa.Array.from_buffers(pa.int32(), 1,
                                   [None, pa.py_buffer(np.array([-1], dtype=np.int32))])[0]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _has_ascii_space(word: str) -> bool:
    return any(c in word for c in " \t\n\v\f\r")


def _as_arrow(texts: Any) -> pa.Array | pa.ChunkedArray:
    """An Arrow ``string`` array (or chunked array) of ``texts``."""
    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(np.asarray(texts, dtype=object), type=pa.string(), from_pandas=True)
    if pa.types.is_dictionary(texts.type):
        texts = texts.dictionary_decode() if isinstance(texts, pa.Array) else \
            pa.chunked_array([c.dictionary_decode() for c in texts.chunks],
                             texts.type.value_type)
    if texts.type != pa.string():
        texts = texts.cast(pa.string())  # large_string / string_view; slices stay small
    return texts


_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="batchml-nbow")
            _pool_size = threads
        return _pool


# --- building the export from a Keras model (TensorFlow is loaded here already) ---------------

def _supported_config(layers: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TextVectorization config, Dense config) when ``layers`` (a functional model config's
    layer list) is exactly Input -> TextVectorization -> Dense(1, sigmoid) with the settings
    the export reproduces; raises :class:`ExportError` otherwise."""
    names = [layer.get("class_name") if isinstance(layer, dict) else None for layer in layers]
    if names != ["InputLayer", "TextVectorization", "Dense"]:
        raise ExportError(f"layers are {names}, expected InputLayer, TextVectorization, Dense")
    configs = [layer.get("config") for layer in layers]
    if not all(isinstance(c, dict) for c in configs):
        raise ExportError("a layer has no config")
    inp, vec, dense = configs
    if inp.get("dtype") != "string":
        raise ExportError("the input is not a string input")
    want_vec: dict[str, object] = {"standardize": "lower_and_strip_punctuation", "split": "whitespace",
                "ngrams": None, "sparse": False, "ragged": False, "idf_weights": None,
                "encoding": "utf-8"}
    for key, value in want_vec.items():
        if vec.get(key) != value:
            raise ExportError(f"TextVectorization {key} is {vec.get(key)!r}, expected "
                              f"{value!r}")
    if vec.get("output_mode") not in OUTPUT_MODES:
        raise ExportError(f"TextVectorization output_mode {vec.get('output_mode')!r}")
    want_dense: dict[str, object] = {"units": 1, "activation": "sigmoid", "use_bias": True}
    for key, value in want_dense.items():
        if dense.get(key) != value:
            raise ExportError(f"Dense {key} is {dense.get(key)!r}, expected {value!r}")
    # the chain: Dense reads TextVectorization, which reads the input
    if _inbound(layers[1]) != layers[0].get("name") or _inbound(layers[2]) != layers[1].get(
            "name"):
        raise ExportError("the layers are not chained input -> vectorizer -> dense")
    return vec, dense


def _inbound(layer: dict[str, Any]) -> Any:
    """Name of the single layer feeding ``layer`` in a functional config, else None."""
    nodes = layer.get("inbound_nodes")
    try:
        (node,) = nodes  # type: ignore[misc]
        (arg,) = node["args"]
        if node.get("kwargs"):
            return None
        return arg["config"]["keras_history"][0]
    except (TypeError, ValueError, KeyError, IndexError):
        return None


def export_model(model: Any, config: dict[str, Any] | None = None) -> LinearTextExport:
    """The export of a fitted ``keras_nbow`` Keras model, checked against the model itself on
    probe strings. ``config``: the model's saved ``config.json`` when at hand (its structure
    is checked), else ``model.get_config()``-style via ``keras.saving``.

    Raises :class:`ExportError` when the model is not the supported configuration or the
    export does not reproduce its predictions within :data:`_MAX_EXPORT_DIFF`.
    """
    import keras
    import tensorflow as tf

    if config is None:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    layers = (config.get("config") or {}).get("layers")
    if not isinstance(layers, list):
        raise ExportError("the model config lists no layers")
    _supported_config(layers)
    if len(model.layers) != 3:
        raise ExportError("the model does not have three layers")
    _, vec, dense = model.layers
    lookup = getattr(vec, "_lookup_layer", None)
    if lookup is None or getattr(lookup, "num_oov_indices", None) != 1 \
            or getattr(lookup, "mask_token", "x") not in (None, "") \
            or getattr(lookup, "oov_token", None) != OOV_TOKEN \
            or getattr(lookup, "invert", True) is not False:
        # mask token "": Keras drops "" tokens in count / multi_hot mode, as the export does
        raise ExportError("the vocabulary lookup is not one OOV index, no mask but \"\"")
    vocabulary = tuple(str(w) for w in vec.get_vocabulary(include_special_tokens=True))
    kernel, bias = (np.asarray(w) for w in dense.get_weights())
    if kernel.shape != (len(vocabulary), 1) or bias.shape != (1,):
        raise ExportError(f"Dense weights have shapes {kernel.shape} {bias.shape}, expected "
                          f"({len(vocabulary)}, 1) (1,)")
    export = LinearTextExport(vocabulary, kernel[:, 0].astype(np.float64), float(bias[0]),
                              str(vec.get_config()["output_mode"]))
    probes = probe_texts(vocabulary)
    expected = np.asarray(model(tf.constant(np.array(probes, dtype=object).reshape(-1, 1)),
                                training=False), dtype=np.float64).reshape(-1)
    got = export.positive(probes)
    worst = float(np.max(np.abs(got - expected)))
    if not worst <= _MAX_EXPORT_DIFF:
        raise ExportError(f"the export differs from the Keras model by {worst:.3g} on probe "
                          "strings")
    return export


def probe_texts(vocabulary: Sequence[str], n: int = 512, seed: int = 0) -> list[str]:
    """Strings that exercise every step of the standardisation and the lookup: vocabulary
    words in mixed case glued to punctuation, entities, tags, odd whitespace and Unicode,
    empty and whitespace-only strings, repeats (count vs multi_hot)."""
    rng = np.random.default_rng(seed)
    words = [w for w in vocabulary[1:]] or ["word"]
    fixed = [
        "", " ", "\t\n\v\f\r", "<br />", "<br /> <br />", " leading", "trailing ",
        "it&#039;s don&#039;t &amp; &lt;br&gt; &quot;quoted&quot;", "[UNK] [unk] UNK",
        "ÉCOLE école Straße STRASSE İstanbul ΣΑΣ ǅ", "a\u00a0b c\u2003d e\u3000f g\u2028h",
        "x\x1cy\x1dz\x1ew\x1fv", "tab\there new\nline", "nul\x00byte", "don\u2019t \u201cq\u201d",
        "emoji 😀👍🏽 mixed", "!!!???...", "a-b_c.d,e;f:g", "\\back\\slash\\", "~`^|{}[]()",
    ]
    punct = list('!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\'')
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", " <br /> ", "&#039;", "\x0b", "\x0c"]
    out = list(fixed)
    for i in range(n - len(fixed)):
        k = int(rng.integers(0, 40))
        parts = []
        for _ in range(k):
            word = words[int(rng.integers(0, len(words)))]
            style = int(rng.integers(0, 4))
            if style == 1:
                word = word.upper()
            elif style == 2:
                word = word.capitalize()
            if rng.random() < 0.3:
                word = word + punct[int(rng.integers(0, len(punct)))]
            if rng.random() < 0.1:
                word = punct[int(rng.integers(0, len(punct)))] + word
            parts.append(word)
            parts.append(spaces[int(rng.integers(0, len(spaces)))] if rng.random() < 0.3
                         else " ")
        text = "".join(parts)
        if i % 7 == 0:
            text = " " + text
        out.append(text)
    out.append(" ".join(words) * 3)  # every word, repeated: long input, counts of 3
    return out
