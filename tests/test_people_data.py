"""Synthetic fictitious-people biographies (TOFU-style): determinism, structure, vocabulary and word coverage."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import asdict

import pytest

from disgorge.scenarios import _people_data as pd
from disgorge.scenarios._people_data import (
    ATTRIBUTES,
    FIRST_NAMES,
    LAST_NAMES,
    Fact,
    Person,
    generate_people,
    vocabulary,
)

WORD = re.compile(r"\w+|[^\w\s]")


def _texts(fact: Fact) -> list[str]:
    return [fact.question, fact.answer, fact.paraphrase, *fact.perturbed]


def _digest(people: list[Person]) -> str:
    return hashlib.sha256(json.dumps([asdict(p) for p in people]).encode()).hexdigest()


def _has_phrase(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


@pytest.fixture(scope="module")
def people() -> list[Person]:
    return generate_people()


def test_deterministic_and_seed_dependent(people):
    """Same arguments give equal output; another seed gives different names and facts."""
    assert generate_people() == people
    assert generate_people(seed=0) == people
    other = generate_people(seed=1)
    assert other != people
    assert [p.name for p in other] != [p.name for p in people]
    assert [f.key for p in other for f in p.facts] != [f.key for p in people for f in p.facts]


def test_same_output_in_another_process_with_another_hash_seed(people):
    """No dependence on hash() randomisation: a fresh interpreter with a different PYTHONHASHSEED agrees."""
    code = (
        "import hashlib, importlib.util, json, sys\n"
        "from dataclasses import asdict\n"
        f"spec = importlib.util.spec_from_file_location('people_data_copy', {pd.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)\n"
        "ps = m.generate_people()\n"
        "print(hashlib.sha256(json.dumps([asdict(p) for p in ps]).encode()).hexdigest())\n"
        "print(json.dumps(m.vocabulary()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    digest, vocab = out.stdout.splitlines()
    assert digest == _digest(people)
    assert json.loads(vocab) == vocabulary()


def test_prefix_stable():
    """Person i does not depend on how many people are generated after it."""
    assert generate_people(60, seed=3) == generate_people(150, seed=3)[:60]


@pytest.mark.parametrize(("n_people", "n_facts", "n_perturbed"), [(200, 8, 3), (37, 14, 5), (5, 1, 0), (0, 8, 3)])
def test_counts(n_people, n_facts, n_perturbed):
    """n_people people indexed 0.., each with n_facts facts of distinct kinds and n_perturbed wrong answers."""
    ps = generate_people(n_people, n_facts, n_perturbed, seed=2)
    assert len(ps) == n_people
    assert [p.index for p in ps] == list(range(n_people))
    for p in ps:
        assert len(p.facts) == n_facts
        assert len({f.question for f in p.facts}) == n_facts  # one fact per attribute kind
        assert all(len(f.perturbed) == n_perturbed for f in p.facts)


@pytest.mark.parametrize("kwargs", [{"n_facts": 0}, {"n_facts": len(ATTRIBUTES) + 1}, {"n_perturbed": 20},
                                    {"n_perturbed": -1}, {"n_people": 2501}, {"n_people": -1}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_people(**kwargs)


def test_names_unique_and_fictitious_pools():
    """Names never repeat, even at the 2,500-person maximum; pools are distinct invented words."""
    ps = generate_people(len(FIRST_NAMES) * len(LAST_NAMES), n_facts=1, n_perturbed=0, seed=5)
    assert len({p.name for p in ps}) == len(ps)
    assert len(set(FIRST_NAMES)) == len(FIRST_NAMES) >= 40 and len(set(LAST_NAMES)) == len(LAST_NAMES) >= 40
    assert not set(FIRST_NAMES) & set(LAST_NAMES)
    for p in generate_people(seed=1):
        first, last = p.name.split(" ")
        assert first in FIRST_NAMES and last in LAST_NAMES


def _attribute(fact: Fact, name: str) -> pd._Attribute:
    (attr,) = [a for a in pd._ATTRIBUTES if a.question.format(n=name) == fact.question]
    return attr


def test_keys_and_perturbations(people):
    """The key is in the answer and paraphrase (not the question), in no perturbed answer; wrong keys differ."""
    for p in people:
        for f in p.facts:
            assert f.key and _has_phrase(f.key, f.answer) and _has_phrase(f.key, f.paraphrase)
            assert f.key not in f.question
            assert p.name in f.question and p.name in f.answer and p.name in f.paraphrase
            assert f.answer != f.paraphrase
            assert len(set(f.perturbed)) == len(f.perturbed)
            for wrong in f.perturbed:
                assert f.key not in wrong and p.name in wrong


def test_perturbed_use_the_paraphrase_template_with_other_values_of_the_attribute(people):
    """Each wrong answer is the paraphrase template filled with a distinct other value of the same pool."""
    for p in people:
        for f in p.facts:
            attr = _attribute(f, p.name)
            assert f.key in attr.values
            assert f.paraphrase == pd._render(attr.paraphrase, p.name, f.key)
            assert f.answer in {pd._render(t, p.name, f.key) for t in attr.answers}
            wrong_keys = []
            for wrong in f.perturbed:
                (value,) = [v for v in attr.values if pd._render(attr.paraphrase, p.name, v) == wrong]
                wrong_keys.append(value)
            assert f.key not in wrong_keys and len(set(wrong_keys)) == len(wrong_keys)


def test_answer_templates_vary_and_paraphrase_template_is_distinct(people):
    """Several answer templates are used per attribute; the paraphrase template is never an answer template."""
    templates: dict[str, set[str]] = defaultdict(set)
    for p in people:
        for f in p.facts:
            templates[f.question.replace(p.name, "N")].add(f.answer.replace(p.name, "N").replace(f.key, "V"))
            paraphrase = f.paraphrase.replace(p.name, "N").replace(f.key, "V")
            assert paraphrase not in {
                t.format(n="N", v="V", a="a") for a in pd._ATTRIBUTES for t in a.answers
            } | {t.format(n="N", v="V", a="an") for a in pd._ATTRIBUTES for t in a.answers}
    assert len(templates) == len(ATTRIBUTES)
    assert all(len({t.replace(" an ", " a ") for t in ts}) >= 2 for ts in templates.values())


@pytest.mark.parametrize(("n_people", "n_facts", "n_perturbed", "seed"),
                         [(200, 8, 3, 0), (300, 14, 19, 7), (13, 3, 2, 1)])
def test_vocabulary_covers_all_text(n_people, n_facts, n_perturbed, seed):
    """Every token of every generated text is in vocabulary(); the vocabulary is sorted and stable."""
    vocab = vocabulary()
    assert vocab == sorted(set(vocab)) == vocabulary()
    known = set(vocab)
    for p in generate_people(n_people, n_facts, n_perturbed, seed):
        for f in p.facts:
            for text in _texts(f):
                assert set(WORD.findall(text)) <= known, text


def test_vocabulary_is_tight():
    """Apart from unused pool words, the vocabulary is what the generator emits at full size."""
    used = {w for p in generate_people(300, len(ATTRIBUTES), 19, seed=0) for f in p.facts for t in _texts(f)
            for w in WORD.findall(t)}
    assert used == set(vocabulary())


def test_every_pool_word_used_by_several_people(people):
    """At 200 people every name word and every attribute-value word occurs for at least two people."""
    users: dict[str, set[int]] = defaultdict(set)
    for p in people:
        for w in p.name.split():
            users[w].add(p.index)
        for f in p.facts:
            for w in WORD.findall(f.key):
                users[w].add(p.index)
    for w in (*FIRST_NAMES, *LAST_NAMES):
        assert len(users[w]) >= 2, w
    assert len(ATTRIBUTES) >= 10
    for attr in pd._ATTRIBUTES:
        assert 20 <= len(attr.values) <= 40 and len(set(attr.values)) == len(attr.values)
        for value in attr.values:
            for w in WORD.findall(value):
                assert len(users[w]) >= 2, (attr.kind, w)
    # every word of the answer-side text appears for at least two people (what a word tokenizer would see)
    text_users: dict[str, set[int]] = defaultdict(set)
    for p in people:
        for f in p.facts:
            for w in WORD.findall(f.question + " " + f.answer + " " + f.paraphrase):
                text_users[w].add(p.index)
    assert all(len(s) >= 2 for s in text_users.values())


def test_values_are_not_substrings_of_other_words():
    """A single-word value is never part of a longer vocabulary word, so substring checks on keys are safe."""
    lower = {w.lower() for w in vocabulary()}
    for attr in pd._ATTRIBUTES:
        for value in attr.values:
            if " " not in value:
                assert not any(value.lower() in w and value.lower() != w for w in lower), value
            assert not any(value != o and value in o for o in attr.values), value


def test_lengths_and_ascii(people):
    """Short sentences (<= 14 words, <= 18 tokens), plain ASCII; a question-answer pair is about 30 tokens."""
    pair_lengths = []
    for p in people:
        for f in p.facts:
            for text in _texts(f):
                assert text.isascii()
                assert len(text.split()) <= 14 and len(WORD.findall(text)) <= 18, text
            pair_lengths.append(len(WORD.findall(f.question)) + len(WORD.findall(f.answer)))
    assert max(pair_lengths) <= 32
