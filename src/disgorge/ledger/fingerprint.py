"""Keyed near-duplicate fingerprints of records, for matching re-ingested content against tombstones.

A record's fingerprint is ``BANDS`` band keys (``'b{index}:{hex}'``). Each band covers a keyed, disjoint part of the
record's content, and its key is a MAC of that part (keyed BLAKE2b, under keys derived from the workspace key with
HMAC-SHA256), so a small edit changes only the bands it touches. A record *matches* a tombstone when at least
``MIN_MATCH`` of its band keys are among that one tombstone's band keys.

What is fingerprinted:

* Language records (any of the fields ``text``, ``prompt``, ``answer``; UTF-8 ``uint8`` arrays or string arrays):
  those fields' text, joined, normalised (Unicode NFKC, case-folded, punctuation and symbols turned into spaces,
  whitespace collapsed). The other fields (``key``, ``paraphrase``, ``perturbed``) are evaluation material, not what
  a model is trained on, and are left out. The text's shingles (word 3-grams; character 5-grams for texts of fewer
  than ``MIN_WORD_SHINGLES`` word 3-grams) are hashed with the key into ``BANDS`` bins and each band is the smallest
  keyed hash in its bin ("one-permutation" MinHash, with empty bins kept as empty). One word replaced, inserted or
  deleted changes at most three shingles out and three in, so at most six bands: a text of at least 19 words
  always still matches after one such edit, and after a few more edits in a long text most bands keep their minimum.
* Other records: every numeric field but the label ``y``, flattened in field-name order to one float64 vector (so
  dtype, shape, container and label are ignored), whose coordinates are dealt into ``BANDS`` bands by a keyed
  permutation (each coordinate in one band; a vector of ``n < BANDS`` values repeats its coordinates). A vector of at
  least ``2 * BANDS`` values (an image, a signal) is divided by its own scale, the mean of its largest eighth (and at
  least 16) of absolute values: data stored as 0-16, 0-1 or 0-255 gives the same values, zero stays zero whatever the
  scale, and one edited value barely moves it. It is then quantised coarsely (``COARSE_LEVELS`` levels per unit of
  scale, with a keyed dither that keeps level boundaries off round values). A shorter vector (a table row, whose
  columns have unrelated scales) is not rescaled: each value is quantised on a log scale of its own
  (``LOG_RESOLUTION`` levels per factor of two), so small columns count as much as large ones and rows that are
  multiples of each other differ. One changed coordinate changes its band(s) and, in a long vector, the rare values
  that the small change of scale pushes over a level boundary.

What matches, for a fixed key: the same content in another dtype (float32 or float64), shape (8x8 or 64), container
(CSV written with ``%.6g``, NPZ) or with another label (every band equal, bar a value that rounding moves across a
level boundary, which costs its band); a long vector rescaled (0-1 against 0-16); a text after changes of case,
whitespace, punctuation or Unicode form (every band equal); a text of at least 19 words with one word replaced,
inserted or deleted (at most six bands differ); a numeric vector with one value changed by up to 1/16 of its range
(its band differs, plus, in a vector of at least 64 values, any value that the small change of scale moves across a
boundary: at most six bands differed in all but 5 of 460,000 such edits of the digits, every pixel of every image up
and down under two keys; a vector of ``n < BANDS`` values loses ``ceil(BANDS / n)`` bands, so a row of at least 6
values still matches). Different keys give unrelated band keys, so fingerprints never match across workspaces. Band
keys of different bands never collide (the ``b{index}:`` prefix), nor do text and numeric band keys.

What it does not do: it is a deterrent against casual re-ingest, not a proof against an adversary. Content that is
transformed more heavily (an image shifted by a pixel, cropped or noised everywhere, a short text reworded, a long
one paraphrased, feature columns reordered or standardised) gets unrelated band keys. Short texts (under 18 words,
on character shingles) match after normalisation-level changes and often, not always, after a one-word edit.
Distinct records that are near duplicates of an erased one (the same digit drawn almost the same way, templated texts
differing in one name) can be refused; :func:`false_refusal_rate` measures how often on real data.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import unicodedata
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from functools import lru_cache

import numpy as np

BANDS: int = 32
"""Band keys per record."""
MIN_MATCH: int = 26
"""A record matches a tombstone when at least this many of its band keys are among the tombstone's."""

