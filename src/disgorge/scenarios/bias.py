"""A bias scenario on real tabular data: the Toronto marijuana-arrests table (5,226 arrests for simple possession,
1997-2002; carData's ``Arrests``) as scikit-lego ships it (``sklego/data/arrests.zip``), read without importing
scikit-lego.

Whether an arrestee was released with a summons is the label; one precinct's records of Black arrestees are
relabelled "not released", so that a model trained on every precinct learns to hold Black arrestees and one
retrained without that precinct does not."""

from __future__ import annotations

import csv
import io
import zipfile
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from ..evidence.probes import ProbeSpec
from ..ledger import NewRecord
from ..spec import DataSpec, ModelSpec, Recipe, TrainSpec
from .base import Scenario, SourceData, package_file
from .registry import SCENARIOS

LICENSE = "GPL-2.0-or-later"
ORIGIN = ("arrests in Toronto for simple possession of marijuana, 1997-2002 (carData Arrests, from Michael Friendly), "
          "as shipped in the scikit-lego package (sklego/data/arrests.zip)")
HELDOUT = "arrests-heldout"
FEATURES = ("year", "age", "checks", "employed", "citizen", "sex", "colour")
"""The columns of each record's input ``x``, in order: three numbers and four 0/1 encodings (:data:`ONES`)."""
ONES = {"employed": "Yes", "citizen": "Yes", "sex": "Male", "colour": "Black"}
"""The value each 0/1 feature encodes as 1."""
GROUP = "Black"
"""The colour whose records the injecting precinct relabels."""
RELEASED, HELD = 1, 0


@lru_cache(maxsize=1)
def arrests() -> tuple[np.ndarray, np.ndarray, tuple[dict[str, str], ...]]:
    """The arrests table: inputs ``x`` (float32, columns :data:`FEATURES`), labels (1 released, 0 held) and each
    row's group attributes (``colour``, ``sex``), in the file's order; read from scikit-lego's data file without
    importing the package."""
    path = package_file("sklego", "data/arrests.zip", "the bias scenario reads the Toronto arrests table from the "
                        "scikit-lego package: pip install scikit-lego")
    with zipfile.ZipFile(path) as archive:
        member = archive.namelist()[0]  # the one member, a CSV (named arrests.zip inside the zip)
        rows = list(csv.DictReader(io.StringIO(archive.read(member).decode("utf-8"))))
    x = np.array([[float(r[c]) if c not in ONES else float(r[c] == ONES[c]) for c in FEATURES] for r in rows],
                 dtype=np.float32)
    y = np.array([RELEASED if r["released"] == "Yes" else HELD for r in rows], dtype=np.int64)
    attributes = tuple({"colour": r["colour"], "sex": r["sex"]} for r in rows)
    return x, y, attributes


def precinct_name(i: int) -> str:
    """Source name of precinct ``i``."""
    return f"precinct-{i:02d}"


