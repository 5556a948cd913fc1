"""Reliability and privacy: one writer at a time, erasure complete before it is reported, superseded weights
deleted, tamper evidence (the HMAC chain, `disgorge doctor`), private permissions, no writes through links."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest
from pyroaring import BitMap

from disgorge import Workspace, api, doctor
from disgorge.errors import DisgorgeError, IntegrityError, InvalidRequest
from disgorge.ledger import bitmap as bm
from disgorge.ledger.schema import MIGRATIONS
from disgorge.models import store
from disgorge.report.html import render_report

# The guard off: three steps always change the weights, in whichever order concurrent requests run.
FAST = {"method": "finetune", "options": {"max_steps": 3, "max_retain_drop": 100}, "verify": "none"}


def _active_with_erased(ws: Workspace) -> list[str]:
    erased = ws.ledger.erased_ids()
    return [m.id for m in ws.ledger.models(status="active") if m.records & erased]


def _problems(ws: Workspace) -> dict[str, list[str]]:
    return {f.name: f.problems for f in doctor.examine(ws) if f.problems}


def test_erasure_deletes_superseded_weights_and_keeps_lineage(backdoor_ws, trained_id):
    ws = backdoor_ws
    result = api.forget(ws, sources=["contributor-07"], **FAST)
    assert result.deletion.purged == [trained_id] and not result.deletion.pending
    parent = ws.ledger.model(trained_id)
    assert parent.status == "superseded" and parent.weights_deleted_at is not None
    folder = ws.model_dir(trained_id)
    assert not (folder / store.WEIGHTS).exists()
    assert (folder / "README.md").exists() and bm.loads((folder / "records.roaring").read_bytes()) == parent.records
    with pytest.raises(InvalidRequest, match="weights were deleted"):
        ws.load_model(trained_id)
    ws.load_model(result.children[0].id)  # the child is intact
    assert _problems(ws) == {}


def test_keep_superseded_then_purge(backdoor_ws, trained_id):
    ws = backdoor_ws
    result = api.forget(ws, sources=["contributor-07"], keep_superseded=True, **FAST)
    assert result.deletion.kept == [trained_id] and result.deletion.purged == []
    assert (ws.model_dir(trained_id) / store.WEIGHTS).exists()
    api.train(ws, ws.recipe_of(ws.ledger.model(trained_id)))  # a later command does not delete kept weights
    assert (ws.model_dir(trained_id) / store.WEIGHTS).exists()
    assert _problems(ws) == {}
    deletion = api.purge(ws)
    assert deletion.purged == [trained_id]
    assert not (ws.model_dir(trained_id) / store.WEIGHTS).exists()


def test_retire_takes_a_model_out_of_service(backdoor_ws, trained_id):
    ws = backdoor_ws
    row = api.retire(ws, trained_id)
    assert row.status == "retired" and row.weights_deleted_at is not None
    assert not (ws.model_dir(trained_id) / store.WEIGHTS).exists()
    result = api.forget(ws, sources=["contributor-07"], **FAST)  # nothing in service saw them: only erased
    assert result.children == [] and ws.ledger.model(trained_id).status == "retired"
    with pytest.raises(InvalidRequest, match="already retired"):
        api.retire(ws, trained_id)


def test_erased_records_lose_attributes(backdoor_ws):
    ws = backdoor_ws
    ids = ws.ledger.record_ids(sources=["contributor-07"])
    with ws.ledger.transaction() as db:  # give them attributes, as a file with --attribute would
        db.execute(f"UPDATE records SET attributes='{{\"group\": \"a\"}}' WHERE id IN ({','.join(map(str, ids))})")
    api.forget(ws, sources=["contributor-07"], **FAST)
    assert all(r.attributes == {} and r.fields is None for r in ws.ledger.records(ids))


def test_blocked_checkpoint_is_pending_then_finished(backdoor_ws):
    ws = backdoor_ws
    ids = ws.ledger.record_ids(sources=["contributor-07"])
    secret = ws.ledger.records([ids.min()])[0].fields["x"].tobytes()
    reader = sqlite3.connect(ws.ledger.path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM records").fetchone()  # an open snapshot blocks the checkpoint
    result = api.forget(ws, sources=["contributor-07"], **FAST)
    assert result.deletion.pending and ws.ledger.checkpoint_pending
    assert "erasure" in _problems(ws)
    reader.close()
    with ws.writing():  # any later command finishes it first
        pass
    assert not ws.ledger.checkpoint_pending
    files = b"".join(p.read_bytes() for p in ws.ledger.path.parent.glob("ledger.sqlite*"))
    assert secret not in files


def test_a_model_trained_on_records_erased_meanwhile_is_refused(backdoor_ws, trained_id):
    ws = backdoor_ws
    row = ws.ledger.model(trained_id)
    stale = type(row)(**{**vars(row), "id": ws.ledger.reserve_model_id()})  # what a slow `train` read earlier
    api.forget(ws, sources=["contributor-07"], **FAST)
    with pytest.raises(InvalidRequest, match="were erased while it was being made"):
        ws.ledger.insert_model(stale)
    assert _active_with_erased(ws) == []


def _forget_in_process(root: str, source: str, queue: multiprocessing.Queue) -> None:
    try:
        with Workspace.open(root) as ws:
            api.forget(ws, sources=[source], **FAST)
        queue.put((source, "ok"))
    except DisgorgeError as exc:
        queue.put((source, str(exc)))


def test_concurrent_forgets_all_complete_one_after_the_other(backdoor_ws):
    ws = backdoor_ws
    sources = ["contributor-01", "contributor-02", "contributor-03"]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_forget_in_process, args=(str(ws.root), s, queue)) for s in sources]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    outcomes = dict(queue.get(timeout=5) for _ in sources)
    assert outcomes == {s: "ok" for s in sources}
    requests = ws.ledger.requests()
    assert len(requests) == 3 and all(r.status == "erased" for r in requests)
    assert _active_with_erased(ws) == []
    active = [m for m in ws.ledger.models(status="active") if m.kind != "reference"]
    assert len(active) == 1 and active[0].request_id == max(r.id for r in requests)  # one lineage, three links
    assert _problems(ws) == {}


def test_tampered_bitmap_is_caught_before_erasing(backdoor_ws, trained_id):
    ws = backdoor_ws
    row = ws.ledger.model(trained_id)
    hidden = row.records - ws.ledger.record_ids(sources=["contributor-07"])
    with ws.ledger.transaction() as db:  # an attacker hides a source from the model's lineage
        db.execute("UPDATE models SET records=?, n_records=? WHERE id=?", (bm.dumps(hidden), len(hidden), row.id))
    before = ws.ledger.count_records()
    with pytest.raises(IntegrityError, match=f"model {trained_id} was edited outside disgorge"):
        api.forget(ws, sources=["contributor-07"], **FAST)
    assert ws.ledger.count_records() == before and ws.ledger.requests() == []
    assert any("edited outside disgorge" in p for p in _problems(ws)["chain"])


def test_swapped_weights_with_updated_sha_are_caught(backdoor_ws, trained_id):
    ws = backdoor_ws
    result = api.forget(ws, sources=["contributor-07"], erase=False, **FAST)
    child = result.children[0].id
    parent_weights = (ws.model_dir(trained_id) / store.WEIGHTS).read_bytes()
    target = ws.model_dir(child) / store.WEIGHTS
    os.chmod(target, 0o644)
    target.write_bytes(parent_weights)  # the "unlearned" model is the original again
    with ws.ledger.transaction() as db:
        db.execute("UPDATE models SET weights_sha256=? WHERE id=?", (store.sha256_bytes(parent_weights), child))
    with pytest.raises(IntegrityError, match=f"model {child}"):
        api.verify(ws, child, level="heldout")
    with pytest.raises(IntegrityError):
        api.erase(ws, result.request_id)
    assert ws.ledger.request(result.request_id).status == "held"


def test_edited_certificate_file_is_reported(backdoor_ws):
    ws = backdoor_ws
    result = api.forget(ws, sources=["contributor-07"], method="finetune", options={"max_steps": 3},
                        verify="heldout", accept_failed=True)
    path = Path(next(iter(result.paths.values()))["json"])
    cert = json.loads(path.read_text())
    cert["verdict"] = "passed" if cert["verdict"] != "passed" else "failed"
    path.write_text(json.dumps(cert))
    assert any(str(path) in p for p in _problems(ws)["certificates"])
    assert "The signature does not verify" in render_report(ws, str(result.request_id))


def test_orphan_folders_are_reported_and_removed(backdoor_ws, trained_id):
    ws = backdoor_ws
    orphan = ws.models_dir / "m999"
    orphan.mkdir()
    (orphan / store.WEIGHTS).write_bytes(b"left by a killed forget")
    assert _problems(ws)["orphans"]
    fixed = doctor.repair(ws)
    assert not orphan.exists() and any("m999" in f for f in fixed) and _problems(ws) == {}
    orphan.mkdir()
    with ws.writing():  # every writing command cleans up first
        pass
    assert not orphan.exists() and ws.model_dir(trained_id).exists()


def test_private_permissions_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        ws = Workspace.init(tmp_path / "ws")
    finally:
        os.umask(old)
    state = tmp_path / "ws" / ".disgorge"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("ledger.sqlite", "secret", "signing.key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert _problems(ws) == {}
    os.chmod(state / "secret", 0o644)
    assert _problems(ws)["permissions"]
    doctor.repair(ws)
    assert stat.S_IMODE((state / "secret").stat().st_mode) == 0o600
    ws.close()


def test_reports_never_written_through_a_link(backdoor_ws, tmp_path):
    ws = backdoor_ws
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.reports_dir / "r1").symlink_to(outside)
    with pytest.raises(DisgorgeError, match="symbolic link"):
        api.forget(ws, sources=["contributor-07"], method="finetune", options={"max_steps": 3}, verify="heldout",
                   accept_failed=True)
    assert list(outside.iterdir()) == []


def test_a_fifo_in_place_of_weights_is_an_error_not_a_hang(backdoor_ws, trained_id):
    ws = backdoor_ws
    weights = ws.model_dir(trained_id) / store.WEIGHTS
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(IntegrityError, match="not a regular file"):
        ws.load_model(trained_id)


def test_version_1_ledger_is_migrated_and_sealed(tmp_path):
    root = tmp_path / "ws"
    Workspace.init(root).close()
    db = root / ".disgorge" / "ledger.sqlite"
    db.unlink()
    old = sqlite3.connect(db)
    old.executescript(MIGRATIONS[0])
    old.execute("INSERT INTO models(id, kind, task, recipe, recipe_sha256, weights_sha256, records, n_records, "
                "seconds, created_at) VALUES('m1', 'trained', 'classification', '', 'r', 'w', ?, 2, 1.0, 'now')",
                (bm.dumps(BitMap([1, 2])),))
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    with Workspace.open(root) as ws:
        assert ws.ledger.schema_version == len(MIGRATIONS)
        assert ws.ledger.model("m1").records == BitMap([1, 2])
        assert ws.ledger.chain_problems() == []
        ws.ledger.set_model_status("m1", "retired")  # the new status is allowed
        assert ws.ledger.chain_problems() == []


def _scenario_records(source: str) -> list:
    from disgorge.scenarios import get_scenario

    return next(s for s in get_scenario("digits-backdoor").sources() if s.name == source).records


def test_erased_content_is_refused_in_another_container_or_slightly_edited(backdoor_ws, tmp_path):
    ws = backdoor_ws
    erased = _scenario_records("contributor-07")
    api.forget(ws, sources=["contributor-07"], **FAST)
    x = np.stack([r.fields["x"].reshape(-1).astype(np.float64) for r in erased[:10]])
    y = np.array([int(r.fields["y"][0]) for r in erased[:10]])
    again = tmp_path / "again.npz"  # float64 instead of float32, relabelled (flattening is refused by shape)
    np.savez(again, x=x.reshape(-1, 8, 8), y=(y + 1) % 10)
    before = ws.ledger.count_records()
    with pytest.raises(InvalidRequest, match="near-duplicates of content erased"):
        api.ingest_file(ws, again, source="someone-else", license="CC0-1.0")
    edited = x.copy()
    edited[:, 27] += 1.0  # one pixel brighter by 1/16 of the range
    npz = tmp_path / "edited.npz"
    np.savez(npz, x=edited.astype(np.float32).reshape(-1, 8, 8), y=y)
    with pytest.raises(InvalidRequest, match="near-duplicates of content erased"):
        api.ingest_file(ws, npz, source="someone-else", license="CC0-1.0")
    assert ws.ledger.count_records() == before and ws.ledger.find_source("someone-else") is None
    live = ws.ledger.record_ids(split=None)
    assert ws.ledger.near_duplicate_share(live) <= 0.01  # live records of other contributors are not refused
    other = _scenario_records("contributor-03")  # and fresh, different content is accepted
    fresh = tmp_path / "fresh.npz"
    np.savez(fresh, x=np.stack([r.fields["x"] for r in other[:5]]) * 0.5 + 3.0, y=np.arange(5))
    assert len(api.ingest_file(ws, fresh, source="newcomer", license="CC0-1.0").added) == 5


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from disgorge.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_doctor_retire_and_purge_commands(backdoor_ws, trained_id, capsys):
    ws = backdoor_ws
    root = str(ws.root)
    code, out, _ = _cli(["doctor", "--json", "-w", root], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    with ws.ledger.transaction() as db:
        db.execute("UPDATE models SET seconds=0.001 WHERE id=?", (trained_id,))  # an edit outside disgorge
    code, out, _ = _cli(["doctor", "--json", "-w", root], capsys)
    report = json.loads(out)
    assert code == 1 and not report["checks"]["chain"]["ok"] and report["checks"]["models"]["ok"]
    code, _, err = _cli(["forget", "--source", "contributor-07", "--no-verify", "-w", root], capsys)
    assert code == 2 and err.count("\n") == 1 and "edited outside disgorge" in err
    code, out, _ = _cli(["doctor", "--repair", "-w", root], capsys)
    assert code == 1 and "chain" in out  # tampering is reported, never repaired
    code, out, _ = _cli(["retire", trained_id, "--json", "-w", root], capsys)
    assert code == 0 and json.loads(out)["status"] == "retired"
    code, out, _ = _cli(["models", "--all", "--json", "-w", root], capsys)
    (row,) = [m for m in json.loads(out) if m["model"] == trained_id]
    assert row["status"] == "retired" and row["weights_deleted_at"]
    code, out, _ = _cli(["purge", "--json", "-w", root], capsys)
    assert code == 0 and json.loads(out)["purged"] == []
