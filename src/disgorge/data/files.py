"""Loaders for user files: CSV (one row per record: numeric features, or a ``text`` column), NPZ (arrays ``x`` and
``y``) and JSON Lines (texts for language models, or labelled texts for text classification)."""

from __future__ import annotations

import csv
import dataclasses
import math
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DisgorgeError, InvalidRequest
from ..ledger import NewRecord
from ..spec import MAX_SEED

MAX_CLASSES = 10_000
"""Class labels are integers in ``[0, MAX_CLASSES)``: a model has one output per class up to the largest label."""
TEXT_COLUMN = "text"
"""A CSV column of this name holds texts: the file is read as text-classification records."""
MAX_FEATURE = 1e30
"""Largest magnitude of a feature value: features are 32-bit floats (finite up to 3.4e38), and values near that
limit overflow to infinity in the first sums a model computes."""


class DataFileError(DisgorgeError):
    """A data file that cannot be read as asked."""


def _check_file(p: Path) -> None:
    """Refuse a path that is missing or not a regular file before opening it (a FIFO would block the read)."""
    if not p.exists():
        raise DataFileError(f"data file {p} does not exist")
    if p.is_dir():
        raise DataFileError(f"{p} is a folder; give a data file (.csv, .npz or .jsonl)")
    if not p.is_file():
        raise DataFileError(f"{p} is not a regular file (a pipe, socket or device); give a data file")


def load_csv(path: str | Path, *, label: str = "label", attributes: Sequence[str] = (),
             split: str = "train") -> list[NewRecord]:
    """Rows of a CSV with a header: numeric feature columns, an integer ``label`` column, optional attributes.

    Attribute columns (group labels such as ``sex``) are kept as strings and are not features. A CSV with a column
    named ``text`` holds texts instead (the ``text_classification`` task): each row becomes ``{"text", "y"}`` and
    every other column must be the label or an attribute.
    """
    p = Path(path)
    _check_file(p)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"cannot read {p} as UTF-8 CSV: {exc}") from None
    if not header:
        raise DataFileError(f"{p} is empty; a CSV needs a header row and at least one data row")
    header = [h.strip() for h in header]
    blank = [str(i + 1) for i, h in enumerate(header) if not h]
    if blank:
        raise DataFileError(f"{p}: header column(s) {', '.join(blank)} have no name; every column needs one")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataFileError(f"{p}: column name(s) {', '.join(map(repr, twice))} appear more than once in the header; "
                            "every column needs its own name")
    if label not in header:
        raise DataFileError(f"{p} has no label column {label!r} (columns: {', '.join(header)}); pass --label NAME")
    missing = [a for a in attributes if a not in header]
    if missing:
        raise DataFileError(f"{p} has no attribute column(s) {', '.join(missing)}")
    if label in attributes:
        raise DataFileError(f"{p}: column {label!r} is the label; it cannot also be an --attribute")
    li = header.index(label)
    ai = [header.index(a) for a in attributes]
    if TEXT_COLUMN in header and label != TEXT_COLUMN and TEXT_COLUMN not in attributes:
        return _text_rows(p, header, rows, li, ai, attributes, split)
    fi = [i for i in range(len(header)) if i != li and i not in ai]
    if not fi:
        raise DataFileError(f"{p} has no feature columns besides the label and attributes")
    out = []
    for n, row in _data_rows(p, header, rows):
        values = []
        for i in fi:
            try:
                v = float(row[i])
            except ValueError:
                raise DataFileError(f"{p} line {n}: column {header[i]!r} is not numeric; list text columns with "
                                    f"--attribute or drop them") from None
            if not math.isfinite(v) or abs(v) > MAX_FEATURE:
                raise DataFileError(f"{p} line {n}: column {header[i]!r} holds {row[i].strip()!r}; features must be "
                                    f"finite numbers of magnitude at most {MAX_FEATURE:g}")
            values.append(v)
        x = np.array(values, dtype=np.float32)
        y = _label(row[li], p, n)
        out.append(NewRecord({"x": x, "y": np.array([y], dtype=np.int64)},
                             {a: row[i] for a, i in zip(attributes, ai, strict=True)}, split))
    if not out:
        raise DataFileError(f"{p} has a header but no data rows")
    return out


