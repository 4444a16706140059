"""SYNTHETIC data for demos, tests and benchmarks -- nothing here is real.

The machines this project runs on have no internet, so the demo and the benchmarks cannot download
the clothing-review data set. This module fabricates look-alikes, deterministically for a seed:

* :func:`synthetic_reviews` -- ``review_id`` / ``review`` / ``labels`` rows. Reviews are made-up
  (pronounceable, Zipf-distributed) filler words plus a few real sentiment words whose majority
  polarity decides the label; a fraction ``noise`` of labels is flipped so no model reaches 100%.
  Some rows carry ``<br />`` and ``&#039;`` so text cleaning has something to do.
* :func:`iter_review_batches` / :func:`write_reviews` -- the same rows as Arrow batches / a parquet
  file, with flat memory however many rows you ask for.
* :func:`synthetic_tabular` -- a churn-like multi-class table with missing values.
* :func:`demo_dataset` -- train / valid / predict parquet files for the demo.

Rows are generated in fixed blocks of :data:`BLOCK_ROWS`, each seeded from ``(seed, block)``, so
the output depends only on ``(n, seed, noise)``, never on how it is batched. The vocabulary,
sentiment words and tabular concept are fixed constants, so train and test sets generated with
different seeds describe the same task.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "BLOCK_ROWS",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "REVIEW_SCHEMA",
    "demo_dataset",
    "iter_review_batches",
    "synthetic_reviews",
    "synthetic_tabular",
    "vocabulary",
    "write_reviews",
]

BLOCK_ROWS = 65_536
VOCAB_SIZE = 5_000
POSITIVE_WORDS = ("love", "great", "perfect", "flattering", "comfortable", "soft", "beautiful")
NEGATIVE_WORDS = ("poor", "baggy", "cheap", "itchy", "returned", "disappointed", "tight")
_CONTRACTIONS = ("it&#039;s", "i&#039;m", "don&#039;t", "didn&#039;t", "that&#039;s")
_BR = "<br />"
REVIEW_SCHEMA = pa.schema([("review_id", pa.int64()), ("review", pa.string()), ("labels", pa.int64())])

_ONSETS = ("", "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "dr", "gr", "pl", "st", "tr", "sh", "ch", "kl")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "oo", "ou", "ie")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "t", "nd")
_ZIPF_SLOTS = 1 << 16  # Zipf sampling: word = table[uniform uint16]


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The fixed 5,000 made-up neutral words, most frequent first (same on every machine).

    Words are 1-3 random syllables; shorter words rank as more frequent, as in real language.
    """
    reserved = set(POSITIVE_WORDS) | set(NEGATIVE_WORDS)
    words: dict[str, None] = {}
    state = 12345
    while len(words) < VOCAB_SIZE:  # a plain LCG: no dependence on numpy's RNG algorithms
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        bits, word = state >> 20, ""
        for _ in range(1 + bits % 3):  # one to three syllables
            bits //= 3
            word += _ONSETS[bits % 26] + _NUCLEI[(bits // 26) % 10] + _CODAS[(bits // 260) % 10]
            bits //= 2600
        if 2 <= len(word) <= 12 and word not in reserved:
            words.setdefault(word, None)
    return tuple(sorted(words, key=len))


@lru_cache(maxsize=1)
def _tokens() -> tuple[pa.Array, np.ndarray]:
    """Token texts and the Zipf inverse-CDF lookup table.

    Token ids are vocabulary, positive, negative, contractions, ``<br />``. Entry ``i`` of the
    array is token ``i`` with a leading space, entry ``_N_TOKENS + i`` the capitalised token that
    opens a review, so taking all tokens of a block yields the reviews back to back in one buffer.
    """
    texts = [*vocabulary(), *POSITIVE_WORDS, *NEGATIVE_WORDS, *_CONTRACTIONS, _BR]
    table = pa.array([" " + t for t in texts] + [t.capitalize() for t in texts], pa.string())
    # Zipf-Mandelbrot, p(rank) ~ 1 / (rank + 2.7): the top word is ~4% of words, like "the".
    p = 1.0 / (np.arange(1, VOCAB_SIZE + 1) + 2.7)
    slots = np.diff(np.round(np.cumsum(p / p.sum()) * _ZIPF_SLOTS), prepend=0).astype(np.int64)
    assert slots.min() >= 1 and slots.sum() == _ZIPF_SLOTS  # every word can occur
    lookup = np.repeat(np.arange(VOCAB_SIZE, dtype=np.int32), slots)
    return table, lookup


_POS0 = VOCAB_SIZE
_NEG0 = _POS0 + len(POSITIVE_WORDS)
_CON0 = _NEG0 + len(NEGATIVE_WORDS)
_BR_ID = _CON0 + len(_CONTRACTIONS)
_N_TOKENS = _BR_ID + 1


def _review_block(first_id: int, m: int, rng: np.random.Generator, noise: float) -> pa.RecordBatch:
    """``m`` reviews with ids ``first_id..first_id+m-1``, fully vectorised."""
    table, lookup = _tokens()
    words = rng.integers(20, 61, m)  # words per review, sentiment words included
    latent = rng.random(m) < 0.7  # True = positive
    k_major = rng.integers(1, 5, m)  # sentiment words agreeing with the label, and sometimes
    # strictly fewer disagreeing ones, so the majority always decides
    k_minor = np.where(rng.random(m) < 0.35, (rng.random(m) * k_major).astype(np.int64), 0)
    html = rng.random(m) < 0.15
    n_br = np.where(html, rng.integers(1, 3, m), 0)
    length = words + n_br
    k_sent = k_major + k_minor
    n_special = k_sent + n_br
    offsets = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])

    # Fill every slot with a Zipf-distributed neutral word; some become contractions in HTML rows.
    n_tokens = int(offsets[-1])
    raw = rng.bit_generator.random_raw((n_tokens + 3) // 4)  # four uint16 draws per uint64
    ids = lookup[np.asarray(raw).view(np.uint16)[:n_tokens]]
    in_html = np.flatnonzero(np.repeat(html, length))
    con = in_html[rng.random(in_html.size) < 0.04]
    ids[con] = _CON0 + rng.integers(0, len(_CONTRACTIONS), con.size)

    # Special tokens: special j of a row goes into segment (j + shift) % count, one slot each, so
    # positions never collide. Specials 0..k_major-1 agree with the label, then the disagreeing
    # ones, then the <br /> tags.
    srow = np.repeat(np.arange(m), n_special)
    j = np.arange(srow.size) - np.repeat(np.cumsum(n_special) - n_special, n_special)
    seg = (j + rng.integers(0, 1 << 30, m)[srow]) % n_special[srow]
    lo = seg * length[srow] // n_special[srow]  # >= 2 slots per segment: 20 / 9 > 2
    hi = (seg + 1) * length[srow] // n_special[srow]
    pos = lo + (rng.random(srow.size) * (hi - lo)).astype(np.int64)
    agrees = j < k_major[srow]
    positive = latent[srow] == agrees
    pick = rng.integers(0, len(POSITIVE_WORDS), srow.size)
    special = np.where(positive, _POS0 + pick, _NEG0 + pick)
    is_br = j >= k_sent[srow]
    special[is_br] = _BR_ID
    pos[is_br] = np.maximum(pos[is_br], 1)  # never open a review with a tag
    ids[offsets[srow] + pos] = special

    ids[offsets[:-1]] += _N_TOKENS  # review openers: capitalised, no leading space

    # The taken tokens' character buffer already holds the reviews back to back; a review's
    # character offsets are its tokens' ones. No per-row Python, no join kernel.
    tokens = table.take(pa.array(ids))
    char_offsets = np.frombuffer(tokens.buffers()[1], dtype=np.int32, count=len(tokens) + 1)
    row_offsets = np.ascontiguousarray(char_offsets[offsets])
    text = pa.StringArray.from_buffers(m, pa.py_buffer(row_offsets), tokens.buffers()[2])
    labels = np.where(rng.random(m) < noise, ~latent, latent).astype(np.int64)
    review_id = np.arange(first_id, first_id + m, dtype=np.int64)
    return pa.RecordBatch.from_arrays(
        [pa.array(review_id), text, pa.array(labels)], schema=REVIEW_SCHEMA
    )


def _blocks(n: int, seed: int, noise: float) -> Iterator[pa.RecordBatch]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be within [0, 1], got {noise}")
    for block, start in enumerate(range(0, n, BLOCK_ROWS)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, block]))
        yield _review_block(start, min(BLOCK_ROWS, n - start), rng, noise)


