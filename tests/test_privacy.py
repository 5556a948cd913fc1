"""Differentially private training (a recipe's ``[privacy]`` table, DP-SGD through opacus): the epsilon spent is
recorded in the ledger, the card and certificates; training stays bit-identical; unsupported networks are refused."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from disgorge import forget, train
from disgorge.errors import DisgorgeError, InvalidRequest
from disgorge.models import store
from disgorge.models.families import Family
from disgorge.models.registry import MODELS
from disgorge.scenarios import get_scenario
from disgorge.spec import ModelSpec, PrivacySpec, Recipe, RecipeError, TrainSpec
from disgorge.tasks import get_task
from disgorge.training.privacy import PrivacyUnsupported
from disgorge.training.trainer import fit_recipe

pytest.importorskip("opacus")


def dp_recipe(epsilon: float = 4.0, *, epochs: int = 2, batch_size: int = 64, seed: int = 0) -> Recipe:
    """The digits-backdoor recipe, trained briefly with differential privacy."""
    base = get_scenario("digits-backdoor").recipe()
    return base.replace(name="digits-dp", seed=seed, privacy=PrivacySpec(epsilon=epsilon),
                        train=TrainSpec(optimizer="adam", lr=0.01, batch_size=batch_size, epochs=epochs))


def _digits(ws, n: int | None = None):
    """The workspace's training records as a classification dataset (the first ``n``), with their data facts."""
    task = get_task("classification")
    ids = sorted(ws.training_ids(dp_recipe()))[:n]
    data = ws.dataset(task, ids)
    return task, data, task.data_info(data)


