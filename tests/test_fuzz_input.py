"""Property-based fuzzing of what users hand disgorge: recipes and data files either read, or are refused with a
:class:`~disgorge.errors.DisgorgeError` (a one-line message); never another exception."""

from __future__ import annotations

import contextlib
import datetime
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from disgorge.data import MAX_CLASSES, MAX_FEATURE, load_file
from disgorge.errors import DisgorgeError
from disgorge.spec import Recipe
from disgorge.tasks import check_recipe

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- recipes ----------------------------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.integers(), st.integers(-3, 300), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, 10**20, 10**6 + 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, -0.0, 1e-3, 1e300]),
    st.booleans(), st.text(max_size=12), st.sampled_from(["adam", "sgd", "mlp", "gpt2", "linear", "cnn", "word",
                                                          "char", "classification", "causal_lm", "pretrained", ""]),
    st.dates(min_value=datetime.date(1, 1, 1)),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
SIZES = st.integers(-2, 2 * 10**6) | st.sampled_from([1, 8, 64, 10**6, 10**6 + 1])
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "name": st.just("fuzz") | st.text(max_size=6),
    "task": st.sampled_from(["classification", "causal_lm", "regression"]),
    "seed": st.integers(-1, 2**33) | st.sampled_from([0, 2**32 - 1, 2**32]),
    "sources": st.lists(st.text(max_size=6), max_size=2), "exclude_sources": st.lists(st.text(max_size=6), max_size=2),
    "family": st.sampled_from(["linear", "mlp", "cnn", "gpt2", "pretrained", "resnet"]),
    "hidden": st.lists(SIZES, max_size=3) | SIZES, "channels": st.lists(SIZES, max_size=3),
    "dropout": ANY_FLOAT | st.floats(0, 1), "n_layer": SIZES, "n_embd": SIZES, "n_head": SIZES, "max_length": SIZES,
    "tokenizer": st.sampled_from(["word", "char", "bpe"]), "path": st.text(max_size=8),
    "optimizer": st.sampled_from(["adam", "adamw", "sgd", "rmsprop"]),
    "lr": ANY_FLOAT | st.floats(1e-6, 1), "weight_decay": ANY_FLOAT | st.floats(0, 1),
    "momentum": ANY_FLOAT | st.floats(0, 1), "batch_size": SIZES | ANY_FLOAT, "epochs": SIZES | ANY_FLOAT,
}
TOP = ["name", "task", "seed", "data", "model", "train"]
SECTIONS = {
    "data": ["sources", "exclude_sources"],
    "model": ["family", "hidden", "dropout", "channels", "n_layer", "n_embd", "n_head", "max_length", "tokenizer",
              "path"],
    "train": ["optimizer", "lr", "weight_decay", "momentum", "batch_size", "epochs"],
}


@st.composite
def value_for(draw: st.DrawFn, key: str) -> Any:
    """Mostly a value of the kind the key takes (in or out of its range), sometimes one of any type."""
    return draw(VALUES) if key not in PLAUSIBLE or not draw(st.integers(0, 4)) else draw(PLAUSIBLE[key])


def keys_of(draw: st.DrawFn, known: list[str]) -> list[str]:
    """Some of the known keys, now and then with an unknown one."""
    keys = draw(st.lists(st.sampled_from(known), unique=True, max_size=len(known)))
    return [*keys, "unknown"] if not draw(st.integers(0, 9)) else keys


@st.composite
def recipe_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A TOML document over the recipe's keys (now and then an unknown one), each holding a value mostly of the kind
    it takes; sections are usually tables of their own keys, sometimes something else."""
    doc: dict[str, Any] = {}
    for key in keys_of(draw, TOP):
        if key in SECTIONS and draw(st.integers(0, 6)):
            doc[key] = {k: draw(value_for(k)) for k in keys_of(draw, SECTIONS[key])}
        else:
            doc[key] = draw(value_for(key))
    if draw(st.integers(0, 3)):
        doc["name"] = "fuzz"
    return doc


def read_recipe(text: str) -> None:
    """Read a recipe and check it against the registries, as `disgorge train` does before it builds anything."""
    try:
        recipe = Recipe.from_toml(text)
        check_recipe(recipe)
    except DisgorgeError as exc:
        assert str(exc), repr(exc)
        return
    assert 0 <= recipe.seed < 2**32
    assert all(math.isfinite(v) for v in (recipe.train.lr, recipe.train.weight_decay, recipe.train.momentum))
    assert Recipe.from_toml(recipe.to_toml()) == recipe


@FUZZ
@given(recipe_documents())
def test_recipe_documents_read_or_are_refused(doc: dict[str, Any]) -> None:
    """Any TOML document over the recipe's keys gives a Recipe or a DisgorgeError."""
    read_recipe(tomli_w.dumps(doc))


