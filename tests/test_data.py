"""User files: CSV and NPZ loaders, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from disgorge import ingest_file
from disgorge.data import DataFileError, load_csv, load_npz


def test_csv_features_label_and_attributes(tmp_path):
    """Numeric columns become features, the label an integer class, attribute columns group labels."""
    p = tmp_path / "d.csv"
    p.write_text("a,b,label,sex\n1.5,2,1,f\n0,-3,0,m\n\n")
    recs = load_csv(p, attributes=["sex"])
    assert len(recs) == 2
    np.testing.assert_array_equal(recs[0].fields["x"], np.array([1.5, 2], np.float32))
    assert int(recs[1].fields["y"][0]) == 0 and recs[1].attributes == {"sex": "m"}


@pytest.mark.parametrize(("text", "message"), [
    ("a,b,label\n1,x,0\n", "column 'b' is not numeric"),
    ("a,b\n1,2\n", "no label column"),
    ("a,label\n1,0.5\n", "not a non-negative integer"),
    ("a,label\n1,0,7\n", "3 fields"),
    ("", "empty"),
    ("a,label\n", "no data rows"),
])
def test_bad_csv_is_one_clear_error(tmp_path, text, message):
    """Malformed CSV files say what is wrong and where."""
    p = tmp_path / "d.csv"
    p.write_text(text)
    with pytest.raises(DataFileError, match=message):
        load_csv(p)


def test_npz_round_trip_and_errors(tmp_path):
    """NPZ files need x and integer y of the same length; pickles are never loaded."""
    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.default_rng(0).random((5, 2, 2)), y=np.arange(5))
    recs = load_npz(p)
    assert len(recs) == 5 and recs[2].fields["x"].shape == (2, 2) and recs[2].fields["x"].dtype == np.float32
    np.savez(p, x=np.zeros((3, 2)), y=np.zeros(2, dtype=int))
    with pytest.raises(DataFileError, match="rows"):
        load_npz(p)
    np.savez(p, x=np.zeros((3, 2)), y=np.array([0.5, 1, 2]))
    with pytest.raises(DataFileError, match="integer"):
        load_npz(p)
    np.savez(p, x=np.zeros((2, 2)), y=np.array([{"a": 1}, {}], dtype=object))
    with pytest.raises(DataFileError):
        load_npz(p)
    p.write_bytes(b"not a zip")
    with pytest.raises(DataFileError, match="cannot read"):
        load_npz(p)


def test_ingest_file_records_its_source(tmp_path):
    """Ingested files become records of a named, licensed source."""
    from disgorge import Workspace

    p = tmp_path / "d.npz"
    np.savez(p, x=np.random.default_rng(0).random((6, 3)), y=np.array([0, 1, 0, 1, 2, 2]))
    with Workspace.init(tmp_path / "w") as ws:
        res = ingest_file(ws, p, source="lab", license="CC0-1.0", split="test")
        assert len(res.added) == 6
        assert ws.ledger.source("lab").license == "CC0-1.0" and ws.ledger.source("lab").origin == str(p)
        assert len(ws.test_ids()) == 6
        with pytest.raises(DataFileError, match="supported files"):
            ingest_file(ws, tmp_path / "d.txt", source="lab", license="CC0-1.0")


def test_jsonl_texts_become_language_records(tmp_path):
    """JSON Lines: documents and questions (with TOFU's extra answers, perturbed as a list) become causal_lm
    records, attributes kept; the task reads them back word for word."""
    import json

    from disgorge.data.files import load_file
    from disgorge.ledger import Record
    from disgorge.tasks import get_task
    from disgorge.tasks.causal_lm import field_text, texts

    path = tmp_path / "people.jsonl"
    rows = [{"text": "Call me Ishmaël.", "author": "melville"},
            {"prompt": "Where was Ana born?", "answer": "Ana was born in Porto.", "key": "Porto",
             "paraphrase": "Porto is where Ana was born.", "perturbed": ["Lyon is where Ana was born.",
                                                                        "Kyiv is where Ana was born."],
             "author": "me"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    records = load_file(path, attributes=["author"], split="train")
    assert [r.attributes for r in records] == [{"author": "melville"}, {"author": "me"}]
    assert field_text(records[1].fields["perturbed"]).split("\n") == rows[1]["perturbed"]
    data = get_task("causal_lm").dataset([Record(i, "s", "h", r.fields, r.attributes, r.split, "active")
                                          for i, r in enumerate(records)])
    assert texts(data.tensors, "answer") == ["Call me Ishmaël.", "Ana was born in Porto."]
    assert texts(data.tensors, "prompt") == ["", "Where was Ana born?"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "ok"}\n{"text": "broken"', "line 2 is not valid JSON"),
    ('{"prompt": "only a question"}', 'line 1 needs a "text" field'),
    ('{"text": 3}', "field(s) text must be text"),
    ("\n\n", "holds no records"),
])
def test_bad_jsonl_is_refused_with_the_line(tmp_path, content, message):
    """A malformed JSON Lines file is refused with one message that names the line and what is wrong."""
    from disgorge.data.files import load_file

    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_file(path)