def _text_rows(p: Path, header: list[str], rows: list[list[str]], li: int, ai: list[int], attributes: Sequence[str],
               split: str) -> list[NewRecord]:
    """The rows of a CSV with a ``text`` column as text-classification records ``{"text", "y"}``."""
    from ..tasks.causal_lm import text_field

    ti = header.index(TEXT_COLUMN)
    others = [h for i, h in enumerate(header) if i not in (ti, li, *ai)]
    if others:
        raise DataFileError(f"{p} has a text column, so every other column must be the label or an --attribute; "
                            f"column(s) {', '.join(map(repr, others))} are neither: list them with --attribute or "
                            "drop them")
    out = []
    for n, row in _data_rows(p, header, rows):
        if not _utf8_text(row[ti]):
            raise DataFileError(f"{p} line {n}: the text is not valid Unicode")
        y = _label(row[li], p, n)
        out.append(NewRecord({"text": text_field(row[ti]), "y": np.array([y], dtype=np.int64)},
                             {a: row[i] for a, i in zip(attributes, ai, strict=True)}, split))
    if not out:
        raise DataFileError(f"{p} has a header but no data rows")
    return out


def load_npz(path: str | Path, *, split: str = "train") -> list[NewRecord]:
    """Records from an ``.npz`` holding ``x`` (N, ...) features and ``y`` (N,) integer labels (no pickles).

    ``x`` holds booleans, integers or floats (finite, magnitude at most :data:`MAX_FEATURE`), stored as float32;
    ``y`` holds integers in ``[0, MAX_CLASSES)``.
    """
    p = Path(path)
    _check_file(p)
    not_npz = f"{p} is not an .npz archive; save the arrays with numpy.savez(path, x=..., y=...)"
    try:
        with open(p, "rb") as fh:
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # an .npy file gives a plain array
                raise DataFileError(not_npz)
            with z:
                arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, ValueError, TypeError, KeyError, EOFError, NotImplementedError, RuntimeError, zipfile.BadZipFile,
            zlib.error) as exc:  # an untrusted archive: every way numpy and zipfile report a bad one
        raise DataFileError(f"cannot read {p} as NPZ: {exc}") from None
    x = arrays.get("x", arrays.get("X"))
    y = arrays.get("y")
    if x is None or y is None:
        raise DataFileError(f"{p} must hold arrays 'x' and 'y' (it has: {', '.join(arrays) or 'none'})")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataFileError(f"{p}: 'x' and 'y' must be numpy arrays (.npy members), as numpy.savez writes them")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        rows = f"{len(x)} rows" if x.ndim else "no rows"
        raise DataFileError(f"{p}: 'x' has shape {x.shape} ({rows}) and 'y' has shape {y.shape}; need x "
                            "(N, features...) and y (N,): one label per row")
    if len(y) == 0:
        raise DataFileError(f"{p} holds no records (x and y have 0 rows)")
    if 0 in x.shape[1:]:
        raise DataFileError(f"{p}: 'x' has shape {x.shape}; each record needs at least one feature")
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{p}: 'x' must hold booleans, integers or real floats, not {x.dtype}")
    if y.dtype.kind not in "iu":
        raise DataFileError(f"{p}: 'y' must hold integer class labels, not {y.dtype}")
    values = x.astype(np.float64)
    bad = ~np.isfinite(values) | (np.abs(values) > MAX_FEATURE)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataFileError(f"{p}: 'x' row {row} holds {values[row][bad[row]].ravel()[0]!r}; features must be finite "
                            f"numbers of magnitude at most {MAX_FEATURE:g}")
    wrong = (y < 0) | (y >= MAX_CLASSES)
    if wrong.any():
        row = int(np.argmax(wrong))
        raise DataFileError(f"{p}: 'y' row {row} is label {int(y[row])}; labels must be class numbers from 0 to "
                            f"{MAX_CLASSES - 1} (MAX_CLASSES = {MAX_CLASSES})")
    x32 = values.astype(np.float32)
    return [NewRecord({"x": x32[i], "y": np.array([int(y[i])], dtype=np.int64)}, {}, split)
            for i in range(len(x32))]


