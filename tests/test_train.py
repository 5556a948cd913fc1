"""Recipes, reproducible training and the immutable model store."""

from __future__ import annotations

import stat

import pytest
import yaml

from disgorge import Recipe, train
from disgorge.errors import DisgorgeError, IntegrityError
from disgorge.scenarios import get_scenario
from disgorge.spec import RecipeError
from disgorge.tasks import check_recipe


def test_recipe_round_trips_through_toml():
    """A recipe written to TOML reads back equal, with a stable hash."""
    r = get_scenario("digits-backdoor").recipe()
    again = Recipe.from_toml(r.to_toml())
    assert again == r and again.sha256 == r.sha256
    assert Recipe.from_toml(r.to_toml().replace("epochs = 30", "epochs = 31")).sha256 != r.sha256


@pytest.mark.parametrize(("text", "message"), [
    ("name = 'x'\n[train\nlr = 1", "not valid TOML"),
    ("name = 'x'\n[train]\nlrr = 0.1", "unknown key"),
    ("name = 'x'\n[train]\nlr = -1", "train.lr must be"),
    ("name = 'x'\n[train]\noptimizer = 'rmsprop'", "optimizer must be one of"),
    ("name = 'x'\ntask = 'regression'", "unknown task"),
    ("name = 'x'\nseed = -3", "seed"),
    ("[train]\nlr = 0.1", "non-empty `name`"),
    ("name = 'x'\ncolour = 'blue'", "unknown key"),
    ("name = 'x'\n[model]\nfamily = 'resnet'", "unknown model family 'resnet'"),
    ("name = 'x'\n[model]\nfamily = 'mlp'\nwidth = 3", "has no parameter.*width"),
    ("name = 'x'\n[model]\nfamily = 'mlp'\nhidden = [0]", "hidden must be a list of positive integers"),
    ("name = 'x'\ntask = 'causal_lm'\n[model]\nfamily = 'mlp'", "unknown language-model family 'mlp'"),
])
def test_malformed_recipes_are_refused_with_a_reason(text, message):
    """Every malformed recipe gives a RecipeError naming the problem, from reading it (structure) or from
    checking it against the registries (task, model family and parameters) before anything is built."""
    with pytest.raises(RecipeError, match=message):
        check_recipe(Recipe.from_toml(text))


def test_missing_recipe_file(tmp_path):
    """A recipe path that does not exist is named."""
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.load(tmp_path / "nope.toml")


def test_training_is_bit_identical_and_writes_an_immutable_model(backdoor_ws, trained_id):
    """The same recipe twice gives the same weights sha256; files are read-only; the card lists sources."""
    first = backdoor_ws.ledger.model(trained_id)
    second = train(backdoor_ws, get_scenario("digits-backdoor").recipe())
    assert second.id != first.id
    assert second.weights_sha256 == first.weights_sha256
    assert second.records == first.records and len(first.records) == 1437
    folder = backdoor_ws.model_dir(second.id)
    kept = second.info["checkpoints"]["files"]  # the scenario's recipe keeps checkpoints for attribution
    assert kept == first.info["checkpoints"]["files"] and len(kept) == 10  # bit-identical, like the weights
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "recipe.toml", "config.json",
                                                  "README.md", "records.roaring", *kept}
    # the permission bits themselves: root may open any file for writing, so os.access would prove nothing
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o222 == 0 for p in folder.iterdir())
    text = (folder / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["license"] == "cc-by-4.0"
    assert len(front["datasets"]) == 20
    assert {s["license"] for s in front["disgorge"]["sources"]} == {"CC-BY-4.0"}
    assert sum(s["records"] for s in front["disgorge"]["sources"]) == 1437
    assert front["disgorge"]["weights_sha256"] == second.weights_sha256
    assert Recipe.load(folder / "recipe.toml") == get_scenario("digits-backdoor").recipe()


def test_trained_model_fits_the_data(backdoor_ws, trained_id):
    """The default digits MLP memorises its training set and generalises."""
    from disgorge.evaluate import accuracy

    model, row, task = backdoor_ws.load_model(trained_id)
    train_acc = accuracy(task.evaluate(model, backdoor_ws.dataset(task, row.records))["correct"])
    test_acc = accuracy(task.evaluate(model, backdoor_ws.dataset(task, backdoor_ws.test_ids()))["correct"])
    assert train_acc > 99.0
    assert test_acc > 95.0


def test_tampered_weights_are_detected(backdoor_ws, trained_id):
    """A flipped byte in the weights file makes loading fail with an integrity error."""
    path = backdoor_ws.model_dir(trained_id) / "model.safetensors"
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        backdoor_ws.load_model(trained_id)


def test_recipe_selecting_nothing_is_refused(backdoor_ws):
    """A recipe whose data selector matches no record does not write a model."""
    recipe = Recipe.from_toml("name = 'x'\n[data]\nsources = ['digits-heldout']\n")
    before = len(backdoor_ws.ledger.models())
    with pytest.raises(DisgorgeError, match="selects no"):
        train(backdoor_ws, recipe)
    assert len(backdoor_ws.ledger.models()) == before


def test_cnn_family_trains_on_images(backdoor_ws):
    """The small CNN builds for 8x8 images and learns them."""
    from disgorge.evaluate import accuracy

    recipe = Recipe.from_toml("name = 'cnn'\n[model]\nfamily = 'cnn'\nchannels = [8]\nhidden = 32\n"
                              "[train]\nepochs = 8\nbatch_size = 64\nlr = 0.003\n")
    row = train(backdoor_ws, recipe)
    model, _, task = backdoor_ws.load_model(row.id)
    assert accuracy(task.evaluate(model, backdoor_ws.dataset(task, backdoor_ws.test_ids()))["correct"]) > 80


def test_unknown_model_parameter_is_refused(backdoor_ws):
    """Model parameters are checked against the family's config."""
    with pytest.raises(DisgorgeError, match="no parameter"):
        train(backdoor_ws, Recipe.from_toml("name = 'x'\n[model]\nfamily = 'mlp'\nwidth = 3\n"))