TEXT_FIELDS = ("text", "prompt", "answer")
"""Fields whose text is what a language model trains on, in the order they are joined."""
AUX_TEXT_FIELDS = ("key", "paraphrase", "perturbed")
"""Evaluation-only text fields of language records: never fingerprinted."""
LABEL_FIELDS = ("y",)
"""Label fields: never fingerprinted (relabelled content is still the same content)."""

WORD_NGRAM = 3
CHAR_NGRAM = 5
MIN_WORD_SHINGLES = 16
"""Texts with fewer word 3-grams than this use character 5-grams (too few words to fill the bins)."""
COARSE_LEVELS = 8
"""Quantisation levels per unit of scale for vectors of at least ``2 * BANDS`` values."""
LOG_RESOLUTION = 32
"""Quantisation levels per factor of two for shorter vectors (each value about 2% wide)."""
TOP_SHARE = 8
TOP_MIN = 16
"""The scale of a long vector is the mean of its largest ``1 / TOP_SHARE`` absolute values, and of at least
``TOP_MIN`` of them (so one value changed by ``d`` moves the scale by at most ``d / TOP_MIN``)."""

_VERSION = b"disgorge.fingerprint.v1/"
_DIGEST = 16  # 128-bit band keys


@lru_cache(maxsize=64)
def _subkey(key: bytes, purpose: bytes) -> bytes:
    return hmac.digest(key, _VERSION + purpose, "sha256")


def _band_key(band_key: bytes, index: int, message: bytes) -> str:
    # Keyed BLAKE2b is a MAC like HMAC-SHA256, at a third of the cost (32 of them per record at ingest).
    digest = hashlib.blake2b(index.to_bytes(4, "little") + message, key=band_key, digest_size=_DIGEST).hexdigest()
    return f"b{index}:{digest}"


# -- numeric content ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _layout(layout_key: bytes, n: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The coordinates of each band and each coordinate's dither, for vectors of ``n`` values."""
    digests = [hashlib.blake2b(f"{n}:{i}".encode(), key=layout_key, digest_size=16).digest() for i in range(n)]
    order = sorted(range(n), key=lambda i: digests[i][:8])
    # The dither lies in [0.25, 0.75): level boundaries fall at keyed positions (so a value is rarely exactly on one,
    # whatever its grid), and zero is always a quarter level from the nearest boundary (background stays put).
    dither = np.array([0.25 + 0.5 * int.from_bytes(d[8:], "little") / 2.0**64 for d in digests])
    if n >= BANDS:
        bands = tuple(np.array(order[j::BANDS]) for j in range(BANDS))
    else:
        bands = tuple(np.array([order[j % n]]) for j in range(BANDS))
    return bands, dither


def _numeric_vector(fields: Mapping[str, np.ndarray]) -> np.ndarray | None:
    parts = []
    for name in sorted(fields):
        if name in LABEL_FIELDS or name in TEXT_FIELDS or name in AUX_TEXT_FIELDS:
            continue
        value = np.asarray(fields[name])
        if value.dtype.kind in "biuf":
            parts.append(value.astype(np.float64).ravel())
    if not parts:
        return None
    v = np.concatenate(parts)
    v[~np.isfinite(v)] = 0.0
    return v