@FUZZ
@given(st.text(max_size=200))
def test_recipe_text_reads_or_is_refused(text: str) -> None:
    """Any text at all, mostly invalid TOML, gives a Recipe or a DisgorgeError."""
    read_recipe(text)


# -- data files --------------------------------------------------------------------------------------------------
CELLS = st.one_of(
    st.sampled_from(["0", "1", "2", "0.25", "-7", "1e3"]),
    st.sampled_from(["0", "1", "2", "-1", "1.5", "3e38", "-3e38", "1e39", "1e12", "nan", "NaN", "inf", "-inf",
                     "Infinity", "", " ", "abc", "1_000", "0x10", "99999999999999999999", str(MAX_CLASSES), "1e-45",
                     '"1"', "1,2", "\x00", "é", "٣"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    st.text(max_size=5),
)
COLUMNS = st.sampled_from(["label", "a", "b", "c", "", " label ", "group", "é"])


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    """A header (usually distinct names with a label; sometimes duplicate, empty or missing ones) and rows (usually
    of the header's width, sometimes ragged) of odd cells."""
    if draw(st.integers(0, 3)):
        header = [*draw(st.lists(st.sampled_from(["a", "b", "c", "group", "é"]), unique=True, max_size=4)), "label"]
        header = draw(st.permutations(header))
    else:
        header = draw(st.lists(COLUMNS, max_size=5))
    width = len(header)
    sizes = st.just(width) if draw(st.integers(0, 3)) else st.integers(max(0, width - 1), width + 1)
    rows = draw(st.lists(sizes.flatmap(lambda n: st.lists(CELLS, min_size=n, max_size=n)), max_size=6))
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    return sep.join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["", sep]))


def read_data(path: Path) -> None:
    """Read a data file as `disgorge ingest` does: records whose features are finite float32 and whose labels are
    classes in [0, MAX_CLASSES), or a DisgorgeError."""
    try:
        records = load_file(path, attributes=["group"] if "group" in path.name else ())
    except DisgorgeError as exc:
        assert str(exc), repr(exc)
        return
    assert records
    shapes = {r.fields["x"].shape for r in records}
    assert len(shapes) == 1
    for r in records:
        x, y = r.fields["x"], r.fields["y"]
        assert x.dtype == np.float32 and np.isfinite(x).all() and (np.abs(x) <= MAX_FEATURE).all()
        assert y.dtype == np.int64 and y.shape == (1,) and 0 <= int(y[0]) < MAX_CLASSES


@FUZZ
@given(csv_texts())
def test_csv_files_read_or_are_refused(text: str) -> None:
    """Any CSV built from odd headers and cells gives valid records or a DisgorgeError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        path.write_text(text, encoding="utf-8")
        read_data(path)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["data.csv", "data.npz", "data.jsonl"]))
def test_arbitrary_bytes_read_or_are_refused(data: bytes, name: str) -> None:
    """Any bytes at all under a data file's name give records or a DisgorgeError."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        with contextlib.suppress(DisgorgeError):
            load_file(path)


DTYPES = st.sampled_from([np.bool_, np.int8, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64,
                          np.complex64, np.complex128, np.dtype("U3"), np.dtype("S2"), np.dtype("M8[s]")])


@st.composite
def arrays(draw: st.DrawFn, rows: int | None = None) -> np.ndarray:
    """A small array of a random dtype (complex, strings and dates included) and shape (0-D to 3-D), with values
    across the dtype's range: nan, inf, huge and tiny."""
    dtype = np.dtype(draw(DTYPES))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    if rows is not None and shape and draw(st.integers(0, 3)):
        shape = (rows, *shape[1:])
    elements = None
    if dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(st.data())
def test_npz_files_read_or_are_refused(data: st.DataObject) -> None:
    """Any .npz of small arrays of any dtype and shape, under the names x, X, y and others, gives valid records or a
    DisgorgeError."""
    x = data.draw(arrays())
    y = data.draw(arrays(rows=len(x) if x.ndim else None))
    names = data.draw(st.sampled_from([("x", "y"), ("X", "y"), ("x",), ("y",), ("x", "y", "z"), ("features", "y")]))
    contents = dict(zip(names, [x, y, x], strict=False))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, **contents)
        read_data(path)


@FUZZ
@given(st.integers(1, 6), st.integers(1, 4), st.data())
def test_npz_with_labels_reads_or_is_refused(n: int, features: int, data: st.DataObject) -> None:
    """Well-shaped .npz files with values that are hard to store: integer labels anywhere in int64 and features
    anywhere in float64 (nan, inf, beyond float32) give valid records or a DisgorgeError."""
    x = data.draw(hnp.arrays(np.float64, (n, features), elements=st.floats(allow_nan=True, allow_infinity=True)))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5)))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, x=x, y=y)
        read_data(path)
