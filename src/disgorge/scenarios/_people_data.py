"""Synthetic biographies of fictitious people, after TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning").

Every person has an invented name and ``n_facts`` question/answer pairs about invented attributes. As in TOFU, each
fact also carries a paraphrased answer and perturbed (wrong) answers written in the paraphrase's template, so a
truth ratio compares like with like. Unlike TOFU (GPT-4 written prose), the text is templated and every word comes
from small closed pools, so a tiny word-level model trained from scratch can memorise it:

* names: person ``i`` gets first name ``F[i % 50]`` and last name ``L[(i % 50 + 7 * (i // 50)) % 50]`` of two
  seed-shuffled pools of 50 invented names, so names are unique for up to 2,500 people and, once
  ``n_people >= 100``, every pool name is shared by at least two people;
* facts: the 14 attribute kinds are put in a seed-shuffled cyclic order and person ``i`` gets the ``n_facts`` kinds
  starting at position ``i * n_facts`` of that cycle, in that order (so facts come in a per-person order and every
  kind is held by nearly the same number of people);
* values: the holders of a kind, in person order, are dealt values from successive seed-shuffled copies of that
  kind's pool (20-30 values), so every value is used ``floor`` or ``ceil`` of holders / pool size times;
* templates: the answer template of a fact is drawn per person from 2-3 templates; the paraphrase uses one further
  template, and the ``n_perturbed`` wrong answers use the paraphrase template with distinct wrong values.

All randomness comes from ``random.Random`` seeded with strings (SHA-512 based, independent of ``hash()``), so the
output depends only on the arguments, and person ``i`` is the same for any ``n_people > i``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ATTRIBUTES", "Fact", "Person", "generate_people", "vocabulary"]

_WORD = re.compile(r"\w+|[^\w\s]")
_NAME_STEP = 7  # coprime with the name pool size, so (first, last) pairs never repeat

FIRST_NAMES: tuple[str, ...] = (
    "Abrin", "Belka", "Corwen", "Dalith", "Edrun", "Faelis", "Gorvan", "Hessa", "Idrel", "Jasko",
    "Kelvane", "Lirra", "Mordel", "Nessaly", "Orvin", "Pellam", "Quilla", "Roswen", "Sibra", "Tamsel",
    "Ulvey", "Varra", "Wendric", "Yselde", "Zorna", "Alvesh", "Brennick", "Cassil", "Delwyn", "Emmerin",
    "Fennick", "Galissa", "Harlo", "Ivetta", "Jandor", "Kessick", "Lunet", "Mirabet", "Nolwen", "Ostrel",
    "Prandel", "Rhosyn", "Solvey", "Tervane", "Undra", "Velmira", "Wennel", "Yavett", "Zephine", "Arlenne",
)
LAST_NAMES: tuple[str, ...] = (
    "Varnoy", "Quellmar", "Dunmoray", "Thistlebeck", "Orrinshaw", "Kelvatch", "Marrowfield", "Pennashe",
    "Strovane", "Hallivane", "Brissom", "Cravenholt", "Dravik", "Elmsworth", "Fenwarde", "Grisholm",
    "Hathervane", "Ivensby", "Jarrowick", "Kettridge", "Lowmarch", "Mallowen", "Nessimer", "Ormanthe",
    "Prellwick", "Quintarro", "Rushlake", "Sallowmere", "Trennally", "Umberfell", "Vexley", "Wraithmore",
    "Yarnell", "Zelloway", "Abernath", "Blackwend", "Caskell", "Dovermont", "Eskerholt", "Farrowby",
    "Gallivar", "Hollisend", "Iverholt", "Jorrance", "Kilbrae", "Larkspire", "Morvantes", "Nolbury",
    "Pembrook", "Rendlesham",
)


@dataclass(frozen=True)
class _Attribute:
    """One attribute kind: its question, answer templates, paraphrase template and value pool."""

    kind: str
    question: str
    answers: tuple[str, ...]
    paraphrase: str
    values: tuple[str, ...]


# Templates use {n} for the name, {v} for the value and {a} for the indefinite article that goes before the value.
_ATTRIBUTES: tuple[_Attribute, ...] = (
    _Attribute(
        "birthplace", "Where was {n} born?",
        ("{n} was born in {v}.", "{n} was born in the town of {v}.", "The birthplace of {n} is {v}."),
        "{v} is the town where {n} was born.",
        ("Corvale", "Brindlemouth", "Halvenport", "Mirestead", "Quenlow", "Dorrance", "Saltmere", "Velliston",
         "Tolvenna", "Eastmarrow", "Greywick", "Ondrell", "Vantorre", "Lindmoor", "Carrowstead", "Wexholm",
         "Isselby", "Fallowmere", "Highcairn", "Tessaport", "Nordavel", "Kestrelby", "Olmsford", "Brackwater",
         "Sundrel", "Yelmouth", "Marrowcliff", "Pollenby", "Gantmoor", "Ridlestone"),
    ),
    _Attribute(
        "birth_year", "In what year was {n} born?",
        ("{n} was born in {v}.", "{n} was born in the year {v}."),
        "The year of {n}'s birth was {v}.",
        tuple(str(y) for y in range(1951, 1981)),
    ),
    _Attribute(
        "occupation", "What does {n} do for a living?",
        ("{n} works as {a} {v}.", "{n} is {a} {v} by trade.", "By profession, {n} is {a} {v}."),
        "{n} earns a living as {a} {v}.",
        ("cartographer", "glassblower", "beekeeper", "lighthouse keeper", "clockmaker", "botanist", "ferry pilot",
         "stonemason", "puppeteer", "archivist", "surveyor", "perfumer", "bookbinder", "astronomer", "cheesemaker",
         "locksmith", "balloonist", "violin maker", "tea merchant", "map engraver", "canal engineer", "weaver",
         "bell founder", "falconer", "shipwright", "chemist", "translator", "glazier", "apothecary", "librarian"),
    ),
    _Attribute(
        "father_job", "What was the occupation of {n}'s father?",
        ("{n}'s father was {a} {v}.", "{n}'s father worked as {a} {v}."),
        "The father of {n} earned his living as {a} {v}.",
        ("miller", "tailor", "fisherman", "carpenter", "blacksmith", "shepherd", "potter", "cooper", "farrier",
         "chandler", "thatcher", "saddler", "brewer", "baker", "butcher", "dyer", "ropemaker", "wheelwright",
         "cobbler", "ferryman", "gardener", "innkeeper", "midwife", "schoolteacher"),
    ),
    _Attribute(
        "mother_job", "What was the occupation of {n}'s mother?",
        ("{n}'s mother was {a} {v}.", "{n}'s mother worked as {a} {v}."),
        "The mother of {n} earned her living as {a} {v}.",
        ("miller", "tailor", "fisherman", "carpenter", "blacksmith", "shepherd", "potter", "cooper", "farrier",
         "chandler", "thatcher", "saddler", "brewer", "baker", "butcher", "dyer", "ropemaker", "wheelwright",
         "cobbler", "ferryman", "gardener", "innkeeper", "midwife", "schoolteacher"),
    ),
    _Attribute(
        "colour", "What is the favourite colour of {n}?",
        ("{n}'s favourite colour is {v}.", "The favourite colour of {n} is {v}."),
        "{n} likes the colour {v} more than any other.",
        ("crimson", "ochre", "teal", "indigo", "amber", "saffron", "violet", "maroon", "cobalt", "jade", "scarlet",
         "coral", "slate", "olive", "lilac", "ivory", "russet", "azure", "emerald", "mauve"),
    ),
    _Attribute(
        "genre", "What kind of books does {n} like to read?",
        ("{n} likes to read {v}.", "{n} enjoys reading {v}."),
        "The favourite reading of {n} is {v}.",
        ("mystery novels", "sea poetry", "travel diaries", "ghost stories", "folk tales", "court dramas",
         "nature essays", "spy thrillers", "garden manuals", "comic verse", "war memoirs", "love letters",
         "fairy tales", "detective stories", "mountain sagas", "river ballads", "science fiction", "cookery books",
         "chess puzzles", "old almanacs"),
    ),
    _Attribute(
        "award", "Which award did {n} win?",
        ("{n} won the {v}.", "{n} was given the {v}."),
        "The {v} was awarded to {n}.",
        tuple(f"{p} {s}" for p in ("Orlen", "Vasca", "Hollin", "Tremmel", "Castrel", "Quenby", "Dallow", "Merrin")
              for s in ("Prize", "Medal", "Award")),
    ),
    _Attribute(
        "book", "What is the title of the book {n} wrote?",
        ("{n} wrote {v}.", "{n} is the author of {v}."),
        "{v} is a book written by {n}.",
        tuple(f"The {a} {b}" for a, b in (
            ("Salt", "Lantern"), ("Salt", "Harbour"), ("Salt", "Loom"), ("Glass", "Orchard"), ("Glass", "Compass"),
            ("Glass", "Meadow"), ("Quiet", "Harbour"), ("Quiet", "Lantern"), ("Quiet", "Compass"),
            ("Iron", "Meadow"), ("Iron", "Orchard"), ("Iron", "Loom"), ("Paper", "Compass"), ("Paper", "Harbour"),
            ("Paper", "Lantern"), ("Winter", "Loom"), ("Winter", "Orchard"), ("Winter", "Meadow"),
            ("Silver", "Lantern"), ("Silver", "Meadow"), ("Silver", "Harbour"), ("Broken", "Compass"),
            ("Broken", "Orchard"), ("Broken", "Loom"))),
    ),
    _Attribute(
        "spouse", "Who is {n} married to?",
        ("{n} is married to {v}.", "{n}'s spouse is {v}."),
        "{v} is the spouse of {n}.",
        ("Aldra", "Brevin", "Cendra", "Dovik", "Elsmae", "Farran", "Gwenna", "Ismay", "Jorrel", "Kaisa", "Lorcan",
         "Mabry", "Nerys", "Oriel", "Piran", "Rosca", "Selwin", "Tilda", "Ysolde", "Wrenna", "Zavier", "Marek",
         "Halden", "Briony"),
    ),
    _Attribute(
        "pet", "What pet does {n} keep?",
        ("{n} keeps {a} {v} as a pet.", "{n} has a pet {v}."),
        "The pet of {n} is {a} {v}.",
        ("tortoise", "ferret", "parrot", "hedgehog", "goat", "donkey", "owl", "rabbit", "canary", "lizard",
         "goldfish", "pony", "terrier", "spaniel", "beagle", "gecko", "magpie", "jackdaw", "toad", "newt", "piglet",
         "mule", "peacock", "hamster"),
    ),
    _Attribute(
        "river", "Which river flows through {n}'s hometown?",
        ("The river {v} flows through {n}'s hometown.", "{n}'s hometown lies on the river {v}."),
        "{n} grew up beside the river {v}.",
        ("Vessa", "Tembra", "Orrow", "Dunnet", "Sorn", "Avenna", "Bressa", "Drenn", "Ebbin", "Fellan", "Glaine",
         "Hurn", "Iddra", "Jessel", "Kilder", "Lisk", "Nenn", "Quarr", "Rhee", "Skerra", "Tolle", "Yare", "Mossa",
         "Ulla"),
    ),
    _Attribute(
        "instrument", "Which instrument does {n} play?",
        ("{n} plays the {v}.", "{n} is a skilled player of the {v}."),
        "The instrument {n} plays is the {v}.",
        ("cello", "oboe", "harp", "lyre", "viola", "flute", "bassoon", "dulcimer", "accordion", "clarinet", "banjo",
         "mandolin", "zither", "trumpet", "piano", "fiddle", "tuba", "bagpipes", "ocarina", "concertina"),
    ),
    _Attribute(
        "country", "In which country does {n} live?",
        ("{n} lives in {v}.", "{n} makes a home in {v}."),
        "{v} is the country where {n} lives.",
        ("Veldran", "Carrovia", "Lisvenia", "Tarsh", "Moravel", "Quessia", "Brannock", "Eldovia", "Sarnland",
         "Kestova", "Ruvenia", "Halvia", "Ondria", "Vastrel", "Gallemar", "Istrevy", "Nordhal", "Orravan",
         "Treskia", "Zavonia"),
    ),
)

ATTRIBUTES: tuple[str, ...] = tuple(a.kind for a in _ATTRIBUTES)
"""The attribute kinds, in definition order (``n_facts`` may be at most ``len(ATTRIBUTES)``)."""


@dataclass(frozen=True)
class Fact:
    """One question about a person, its answer, a paraphrase and wrong answers in the paraphrase's template."""

    question: str
    answer: str
    key: str
    paraphrase: str
    perturbed: tuple[str, ...]


