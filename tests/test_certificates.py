"""Certificates stand alone: they name what was forgotten, when, with what software on which machine, and carry an
Ed25519 signature that anyone can check without the workspace (and, with it, against its key, weights and ledger)."""

from __future__ import annotations

import copy
import json
import shutil
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from disgorge import Workspace, forget
from disgorge.api import check_certificate
from disgorge.errors import IntegrityError, InvalidRequest
from disgorge.evidence.signing import canonical, sign, verify_signature


@pytest.fixture(scope="module")
def certified_template(backdoor_template: tuple[Path, str],
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A closed workspace where contributor-07 was forgotten (once per module), its certificate file's path inside
    it, and the certificate forget returned."""
    root = tmp_path_factory.mktemp("certified") / "ws"
    shutil.copytree(backdoor_template[0], root)
    with Workspace.open(root) as ws:
        result = forget(ws, sources=["contributor-07"], method="grad_diff", reason="withdrew consent",
                        verify="exact")
    (cert,) = result.certificates
    return root, Path(result.paths[cert["models"]["child"]["id"]]["json"]).relative_to(root), cert


@pytest.fixture
def certified(certified_template: tuple[Path, Path, dict[str, Any]],
              tmp_path: Path) -> Iterator[tuple[Workspace, Path, dict[str, Any]]]:
    """A private copy of that workspace (open), its certificate file, and the certificate forget returned."""
    src, rel, cert = certified_template
    root = tmp_path / "ws"
    shutil.copytree(src, root)
    ws = Workspace.open(root)
    yield ws, root / rel, copy.deepcopy(cert)
    ws.close()


def _checks(result: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in result["checks"]}


def _edit(path: Path, change) -> None:
    cert = json.loads(path.read_text())
    change(cert)
    path.write_text(json.dumps(cert, indent=2))


def test_certificate_names_request_sources_times_versions_machine(certified):
    """The file says what was forgotten (source names and counts), why, when (UTC), with what and where."""
    ws, path, cert = certified
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(cert))
    assert on_disk["format"] == "disgorge-certificate/3"
    req = on_disk["erasure_request"]
    assert req["id"] == on_disk["request"]
    assert req["selector"]["sources"] == ["contributor-07"]
    assert [(s["name"], s["records"]) for s in req["sources"]] == [("contributor-07", 72)]
    assert req["reason"] == "withdrew consent"
    row = ws.ledger.request(on_disk["request"])
    assert req["created_at"] == row.created_at and req["selector"] == row.selector
    for stamp in (on_disk["issued_at"], req["created_at"]):
        when = datetime.fromisoformat(stamp)
        assert when.utcoffset() == timedelta(0), stamp
        assert abs((datetime.now(when.tzinfo) - when).total_seconds()) < 3600
    software = on_disk["software"]
    assert {"disgorge", "python", "torch", "numpy", "scikit-learn", "safetensors"} <= set(software)
    assert all(software[k] for k in ("disgorge", "python", "torch", "numpy"))
    machine = on_disk["machine"]
    assert machine["cores"] >= 1 and machine["platform"] and machine["processor"] and machine["device"] == "cpu"
    assert all(len(m["sha256"]) == 64 for m in on_disk["models"].values())
    md = path.with_name("certificate.md").read_text()
    assert "contributor-07 (72 records)" in md and on_disk["signature"]["public_key"] in md


def test_signature_verifies_without_the_workspace(certified):
    """The signature covers the canonical JSON; checking without a workspace checks only it, and says so."""
    _, path, _ = certified
    cert = json.loads(path.read_text())
    block = cert["signature"]
    assert block["algorithm"] == "ed25519" and "every key but 'signature'" in block["signed"]
    assert verify_signature(cert)
    result = check_certificate(path)
    assert result["valid"] and _checks(result) == {"signature": True}
    assert "signature only" in result["scope"] and "no workspace" in result["scope"]
    assert block["public_key"] in result["checks"][0]["detail"]
    # whitespace is not content: a re-indented file still verifies
    path.write_text(json.dumps(cert, sort_keys=True))
    assert check_certificate(path)["valid"]


def test_every_check_passes_against_its_workspace(certified):
    """With the workspace: its key signed it, every model's weights and ledger row match, the request agrees."""
    ws, path, _ = certified
    result = check_certificate(path, ws)
    assert result["valid"], result
    assert _checks(result) == {name: True for name in (
        "signature", "workspace_key", "ledger:parent", "weights:child", "ledger:child",
        "weights:reference", "ledger:reference", "ledger:lineage", "ledger:request", "ledger:sealed")}
    # the parent saw the erased records, so its weights were deleted: its sealed ledger row stands for them
    assert all(c["detail"] for c in result["checks"])
    assert [s["name"] for s in result["skipped"]] == ["weights:parent"]


@pytest.mark.parametrize("change", [
    pytest.param(lambda c: c["metrics"]["unlearned"].update(effect=c["metrics"]["unlearned"]["effect"] + 0.01),
                 id="figure"),
    pytest.param(lambda c: c.update(passed=not c["passed"]), id="passed"),
    pytest.param(lambda c: c["erasure_request"]["sources"][0].update(name="contributor-08"), id="source-name"),
    pytest.param(lambda c: c["erasure_request"]["sources"][0].update(records=1), id="source-count"),
    pytest.param(lambda c: c.pop("machine"), id="removed-key"),
    pytest.param(lambda c: c.update(extra=1), id="added-key"),
])
def test_any_edit_breaks_the_signature(certified, change):
    """Editing any value of the JSON file makes the signature check fail, with or without the workspace."""
    ws, path, _ = certified
    _edit(path, change)
    for result in (check_certificate(path), check_certificate(path, ws)):
        assert not result["valid"]
        (sig,) = [c for c in result["checks"] if c["name"] == "signature"]
        assert not sig["passed"] and "changed after it was signed" in sig["detail"]


def test_missing_signature_is_invalid(certified):
    """A certificate with its signature block removed is reported, not accepted."""
    _, path, _ = certified
    _edit(path, lambda c: c.pop("signature"))
    result = check_certificate(path)
    assert not result["valid"] and "no signature" in result["checks"][0]["detail"]


def test_resigned_with_another_key_fails_the_workspace_key_check(certified):
    """An edited certificate re-signed with someone else's key verifies alone, but not as this workspace's."""
    ws, path, _ = certified
    cert = json.loads(path.read_text())
    cert["passed"] = True
    cert["metrics"]["unlearned"]["effect"] = 0.0
    cert["signature"] = sign(cert, Ed25519PrivateKey.generate())
    path.write_text(json.dumps(cert, indent=2))
    assert check_certificate(path)["valid"], "the signature itself is sound"
    result = check_certificate(path, ws)
    assert not result["valid"]
    checks = _checks(result)
    assert checks["signature"] and not checks["workspace_key"]
    assert [c["name"] for c in result["checks"] if not c["passed"]] == ["workspace_key"]


@pytest.mark.parametrize("change", [
    lambda c: c.__setitem__("records", 5),
    lambda c: c["erasure_request"].__setitem__("sources", [{"name": ["x"], "records": 1}]),
    lambda c: c.__setitem__("models", "m2"),
], ids=["records-not-a-table", "source-name-a-list", "models-not-a-table"])
def test_malformed_content_is_reported_not_raised(certified, change):
    """A hand-edited certificate whose content has the wrong shape is reported invalid, never a traceback."""
    ws, path, _ = certified
    _edit(path, change)
    result = check_certificate(path, ws)
    assert not result["valid"] and not _checks(result)["signature"]


def test_content_json_cannot_encode_is_reported_not_raised(certified):
    """A lone surrogate in the text (valid JSON escape, not encodable) fails the signature check cleanly."""
    _, path, _ = certified
    path.write_text(path.read_text().replace('"reason": "withdrew consent"', '"reason": "\\ud800"'))
    result = check_certificate(path)
    assert not result["valid"] and "canonical form" in result["checks"][0]["detail"]


def test_replaced_weights_fail_the_weights_check(certified):
    """A model's weights file with other bytes no longer matches the certificate's sha256."""
    ws, path, cert = certified
    child = cert["models"]["child"]["id"]
    weights = ws.model_dir(child) / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(b"other bytes")
    result = check_certificate(path, ws)
    assert not result["valid"]
    assert [c["name"] for c in result["checks"] if not c["passed"]] == ["weights:child"]
    (failed,) = [c for c in result["checks"] if c["name"] == "weights:child"]
    assert child in failed["detail"] and cert["models"]["child"]["sha256"] in failed["detail"]
    weights.unlink()
    assert not _checks(check_certificate(path, ws))["weights:child"]


def test_key_file_is_private_and_created_on_first_use(certified):
    """The signing key is mode 0600; a workspace made before keys existed gets one when it first signs."""
    ws, path, _ = certified
    key = ws.signing_key_path
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    key.unlink()
    result = check_certificate(path, ws)
    assert not result["valid"] and not _checks(result)["workspace_key"]
    assert not key.exists(), "checking a certificate must not create a key"
    from disgorge.api import verify

    verify(ws, json.loads(path.read_text())["models"]["child"]["id"])  # rewrites the certificate, signing it anew
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert check_certificate(path, ws)["valid"]


def test_unreadable_input_is_a_one_line_error(tmp_path):
    """A file that is not JSON, or JSON that is not a certificate, raises one clear line; nothing else raises."""
    bad = tmp_path / "certificate.json"
    bad.write_text("{ not json")
    with pytest.raises(IntegrityError, match="not valid JSON") as info:
        check_certificate(bad)
    assert "\n" not in str(info.value)
    bad.write_text('{"hello": 1}')
    with pytest.raises(InvalidRequest, match="not a disgorge certificate") as info:
        check_certificate(bad)
    assert "\n" not in str(info.value)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(IntegrityError):
        check_certificate(bad)


def test_rejected_certificate_is_signed_and_checks(backdoor_ws):
    """The certificate of a rejected request is signed too; its discarded child is not looked for."""
    from disgorge.erasure import VerificationFailed

    with pytest.raises(VerificationFailed) as info:
        forget(backdoor_ws, sources=["contributor-07"], method="finetune", options={"epochs": 1, "lr": 1e-5})
    path = Path(str(info.value).split("certificate: ")[1].split(")")[0])
    result = check_certificate(path, backdoor_ws)
    assert result["valid"], result
    assert [s["name"] for s in result["skipped"]] == ["weights:child"]
    assert _checks(result)["ledger:request"] and _checks(result)["ledger:child"]


def test_canonical_form_excludes_only_the_signature():
    """The signed bytes are the sorted, compact UTF-8 JSON of every other key."""
    cert = {"b": 1, "a": "é", "signature": {"value": "x"}}
    assert canonical(cert) == '{"a":"é","b":1}'.encode()