def iter_review_batches(
    n: int, batch_rows: int = BLOCK_ROWS, seed: int = 0, *, noise: float = 0.05
) -> Iterator[pa.RecordBatch]:
    """Yield the rows of ``synthetic_reviews(n, seed=seed, noise=noise)`` as Arrow record batches.

    Every batch has ``batch_rows`` rows except possibly the last. Memory stays flat in ``n``: at
    most one batch plus one generation block is held at a time.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    pending: list[pa.RecordBatch] = []
    held = 0
    for block in _blocks(n, seed, noise):
        pending.append(block)
        held += block.num_rows
        while held >= batch_rows:
            table = pa.Table.from_batches(pending, schema=REVIEW_SCHEMA)
            yield from table.slice(0, batch_rows).combine_chunks().to_batches()
            pending = table.slice(batch_rows).combine_chunks().to_batches()
            held -= batch_rows
    if held:
        yield from pa.Table.from_batches(pending, schema=REVIEW_SCHEMA).combine_chunks().to_batches()


def synthetic_reviews(n: int, *, seed: int = 0, noise: float = 0.05) -> pd.DataFrame:
    """``n`` SYNTHETIC clothing-style reviews: columns ``review_id``, ``review``, ``labels``.

    ``review_id`` is ``0..n-1`` (int64), ``labels`` is 1 (positive, ~68%) or 0 (int64). Each review
    has 20-60 words (after stripping HTML): made-up filler words plus 1-7 sentiment words from
    :data:`POSITIVE_WORDS` / :data:`NEGATIVE_WORDS` whose majority decides the label, then a
    fraction ``noise`` of labels is flipped. ~15% of reviews contain ``<br />`` or ``&#039;``.
    Deterministic for a given ``(n, seed, noise)``.
    """
    return pa.Table.from_batches(list(_blocks(n, seed, noise)), schema=REVIEW_SCHEMA).to_pandas()


def _write_parquet_atomic(
    path: str | os.PathLike[str], batches: Iterable[pa.RecordBatch], schema: pa.Schema
) -> Path:
    """Stream ``batches`` (one row group each) to a temp file, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with pq.ParquetWriter(fh, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_reviews(
    path: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    row_group_size: int | None = None,
    noise: float = 0.05,
) -> Path:
    """Write ``synthetic_reviews(n, seed=seed, noise=noise)`` to the parquet file ``path``.

    Streams with :class:`pyarrow.parquet.ParquetWriter`, one row group of ``row_group_size`` rows
    (default 262,144) at a time, so even 10M rows need little memory. The file appears atomically
    (temp file + ``os.replace``). Returns ``path``.
    """
    rows = row_group_size or 4 * BLOCK_ROWS
    return _write_parquet_atomic(path, iter_review_batches(n, rows, seed, noise=noise), REVIEW_SCHEMA)


_REGION_EFFECT = {"north": 0.3, "south": -0.2, "east": 0.0, "west": 0.1}


def _tabular_features(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    plan = rng.choice(np.array(["basic", "plus", "pro"]), n, p=[0.5, 0.3, 0.2])
    region = rng.choice(np.array(list(_REGION_EFFECT)), n, p=[0.3, 0.25, 0.25, 0.2])
    tenure = np.clip(np.round(rng.gamma(2.0, 12.0, n)), 1, 72)
    base = np.select([plan == "basic", plan == "plus"], [25.0, 55.0], 90.0)
    charges = np.round(base + rng.normal(0.0, 8.0, n), 2)
    calls = rng.poisson(1.0 + 1.0 * (plan == "basic") + 1.5 * (tenure < 6))
    value = (
        0.05 * tenure + 0.02 * charges - 0.6 * calls
        + 1.0 * ((plan == "pro") & (tenure > 24))
        + pd.Series(region).map(_REGION_EFFECT).to_numpy()
        + rng.normal(0.0, 0.5, n)
    )
    frame = pd.DataFrame({
        "tenure_months": tenure, "monthly_charges": charges, "support_calls": calls.astype(np.int64),
        "plan": plan, "region": region,
    })
    return frame, value


@lru_cache(maxsize=16)
def _segment_cuts(classes: int) -> np.ndarray:
    """Fixed class boundaries (quantiles of a fixed reference sample) -> balanced classes."""
    _, value = _tabular_features(50_000, np.random.default_rng(20_240_601))
    return np.quantile(value, np.arange(1, classes) / classes)


def synthetic_tabular(n: int, *, seed: int = 0, classes: int = 3) -> pd.DataFrame:
    """``n`` SYNTHETIC churn-like customers with a learnable multi-class ``segment`` label.

    Columns: ``customer_id`` (int64), ``tenure_months`` / ``monthly_charges`` (float, ~5% / ~3%
    NaN), ``support_calls`` (int64), ``plan`` (basic/plus/pro), ``region`` (north/south/east/west,
    ~3% missing) and ``segment`` (int64, ``0..classes-1``, roughly balanced). The segment is a
    noisy, non-linear function of the features (fixed across seeds); missing values are masked
    after labelling. Deterministic for a given ``(n, seed, classes)``.
    """
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    frame, value = _tabular_features(n, rng)
    frame.insert(0, "customer_id", np.arange(n, dtype=np.int64))
    frame["segment"] = np.searchsorted(_segment_cuts(classes), value).astype(np.int64)
    frame.loc[rng.random(n) < 0.05, "tenure_months"] = np.nan
    frame.loc[rng.random(n) < 0.03, "monthly_charges"] = np.nan
    frame["region"] = frame["region"].where(rng.random(n) >= 0.03, None)
    return frame


def demo_dataset(
    directory: str | os.PathLike[str],
    *,
    n_train: int = 4000,
    n_valid: int = 1000,
    n_predict_files: int = 3,
    rows_per_file: int = 500,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a SYNTHETIC demo data set under ``directory`` and return its paths.

    Keys: ``train`` (``train.parquet``), ``valid`` (``valid.parquet``) and ``predict_000``,
    ``predict_001``, ... (``predict/predict_000.parquet``, ...; ``review_id`` and ``review`` only,
    no labels). Kept in a ``predict/`` subdirectory so a watcher on it sees only files to score.
    All rows come from one :func:`synthetic_reviews` call, so review ids are unique across files.
    """
    root = Path(directory)
    total = n_train + n_valid + n_predict_files * rows_per_file
    table = pa.Table.from_pandas(synthetic_reviews(total, seed=seed), schema=REVIEW_SCHEMA,
                                 preserve_index=False)

    def write(name: str, start: int, rows: int, columns: list[str]) -> Path:
        part = table.slice(start, rows).select(columns).combine_chunks()
        return _write_parquet_atomic(root / name, part.to_batches(), part.schema)

    paths = {
        "train": write("train.parquet", 0, n_train, REVIEW_SCHEMA.names),
        "valid": write("valid.parquet", n_train, n_valid, REVIEW_SCHEMA.names),
    }
    for i in range(n_predict_files):
        start = n_train + n_valid + i * rows_per_file
        paths[f"predict_{i:03d}"] = write(f"predict/predict_{i:03d}.parquet", start, rows_per_file,
                                          ["review_id", "review"])
    return paths