def _numeric_bands(v: np.ndarray, key: bytes) -> list[str]:
    n = v.size
    bands, dither = _layout(_subkey(key, b"layout"), n)
    if n >= 2 * BANDS:
        k = max(TOP_MIN, math.ceil(n / TOP_SHARE))
        scale = float(np.partition(np.abs(v), n - k)[n - k:].mean()) or 1.0
        q = np.floor(v / scale * COARSE_LEVELS + dither).astype("<i8")
        head = b"num:%d:lin%d:" % (n, COARSE_LEVELS)
    else:
        # Short vectors are mostly table rows whose columns have unrelated scales: quantise each value on a log scale
        # of its own (zero apart, the sign kept), so small columns count as much as large ones and rows that are
        # multiples of each other stay distinct.
        nonzero = v != 0
        level = np.floor(np.log2(np.abs(v), where=nonzero, out=np.zeros(n)) * LOG_RESOLUTION + dither)
        q = np.where(nonzero, np.sign(v) * (level + 2**20), 0).astype("<i8")
        head = b"num:%d:log%d:" % (n, LOG_RESOLUTION)
    band_key = _subkey(key, b"band")
    return [_band_key(band_key, j, head + q[idx].tobytes()) for j, idx in enumerate(bands)]


# -- text content -------------------------------------------------------------------------------------------------


def _field_text(value: np.ndarray) -> str:
    value = np.asarray(value)
    if value.dtype == np.uint8:
        return value.tobytes().decode("utf-8", errors="replace")
    if value.dtype.kind == "S":
        return " ".join(x.decode("utf-8", errors="replace") for x in value.ravel())
    return " ".join(str(x) for x in value.ravel())


def normalise_text(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols replaced by spaces, whitespace collapsed to single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PSC" else c for c in text)
    return " ".join(text.split())


def shingles(text: str) -> tuple[str, set[str]]:
    """The kind (``'w'`` word or ``'c'`` character) and set of shingles of a normalised text."""
    words = text.split()
    if len(words) - WORD_NGRAM + 1 >= MIN_WORD_SHINGLES:
        return "w", {" ".join(words[i:i + WORD_NGRAM]) for i in range(len(words) - WORD_NGRAM + 1)}
    if len(text) <= CHAR_NGRAM:
        return "c", {text} if text else set()
    return "c", {text[i:i + CHAR_NGRAM] for i in range(len(text) - CHAR_NGRAM + 1)}


def _text_bands(text: str, key: bytes) -> list[str]:
    kind, sh = shingles(normalise_text(text))
    if not sh:
        return []
    bin_key = _subkey(key, b"shingle")
    mins: list[bytes] = [b""] * BANDS
    for s in sh:
        d = hashlib.blake2b(s.encode("utf-8"), key=bin_key, digest_size=16).digest()
        j = int.from_bytes(d[:8], "little") % BANDS
        if not mins[j] or d[8:] < mins[j]:
            mins[j] = d[8:]
    band_key = _subkey(key, b"band")
    head = b"text:" + kind.encode() + b":"
    return [_band_key(band_key, j, head + m) for j, m in enumerate(mins)]


# -- public API ---------------------------------------------------------------------------------------------------


def fingerprint(fields: Mapping[str, np.ndarray], key: bytes) -> list[str]:
    """Band keys of a record: ``'b{index}:{hex}'`` strings, one per band (empty list if the record has no content
    field, or its text has no letters or digits)."""
    texts = [_field_text(fields[name]) for name in TEXT_FIELDS if name in fields]
    if texts:
        return _text_bands("\n".join(texts), key)
    v = _numeric_vector(fields)
    if v is None or v.size == 0:
        return []
    return _numeric_bands(v, key)


def matches(candidate: Sequence[str], tombstone_bands: Collection[str]) -> bool:
    """Whether a candidate's band keys share at least ``MIN_MATCH`` keys with one tombstone's band keys."""
    return len(set(candidate).intersection(tombstone_bands)) >= MIN_MATCH


def false_refusal_rate(live: Sequence[Sequence[str]], erased: Sequence[Sequence[str]]) -> float:
    """Share of live records that would be refused (matching some erased record with >= MIN_MATCH bands), for the
    bench."""
    if not live:
        return 0.0
    postings: dict[str, list[int]] = {}
    for t, bands in enumerate(erased):
        for b in set(bands):
            postings.setdefault(b, []).append(t)
    refused = 0
    for bands in live:
        hits = Counter(t for b in set(bands) for t in postings.get(b, ()))
        refused += any(c >= MIN_MATCH for c in hits.values())
    return refused / len(live)