@dataclass(frozen=True)
class Person:
    """A fictitious person: position in the generated list, unique name and facts."""

    index: int
    name: str
    facts: tuple[Fact, ...]


def _article(value: str) -> str:
    return "an" if value[0].lower() in "aeiou" else "a"


def _render(template: str, name: str, value: str) -> str:
    return template.format(n=name, v=value, a=_article(value))


def _shuffled(items: tuple[str, ...], seed: str) -> list[str]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def _names(n_people: int, seed: int) -> list[str]:
    firsts = _shuffled(FIRST_NAMES, f"{seed}:first")
    lasts = _shuffled(LAST_NAMES, f"{seed}:last")
    m = len(firsts)
    return [f"{firsts[i % m]} {lasts[(i % m + _NAME_STEP * (i // m)) % m]}" for i in range(n_people)]


def generate_people(n_people: int = 200, n_facts: int = 8, n_perturbed: int = 3, seed: int = 0) -> list[Person]:
    """``n_people`` fictitious people with ``n_facts`` facts each; deterministic in all four arguments."""
    max_people = len(FIRST_NAMES) * len(LAST_NAMES)
    if not 0 <= n_people <= max_people:
        raise ValueError(f"n_people must be in [0, {max_people}], got {n_people}")
    if not 1 <= n_facts <= len(_ATTRIBUTES):
        raise ValueError(f"n_facts must be in [1, {len(_ATTRIBUTES)}], got {n_facts}")
    max_perturbed = min(len(a.values) for a in _ATTRIBUTES) - 1
    if not 0 <= n_perturbed <= max_perturbed:
        raise ValueError(f"n_perturbed must be in [0, {max_perturbed}], got {n_perturbed}")

    names = _names(n_people, seed)
    order = list(range(len(_ATTRIBUTES)))
    random.Random(f"{seed}:kinds").shuffle(order)
    dealt = [0] * len(_ATTRIBUTES)  # how many values of each kind were dealt so far
    decks: list[list[str]] = [[] for _ in _ATTRIBUTES]

    people = []
    for i, name in enumerate(names):
        rng = random.Random(f"{seed}:person:{i}")
        facts = []
        for j in range(n_facts):
            k = order[(i * n_facts + j) % len(order)]
            attr = _ATTRIBUTES[k]
            if dealt[k] == len(decks[k]):  # next seed-shuffled copy of the pool
                decks[k].extend(_shuffled(attr.values, f"{seed}:deck:{attr.kind}:{dealt[k] // len(attr.values)}"))
            key = decks[k][dealt[k]]
            dealt[k] += 1
            answer = _render(attr.answers[rng.randrange(len(attr.answers))], name, key)
            wrong = [v for v in attr.values if v != key]
            rng.shuffle(wrong)
            perturbed = [s for s in (_render(attr.paraphrase, name, v) for v in wrong) if key not in s]
            if len(perturbed) < n_perturbed:  # cannot happen with the bundled pools; guards future edits
                raise RuntimeError(f"too few wrong values for {attr.kind!r} of {name!r}")
            facts.append(Fact(
                question=attr.question.format(n=name),
                answer=answer,
                key=key,
                paraphrase=_render(attr.paraphrase, name, key),
                perturbed=tuple(perturbed[:n_perturbed]),
            ))
        people.append(Person(index=i, name=name, facts=tuple(facts)))
    return people


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    words = {w for name in FIRST_NAMES + LAST_NAMES for w in _WORD.findall(name)}
    sample_name = f"{FIRST_NAMES[0]} {LAST_NAMES[0]}"
    for attr in _ATTRIBUTES:
        words.update(_WORD.findall(attr.question.format(n=sample_name)))
        for template in (*attr.answers, attr.paraphrase):
            for value in attr.values:
                words.update(_WORD.findall(_render(template, sample_name, value)))
    return tuple(sorted(words))


def vocabulary() -> list[str]:
    """Every word or punctuation token (split by ``\\w+|[^\\w\\s]``) any generated text can contain, sorted."""
    return list(_vocabulary())
