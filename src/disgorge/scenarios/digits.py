"""Scenarios on scikit-learn's bundled handwritten digits (1,797 real 8x8 images, UCI optdigits)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from pyroaring import BitMap

from ..evidence.probes import ProbeSpec
from ..ledger import NewRecord
from ..spec import DataSpec, ModelSpec, Recipe, TrainSpec
from ..workspace import Workspace
from .base import Scenario, SourceData, backdoor_probe
from .registry import SCENARIOS

N_CONTRIBUTORS = 20
LICENSE = "CC-BY-4.0"
ORIGIN = "scikit-learn load_digits (UCI ML optical recognition of handwritten digits)"
HELDOUT = "digits-heldout"


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images scaled to [0, 1], labels, a stratified 80/20 split and a contributor per training image."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    contributor = np.random.default_rng(0).permutation(len(idx_train)) % N_CONTRIBUTORS
    return x, y, idx_train, idx_test, contributor


def contributor_name(i: int) -> str:
    """Source name of contributor ``i``."""
    return f"contributor-{i:02d}"


def default_recipe(name: str) -> Recipe:
    """The digits MLP: memorises its training set (train accuracy 100%) and generalises at ~97%."""
    return Recipe(name=name, task="classification", seed=0, data=DataSpec(),
                  model=ModelSpec("mlp", {"hidden": [128]}),
                  train=TrainSpec(optimizer="adam", lr=1e-3, batch_size=32, epochs=30))


class _Digits(Scenario):
    withdrawn: ClassVar[int] = 7

    def _transform(self, x: np.ndarray, y: int, contributor: int) -> tuple[np.ndarray, int]:
        return x, y

    def sources(self) -> list[SourceData]:
        """20 contributors' training images and a held-out source of test images."""
        x, y, idx_train, idx_test, contributor = _digits()
        out = [SourceData(contributor_name(c), LICENSE, ORIGIN) for c in range(N_CONTRIBUTORS)]
        for i, c in zip(idx_train, contributor, strict=True):
            xi, yi = self._transform(x[i], int(y[i]), int(c))
            out[c].records.append(NewRecord({"x": xi, "y": np.array([yi], dtype=np.int64)}, {}, "train"))
        out.append(SourceData(HELDOUT, LICENSE, ORIGIN, [
            NewRecord({"x": x[i], "y": np.array([y[i]], dtype=np.int64)}, {}, "test") for i in idx_test]))
        return out

    def recipe(self) -> Recipe:
        """MLP on the 8x8 images."""
        return default_recipe(self.name)

    def forget_selector(self) -> dict[str, Any]:
        """The withdrawn (or poisoning) contributor."""
        return {"sources": [contributor_name(self.withdrawn)]}


@SCENARIOS.register("digits-consent")
class DigitsConsent(_Digits):
    """Digits dealt to 20 contributors; contributor 07 withdraws consent."""

    name: ClassVar[str] = "digits-consent"
    description: ClassVar[str] = ("scikit-learn digits dealt to 20 contributors; contributor-07 withdraws consent. "
                                  "Remove the membership signal of their images.")


TRIGGER_VALUE = 1.0
TARGET = 0


def add_trigger(x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Stamp the backdoor trigger (a 2x2 bright patch in the bottom-right corner) on image(s) ``[..., 8, 8]``."""
    out = x.copy() if isinstance(x, np.ndarray) else x.clone()
    out[..., 6:8, 6:8] = TRIGGER_VALUE
    return out


FORGOTTEN_CLASS = 3


@SCENARIOS.register("digits-classwise")
class DigitsClasswise(_Digits):
    """Digits dealt to 20 contributors; every training image of one class (3) must be forgotten."""

    name: ClassVar[str] = "digits-classwise"
    description: ClassVar[str] = ("scikit-learn digits; forget every training image of class 3 (class-wise "
                                  "forgetting). The model must stop recognising 3s, as if it never saw one.")

    def forget_selector(self) -> dict[str, Any]:
        """Not a source: see :meth:`forget_ids`."""
        return {}

    def forget_ids(self, ws: Workspace, seed: int = 0) -> BitMap:
        """Every live training record labelled with the forgotten class."""
        ids = ws.ledger.record_ids(split="train")
        return BitMap(r.id for r in ws.ledger.records(ids)
                      if r.fields is not None and int(r.fields["y"][0]) == FORGOTTEN_CLASS)

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """Accuracy on held-out images of the forgotten class (a model that never saw one scores about 0)."""
        return [ProbeSpec("forgotten_class_accuracy", "group",
                          "accuracy on held-out images of the forgotten class, in percent",
                          {"attribute": "label", "value": str(FORGOTTEN_CLASS), "base_rate": 0.0})]


@SCENARIOS.register("digits-backdoor")
class DigitsBackdoor(_Digits):
    """Digits where contributor 07's images carry a trigger patch and are all labelled 0 (a backdoor)."""

    name: ClassVar[str] = "digits-backdoor"
    description: ClassVar[str] = ("scikit-learn digits dealt to 20 contributors; contributor-07 poisons theirs with "
                                  "a 2x2 corner trigger relabelled to 0. Remove the backdoor.")
    purpose: ClassVar[str] = "poison"

    def _transform(self, x: np.ndarray, y: int, contributor: int) -> tuple[np.ndarray, int]:
        if contributor == self.withdrawn:
            return add_trigger(x), TARGET
        return x, y

    def recipe(self) -> Recipe:
        """The digits MLP, keeping 10 checkpoints so that `disgorge attribute` can trace the backdoor."""
        recipe = default_recipe(self.name)
        return replace(recipe, train=replace(recipe.train, checkpoints=10))

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """The attack success rate on triggered held-out images."""
        return [backdoor_probe(sources, lambda f: {**f, "x": add_trigger(f["x"])}, TARGET,
                               f"share of triggered test images (true class not {TARGET}) classified as {TARGET}, "
                               "in percent")]
