"""The method registry and each method's behaviour on the backdoor (forget effect down, utility held)."""

from __future__ import annotations

import pytest
import torch

from disgorge import METHODS, get_method
from disgorge.errors import InvalidRequest, NotFound
from disgorge.evaluate import accuracy
from disgorge.methods import ConfigError, UnlearnRequest
from disgorge.scenarios import get_scenario
from disgorge.spec import Recipe


@pytest.fixture
def problem(backdoor_ws, trained_id):
    """The trained backdoored model and an UnlearnRequest for the poisoning contributor."""
    model, row, task = backdoor_ws.load_model(trained_id)
    ids = backdoor_ws.select(sources=["contributor-07"])
    recipe = Recipe.from_toml(row.recipe)
    request = UnlearnRequest(task=task, forget=backdoor_ws.dataset(task, row.records & ids),
                             retain=backdoor_ws.dataset(task, row.records - ids), train=recipe.train,
                             data_info=row.info["data"], seed=recipe.seed)
    test = backdoor_ws.dataset(task, backdoor_ws.test_ids())
    return model, request, test, backdoor_ws


def _asr(model, request, test):
    return get_scenario("digits-backdoor").probes()[0].measure(model, request.task, test)


def test_registry_lists_methods_and_suggests_on_typos():
    """Methods are found by name; a typo names the close match."""
    assert {"retrain", "finetune", "gradient_ascent", "grad_diff"} <= set(METHODS.names())
    with pytest.raises(NotFound, match="did you mean gradient_ascent"):
        get_method("gradient_ascnt")


def test_config_is_validated_and_round_trips_toml():
    """Options are typed and range-checked; a config survives TOML."""
    m = get_method("grad_diff", lr=0.01, epochs=2)
    assert type(m.config).from_toml(m.config.to_toml()) == m.config
    with pytest.raises(ConfigError, match="lr must be > 0"):
        get_method("grad_diff", lr=-1.0)
    with pytest.raises(ConfigError, match="unknown option"):
        get_method("finetune", learning_rate=0.1)
    with pytest.raises(ConfigError, match="integer"):
        get_method("finetune", epochs=1.5)


@pytest.mark.parametrize("name", ["finetune", "gradient_ascent", "grad_diff"])
def test_method_lowers_backdoor_and_keeps_retain_accuracy(problem, name):
    """At default settings, each approximate method cuts the attack success rate and holds retain accuracy."""
    model, request, test, _ = problem
    before = _asr(model, request, test)
    ra_before = accuracy(request.task.evaluate(model, request.retain)["correct"])
    out = get_method(name).unlearn(model, request)
    after = _asr(out, request, test)
    ra_after = accuracy(request.task.evaluate(out, request.retain)["correct"])
    assert before > 90
    assert after < before - 30, f"{name}: attack success {before:.1f} -> {after:.1f}"
    assert ra_after >= 0.9 * ra_before


def test_unlearn_does_not_mutate_input_and_is_deterministic(problem):
    """The input model is untouched and the same seed gives the same weights."""
    model, request, _, _ = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = get_method("grad_diff", epochs=1).unlearn(model, request)
    b = get_method("grad_diff", epochs=1).unlearn(model, request)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not all(torch.equal(before[k], v) for k, v in a.state_dict().items())


def test_retrain_reproduces_training_without_the_forget_set(problem):
    """`retrain` re-initialises and trains exactly as the recipe would on the retain set."""
    from disgorge.train.trainer import fit_recipe

    model, request, test, ws = problem
    row = ws.ledger.models()[0]
    recipe = Recipe.from_toml(row.recipe)
    expected, _ = fit_recipe(request.task, recipe, request.retain, row.info["data"])
    out = get_method("retrain").unlearn(model, request)
    assert all(torch.equal(expected.state_dict()[k], v) for k, v in out.state_dict().items())
    assert _asr(out, request, test) < 5


def test_budget_stops_iterative_methods(problem):
    """--max-steps bounds the work a method does."""
    model, request, _, _ = problem
    m = get_method("finetune", max_steps=7)
    m.unlearn(model, request)
    assert m.fit_result_.steps == 7 and m.fit_result_.stopped == "max_steps"


def test_method_needing_data_it_lacks_is_refused(problem):
    """A method that needs a non-empty retain set refuses an empty one before running."""
    model, request, _, _ = problem
    empty = UnlearnRequest(task=request.task, forget=request.forget, retain=request.retain.subset([]),
                           train=request.train)
    with pytest.raises(InvalidRequest, match="needs retain data"):
        get_method("finetune").unlearn(model, empty)


def test_nonfinite_loss_is_rolled_back(problem):
    """A step with a non-finite loss is undone and the learning rate halved, instead of returning NaN weights."""
    from disgorge.train.loop import NonFiniteLoss, fit

    model, request, _, _ = problem
    calls = {"n": 0}

    def loss(m, batch):
        calls["n"] += 1
        value = request.task.per_example_loss(m, batch).mean()
        return value * float("nan") if calls["n"] == 3 else value

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = fit(model, request.loader("forget"), loss, opt, epochs=2)
    assert result.rollbacks == 1 and result.epochs == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(NonFiniteLoss):
        fit(model, request.loader("forget"), lambda m, b: request.task.per_example_loss(m, b).mean() * float("inf"),
            opt, epochs=1, max_rollbacks=2)
