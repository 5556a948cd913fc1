"""Erasure takes a forgotten person's words out of a word-level language model: the unlearned child drops the
vocabulary words only the forgotten records used (with their embedding and tied output rows), the retrained reference
learns its own vocabulary from what it keeps, and neither the ledger nor the model folders name those words again."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from disgorge import Workspace, forget, ingest_scenario, train
from disgorge.erasure import ensure_reference
from disgorge.models.language import REFUSALS, SPECIALS, LanguageModel, WordTokenizer, select_token_rows
from disgorge.scenarios import get_scenario
from disgorge.tasks.causal_lm import TEXT_COLUMNS, texts

pytest.importorskip("transformers")

TOKEN = re.compile(r"\w+|[^\w\s]+")  # what the word tokenizer's pre-tokenizer splits on


def _words(data: Any) -> set[str]:
    return {w for c in TEXT_COLUMNS for t in texts(data.tensors, c) for w in TOKEN.findall(t)}


@dataclass
class Forgotten:
    """A people-mini workspace after forgetting one person (records erased), its reference, and the original."""

    ws: Workspace
    task: Any
    parent: Any  # the original's ledger row and model, as they were before the erasure
    parent_model: Any
    child: str
    reference: str
    forget: Any  # the forgotten records as they were
    retain: Any
    only_forgotten: set[str]  # vocabulary words only the forgotten person's records used
    shared: set[str]  # words of the forgotten person's records that retained records use too


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forgotten]:
    """people-mini trained briefly (the vocabulary, not memorisation, is under test), its reference for one
    person's erasure retrained, then that person forgotten with a few grad_diff steps."""
    root = tmp_path_factory.mktemp("vocab") / "ws"
    ws = Workspace.init(root)
    ingest_scenario(ws, "people-mini")
    recipe = get_scenario("people-mini").recipe()
    recipe = recipe.replace(train=dataclasses.replace(recipe.train, epochs=2))
    parent = train(ws, recipe)
    model, _, task = ws.load_model(parent.id)
    vocab = set(model.tokenizer.vocab)
    refusal_words = {w for r in REFUSALS for w in TOKEN.findall(r)} | set(SPECIALS)
    for source in ("person-039", "person-038", "person-037"):  # the first with a word of its own
        ids = ws.select(sources=[source])
        forget_data, retain_data = ws.dataset(task, ids), ws.dataset(task, parent.records - ids)
        gone, kept = _words(forget_data), _words(retain_data)
        only = (gone - kept - refusal_words) & vocab
        if only:
            break
    assert only, "no person of people-mini has a word of their own"
    _, reference = ensure_reference(ws, parent, parent.records - ids)  # what verify="exact" would train
    result = forget(ws, sources=[source], method="grad_diff", options={"max_steps": 2}, verify="none")
    yield Forgotten(ws, task, parent, model, result.children[0].id, reference.id, forget_data, retain_data, only,
                    gone & kept)
    ws.close()


def test_child_vocabulary_drops_words_only_the_forgotten_person_used(forgotten: Forgotten) -> None:
    """The child's stored vocabulary, its config.json and every active model row of the ledger name none of the
    forgotten person's own words; the words the person shared with retained records stay."""
    ws, child = forgotten.ws, forgotten.ws.ledger.model(forgotten.child)
    assert forgotten.only_forgotten <= set(forgotten.parent.info["data"]["vocab"])  # the words were there to drop
    vocab = child.info["data"]["vocab"]
    assert not forgotten.only_forgotten & set(vocab)
    assert forgotten.shared and forgotten.shared <= set(vocab)
    config = json.loads((ws.model_dir(child.id) / "config.json").read_text())
    assert config["data"]["vocab"] == vocab
    db = sqlite3.connect(f"file:{ws.ledger.path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT * FROM models WHERE status = 'active'").fetchall()
    finally:
        db.close()
    assert {r[0] for r in rows} >= {forgotten.child, forgotten.reference}
    dump = "\n".join(str(v) for row in rows for v in row)
    named = {w for w in forgotten.only_forgotten if json.dumps(w) in dump}
    assert not named, f"the ledger still names {sorted(named)}"


def test_child_weights_have_one_row_per_kept_word(forgotten: Forgotten) -> None:
    """The child's embedding and (tied) LM head have exactly one row per vocabulary word, reload from the folder,
    and tokenise the forgotten person's words as [UNK]."""
    model, row, _ = forgotten.ws.load_model(forgotten.child)
    vocab = row.info["data"]["vocab"]
    net = model.net
    assert net.transformer.wte.weight.shape[0] == len(vocab) == model.tokenizer.vocab_size
    assert net.lm_head.weight.shape[0] == len(vocab) and net.lm_head.weight is net.transformer.wte.weight
    assert len(vocab) == len(forgotten.parent.info["data"]["vocab"]) - len(forgotten.only_forgotten)
    word = sorted(forgotten.only_forgotten)[0]
    assert model.tokenizer.encode([word]) == [[model.tokenizer.unk_id]]


