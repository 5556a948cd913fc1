"""Loaders for user files: CSV (one row per record), NPZ (arrays ``x`` and ``y``) and JSON Lines (texts for
language models)."""

from __future__ import annotations

import csv
import dataclasses
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DisgorgeError, InvalidRequest
from ..ledger import NewRecord


class DataFileError(DisgorgeError):
    """A data file that cannot be read as asked."""


def load_csv(path: str | Path, *, label: str = "label", attributes: Sequence[str] = (),
             split: str = "train") -> list[NewRecord]:
    """Rows of a CSV with a header: numeric feature columns, an integer ``label`` column, optional attributes.

    Attribute columns (group labels such as ``sex``) are kept as strings and are not features.
    """
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"cannot read {p} as CSV: {exc}") from None
    if not header:
        raise DataFileError(f"{p} is empty; a CSV needs a header row and at least one data row")
    header = [h.strip() for h in header]
    if label not in header:
        raise DataFileError(f"{p} has no label column {label!r} (columns: {', '.join(header)}); pass --label NAME")
    missing = [a for a in attributes if a not in header]
    if missing:
        raise DataFileError(f"{p} has no attribute column(s) {', '.join(missing)}")
    li = header.index(label)
    ai = [header.index(a) for a in attributes]
    fi = [i for i in range(len(header)) if i != li and i not in ai]
    if not fi:
        raise DataFileError(f"{p} has no feature columns besides the label and attributes")
    out = []
    for n, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataFileError(f"{p} line {n}: {len(row)} fields, the header has {len(header)}")
        try:
            x = np.array([float(row[i]) for i in fi], dtype=np.float32)
        except ValueError:
            bad = next(header[i] for i in fi if not _is_float(row[i]))
            raise DataFileError(f"{p} line {n}: column {bad!r} is not numeric; list text columns with "
                                f"--attribute or drop them") from None
        y = _label(row[li], p, n)
        if not np.isfinite(x).all():
            raise DataFileError(f"{p} line {n}: features must be finite numbers")
        out.append(NewRecord({"x": x, "y": np.array([y], dtype=np.int64)},
                             {a: row[i] for a, i in zip(attributes, ai, strict=True)}, split))
    if not out:
        raise DataFileError(f"{p} has a header but no data rows")
    return out


def load_npz(path: str | Path, *, split: str = "train") -> list[NewRecord]:
    """Records from an ``.npz`` holding ``x`` (N, ...) features and ``y`` (N,) integer labels (no pickles)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"cannot read {p} as NPZ: {exc}") from None
    x = arrays.get("x", arrays.get("X"))
    y = arrays.get("y")
    if x is None or y is None:
        raise DataFileError(f"{p} must hold arrays 'x' and 'y' (it has: {', '.join(arrays) or 'none'})")
    if len(x) != len(y) or y.ndim != 1:
        raise DataFileError(f"{p}: 'x' has {len(x)} rows and 'y' has shape {y.shape}; need x (N, ...) and y (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataFileError(f"{p}: 'y' must hold integer class labels, not {y.dtype}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DataFileError(f"{p}: 'x' must hold finite numbers")
    if (y < 0).any():
        raise DataFileError(f"{p}: labels must be >= 0")
    return [NewRecord({"x": x[i].astype(np.float32), "y": np.array([y[i]], dtype=np.int64)}, {}, split)
            for i in range(len(x))]


def load_jsonl(path: str | Path, *, attributes: Sequence[str] = (), split: str = "train") -> list[NewRecord]:
    """One JSON object per line for the ``causal_lm`` task: a document ``{"text": ...}`` or a question
    ``{"prompt": ..., "answer": ...}`` with optional ``key``, ``paraphrase`` and ``perturbed`` (a list of wrong
    answers); ``attributes`` names keys kept as group attributes."""
    import json

    from ..tasks.causal_lm import TEXT_FIELDS, text_field

    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read {p} as UTF-8 JSON Lines: {exc}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{p} line {n} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not ("text" in obj or ("prompt" in obj and "answer" in obj)):
            raise DataFileError(f"{p} line {n} needs a \"text\" field, or \"prompt\" and \"answer\"")
        if isinstance(obj.get("perturbed"), list):
            obj["perturbed"] = "\n".join(obj["perturbed"])
        bad = [k for k in TEXT_FIELDS if k in obj and not isinstance(obj[k], str)]
        if bad:
            raise DataFileError(f"{p} line {n}: field(s) {', '.join(bad)} must be text")
        missing = [a for a in attributes if a not in obj]
        if missing:
            raise DataFileError(f"{p} line {n} has no attribute field(s) {', '.join(missing)}")
        fields = {k: text_field(obj[k]) for k in TEXT_FIELDS if k in obj}
        records.append(NewRecord(fields, {a: str(obj[a]) for a in attributes}, split))
    if not records:
        raise DataFileError(f"{p} holds no records")
    return records


def load_file(path: str | Path, *, label: str = "label", attributes: Sequence[str] = (),
              split: str = "train") -> list[NewRecord]:
    """Dispatch on the file's extension (``.csv``, ``.npz`` or ``.jsonl``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return load_csv(p, label=label, attributes=attributes, split=split)
    if suffix == ".npz":
        return load_npz(p, split=split)
    if suffix == ".jsonl":
        return load_jsonl(p, attributes=attributes, split=split)
    raise DataFileError(f"cannot ingest {p}: supported files are .csv, .npz and .jsonl")


def holdout_split(records: Sequence[NewRecord], fraction: float, seed: int = 0) -> list[NewRecord]:
    """The records, in order, with a seeded random ``fraction`` of them moved to split ``test`` (held-out records
    of the same source); the others are returned unchanged. The input is not modified.

    Records that all have a label ``y`` are drawn stratified by label: ``round(fraction * count)`` per label, always
    leaving at least one record of each label in its split (a label with one record keeps it). Other records are a
    plain draw of ``round(fraction * len(records))``, also leaving at least one. The same records and seed give the
    same draw.
    """
    if not 0 <= fraction < 1:
        raise InvalidRequest(f"--holdout must be a fraction in [0, 1) such as 0.1, got {fraction}")
    if fraction == 0 or not records:
        return list(records)
    if all("y" in r.fields for r in records):
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault(tuple(np.asarray(r.fields["y"]).ravel().tolist()), []).append(i)
        strata = [groups[k] for k in sorted(groups)]
    else:
        strata = [list(range(len(records)))]
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for idx in strata:
        k = min(round(fraction * len(idx)), len(idx) - 1)
        if k > 0:
            chosen.update(int(i) for i in rng.choice(idx, size=k, replace=False))
    return [dataclasses.replace(r, split="test") if i in chosen else r for i, r in enumerate(records)]


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _label(s: str, p: Path, n: int) -> int:
    try:
        v = float(s)
    except ValueError:
        raise DataFileError(f"{p} line {n}: label {s!r} is not an integer class") from None
    if v != int(v) or v < 0:
        raise DataFileError(f"{p} line {n}: label {s!r} is not a non-negative integer class")
    return int(v)
