"""Checks at the bundled scenarios' full size, kept out of `make test` (minutes each): `make test-all` runs them."""

from __future__ import annotations

import pytest

from disgorge import Workspace, forget, ingest_scenario, train
from disgorge.scenarios import get_scenario

pytestmark = pytest.mark.slow


def test_mnist_retrain_through_forget_is_the_reference_bit_for_bit(tmp_path):
    """On the 36,000-record MNIST scenario, `forget --method retrain` gives exactly the model verification retrains
    as its reference (same sha256), and that model no longer recognises the forgotten images as members."""
    case = get_scenario("mnist")
    with Workspace.init(tmp_path / "ws") as ws:
        ingest_scenario(ws, "mnist")
        trained = train(ws, case.recipe())
        ids = case.forget_ids(ws)
        result = forget(ws, records=sorted(ids), method="retrain", accept_failed=True)
        cert = result.certificates[0]
        assert cert["models"]["child"]["sha256"] == cert["models"]["reference"]["sha256"]
        assert cert["models"]["parent"]["id"] == trained.id and cert["records"]["forgotten"] == len(ids) == 3600
        original, unlearned = cert["metrics"]["original"], cert["metrics"]["unlearned"]
        assert original["ua"] < 1 < unlearned["ua"]
        assert unlearned["mia_auc"] < original["mia_auc"]
        assert cert["avg_gap"] == 0