def test_dp_recipe_trains_and_records_the_epsilon_spent(backdoor_ws):
    """The accountant's epsilon is within the target, the noise is real, and the card, ledger and reloaded model
    agree; the saved weights are the plain network's."""
    recipe = dp_recipe(4.0)
    row = train(backdoor_ws, recipe)
    p = row.info["privacy"]
    assert 0 < p["epsilon"] <= 4.0 + 0.01 and p["target_epsilon"] == 4.0
    assert p["delta"] == 1e-5 and p["max_grad_norm"] == 1.0 and p["accountant"] == "rdp"
    assert p["noise_multiplier"] > 0.3
    n = len(backdoor_ws.training_ids(recipe))
    assert p["sample_rate"] == round(1 / math.ceil(n / 64), 6)
    assert row.info["fit"]["steps"] == 2 * math.ceil(n / 64) and row.info["fit"]["epochs"] == 2
    assert backdoor_ws.ledger.model(row.id).info["privacy"] == p
    assert row.info["accuracy"]["train"] > 50  # noisy, but it learned (chance is 10%)
    card = (backdoor_ws.model_dir(row.id) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["disgorge"]["privacy"] == p and "differential-privacy" in front["tags"]
    assert "## Differential privacy" in card and f"epsilon = {p['epsilon']:g}" in card
    assert f"target {p['target_epsilon']:g}" in card and f"noise of {p['noise_multiplier']:g}" in card
    model, _, _ = backdoor_ws.load_model(row.id)  # plain keys: the state dict loads into the family's network
    assert not any(k.startswith("_module") for k in model.state_dict())
    assert not any(hasattr(q, "grad_sample") or hasattr(q, "summed_grad") for q in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_dp_training_is_bit_identical_and_seeded(backdoor_ws):
    """The same DP recipe twice gives the same weights sha256 (Poisson sampling and noise are seeded); another seed,
    other weights."""
    task, data, info = _digits(backdoor_ws, 256)

    def digest(recipe: Recipe) -> str:
        model, _ = fit_recipe(task, recipe, data, info)
        return store.serialize_weights(model)[1]

    first = digest(dp_recipe(epochs=1))
    assert digest(dp_recipe(epochs=1)) == first
    assert digest(dp_recipe(epochs=1, seed=1)) != first


def test_lower_epsilon_means_more_noise(backdoor_ws):
    """A smaller budget buys a larger noise multiplier, and each run spends no more than its target."""
    task, data, info = _digits(backdoor_ws, 256)
    spent = {}
    for eps in (1.0, 8.0):
        _, result = fit_recipe(task, dp_recipe(eps, epochs=1, batch_size=32), data, info)
        spent[eps] = result.info["privacy"]
        assert 0 < spent[eps]["epsilon"] <= eps + 0.01
    assert spent[1.0]["noise_multiplier"] > spent[8.0]["noise_multiplier"] > 0


def test_empty_poisson_batches_take_a_noise_step_not_a_rollback(backdoor_ws):
    """batch_size 1 over 40 records draws an empty batch about a third of the time: each still counts as a step
    (loss exactly 0), none is taken for divergence, and the weights stay finite."""
    task, data, info = _digits(backdoor_ws, 40)
    model, result = fit_recipe(task, dp_recipe(8.0, epochs=2, batch_size=1), data, info)
    assert result.rollbacks == 0 and result.steps == 80 and result.stopped == "done"
    assert result.losses.count(0.0) >= 5  # the empty draws (a real cross-entropy is never exactly 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@dataclass(frozen=True)
class _BatchNormConfig:
    """An MLP with batch normalisation, which DP-SGD cannot train (it mixes the examples of a batch)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        width = math.prod(input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.BatchNorm1d(16), nn.ReLU(),
                             nn.Linear(16, num_classes))


def test_unsupported_network_is_refused_in_one_line(backdoor_ws, monkeypatch):
    """A family with BatchNorm is refused with one line naming the layer and the fix; no model is recorded."""
    monkeypatch.setitem(MODELS._items, "bn-mlp", Family("bn-mlp", _BatchNormConfig, "test only"))
    before = [m.id for m in backdoor_ws.ledger.models()]
    folders = sorted(p.name for p in backdoor_ws.models_dir.iterdir())
    recipe = dp_recipe(epochs=1).replace(model=ModelSpec(family="bn-mlp"))
    with pytest.raises(PrivacyUnsupported) as info:
        train(backdoor_ws, recipe)
    message = str(info.value)
    assert isinstance(info.value, InvalidRequest) and "\n" not in message
    assert "BatchNorm1d" in message and "GroupNorm" in message and "mlp" in message
    assert [m.id for m in backdoor_ws.ledger.models()] == before
    assert sorted(p.name for p in backdoor_ws.models_dir.iterdir()) == folders


def test_missing_opacus_names_the_extra(backdoor_ws, monkeypatch):
    """Without opacus a DP recipe fails in one line that says how to install it."""
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(DisgorgeError, match=r"pip install 'disgorge\[dp\]'"):
        train(backdoor_ws, dp_recipe(epochs=1))


@pytest.mark.parametrize("table, wrong", [
    ("epsilon = 0", "privacy.epsilon"), ("epsilon = -1.0", "privacy.epsilon"), ("delta = 1", "privacy.delta"),
    ("delta = 0.0", "privacy.delta"), ("max_grad_norm = -1", "privacy.max_grad_norm"),
    ("epsilon = nan", "privacy.epsilon"), ("noise = 1.0", "unknown key"),
])
def test_bad_privacy_values_are_recipe_errors(table: str, wrong: str):
    """Each bad [privacy] value is refused by name when the recipe is read."""
    with pytest.raises(RecipeError, match=wrong):
        Recipe.from_toml(f'name = "x"\n[privacy]\n{table}\n')


def test_privacy_table_round_trips_and_leaves_other_recipes_alone():
    """A [privacy] table survives the canonical TOML; a recipe without one keeps its text (and sha256)."""
    recipe = dp_recipe(3.0)
    again = Recipe.from_toml(recipe.to_toml())
    assert again.privacy == PrivacySpec(epsilon=3.0) and again.sha256 == recipe.sha256
    assert "privacy" not in get_scenario("digits-backdoor").recipe().to_toml()


def test_impossible_budget_is_a_one_line_error(backdoor_ws):
    """An epsilon no amount of noise can meet is refused before training."""
    task, data, info = _digits(backdoor_ws, 64)
    with pytest.raises(InvalidRequest, match="cannot be met") as caught:
        fit_recipe(task, dp_recipe(1e-9, epochs=50, batch_size=1), data, info)
    assert "\n" not in str(caught.value)


def test_certificate_of_a_dp_model_carries_its_privacy(backdoor_ws):
    """Unlearning a DP model: the certificate names the original's privacy budget (JSON and Markdown), and the
    exact reference is itself DP-trained."""
    row = train(backdoor_ws, dp_recipe(8.0, epochs=2))
    result = forget(backdoor_ws, sources=["contributor-07"], model=row.id, method="finetune",
                    options={"epochs": 1}, verify="exact", accept_failed=True, erase=False)
    (cert,) = result.certificates
    assert cert["privacy"] == row.info["privacy"]
    reference = backdoor_ws.ledger.model(cert["models"]["reference"]["id"])
    assert reference.info["privacy"]["target_epsilon"] == 8.0
    (child,) = result.children
    markdown = Path(result.paths[child.id]["markdown"]).read_text()
    assert f"Differential privacy: the original was trained with DP-SGD at epsilon {row.info['privacy']['epsilon']:g}" \
        in markdown
    assert "privacy" not in backdoor_ws.ledger.model(child.id).info  # the unlearned model makes no DP claim


def test_gpt2_trains_privately_and_reloads():
    """opacus trains the causal_lm task's GPT-2 (Conv1D layers, tied embeddings): the position embedding gets one
    position row per example, the run is bit-identical, and the weights load into a freshly built model with no hook
    left behind."""
    pytest.importorskip("transformers")
    from disgorge.ledger import Record

    scenario = get_scenario("people-mini")
    records = [Record(i, source.name, "h", new.fields, new.attributes, new.split, "active")
               for i, (source, new) in enumerate(((s, r) for s in scenario.sources() for r in s.records), 1)
               if new.split == "train"][:48]
    task, base = get_task("causal_lm"), scenario.recipe()
    recipe = base.replace(privacy=PrivacySpec(epsilon=8.0),
                          train=TrainSpec(optimizer="adamw", lr=0.003, batch_size=16, epochs=1))
    data = task.dataset(records)
    info = task.data_info(data, recipe.model)
    model, result = fit_recipe(task, recipe, data, info)
    again, _ = fit_recipe(task, recipe, data, info)
    assert store.serialize_weights(model)[1] == store.serialize_weights(again)[1]
    assert 0 < result.info["privacy"]["epsilon"] <= 8.01 and result.steps == 3
    fresh = task.build_model(recipe.model, info)
    fresh.load_state_dict(model.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
