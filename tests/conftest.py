"""Shared fixtures: a digits-backdoor workspace with one trained model, built once and copied per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("DISGORGE_PROGRESS", "0")

from disgorge import Workspace, ingest_scenario, train
from disgorge.scenarios import get_scenario


@pytest.fixture(scope="session")
def backdoor_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A closed workspace with digits-backdoor ingested and its default recipe trained (model id returned)."""
    root = tmp_path_factory.mktemp("template") / "ws"
    with Workspace.init(root) as ws:
        ingest_scenario(ws, "digits-backdoor")
        row = train(ws, get_scenario("digits-backdoor").recipe())
    return root, row.id


@pytest.fixture
def backdoor_ws(backdoor_template: tuple[Path, str], tmp_path: Path) -> Iterator[Workspace]:
    """A private copy of the template workspace, open."""
    src, _ = backdoor_template
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    ws = Workspace.open(dst)
    yield ws
    ws.close()


@pytest.fixture
def trained_id(backdoor_template: tuple[Path, str]) -> str:
    """Id of the model trained in the template workspace."""
    return backdoor_template[1]


@dataclass
class PeopleMini:
    """The people-mini scenario as datasets (no workspace), with the model its default recipe trains."""

    task: Any
    recipe: Any
    forget: Any
    retain: Any
    test: Any
    train: Any
    info: dict[str, Any]
    model: Any


@pytest.fixture(scope="session")
def people_mini() -> PeopleMini:
    """people-mini trained once per session with its default recipe (~8 s): it memorises every training person."""
    from disgorge.ledger import Record
    from disgorge.scenarios import get_scenario
    from disgorge.tasks import get_task
    from disgorge.training.trainer import fit_recipe

    scenario = get_scenario("people-mini")
    forget_sources = set(scenario.forget_selector()["sources"])
    records: dict[str, list[Record]] = {"forget": [], "retain": [], "test": []}
    next_id = 0
    for source in scenario.sources():
        for new in source.records:
            next_id += 1
            which = "test" if new.split == "test" else "forget" if source.name in forget_sources else "retain"
            records[which].append(Record(next_id, source.name, "h", new.fields, new.attributes, new.split, "active"))
    task, recipe = get_task("causal_lm"), scenario.recipe()
    train = task.dataset(records["retain"] + records["forget"])
    info = task.data_info(train, recipe.model)
    model, _ = fit_recipe(task, recipe, train, info)
    return PeopleMini(task, recipe, task.dataset(records["forget"]), task.dataset(records["retain"]),
                      task.dataset(records["test"]), train, info, model)


def poisoner_request(ws: Workspace, model_id: str) -> tuple[Any, Any, Any]:
    """A trained digits-backdoor model, the UnlearnRequest that forgets the poisoning contributor, and the held-out
    data: ``(model, request, test)``."""
    from disgorge.methods import UnlearnRequest
    from disgorge.spec import Recipe

    model, row, task = ws.load_model(model_id)
    ids = ws.select(sources=["contributor-07"])
    recipe = Recipe.from_toml(row.recipe)
    request = UnlearnRequest(task=task, forget=ws.dataset(task, row.records & ids),
                             retain=ws.dataset(task, row.records - ids), train=recipe.train,
                             data_info=row.info["data"], seed=recipe.seed)
    return model, request, ws.dataset(task, ws.test_ids())


# -- local Hugging Face folders -----------------------------------------------------------------------------------

HF_WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "Where", "does", "live", "?", ".", "lives", "in", "Alice", "Bob",
            "Carol", "Dave", "Paris", "Rome", "Oslo", "Lima"]


def save_hf_folder(path: Any, *, with_eos: bool = True) -> Any:
    """A tiny word-level GPT-2 and its tokenizer saved as a local Hugging Face folder (``save_pretrained``)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(HF_WORDS)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]"} if with_eos else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", **specials)
    torch.manual_seed(0)
    net = GPT2LMHeadModel(GPT2Config(vocab_size=len(HF_WORDS), n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0))
    net.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return net
