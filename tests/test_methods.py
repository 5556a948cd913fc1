"""The method registry and each method's behaviour on the backdoor (forget effect down, utility held)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import poisoner_request
from disgorge import METHODS, get_method
from disgorge.errors import InvalidRequest, NotFound
from disgorge.evaluate import accuracy
from disgorge.methods import ConfigError, UnlearnRequest
from disgorge.scenarios import get_scenario
from disgorge.spec import Recipe


@pytest.fixture
def problem(backdoor_ws, trained_id):
    """The trained backdoored model and an UnlearnRequest for the poisoning contributor."""
    return (*poisoner_request(backdoor_ws, trained_id), backdoor_ws)


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


@pytest.mark.parametrize(("name", "options", "message"), [
    ("simnpo", {"delta": "abc"}, "option delta must be a number"),
    ("grad_diff", {"max_steps": 1.5}, "option max_steps must be an integer"),
    ("grad_diff", {"max_seconds": "soon"}, "option max_seconds must be a number"),
    ("grad_diff", {"lr": float("nan")}, "option lr must be a number \\(finite\\)"),
    ("grad_diff", {"epochs": True}, "option epochs must be an integer"),
    ("grad_diff", {"forget_span": 3}, "option forget_span must be a string"),
    ("idk", {"loss": "kto"}, "option loss must be one of nll, dpo"),
    ("ssd", {"max_steps": 10}, "unknown option\\(s\\) max_steps"),
    ("newton", {"forget_span": "key"}, "unknown option\\(s\\) forget_span"),
    ("retrain", {"max_retain_drop": 3.0}, "unknown option\\(s\\) max_retain_drop"),
])
def test_options_are_checked_against_their_declared_types_and_family(name, options, message):
    """Every option is checked against its field's declared type (not only those with a range), and a method takes
    only its family's options: budgets for loop methods, the guard for guarded ones, spans and LoRA for fine-tuning."""
    with pytest.raises(ConfigError, match=message):
        get_method(name, **options)


def test_float_options_accept_integers_as_floats():
    """A float option given as an integer (as TOML and the command line read `lr=1`) is stored as a float."""
    cfg = get_method("grad_diff", lr=1, max_seconds=2).config
    assert isinstance(cfg.lr, float) and isinstance(cfg.max_seconds, float)


def _method_class(name: str, config: type, **members):
    """A method class for the registration tests (not registered)."""
    from disgorge.methods import Method

    body = {"name": name, "family": "fine-tune", "summary": name, "paper": "none", "Config": config,
            "_unlearn": lambda self, model, request: model, **members}
    return type(name.title(), (Method,), body)


def _list_config() -> type:
    from disgorge.methods import FineTuneConfig, option

    @dataclasses.dataclass
    class ListConfig(FineTuneConfig):
        layers: tuple[int, ...] = option((1,), "a list option")

    return ListConfig


@pytest.mark.parametrize(("name", "config", "members", "message"), [
    ("sneaky", "fine-tune", {"check": lambda self, request: None}, "overrides check"),
    ("untyped", dict, {}, "Config must be a dataclass extending MethodConfig"),
    ("listy", "list", {}, "option\\(s\\) layers must be int, float, str or bool"),
])
def test_method_contract_is_enforced_at_registration(name, config, members, message):
    """A method class that overrides the shared check, whose Config is not a MethodConfig dataclass, or whose
    options are of a type options cannot be checked against, is refused when it registers."""
    from disgorge.methods import FineTuneConfig, register

    config = {"fine-tune": FineTuneConfig, "list": _list_config()}.get(config, config)
    with pytest.raises(TypeError, match=message):
        register(_method_class(name, config, **members))
    assert name not in METHODS


def test_a_method_file_cannot_vanish(tmp_path, monkeypatch):
    """Method files are discovered: a module defining an unregistered method class, or none at all, stops the
    import with an error naming it, instead of silently missing from the registry."""
    import sys

    from disgorge.methods import discover

    package = tmp_path / "fake_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_helpers.py").write_text("X = 1\n")  # helpers start with an underscore and are skipped
    (package / "forgotten.py").write_text(
        "from disgorge.methods import FineTuneConfig, Method\n\n\n"
        "class Forgotten(Method):\n"
        "    name, family, summary, paper = 'forgotten', 'fine-tune', 'never registered', 'none'\n"
        "    Config = FineTuneConfig\n\n"
        "    def _unlearn(self, model, request):\n"
        "        return model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=r"Forgotten in fake_methods\.forgotten is not registered"):
        discover("fake_methods", [str(package)])
    (package / "forgotten.py").write_text("VALUE = 2\n")
    sys.modules.pop("fake_methods.forgotten", None)
    with pytest.raises(ImportError, match=r"fake_methods\.forgotten defines no method"):
        discover("fake_methods", [str(package)])


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
    from disgorge.training.trainer import fit_recipe

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
    from disgorge.training.loop import NonFiniteLoss, fit

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
