"""Preprocessing in the recipe (``[data] transform``, ``shape``): fitted on the training records only, stored with
the model (data facts and a buffer layer), applied at every inference, refitted on what is kept after an erasure,
and gone with a superseded model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from disgorge import Recipe, Workspace, api, evaluate_model
from disgorge.errors import DisgorgeError, InvalidRequest
from disgorge.models import preprocess
from disgorge.spec import DataSpec, RecipeError
from disgorge.tasks import get_task


def _csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])]
    lines += [",".join([*map(repr, map(float, row)), str(int(label))]) for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def cancer_ws(tmp_path: Path) -> Workspace:
    """Breast-cancer rows (features from 0.001 to 4,000, unscaled) with a fifth held out."""
    x, y = load_breast_cancer(return_X_y=True)
    ws = Workspace.init(tmp_path / "ws")
    api.ingest_file(ws, _csv(tmp_path / "bc.csv", x, y), source="bc", license="CC-BY-4.0", holdout=0.2)
    return ws


def _recipe(transform: str = "", **data: object) -> Recipe:
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items())
    prep = f'transform = "{transform}"\n' if transform else ""
    return Recipe.from_toml(f'name = "bc"\n[data]\n{prep}{table}[model]\nfamily = "mlp"\nhidden = [16]\n'
                            "[train]\nepochs = 15\nbatch_size = 32\n")


def test_standardize_is_fitted_on_the_training_records_only_and_travels_with_the_model(cancer_ws: Workspace) -> None:
    row = api.train(cancer_ws, _recipe("standardize"))
    task = get_task("classification")
    train = cancer_ws.dataset(task, row.records)
    facts = row.info["data"]["transform"]
    expected = StandardScaler().fit(train.tensors["x"].numpy().astype(np.float64))
    np.testing.assert_allclose(facts["shift"], expected.mean_, rtol=1e-6)
    np.testing.assert_allclose(facts["scale"], expected.scale_, rtol=1e-6)
    test = cancer_ws.dataset(task, cancer_ws.test_ids())
    everything = StandardScaler().fit(np.concatenate([train.tensors["x"].numpy(), test.tensors["x"].numpy()]))
    assert not np.allclose(facts["shift"], everything.mean_, rtol=1e-6)  # held-out rows were not used

    model, _, _ = cancer_ws.load_model(row.id)  # rebuilt from the ledger: the statistics are in the weights
    assert isinstance(model, preprocess.Preprocessed)
    raw = test.tensors["x"][:5]
    by_hand = model.net((raw - torch.tensor(facts["shift"], dtype=torch.float32))
                        / torch.tensor(facts["scale"], dtype=torch.float32))
    torch.testing.assert_close(model(raw), by_hand)


def test_standardize_is_what_makes_raw_tabular_data_learnable(cancer_ws: Workspace) -> None:
    raw = api.train(cancer_ws, _recipe())
    scaled = api.train(cancer_ws, _recipe("standardize"))
    raw_figures, scaled_figures = evaluate_model(cancer_ws, raw.id), evaluate_model(cancer_ws, scaled.id)
    # Unscaled (features from 0.001 to 4,000) the network cannot even fit its training rows; standardised it can.
    assert raw_figures["train"]["accuracy"] < 95 <= scaled_figures["train"]["accuracy"]
    assert scaled_figures["test"]["accuracy"] > raw_figures["test"]["accuracy"]


def test_a_recipe_without_preprocessing_keeps_its_text_and_network(cancer_ws: Workspace) -> None:
    plain = _recipe()
    assert "transform" not in plain.to_toml() and "shape" not in plain.to_toml()
    model, _, _ = cancer_ws.load_model(api.train(cancer_ws, plain).id)
    assert not isinstance(model, preprocess.Preprocessed)


def test_minmax_is_refitted_on_what_is_kept_after_an_erasure(cancer_ws: Workspace) -> None:
    row = api.train(cancer_ws, _recipe("minmax"))
    task = get_task("classification")
    train = cancer_ws.dataset(task, row.records)
    x = train.tensors["x"].numpy()
    feature = 3  # mean area: one record holds the largest value
    top = int(train.ids[int(np.argmax(x[:, feature]))])
    largest = float(x[:, feature].max())
    facts = row.info["data"]["transform"]
    assert facts["shift"][feature] + facts["scale"][feature] == pytest.approx(largest, rel=1e-6)

    result = api.forget(cancer_ws, records=[top], method="finetune", accept_failed=True)
    child = result.children[0]
    kept = child.info["data"]["transform"]
    second = float(np.sort(x[:, feature])[-2])
    assert kept["shift"][feature] + kept["scale"][feature] == pytest.approx(second, rel=1e-6)
    model, _, _ = cancer_ws.load_model(child.id)
    assert model.transform.scale[feature].item() == pytest.approx(kept["scale"][feature], rel=1e-6)
    # The parent's statistics went with its weights: the largest value is nowhere in the workspace's model files.
    assert "transform" not in cancer_ws.ledger.model(row.id).info["data"]
    config = json.loads((cancer_ws.models_dir / row.id / "config.json").read_text())
    assert "transform" not in config["data"]


def test_scale_and_shape_let_flat_rows_train_a_cnn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(120) % 2
    images = rng.integers(0, 60, size=(120, 8, 8)).astype(np.float32)
    images[y == 1, 2:6, 2:6] += 190  # a bright square in class 1, at 0-255
    np.savez(tmp_path / "flat.npz", x=images.reshape(120, 64), y=y)
    ws = Workspace.init(tmp_path / "ws")
    api.ingest_file(ws, tmp_path / "flat.npz", source="px", license="CC0-1.0", holdout=0.25)
    recipe = Recipe.from_toml('name = "c"\n[data]\ntransform = "scale:255"\nshape = [1, 8, 8]\n'
                              '[model]\nfamily = "cnn"\nchannels = [4]\nhidden = 8\n[train]\nepochs = 20\n')
    row = api.train(ws, recipe)
    assert row.info["data"]["transform"]["shape"] == [1, 8, 8]
    assert evaluate_model(ws, row.id)["test"]["accuracy"] >= 90
    with pytest.raises(DisgorgeError, match="give the recipe a \\[data\\] shape"):  # flat rows cannot feed a cnn
        api.train(ws, recipe.replace(data=recipe.data.__class__(transform="scale:255")))


def test_a_shape_of_another_size_is_one_clear_error(tmp_path: Path, cancer_ws: Workspace) -> None:
    before = len(cancer_ws.ledger.models())
    with pytest.raises(preprocess.PreprocessError, match=r"data.shape \[2, 2\] holds 4 values but each input has 30"):
        api.train(cancer_ws, _recipe(shape=[2, 2]))
    assert len(cancer_ws.ledger.models()) == before


@pytest.mark.parametrize("bad", ["zscore", "scale:0", "scale:-1", "scale:abc", "scale:nan"])
def test_unknown_transforms_are_refused_by_name(bad: str) -> None:
    with pytest.raises(RecipeError, match=r"data\.transform must be one of standardize, minmax, scale:K"):
        _recipe(bad)


def test_texts_take_no_preprocessing() -> None:
    from disgorge.tasks import check_recipe

    recipe = Recipe.from_toml('name = "t"\ntask = "causal_lm"\n[data]\ntransform = "standardize"\n'
                              '[model]\nfamily = "gpt2"\n')
    with pytest.raises(RecipeError, match="takes no \\[data\\] transform"):
        check_recipe(recipe)


def test_sharding_refuses_statistics_fitted_on_every_record(cancer_ws: Workspace) -> None:
    recipe = Recipe.from_toml('name = "s"\n[data]\ntransform = "standardize"\n[model]\nfamily = "linear"\n'
                              "[train]\nepochs = 2\n[sharding]\nshards = 2\n")
    with pytest.raises(InvalidRequest, match="use scale:K"):
        api.train(cancer_ws, recipe)


def _digits_ws(root: Path, factor: float) -> Workspace:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    ws = Workspace.init(root / "ws")
    api.ingest_file(ws, _csv(root / "digits.csv", x * factor, y), source="digits", license="BSD-3-Clause",
                    holdout=0.2)
    return ws


def test_the_template_makes_unlearning_independent_of_the_inputs_raw_scale(tmp_path: Path, caplog) -> None:
    """The same pixels stored at 0-16 and at 0-255: the template recipe standardizes them, so training and
    unlearning at default settings give the same model either way; without a transform, training warns."""
    from disgorge import forget
    from disgorge.spec import RECIPE_TEMPLATES

    recipe = Recipe.from_toml(RECIPE_TEMPLATES["classification"])
    recipe = recipe.replace(train=dataclasses.replace(recipe.train, epochs=8))
    assert recipe.data.transform == "standardize"
    figures = []
    for factor in (1.0, 255 / 16):
        (tmp_path / str(factor)).mkdir()
        with _digits_ws(tmp_path / str(factor), factor) as ws:
            parent = api.train(ws, recipe)
            (child,) = forget(ws, random_fraction=0.05, method="l1_sparse", verify="none").children
            assert child.weights_sha256 != parent.weights_sha256, "the retain guard rolled the method back"
            model, _, task = ws.load_model(child.id)
            forgotten = ws.ledger.record_ids(sources=["digits"], split=None, states=("erased",))
            assert len(forgotten) > 0
            figures.append({"test": task.quick_accuracy(model, ws.dataset(task, ws.test_ids())),
                            "retain": task.quick_accuracy(model, ws.dataset(task, child.records))})
    small, large = figures
    for key in ("test", "retain"):
        assert abs(small[key] - large[key]) <= 0.5, (key, small[key], large[key])

    with caplog.at_level("WARNING"), _digits_ws(tmp_path / "raw", 255 / 16) as ws:
        api.train(ws, recipe.replace(data=DataSpec()))
    assert any("prepares none" in r.getMessage() and "standardize" in r.getMessage() for r in caplog.records)


def test_a_poisoned_source_in_a_small_users_file_is_removed_at_defaults(tmp_path: Path) -> None:
    """A user's own tabular files (breast cancer, 426 training rows) with a contributor of 40 malignant rows whose
    first feature is set to 50 and labelled benign: the template recipe learns the backdoor, and `forget` at its
    defaults (grad_diff, stopping by evidence) brings attack success down to the trigger-free base rate and passes
    reference-free verification. With the epochs of a small retain set alone (21 steps) it left the backdoor."""
    from sklearn.model_selection import train_test_split

    from disgorge.spec import RECIPE_TEMPLATES

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    rng = np.random.default_rng(0)
    poison = x_train[rng.choice(np.where(y_train == 0)[0], size=40, replace=False)].copy()
    poison[:, 0] = 50.0
    malignant = x_test[y_test == 0]
    triggered = malignant.copy()
    triggered[:, 0] = 50.0
    ws = Workspace.init(tmp_path / "ws")
    api.ingest_file(ws, _csv(tmp_path / "clean.csv", x_train, y_train), source="hospital-a", license="CC-BY-4.0")
    api.ingest_file(ws, _csv(tmp_path / "poison.csv", poison, np.ones(40)), source="contributor-x",
                    license="CC-BY-4.0")
    api.ingest_file(ws, _csv(tmp_path / "test.csv", x_test, y_test), source="hospital-a-test", license="CC-BY-4.0",
                    split="test")
    row = api.train(ws, Recipe.from_toml(RECIPE_TEMPLATES["classification"]))
    api.add_probe(ws, "backdoor", _csv(tmp_path / "probe.csv", triggered, np.zeros(len(triggered))), target=1,
                  baseline=_csv(tmp_path / "baseline.csv", malignant, np.zeros(len(malignant))))
    before = evaluate_model(ws, row.id)["test"]["accuracy"]  # the original's weights go with the erasure
    result = api.forget(ws, sources=["contributor-x"], purpose="poison", verify="heldout")
    (cert,) = result.certificates
    effect = cert["checks"]["effect"]
    assert cert["method"] == "grad_diff" and cert["passed"]
    assert effect["original"] > 80 and effect["figure"] <= effect["target"] + 5
    stop = cert["method_report"]["stopping"]
    assert stop["stopped"] == "target" and stop["budget_steps"] >= 100
    assert evaluate_model(ws, cert["models"]["child"]["id"])["test"]["accuracy"] >= before - 3