def load_jsonl(path: str | Path, *, label: str = "label", attributes: Sequence[str] = (),
               split: str = "train") -> list[NewRecord]:
    """One JSON object per line for the ``causal_lm`` task: a document ``{"text": ...}`` or a question
    ``{"prompt": ..., "answer": ...}`` (``completion`` reads as ``answer``) with optional ``key``, ``paraphrase`` and
    ``perturbed`` (a list of wrong answers); ``attributes`` names keys kept as group attributes. Documents that carry
    an integer ``label`` key (``{"text": ..., "label": 1}``) are labelled texts for the ``text_classification`` task
    (field ``y``); then every line must carry one."""
    import json

    from ..tasks.causal_lm import TEXT_FIELDS, text_field

    p = Path(path)
    _check_file(p)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataFileError(f"data file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read {p} as UTF-8 JSON Lines: {exc}") from None
    records: list[NewRecord] = []
    labelled: list[int] = []
    unlabelled: list[int] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{p} line {n} is not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataFileError(f"{p} line {n} nests too deeply to be a record") from None
        if isinstance(obj, dict) and "completion" in obj and "answer" not in obj:  # a prompt/completion pair
            obj["answer"] = obj.pop("completion")
        if not isinstance(obj, dict) or not ("text" in obj or ("prompt" in obj and "answer" in obj)):
            raise DataFileError(f"{p} line {n} needs a \"text\" field, or \"prompt\" and \"answer\"")
        if isinstance(obj.get("perturbed"), list) and all(isinstance(t, str) for t in obj["perturbed"]):
            obj["perturbed"] = "\n".join(obj["perturbed"])
        bad = [k for k in TEXT_FIELDS if k in obj and not _utf8_text(obj[k])]
        if bad:
            raise DataFileError(f"{p} line {n}: field(s) {', '.join(bad)} must be text (valid Unicode)")
        missing = [a for a in attributes if a not in obj]
        if missing:
            raise DataFileError(f"{p} line {n} has no attribute field(s) {', '.join(missing)}")
        fields = {k: text_field(obj[k]) for k in TEXT_FIELDS if k in obj}
        if label in obj and "text" in obj and label not in attributes:
            fields["y"] = np.array([_json_label(obj[label], p, n)], dtype=np.int64)
            labelled.append(n)
        else:
            unlabelled.append(n)
        records.append(NewRecord(fields, {a: str(obj[a]) for a in attributes}, split))
    if not records:
        raise DataFileError(f"{p} holds no records")
    if labelled and unlabelled:
        raise DataFileError(f"{p} line {unlabelled[0]} has no \"{label}\" but line {labelled[0]} has one; label "
                            "every text (text classification) or none (language modelling)")
    return records


def load_file(path: str | Path, *, label: str = "label", attributes: Sequence[str] = (),
              split: str = "train") -> list[NewRecord]:
    """Dispatch on the file's extension (``.csv``, ``.npz`` or ``.jsonl``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".npz", ".jsonl"):
        raise DataFileError(f"cannot ingest {p}: supported files are .csv, .npz and .jsonl")
    _check_file(p)
    if suffix == ".csv":
        return load_csv(p, label=label, attributes=attributes, split=split)
    if suffix == ".npz":
        return load_npz(p, split=split)
    return load_jsonl(p, label=label, attributes=attributes, split=split)


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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"--holdout-seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed}")
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


def _data_rows(p: Path, header: Sequence[str], rows: Iterable[list[str]]) -> Iterator[tuple[int, list[str]]]:
    """``(line number, row)`` of a CSV's data rows: blank rows skipped, a row of another width than the header
    refused in one line."""
    for n, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataFileError(f"{p} line {n}: {len(row)} fields, the header has {len(header)}")
        yield n, row


def _utf8_text(value: object) -> bool:
    """Whether ``value`` is a string that UTF-8 can encode (JSON can spell lone surrogates, which it cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_label(value: object, p: Path, n: int) -> int:
    """A JSON Lines label: a non-negative integer class below MAX_CLASSES (a number, or a string such as "3")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataFileError(f"{p} line {n}: label {value!r} is not an integer class")
    return _label(str(value), p, n)


def _label(s: str, p: Path, n: int) -> int:
    """A CSV label: a non-negative integer class below MAX_CLASSES (``3`` or ``3.0``)."""
    text = s.strip()
    try:
        v = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise DataFileError(f"{p} line {n}: label {s!r} is not an integer class") from None
        if not math.isfinite(f) or f != int(f):
            raise DataFileError(f"{p} line {n}: label {s!r} is not a non-negative integer class") from None
        v = int(f)
    if v < 0:
        raise DataFileError(f"{p} line {n}: label {s!r} is not a non-negative integer class")
    if v >= MAX_CLASSES:
        raise DataFileError(f"{p} line {n}: label {text} is too large; labels are class numbers from 0 to "
                            f"{MAX_CLASSES - 1} (MAX_CLASSES = {MAX_CLASSES})")
    return v
