"""The entry point for users' own models: `disgorge.unlearn` on a network and plain torch data, no workspace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import disgorge
from disgorge.errors import DisgorgeError, InvalidRequest
from disgorge.methods import ConfigError


@pytest.fixture(scope="module")
def users_model():
    """A user's MLP trained by their own loop on synthetic data, 40 of whose records carry a trigger feature
    relabelled to class 0 (the records to forget)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    y = (x[:, :3].argmax(1)).long()
    xf, yf = x[:40].clone(), torch.zeros(40, dtype=torch.long)
    xf[:, 7] = 6.0
    xr, yr = x[40:], y[40:]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(torch.cat([xr, xf]), torch.cat([yr, yf])), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    for _ in range(40):
        for a, b in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(a), b).backward()
            optimizer.step()
    return model.eval(), optimizer, (xf, yf), (xr, yr)


def accuracy(model, data):
    x, y = data
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean() * 100)


def test_unlearn_a_users_model_from_their_loaders(users_model):
    """The user's model, optimiser and DataLoaders go in; a new model comes out that no longer fits the forget
    records while the retain records hold, and the user's model is left as it was."""
    model, optimizer, forget, retain = users_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert accuracy(model, forget) == 100
    method = disgorge.get_method("npo", lr=1e-2)
    new = disgorge.unlearn(model, forget=DataLoader(TensorDataset(*forget), batch_size=32),
                           retain=DataLoader(TensorDataset(*retain), batch_size=32), optimizer=optimizer,
                           method=method)
    assert new is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert accuracy(new, forget) <= 80
    assert accuracy(new, retain) >= accuracy(model, retain) - 8
    assert method.fit_result_.steps > 0 and method.seconds_ > 0
    # no held-out data, so no stopping rule: the whole budget runs, and the report says so
    fit = method.fit_result_
    assert method.report_ == {"stopping": {"stopped": "done", "steps": fit.steps, "epochs": fit.epochs,
                                           "budget_steps": fit.steps, "why": "ran its whole budget of epochs",
                                           "returns": 0, "kept_step": None}}


def test_tensor_pairs_and_loaders_give_the_same_model(users_model):
    """Data given as (x, y) tensors or as an unshuffled DataLoader of them is the same data: bit-identical
    results for the same method, seed and batch size."""
    model, _, forget, retain = users_model
    a = disgorge.unlearn(model, forget=forget, retain=retain, method="grad_diff", batch_size=16, max_steps=20)
    b = disgorge.unlearn(model, forget=DataLoader(TensorDataset(*forget), batch_size=5),
                         retain=DataLoader(TensorDataset(*retain), batch_size=7), method="grad_diff",
                         batch_size=16, max_steps=20)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a[0].weight, model[0].weight)


def test_class_count_comes_from_the_model(users_model):
    """Random labelling draws wrong classes among the model's 3 outputs, though the forget set only holds class
    0: the class count is read from the model, not from the labels given."""
    model, _, forget, retain = users_model
    method = disgorge.get_method("random_label", max_steps=5)
    disgorge.unlearn(model, forget=forget, retain=retain, method=method)
    assert method.fit_result_.steps == 5


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"forget": ([[1.0]], [0.5]), "retain": ([[1.0]], [1])}, InvalidRequest, "labels must be one integer class"),
    ({"forget": torch.zeros(3, 8)}, InvalidRequest, "must be \\(inputs, labels\\)"),
    ({"lr": "fast"}, ConfigError, "option lr must be a number"),
    ({"epochs": 1.5}, ConfigError, "option epochs must be an integer"),
    ({"colour": 1}, ConfigError, "unknown option"),
    ({"optimizer": "rmsprop"}, DisgorgeError, "optimizer"),
])
def test_bad_input_is_refused_in_one_line(users_model, kwargs, error, message):
    """Data a task cannot read, ill-typed or unknown options and an optimiser methods cannot reuse are refused
    with a user-facing error before any work."""
    model, _, forget, retain = users_model
    args = {"forget": forget, "retain": retain, **kwargs}
    if args.get("optimizer") == "rmsprop":
        args["optimizer"] = torch.optim.RMSprop(model.parameters())
    with pytest.raises(error, match=message):
        disgorge.unlearn(model, **args)


def test_batch_size_overrides_a_given_train_spec(users_model):
    """A TrainSpec gives the optimiser settings; an explicit batch size still sets the batches (360 retain records
    in batches of 60: six steps per epoch)."""
    from disgorge.spec import TrainSpec

    model, _, forget, retain = users_model
    method = disgorge.get_method("finetune", epochs=1)
    disgorge.unlearn(model, forget=forget, retain=retain, method=method, optimizer=TrainSpec(lr=1e-3),
                     batch_size=60)
    assert method.fit_result_.steps == 6