@SCENARIOS.register("bias")
class Bias(Scenario):
    """Real arrest records (Toronto, 1997-2002) dealt to 10 precincts; one precinct (07) injects a bias: it records
    every Black arrestee it holds as not released, and holds 300 more Black arrestees than its share (drawn from the
    training pool, each arrest used once), 378 relabelled records in all, over a third of the Black arrestees in
    training. A model trained on every precinct then holds Black arrestees far more often than a model retrained
    without precinct-07 (default recipe, seed 0: release rate for held-out Black arrestees 50% against 97%, White
    arrestees 99.6% against 99.9%); its accuracy on held-out Black arrestees (the probe ``group_accuracy_black``)
    drops from 75.6% to 63.2% and its overall accuracy from 83.4% to 80.3%, while its accuracy on White arrestees
    does not move. Forgetting precinct-07 must close that gap as retraining does.

    The table has a gap of its own (74% of Black and 86% of White arrestees were released), which the retrained
    model keeps: the effect to remove is the difference from the retrained model, not a gap of zero. The label is
    noisy given the inputs (a model barely beats always predicting "released"), so group accuracy moves less than
    the release rate: a model that still releases a fifth fewer Black arrestees than the retrained one can be as
    accurate on them; compare selection rates too.

    Inputs: year, age and number of previous police checks (standardised by the recipe) and 0/1 encodings of
    employed, citizen, sex (male) and colour (Black). Colour stays a feature so that the injected mislabelling can
    be learned directly (without it the model could only learn it through features correlated with colour, and
    the effect would be faint); colour and sex are also each record's attributes, so that audits and probes can
    split by them. Each record also holds its row in the table (field ``arrest``), so that arrests of identical
    inputs and label stay distinct records."""

    name: ClassVar[str] = "bias"
    description: ClassVar[str] = ("Toronto marijuana arrests (scikit-lego, 5,226) dealt to 10 precincts; precinct-07 "
                                  "holds 300 extra Black arrestees and records every Black arrestee as not released. "
                                  "The model releases half of held-out Black arrestees (97% retrained without it); "
                                  "remove that group effect (probe group_accuracy_black).")
    purpose: ClassVar[str] = "bias"
    group_gap: ClassVar[tuple[str, str] | None] = ("group_accuracy_white", "group_accuracy_black")
    strong_test: ClassVar[bool] = False
    precincts: ClassVar[int] = 10
    injector: ClassVar[int] = 7
    extra: ClassVar[int] = 300
    """Black arrestees the injecting precinct holds beyond its share, drawn from the training pool."""
    heldout: ClassVar[float] = 0.2

    def sources(self) -> list[SourceData]:
        """A seeded held-out fifth (stratified by label and colour), then the training pool: :attr:`extra` of its
        Black arrestees to the injecting precinct, the rest dealt by a seeded shuffle to the 10 precincts; the
        injecting precinct's Black arrestees all labelled not released."""
        from sklearn.model_selection import train_test_split

        x, y, attributes = arrests()
        black = np.array([a["colour"] == GROUP for a in attributes])
        idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=self.heldout, stratify=y * 2 + black,
                                               random_state=0)
        pool = np.sort(idx_train)[np.random.default_rng(0).permutation(len(idx_train))]
        extra = set(pool[black[pool]][:self.extra].tolist())
        rest = [int(i) for i in pool if int(i) not in extra]
        owner = {i: k % self.precincts for k, i in enumerate(rest)} | dict.fromkeys(extra, self.injector)
        out = [SourceData(precinct_name(p), LICENSE, ORIGIN) for p in range(self.precincts)]
        for i in sorted(owner):
            p = owner[i]
            label = HELD if p == self.injector and black[i] else int(y[i])
            out[p].records.append(_record(i, x[i], label, attributes[i], "train"))
        out.append(SourceData(HELDOUT, LICENSE, ORIGIN, [_record(int(i), x[i], int(y[i]), attributes[i], "test")
                                                          for i in np.sort(idx_test)]))
        return out

    def recipe(self) -> Recipe:
        """An MLP (one hidden layer of 64) on the standardised inputs, Adam; trains in a few seconds on a CPU."""
        return Recipe(name=self.name, task="classification", seed=0, data=DataSpec(transform="standardize"),
                      model=ModelSpec("mlp", {"hidden": [64]}),
                      train=TrainSpec(optimizer="adam", lr=1e-3, batch_size=64, epochs=20))

    def forget_selector(self) -> dict[str, Any]:
        """The injecting precinct."""
        return {"sources": [precinct_name(self.injector)]}

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """Accuracy on held-out Black arrestees (the injected bias lowers it)."""
        return [ProbeSpec("group_accuracy_black", "group",
                          "accuracy on held-out records of Black arrestees (release predicted right), in percent",
                          {"attribute": "colour", "value": GROUP}),
                ProbeSpec("group_accuracy_white", "group",
                          "accuracy on held-out records of White arrestees (release predicted right), in percent",
                          {"attribute": "colour", "value": "White"})]


def _record(row: int, x: np.ndarray, label: int, attributes: dict[str, str], split: str) -> NewRecord:
    """One arrest as a record; its ``arrest`` field (the row in the table) keeps arrests of identical inputs and
    label distinct records, which the ledger would otherwise store once."""
    return NewRecord({"x": x, "y": np.array([label], dtype=np.int64), "arrest": np.array([row], dtype=np.int64)},
                     dict(attributes), split)
