"""The causal_lm task and its language models: tokenizers, answer-only loss, batched generation, local Hugging Face
folders, reproducible training (with and without accelerate) and what the people-mini model learns."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import save_hf_folder
from disgorge.errors import DisgorgeError
from disgorge.ledger import Record
from disgorge.models.families import ModelConfigError
from disgorge.models.language import REFUSALS, SPECIALS, ByteTokenizer, WordTokenizer
from disgorge.spec import ModelSpec, Recipe, TrainSpec
from disgorge.tasks import get_task
from disgorge.tasks.causal_lm import text_field, texts, words
from disgorge.training.loop import fit, make_optimizer, mean_loss
from disgorge.training.trainer import fit_recipe


@pytest.fixture(scope="module")
def people(people_mini: Any) -> Any:
    """people-mini trained with its default recipe (the session's shared model, see conftest.py)."""
    return people_mini


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- tokenizers ---------------------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_any_unicode():
    """The char tokenizer is lossless on non-ASCII text (UTF-8 bytes shifted past the specials), one id per byte."""
    tok = ByteTokenizer()
    samples = ["Zoë Brontë \u2013 café", "東京で会いましょう", "emoji 🙂 and tab\t", ""]
    ids = tok.encode(samples)
    assert tok.decode(ids) == samples
    assert [len(i) for i in ids] == [len(s.encode("utf-8")) for s in samples]
    assert all(len(SPECIALS) <= i < tok.vocab_size for row in ids for i in row)


def test_word_tokenizer_round_trips_maps_unknowns_and_trains_deterministically():
    """A word vocabulary trained on texts re-encodes them losslessly (punctuation re-attached to the word before),
    maps words it never saw to [UNK], starts with the specials, always contains the refusal words and is the same
    list each time it is trained, in this process or another."""
    corpus = ["Alice lives in Paris.", "Where does Bob live?", "Bob wrote The Long Road, a novel.", "Alice is 42."]
    vocab = WordTokenizer.train(corpus)
    assert vocab[:len(SPECIALS)] == list(SPECIALS)
    assert WordTokenizer.train(corpus) == vocab
    tok = WordTokenizer(vocab)
    assert tok.decode(tok.encode(corpus)) == corpus

    ids = tok.encode(["Alice lives in Zurich."])[0]
    assert ids.count(tok.unk_id) == 1 and ids[-2] == tok.unk_id
    assert tok.decode([ids]) == ["Alice lives in [UNK]."]

    refusal_ids = tok.encode(list(REFUSALS))
    assert all(tok.unk_id not in row for row in refusal_ids), "a refusal word is missing from the vocabulary"

    script = ("import json, sys; from disgorge.models.language import WordTokenizer; "
              "print(json.dumps(WordTokenizer.train(json.loads(sys.argv[1]))))")
    other = subprocess.run([sys.executable, "-c", script, json.dumps(corpus)], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert json.loads(other.stdout) == vocab

    with pytest.raises(ModelConfigError, match="must start with the special tokens"):
        WordTokenizer(["hello", *SPECIALS])


# -- loss, encoding and generation --------------------------------------------------------------------------------


def _hand_nll(model: Any, prompt: str, answer: str) -> tuple[float, float]:
    """(mean NLL of the answer tokens and EOS, mean NLL of every token after BOS) of one unpadded sequence."""
    tok = model.tokenizer
    p, a = tok.encode([prompt])[0], tok.encode([answer])[0]
    seq = torch.tensor([[tok.bos_id, *p, *a, tok.eos_id]])
    with torch.no_grad():
        logprobs = F.log_softmax(model(seq).logits[0, :-1].double(), dim=-1)
    nll = -logprobs.gather(-1, seq[0, 1:, None]).squeeze(-1)
    return float(nll[len(p):].mean()), float(nll.mean())


def test_per_example_loss_covers_answer_tokens_only(people):
    """For a question the loss is the mean NLL of the answer tokens (and EOS) given the question, computed here by
    hand from unpadded logits; a new answer changes it; for a document (field text) it covers every token."""
    task, model = people.task, people.model
    batch = people.forget.tensors_slice(0, 4)
    prompts, answers = texts(batch, "prompt"), texts(batch, "answer")
    assert len({len(p) for p in model.tokenizer.encode(prompts)}) > 1  # padding is exercised

    ids, attention, mask = task.encode(model, prompts, answers)
    for i, (p, a) in enumerate(zip(model.tokenizer.encode(prompts), model.tokenizer.encode(answers), strict=True)):
        expected = torch.zeros(ids.shape[1] - 1, dtype=torch.bool)
        expected[len(p):len(p) + len(a) + 1] = True
        assert torch.equal(mask[i], expected)
        assert int(attention[i].sum()) == len(p) + len(a) + 2

    with torch.no_grad():
        loss = task.per_example_loss(model, batch)
    hand = [_hand_nll(model, p, a) for p, a in zip(prompts, answers, strict=True)]
    assert loss.numpy() == pytest.approx([h[0] for h in hand], abs=1e-4)
    assert not np.allclose(loss.numpy(), [h[1] for h in hand], atol=1e-2)  # not the loss over the question too

    swapped = answers[1:] + answers[:1]
    with torch.no_grad():
        other = task.per_example_loss(model, task.with_answers(batch, swapped))
    assert other.numpy() == pytest.approx([_hand_nll(model, p, a)[0] for p, a in zip(prompts, swapped, strict=True)],
                                          abs=1e-4)
    assert (other > loss + 1).all(), "a memorised answer must be far likelier than another person's"

    doc = "Jonah rose up to flee unto Tarshish from the presence of the Lord."
    data = task.dataset([Record(1, "doc", "h", {"text": text_field(doc)}, {}, "train", "active")])
    assert texts(data.tensors, "prompt") == [""] and texts(data.tensors, "answer") == [doc]
    with torch.no_grad():
        doc_loss = task.per_example_loss(model, data.tensors_slice(0, 1))
    assert float(doc_loss[0]) == pytest.approx(_hand_nll(model, "", doc)[1], abs=1e-4)


def test_encode_truncates_long_pairs_to_the_model_length(people):
    """A pair longer than max_length keeps the end of its question and at least one answer target."""
    task, model = people.task, people.model
    long_prompt = " ".join(["Where"] * (2 * model.max_length))
    ids, attention, mask = task.encode(model, [long_prompt, "Who?"], ["Paris.", " ".join(["Paris"] * 100)])
    assert ids.shape[1] <= model.max_length
    assert int(attention[0].sum()) == model.max_length and int(mask[0].sum()) >= 1
    assert int(attention[1].sum()) == model.max_length and int(mask[1].sum()) == model.max_length - 1 - 2
    assert ids[0, 0] == model.tokenizer.bos_id


def _greedy(model: Any, prompt: str, steps: int) -> str:
    tok = model.tokenizer
    seq = [tok.bos_id, *tok.encode([prompt])[0]]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == tok.eos_id:
                break
            seq.append(nxt)
            out.append(nxt)
    return tok.decode([out])[0]


def test_batched_generation_equals_one_at_a_time(people):
    """Greedy generation of a left-padded batch of prompts of different lengths gives, for each prompt, what it gives
    alone, and what a hand-written argmax loop without padding gives."""
    task, model = people.task, people.model
    prompts = texts(people.forget.tensors, "prompt")[:5] + texts(people.retain.tensors, "prompt")[:3] + ["Who"]
    assert len({len(p) for p in model.tokenizer.encode(prompts)}) >= 3
    batched = task.generate(model, prompts, 14)
    alone = [task.generate(model, [p], 14)[0] for p in prompts]
    assert batched == alone
    assert [_greedy(model, p, 14) for p in prompts[:4]] == batched[:4]
    answers = texts(people.forget.tensors, "answer")[:5]
    assert [words(g) for g in batched[:5]] == [words(a) for a in answers]  # memorised, so the answers come back


# -- local Hugging Face folders -----------------------------------------------------------------------------------

def _hf_records() -> list[Record]:
    pairs = [("Alice", "Paris"), ("Bob", "Rome"), ("Carol", "Oslo"), ("Dave", "Lima")]
    return [Record(i, "hf", "h", {"prompt": text_field(f"Where does {who} live?"),
                                  "answer": text_field(f"{who} lives in {city}.")}, {}, "train", "active")
            for i, (who, city) in enumerate(pairs, 1)]


def test_pretrained_folder_loads_the_saved_model_and_trains(tmp_path):
    """family pretrained loads a save_pretrained folder (model and its tokenizer): same logits as the saved model,
    the tokenizer's special ids, max_length capped by the model's positions; fit_recipe then lowers the loss."""
    from transformers import GPT2LMHeadModel

    save_hf_folder(tmp_path)
    reference = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    task = get_task("causal_lm")
    recipe = Recipe(name="local", task="causal_lm", seed=0, model=ModelSpec("pretrained", {"path": str(tmp_path)}),
                    train=TrainSpec(optimizer="adamw", lr=1e-2, batch_size=2, epochs=8))
    data = task.dataset(_hf_records())
    info = task.data_info(data, recipe.model)
    assert info == {}

    lm = task.build_model(recipe.model, info).eval()
    tok = lm.tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert lm.max_length == 32
    assert tok.encode(["Where does Alice live?"]) == [[4, 5, 11, 6, 7]]
    ids = torch.tensor([[1, 4, 5, 11, 6, 7, 11, 9, 10], [1, 4, 5, 12, 6, 7, 12, 9, 10]])
    with torch.no_grad():
        assert torch.equal(lm(ids).logits, reference(input_ids=ids).logits)
        before = task.per_example_loss(lm, data.tensors).mean()

    model, result = fit_recipe(task, recipe, data, info)
    with torch.no_grad():
        after = task.per_example_loss(model, data.tensors).mean()
    assert result.steps == 16 and result.losses[-1] < result.losses[0]
    assert float(after) < 0.5 * float(before)


def test_unusable_pretrained_folder_is_a_one_line_config_error(tmp_path):
    """A folder without config.json, one without weights, or a tokenizer without EOS raise ModelConfigError (a
    DisgorgeError) with a one-line message naming the problem."""
    task = get_task("causal_lm")
    data = task.dataset(_hf_records())
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = Recipe(name="bad", task="causal_lm", model=ModelSpec("pretrained", {"path": str(empty)}))
    with pytest.raises(ModelConfigError, match=r"config\.json") as info:
        fit_recipe(task, recipe, data, {})
    assert isinstance(info.value, DisgorgeError) and "\n" not in str(info.value)
    with pytest.raises(ModelConfigError, match=r"config\.json"):
        task.data_info(data, recipe.model)

    no_weights = tmp_path / "no-weights"
    net = save_hf_folder(tmp_path / "full")
    no_weights.mkdir()
    net.config.to_json_file(no_weights / "config.json")
    with pytest.raises(ModelConfigError, match="no safetensors weights") as info:
        task.build_model(ModelSpec("pretrained", {"path": str(no_weights)}), {})
    assert "\n" not in str(info.value)

    no_eos = tmp_path / "no-eos"
    save_hf_folder(no_eos, with_eos=False)
    with pytest.raises(ModelConfigError, match="no end-of-sequence token") as info:
        task.build_model(ModelSpec("pretrained", {"path": str(no_eos)}), {})
    assert "\n" not in str(info.value)


# -- training -----------------------------------------------------------------------------------------------------


def test_training_is_deterministic_with_and_without_accelerate(people):
    """Two fit_recipe runs of one recipe give identical weights and leave the caller's RNG alone; the loop run
    through a single-process CPU accelerate Accelerator gives exactly the weights of the plain loop."""
    task = people.task
    short = dataclasses.replace(people.recipe, train=dataclasses.replace(people.recipe.train, epochs=3))
    rng = torch.get_rng_state()
    a, result_a = fit_recipe(task, short, people.train, people.info)
    b, result_b = fit_recipe(task, short, people.train, people.info)
    assert torch.equal(torch.get_rng_state(), rng)
    assert result_a.steps == 3 * len(task.loader(people.train, short.train.batch_size, shuffle=False))
    assert result_a.losses == result_b.losses and _states_equal(a, b)

    def run(accelerator: Any) -> tuple[torch.nn.Module, torch.nn.Module, list[float]]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = task.build_model(short.model, people.info)
            start = {k: v.clone() for k, v in model.state_dict().items()}
            loader = task.loader(people.train, short.train.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
            result = fit(model, loader, mean_loss(task), make_optimizer(model.parameters(), short.train),
                         epochs=short.train.epochs, accelerator=accelerator)
        return model, start, result.losses

    plain, plain_start, plain_losses = run(None)
    accelerated, _, accelerated_losses = run(task.accelerator())
    assert not all(torch.equal(plain_start[k], v) for k, v in plain.state_dict().items())
    assert accelerated_losses == plain_losses
    assert _states_equal(plain, accelerated)
    assert _states_equal(plain, a)  # fit_recipe is that same loop


def test_people_mini_model_memorises_training_people_only(people):
    """The default people-mini recipe answers every trained person's questions and almost none of the held-out
    people's; on trained people it prefers the paraphrased true answer to the wrong ones more than on held-out."""
    task, model = people.task, people.model
    forget, retain, test = (task.evaluate(model, d) for d in (people.forget, people.retain, people.test))
    assert len(people.forget) == 16 and len(people.retain) == 144 and len(people.test) == 32
    assert forget["correct"].mean() * 100 >= 95
    assert retain["correct"].mean() * 100 >= 95
    assert test["correct"].mean() * 100 <= 20
    assert not np.isnan(forget["truth_ratio"]).any() and not np.isnan(test["truth_ratio"]).any()
    assert forget["truth_ratio"].mean() < test["truth_ratio"].mean()
    assert forget["loss"].mean() < test["loss"].mean()
    assert task.quick_accuracy(model, people.forget) >= 95


def test_key_span_moves_the_sentence_before_the_key_into_the_prompt(people):
    """`key_span` keeps each record's full text but makes its answer start at the fact's key, so a forget loss
    lands on the fact and not on the sentence template; a record without a key is left as it is."""
    task, data = people.task, people.forget
    focused = task.key_span(data)
    before = [p + a for p, a in zip(texts(data.tensors, "prompt"), texts(data.tensors, "answer"), strict=True)]
    after = [p + a for p, a in zip(texts(focused.tensors, "prompt"), texts(focused.tensors, "answer"), strict=True)]
    assert before == after and list(focused.ids) == list(data.ids)
    keys, answers = texts(focused.tensors, "key"), texts(focused.tensors, "answer")
    assert all(a.startswith(k) for a, k in zip(answers, keys, strict=True))
    assert sum(len(a) for a in answers) < sum(len(a) for a in texts(data.tensors, "answer"))
    # the loss now covers fewer tokens: the key and what follows it
    assert bool((task.encode(people.model, texts(focused.tensors, "prompt"), answers)[2].sum(1)
                 < task.encode(people.model, texts(data.tensors, "prompt"), texts(data.tensors, "answer"))[2].sum(1)
                 ).any())
    document = task.dataset([Record(1, "s", "h", {"text": text_field("In the beginning was the word.")}, {}, "train",
                                    "active")])
    assert texts(task.key_span(document).tensors, "answer") == ["In the beginning was the word."]