def test_reference_learns_its_own_vocabulary(forgotten: Forgotten) -> None:
    """The reference's vocabulary is trained on the retained records alone: the same words as the child's, none of
    the forgotten person's, one weight row each."""
    ref = forgotten.ws.ledger.model(forgotten.reference)
    ref_vocab = set(ref.info["data"]["vocab"])
    child_vocab = set(forgotten.ws.ledger.model(forgotten.child).info["data"]["vocab"])
    assert not forgotten.only_forgotten & ref_vocab
    assert ref_vocab == child_vocab and forgotten.shared <= ref_vocab
    model, _, _ = forgotten.ws.load_model(forgotten.reference)
    assert model.net.transformer.wte.weight.shape[0] == len(ref_vocab)


def test_each_model_is_measured_in_its_own_vocabulary(forgotten: Forgotten) -> None:
    """The original, the child and the reference, three vocabularies, each tokenise the same forget and retain
    texts themselves: the verification figures (forget quality and privleak against the reference included)
    compute."""
    ws, task = forgotten.ws, forgotten.task
    child, _, _ = ws.load_model(forgotten.child)
    reference, _, _ = ws.load_model(forgotten.reference)
    retain, test = forgotten.retain.subset(forgotten.retain.ids[:4]), ws.dataset(task, list(ws.test_ids())[:4])
    outs = {name: [task.evaluate(m, d) for d in (forgotten.forget, retain, test)]
            for name, m in (("original", forgotten.parent_model), ("child", child), ("reference", reference))}
    figures = {name: task.split_figures(*o) for name, o in outs.items()}
    for name in outs:
        assert all(math.isfinite(figures[name][k]) for k in ("forget_accuracy", "retain_prob", "verbmem",
                                                             "mia_mink")), name
        assert np.isfinite(outs[name][0]["loss"]).all()
    relative = task.relative_figures(outs["child"][0], figures["child"], outs["reference"][0], figures["reference"])
    assert relative["forget_quality"] is not None and 0 <= relative["forget_quality"] <= 1
    assert relative["privleak"] is not None and math.isfinite(relative["privleak"])


def test_pruning_keeps_the_logits_of_the_kept_words(forgotten: Forgotten) -> None:
    """Before any unlearning, a freshly pruned original gives a retained text without a dropped word the same ids
    (remapped) and the same logits over the kept vocabulary as before."""
    task, model, data_info = forgotten.task, forgotten.parent_model, forgotten.parent.info["data"]
    pruned, info = task.prune_vocabulary(copy.deepcopy(model), data_info, forgotten.retain)
    old, new = data_info["vocab"], info["vocab"]
    assert set(new) == set(old) - forgotten.only_forgotten and [w for w in old if w in set(new)] == new
    keep = torch.tensor([old.index(w) for w in new])
    prompts, answers = texts(forgotten.retain.tensors, "prompt")[:16], texts(forgotten.retain.tensors, "answer")[:16]
    ids, attention, _ = task.encode(model, prompts, answers)
    new_ids, new_attention, _ = task.encode(pruned, prompts, answers)
    remap = torch.full((len(old),), -1, dtype=torch.long)
    remap[keep] = torch.arange(len(keep))
    assert torch.equal(remap[ids], new_ids) and torch.equal(attention, new_attention)
    with torch.no_grad():
        before = model(ids, attention).logits[..., keep]
        after = pruned(new_ids, new_attention).logits
    assert after.shape[-1] == len(new)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_untied_output_rows_follow_the_embedding() -> None:
    """An untied LM head keeps its own rows for the kept tokens (and its bias where there is one)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    net = GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)).eval()
    head = net.lm_head.weight.detach().clone()
    ids = torch.tensor([[0, 2, 5, 7]])
    with torch.no_grad():
        before = net(input_ids=ids).logits
    keep = [0, 1, 2, 3, 5, 7, 9]
    select_token_rows(net, keep)
    assert net.lm_head.weight is not net.transformer.wte.weight and net.config.vocab_size == len(keep)
    assert torch.equal(net.lm_head.weight, head[keep])
    with torch.no_grad():
        after = net(input_ids=torch.tensor([[0, 2, 4, 5]])).logits
    torch.testing.assert_close(after, before[..., keep], rtol=1e-5, atol=1e-6)


def test_vocabulary_without_dropped_words_is_unchanged() -> None:
    """Texts that use every word leave the model and its data info as they were; a byte tokenizer is never pruned."""
    from disgorge.models.language import GPT2Family, prune_vocabulary

    corpus = ["Ann lives in Oslo.", "Bo lives in Rome."]
    family = GPT2Family(n_layer=1, n_embd=8, n_head=2, max_length=16)
    info = family.data_info(corpus)
    model = family.build(info)
    same, same_info = prune_vocabulary(model, info, corpus)
    assert same is model and same_info is info
    _, smaller = prune_vocabulary(model, info, corpus[:1])
    assert "Bo" not in smaller["vocab"] and "Rome" not in smaller["vocab"] and "Ann" in smaller["vocab"]
    assert isinstance(model.tokenizer, WordTokenizer) and model.tokenizer.vocab == smaller["vocab"]
    chars = GPT2Family(n_layer=1, n_embd=8, n_head=2, max_length=16, tokenizer="char")
    byte_model = chars.build({})
    assert prune_vocabulary(byte_model, {}, corpus[:1]) == (byte_model, {})
    assert isinstance(byte_model, LanguageModel)

