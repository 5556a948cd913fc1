"""The human report of an erasure request: one self-contained HTML file (inline CSS and SVG, nothing fetched).

It is written for people who never run Python (a data subject, a rights holder, an auditor): what was asked and why,
what was removed, the verdict with its evidence level (``exact``: against a model retrained without the records;
``reference-free``: against held-out data, nothing retrained) and what that level proves and does not, the models'
lineage, the figures and checks (the decisive ones first), the robustness attacks, the cost, plots of the loss
distributions and membership-attack ROC curves stored in the certificate, and the environment and hashes.
Everything is read from the workspace (ledger and certificate files); nothing is measured again, since the forget
set's records are erased right after certification.
"""

from __future__ import annotations

import io
import json
import platform
import re
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import matplotlib as mpl
import torch
from markupsafe import Markup
from matplotlib.figure import Figure

from .._io import atomic_write_text, read_regular
from ..errors import DisgorgeError, InvalidRequest, NotFound
from ..evidence.certificate import VERDICTS, check_rows, columns, figure_rows, robustness_rows, software_versions
from ..evidence.signing import signature_problem
from ..ledger import ModelRow, RequestRow
from ..workspace import Workspace

TEMPLATE = "report.html.j2"
"""The Jinja2 template (in ``disgorge/report/templates``) the report is rendered from."""

MODELS = ("original", "unlearned", "reference")
"""The models a certificate may measure, in the order the report shows them (a reference-free one has no
reference)."""
MODEL_LABELS = {"original": "original", "unlearned": "unlearned", "reference": "retrained reference"}
"""How the report names each of :data:`MODELS`."""
COLORS = {"original": "#868e96", "unlearned": "#1c7ed6", "reference": "#2f9e44", "forget": "#e8590c",
          "test": "#495057"}
"""Plot colours of the models and of the forget and held-out sets (the template's CSS uses the same)."""

DECISIVE_HOW = "distance to the target at most the limit: the noise, or what is left after closing {closure} of " \
               "the original's distance"
"""How a decisive check compares (``closure`` filled in from the certificate's thresholds)."""

CHECKS = {
    "membership": ("Membership: how well a membership attack tells the forgotten records from held-out records "
                   "the model never saw (AUC in percent; 50 = not at all). Value: distance to {target}",
                   DECISIVE_HOW),
    "parity": ("Accuracy parity: accuracy on the forgotten records minus accuracy on held-out records of the same "
               "kind, in points (0 = the forgotten records are treated like unseen data). Value: distance to "
               "{target}", DECISIVE_HOW),
    "verbatim": ("Verbatim memorisation: how much more of the forgotten text the model reproduces word for word "
                 "(ROUGE-L) than of held-out text, in points (0 = like unseen text). Value: distance to {target}",
                 DECISIVE_HOW),
    "effect": ("The effect to remove, in percent (an effect probe: e.g. how often a planted trigger still works). "
               "Value: distance to {target}", DECISIVE_HOW),
    "changed": ("The unlearned model's weights differ from the original's", "must be yes"),
    "ta_drop": ("Drop in held-out (test) accuracy against {base}, in points", "at most the limit"),
    "ra_drop": ("Drop in retain accuracy (on the records kept) against {base}, in points", "at most the limit"),
    "forget_quality": ("Forget quality (TOFU): p-value that the unlearned model's truth ratios on the forget set "
                       "look like the retrained reference's", "at least the limit"),
    "shards_clean": ("Sharded model: forgotten records in the training data of the unlearned model's shards, "
                     "counted from the ledger's shard bitmaps (the original's count beside it)", "must be 0"),
    "checkpoints_clean": ("Sharded model: forgotten records in the slices before the checkpoints the retrained "
                          "shards restarted from", "must be 0"),
}
"""Plain-language description and comparison of each certificate check, by name (``effect:<probe>`` reads as
``effect``); ``{target}`` and ``{base}`` name what the certificate's level compares with."""

TARGETS = {
    "exact": {"target": "the retrained reference's figure", "base": "the retrained reference",
              "long": "the figure of the model retrained from scratch without the records"},
    "reference-free": {"target": "the level of unseen data", "base": "the original",
                       "long": "what a model that never saw the records scores, measured on held-out data: a "
                               "membership AUC of 50, no accuracy gap, each effect at its base rate"},
}
"""Per evidence level: a decisive check's target (short, and ``long`` for the page), and what the utility drops
are measured against (``base``)."""

THRESHOLDS = {
    "closure": "share of the original's distance a decisive figure must close",
    "floors": "noise floors of the decisive figures (points)",
    "ta_drop": "test accuracy drop (points)",
    "ra_drop": "retain accuracy drop (points)",
    "forget_quality": "forget quality (minimum p-value)",
}
"""Plain-language name of each certificate threshold (older certificates' others are shown by their key)."""

VERDICT_WORDS = {"passed": VERDICTS["passed"], "failed": VERDICTS["failed"],
                 "indistinguishable": VERDICTS["indistinguishable"]}
"""The verdict a certificate records (``verdict``; ``passed`` in older ones) and how the report names it."""
NOT_VERIFIED = "NOT VERIFIED"

LEVEL_HELP = {
    "exact": "a model was retrained from scratch without the records and the unlearned model was compared with it",
    "reference-free": "no model was retrained: the unlearned model was compared with held-out records it never saw",
}
"""One line on each evidence level, for the banner."""

_SIGNING = re.compile(r"sign|public_key|key_id|fingerprint", re.IGNORECASE)
_PROVENANCE = ("issued_at", "software", "machine", "environment", "provenance")
"""Certificate keys that say when, with what software and on which machine it was made (shown where present)."""


def render_report(ws: Workspace, target: str) -> str:
    """The HTML report of an erasure request (``"3"`` or ``"r3"``) or of one unlearned model (``"m2"``): one
    self-contained page with a section per unlearned model (certificate)."""
    request_id, only = _resolve(ws, target)
    row = _request(ws, request_id)
    children = [only] if only is not None else _children(ws, request_id, row)
    sections = [_section(ws, request_id, child, i) for i, child in enumerate(children)]
    request = _request_facts(ws, request_id, row, [s["cert"] for s in sections if s["cert"]])
    verdict = _overall([s["verdict"] for s in sections])
    context = {
        "title": f"Erasure request r{request_id}" + (f", model {only}" if only else ""),
        "request_id": request_id,
        "request": request,
        "verdict": verdict,
        "evidence": sorted({s["evidence"] for s in sections if s["cert"]}),
        "level_help": LEVEL_HELP,
        "sections": sections,
        "environment": _environment(),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workspace": str(ws.root),
        "scenario": ws.scenario,
    }
    return _template().render(**context)


def _overall(verdicts: list[str]) -> str:
    """The request's verdict from its models': not verified if any is, failed if any failed, passed only if all
    passed, else indistinguishable (which is never shown as a pass)."""
    if not verdicts or NOT_VERIFIED in verdicts:
        return NOT_VERIFIED
    if VERDICTS["failed"] in verdicts:
        return VERDICTS["failed"]
    if all(v == VERDICTS["passed"] for v in verdicts):
        return VERDICTS["passed"]
    return VERDICTS["indistinguishable"]


def write_report_html(ws: Workspace, target: str, out: Path | None = None) -> Path:
    """Render :func:`render_report` and write it atomically to ``out`` (default ``reports/r<request>/report.html``
    in the workspace, ``reports/r<request>/<model>/report.html`` for one model); return the path."""
    html = render_report(ws, target)
    if out is None:
        request_id, only = _resolve(ws, target)
        out = ws.report_dir(request_id, *([only] if only else []), "report.html")
    out = Path(out)
    atomic_write_text(out, html)
    return out


# -- what the report is about ---------------------------------------------------------------------------------------
def _resolve(ws: Workspace, target: str) -> tuple[int, str | None]:
    """(request id, the one unlearned model or None) a report target names."""
    text = str(target).strip()
    if re.fullmatch(r"[rR]?\d+", text):
        return int(text.lstrip("rR")), None
    if re.fullmatch(r"m\d+", text):
        row = ws.ledger.model(text)
        if row.kind != "unlearned" or row.request_id is None:
            raise InvalidRequest(f"model {text} is a {row.kind} model, not the result of an erasure request; a report "
                                 "covers a request (r3) or a model it unlearned")
        return row.request_id, text
    raise InvalidRequest(f"a report takes an erasure request id (3 or r3) or an unlearned model id (m2), "
                         f"not {text!r}")


def _request(ws: Workspace, request_id: int) -> RequestRow | None:
    """The ledger's request; None for one never committed whose rejected certificates are on disk."""
    try:
        return ws.ledger.request(request_id)
    except NotFound:
        if _certificate_files(ws, request_id):
            return None
        raise


def _certificate_files(ws: Workspace, request_id: int) -> list[Path]:
    folder = ws.report_dir(request_id)
    return sorted(folder.glob("*/certificate.json")) if folder.is_dir() else []


def _children(ws: Workspace, request_id: int, request: RequestRow | None) -> list[str]:
    if request is None:
        return [p.parent.name for p in _certificate_files(ws, request_id)]
    return list(request.results.get("children") or request.results.get("certificates", {}).keys())


def _certificate(ws: Workspace, request_id: int, child: str) -> dict[str, Any] | None:
    """A child's certificate: its file (which may carry more, e.g. a signature; an altered file is shown with its
    failing signature, and `disgorge doctor` compares it with the ledger's sealed copy), else the ledger's copy."""
    path = ws.report_dir(request_id, child, "certificate.json")
    if path.is_file():
        try:
            return json.loads(read_regular(path, "certificate"))
        except (DisgorgeError, ValueError):
            pass
    request = ws.ledger.find_request(request_id)
    return request.results.get("certificates", {}).get(child) if request else None


def _request_facts(ws: Workspace, request_id: int, row: RequestRow | None,
                   certs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the report says about the request: from the ledger, or, for a request never committed (its result
    failed verification), from its rejected certificates."""
    if row is not None:
        return {"id": row.id, "committed": True, "selector": row.selector, "reason": row.reason,
                "method": row.method, "status": row.status, "records": len(row.records),
                "affected": row.affected, "children": list(row.results.get("children") or []),
                "created_at": row.created_at, "completed_at": row.completed_at,
                "sources": ws.sources_of(row.records)}
    stated = next((c.get("erasure_request") for c in certs if isinstance(c.get("erasure_request"), dict)), {})
    return {"id": request_id, "committed": False, "selector": stated.get("selector") or {},
            "reason": stated.get("reason") or "", "method": certs[0].get("method", "?") if certs else "?",
            "status": "not committed (verification failed; nothing erased)",
            "records": max((c["records"]["forgotten"] for c in certs), default=0),
            "affected": [c["models"]["parent"]["id"] for c in certs],
            "children": [c["models"]["child"]["id"] for c in certs],
            "created_at": stated.get("created_at") or "", "completed_at": None,
            "sources": stated.get("sources") or []}


# -- one unlearned model ----------------------------------------------------------------------------------------------
def _section(ws: Workspace, request_id: int, child: str, index: int) -> dict[str, Any]:
    cert = _certificate(ws, request_id, child)
    row = ws.ledger.find_model(child)
    section: dict[str, Any] = {"child": child, "row": row, "cert": cert, "index": index}
    if cert is None:
        section.update(verdict=NOT_VERIFIED, evidence=None,
                       lineage=_lineage_svg(ws, row.parent if row else None, child,
                                            row.method if row else None, None),
                       plots=[], missing=[])
        return section
    salt = f"r{request_id}-{child}"
    models = cert["models"]
    reference = models.get("reference")
    evidence = _evidence(cert)
    thresholds = cert.get("thresholds") or {}
    records = cert.get("records") or {}
    heldout = None
    if reference is None:
        heldout = f"{records.get('heldout_matched', '?')} records, by {records.get('matched_by', '?')}"
    section.update(
        verdict=VERDICT_WORDS[_verdict(cert)],
        evidence=evidence,
        target=TARGETS[evidence],
        purpose=_purpose(cert),
        columns=columns(cert),
        figures=figure_rows(cert),
        checks=_checks(cert, evidence),
        robustness=_robustness(cert),
        cost=_cost(cert),
        thresholds=[(THRESHOLDS.get(k, k.replace("_", " ")), _threshold(k, v)) for k, v in thresholds.items()],
        units=(cert.get("figures") or {}).get("units", "Figures in percent."),
        lineage=_lineage_svg(ws, models["parent"]["id"], child, cert.get("method"),
                             reference["id"] if reference else None, heldout),
        hashes=[(MODEL_LABELS.get(k, k) if k != "parent" else "original (parent)", models[k]["id"],
                 models[k]["sha256"]) for k in ("parent", "child", "reference") if k in models],
        config=cert.get("config") or {},
        auto=cert.get("auto"),
        strong=cert.get("strong"),
        signing=_signing(cert),
        signature_problem=signature_problem(cert) if cert.get("signature") else None,
        provenance=_provenance(cert),
        outcome=cert.get("outcome"),
    )
    plots, missing = [], []
    with mpl.rc_context(_RC):
        bars = _accuracy_plot(cert, f"{salt}-acc")
        if bars is not None:
            plots.append(bars)
        else:
            missing.append("Accuracy bars: this certificate has no forget, retain and held-out accuracies.")
        curves = cert.get("curves")
        if curves and curves.get("models"):
            plots.append(_histogram_plot(curves, f"{salt}-hist", exact=reference is not None))
            roc = _roc_plot(curves, f"{salt}-roc", exact=reference is not None)
            if roc is not None:
                plots.append(roc)
        else:
            missing.append("Loss histograms and membership-attack ROC curves: this certificate was made before "
                           "disgorge kept the loss distributions in certificates, and the forgotten records are "
                           "erased, so they cannot be drawn now.")
        effect = _effect_plot(cert, f"{salt}-effect")
        if effect is not None:
            plots.append(effect)
    section.update(plots=plots, missing=missing)
    return section


def _verdict(cert: dict[str, Any]) -> str:
    """The certificate's verdict (``passed``, ``failed``, ``indistinguishable``); older ones only say ``passed``."""
    verdict = cert.get("verdict")
    return verdict if verdict in VERDICT_WORDS else ("passed" if cert.get("passed") else "failed")


def _evidence(cert: dict[str, Any]) -> str:
    """``exact`` or ``reference-free``; older certificates (which always retrained a reference) are exact."""
    evidence = cert.get("evidence")
    if evidence in TARGETS:
        return evidence
    return "exact" if "reference" in (cert.get("models") or {}) else "reference-free"


def _purpose(cert: dict[str, Any]) -> dict[str, Any] | None:
    """The request's purpose and the figures that decided it, named in words; None for older certificates."""
    purpose = cert.get("purpose")
    if not isinstance(purpose, dict):
        return None
    effect = (cert.get("effect") or {}).get("name")
    named = []
    for name in purpose.get("decisive") or []:
        base, _, probe = name.partition(":")
        if base == "effect":
            named.append(f"effect probe ({(probe or effect or 'effect').replace('_', ' ')})")
        else:
            named.append({"membership": "membership", "parity": "accuracy parity",
                          "verbatim": "verbatim memorisation"}.get(base, name))
    return {"name": purpose.get("name", "?"), "help": _sentence(purpose.get("help") or "").strip(),
            "decisive": named}


def _checks(cert: dict[str, Any], evidence: str) -> list[dict[str, Any]]:
    """The checks, decisive ones first (:func:`check_rows`' order and measured text), each explained."""
    checks = cert.get("checks") or {}
    target, base = TARGETS[evidence]["target"], TARGETS[evidence]["base"]
    closure = (cert.get("thresholds") or {}).get("closure")
    closure = f"{closure:.0%}" if isinstance(closure, (int, float)) else "most"
    out = []
    for name, measured, _, _, result in check_rows(cert):
        c = checks[name]
        what, how = CHECKS.get(name.split(":")[0], (name.replace("_", " "), ""))
        if name.startswith("effect:"):
            what = f"Effect probe {name.split(':', 1)[1].replace('_', ' ')}: " + what
        decisive = bool(c.get("decisive"))
        detail = ""
        if decisive and c.get("noise") is not None and c.get("original_distance") is not None:
            detail = (f"noise {_show(c['noise'])}; the original was {_show(c['original_distance'])} from its "
                      "target" + (", within the noise" if c.get("indistinguishable") else ""))
        out.append({"name": name, "decisive": decisive, "what": what.format(target=target, base=base),
                    "how": how.format(closure=closure), "detail": detail, "measured": measured,
                    "value": _show(c.get("value")), "limit": _show(c.get("limit")),
                    "passed": bool(c.get("passed")), "indistinguishable": bool(c.get("indistinguishable")),
                    "result": result})
    return out


def _robustness(cert: dict[str, Any]) -> dict[str, Any] | None:
    """The robustness attacks' rows (:func:`robustness_rows`, with the reference's recovery where it was attacked
    too) and headlines; None when the certificate records none."""
    rob = cert.get("robustness")
    if not isinstance(rob, dict):
        return None
    relearn = rob.get("relearn") or None
    quantized = rob.get("quantized") or {}
    blocks = {"relearn": relearn, "quantized int8": quantized.get("int8"), "quantized int4": quantized.get("int4")}
    floor = {(attack, figure.replace("_", " ")): f.get("recovered")
             for attack, block in blocks.items() if block and isinstance(block.get("reference"), dict)
             for figure, f in (block["reference"].get("figures") or {}).items()}
    reference = bool(floor)
    rows = [{"attack": attack, "figure": figure, "cells": [original, before, after, recovered],
             "floor": _show(floor.get((attack, figure))) if reference else None}
            for attack, figure, original, before, after, recovered in robustness_rows(cert)]
    headlines = []
    for attack, block in blocks.items():
        if not block:
            continue
        ref = block.get("reference") if isinstance(block.get("reference"), dict) else None
        headlines.append({"attack": attack, "scheme": block.get("scheme"), "recovered": block.get("recovered"),
                          "reference": ref.get("recovered") if ref else None, "ratio": block.get("ratio")})
    return {"rows": rows, "reference": reference, "headlines": headlines, "relearn": relearn}


def _cost(cert: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, how long) of the cost: the method against retraining at the exact level; the method and the
    verification against the original's training at the reference-free level."""
    s = cert.get("seconds") or {}
    out = [("time of the method", _seconds(s.get("method")))]
    if s.get("retrain") is not None:
        out.append(("time to retrain (the reference)", _seconds(s["retrain"])))
        ratio = cert.get("time_ratio")
        out.append(("method / retraining", _show(ratio) + (f" ({100 * ratio:.1f}% of retraining)"
                                                          if ratio is not None else "")))
        if s.get("verification") is not None:
            out.append(("time to verify", _seconds(s["verification"])))
    else:
        if s.get("verification") is not None:
            out.append(("time to verify (no retraining)", _seconds(s["verification"])))
        if s.get("training") is not None:
            out.append(("time the original took to train", _seconds(s["training"])))
        ratio = cert.get("verified_time_ratio")
        if ratio is not None:
            out.append(("(method + verification) / training",
                        f"{_show(ratio)} ({100 * ratio:.1f}% of training the original)"))
    stop = (cert.get("method_report") or {}).get("stopping")
    if stop:
        budget = f" of {stop['budget_steps']}" if stop.get("budget_steps") else ""
        out.append(("why the method stopped", f"after {stop['steps']} steps{budget}: {stop['why'] or stop['stopped']}"))
    return out


def _seconds(v: Any) -> str:
    return f"{v:.2f} s" if isinstance(v, (int, float)) else "-"


def _threshold(key: str, value: Any) -> str:
    if key == "closure" and isinstance(value, (int, float)):
        return f"{value:.0%}"
    if key == "floors" and isinstance(value, list):
        return ", ".join(f"{pair[0]} {_show(pair[1])}" for pair in value if isinstance(pair, list) and len(pair) == 2)
    return _show(value)


def _show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:.2f}"
    return str(v)


def _signing(cert: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of the certificate's signature and key fields, flattened one level; empty if unsigned."""
    out: list[tuple[str, str]] = []
    for key, value in cert.items():
        if not _SIGNING.search(key):
            continue
        if isinstance(value, dict):
            out += [(f"{key}.{k}", _text(v)) for k, v in value.items()]
        elif value is not None:
            out.append((key, _text(value)))
    return out


def _provenance(cert: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) of when, with what software and on which machine the certificate was made, where it says so:
    the disgorge and torch versions and the device first, the rest of the software and the machine on one line
    each."""
    out: list[tuple[str, str]] = []
    if cert.get("issued_at"):
        out.append(("issued at", _text(cert["issued_at"])))
    software = cert.get("software") if isinstance(cert.get("software"), dict) else {}
    machine = cert.get("machine") if isinstance(cert.get("machine"), dict) else {}
    out += [(k, _text(software[k])) for k in ("disgorge", "torch") if software.get(k) is not None]
    if machine.get("device") is not None:
        out.append(("device", _text(machine["device"])))
    rest = [f"{k} {_text(v)}" for k, v in software.items() if k not in ("disgorge", "torch") and v is not None]
    if rest:
        out.append(("other software", " · ".join(rest)))
    host = [f"{k.replace('_', ' ')} {_text(v)}" for k, v in machine.items() if k != "device" and v is not None]
    if host:
        out.append(("machine", " · ".join(host)))
    for key in _PROVENANCE[3:]:
        value = cert.get(key)
        if isinstance(value, dict):
            out += [(k, _text(v)) for k, v in value.items() if v is not None and not _SIGNING.search(k)]
    return out


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _environment() -> list[tuple[str, str]]:
    """Where this report was rendered (the certificate's own provenance is shown when it carries one)."""
    versions = software_versions()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return [("disgorge", versions["disgorge"] or "unknown"), ("torch", torch.__version__), ("device", device),
            ("python", versions["python"] or "unknown"), ("platform", platform.platform(terse=True))]


# -- lineage diagram --------------------------------------------------------------------------------------------------
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 168, 58, 190, 64, 16
_MAX_ANCESTORS = 3


def _lineage_svg(ws: Workspace, parent: str | None, child: str, method: str | None,
                 reference: str | None, heldout: str | None = None) -> dict[str, Any]:
    """Boxes and arrows of the lineage, for the template to draw as an inline SVG: the parent's last ancestors,
    parent -> child (the method), and, where a reference was retrained, that reference below the parent with the
    comparison child - reference; where none was (reference-free evidence), the held-out data the child was compared
    with below the child (``heldout`` describes it)."""
    chain: list[ModelRow] = []
    row = ws.ledger.find_model(parent) if parent else None
    while row is not None:
        chain.insert(0, row)
        row = ws.ledger.find_model(row.parent) if row.parent else None
    cut = len(chain) > _MAX_ANCESTORS + 1
    chain = chain[-(_MAX_ANCESTORS + 1):]
    step = _BOX_W + _GAP_X
    x0 = _PAD + (40 if cut else 0)
    y_ref = _PAD + _BOX_H + _GAP_Y
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []

    def node(x: float, y: float, model_id: str, sub: str, status: str, role: str) -> dict[str, Any]:
        nodes.append({"x": x, "y": y, "id": model_id, "sub": sub + (f" · {status}" if status else ""),
                      "role": role})
        return nodes[-1]

    def arrow(a: dict[str, Any], b: dict[str, Any], label: str) -> None:
        y = a["y"] + _BOX_H / 2
        edges.append({"d": f"M {a['x'] + _BOX_W} {y} L {b['x'] - 2} {y}", "dashed": False, "arrow": True,
                      "labels": [{"x": (a["x"] + _BOX_W + b["x"]) / 2, "y": y - 8, "anchor": "middle",
                                  "lines": [label]}]})

    for i, m in enumerate(chain):
        sub = "trained" if m.kind == "trained" else m.kind
        node(x0 + i * step, _PAD, m.id, sub, m.status, "original" if m.id == parent else "ancestor")
        if i:
            arrow(nodes[-2], nodes[-1], f"{m.method or m.kind}" + (f" (r{m.request_id})" if m.request_id else ""))
    child_row = ws.ledger.find_model(child)
    kid = node(x0 + len(chain) * step, _PAD, child, "unlearned",
               child_row.status if child_row else "not committed", "unlearned")
    if chain:
        arrow(nodes[-2], kid, f"forget: {method or '?'}")
    if reference and chain:
        par = nodes[-2]
        ref_row = ws.ledger.find_model(reference)
        ref = node(par["x"], y_ref, reference, "retrained reference", ref_row.status if ref_row else "", "reference")
        cx = par["x"] + _BOX_W / 2
        edges.append({"d": f"M {cx} {_PAD + _BOX_H} L {cx} {y_ref - 2}", "dashed": True, "arrow": True,
                      "labels": [{"x": cx + 10, "y": _PAD + _BOX_H + _GAP_Y / 2 - 3, "anchor": "start",
                                  "lines": ["retrained from scratch", "without the forget set"]}]})
        kx, ry = kid["x"] + _BOX_W / 2, y_ref + _BOX_H / 2
        edges.append({"d": f"M {kx} {_PAD + _BOX_H} L {kx} {ry} L {ref['x'] + _BOX_W} {ry}", "dashed": True,
                      "arrow": False,
                      "labels": [{"x": (ref["x"] + _BOX_W + kx) / 2, "y": ry - 8, "anchor": "middle",
                                  "lines": ["compared with"]}]})
    below = bool(reference and chain)
    if heldout and not reference and chain:
        data = node(kid["x"], y_ref, "held-out data", heldout, "", "heldout")
        kx = kid["x"] + _BOX_W / 2
        edges.append({"d": f"M {kx} {_PAD + _BOX_H} L {kx} {data['y'] - 2}", "dashed": True, "arrow": False,
                      "labels": [{"x": kx - 10, "y": _PAD + _BOX_H + _GAP_Y / 2 - 3, "anchor": "end",
                                  "lines": ["compared with records", "no model trained on"]}]})
        below = True
    width = kid["x"] + _BOX_W + _PAD
    height = (y_ref if below else _PAD) + _BOX_H + _PAD
    return {"nodes": nodes, "edges": edges, "width": width, "height": height, "w": _BOX_W, "h": _BOX_H,
            "cut": cut, "pad": _PAD}


# -- plots ------------------------------------------------------------------------------------------------------------
_RC = {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 10,
       "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"]}
"""Matplotlib settings of the report's plots: text stays text in the SVG (readable, searchable, no embedded font)."""

def _accuracies(figures: dict[str, Any]) -> list[float | None]:
    """Forget, retain and test accuracy (percent) of one model's figures, for either task's figure keys."""
    ua = figures.get("ua")
    forget = 100 - ua if ua is not None else figures.get("forget_accuracy")
    return [forget, figures.get("ra", figures.get("retain_accuracy")),
            figures.get("ta", figures.get("test_accuracy"))]


def _models(cert: dict[str, Any]) -> list[str]:
    """The models the certificate measured, of :data:`MODELS` (no reference in a reference-free one)."""
    metrics = cert.get("metrics") or {}
    return [n for n in MODELS if n in metrics]


def _names(models: list[str]) -> str:
    """``original, unlearned and retrained reference`` for the report's plots' labels."""
    labels = [MODEL_LABELS[n] for n in models]
    return " and ".join(labels) if len(labels) < 3 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _accuracy_plot(cert: dict[str, Any], salt: str) -> dict[str, Any] | None:
    metrics = cert.get("metrics") or {}
    models = _models(cert)
    values = {name: _accuracies(metrics.get(name) or {}) for name in models}
    if all(v is None for vs in values.values() for v in vs):
        return None
    fig = _figure(7.0, 3.4)
    ax = fig.subplots()
    groups = ["forget set", "retain set", "held-out (test) set"]
    width = 0.78 / max(len(models), 1)
    for i, name in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else 0 for v in values[name]]
        bars = ax.bar(xs, heights, width * 0.94, color=COLORS[name], label=MODEL_LABELS[name])
        for bar, v in zip(bars, values[name], strict=True):
            ax.annotate("-" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 112)
    ax.legend(loc="upper center", ncols=len(models), fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1.17))
    _tidy(ax)
    if "reference" in models:
        caption = ("The unlearned model (blue) should look like the retrained reference (green), which never saw the "
                   "forget set: on the forget set it should be about as accurate as on unseen data, and on the "
                   "retain and held-out sets it should keep the original's accuracy.")
    else:
        caption = ("No model was retrained for this certificate, so the comparison is with unseen data: on the forget "
                   "set the unlearned model (blue) should be about as accurate as on the held-out set, which no "
                   "model trained on, and on the retain and held-out sets it should keep the original's (grey) "
                   "accuracy.")
    if (cert.get("purpose") or {}).get("name") in ("poison", "bias"):
        caption += (" For this request's purpose the forgotten records' labels may be wrong (a planted trigger), so "
                    "accuracy on them does not decide; the effect probe does.")
    return {"title": "Accuracy on the forget, retain and held-out sets", "caption": caption,
            "svg": _svg(fig, salt, f"Bar chart: accuracy of the {_names(models)} models")}


def _histogram_plot(curves: dict[str, Any], salt: str, *, exact: bool = True) -> dict[str, Any]:
    edges = curves["edges"]
    names = [n for n in MODELS if n in curves["models"]]
    fig = _figure(3.1 * len(names) + 0.3, 3.0)
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        entry = curves["models"][name]
        for side, label in (("test", "held-out (never trained on)"), ("forget", "forget set")):
            counts = entry[f"{side}_counts"]
            total = max(sum(counts), 1)
            share = [100 * c / total for c in counts]
            ax.stairs(share, edges, fill=True, alpha=0.35, color=COLORS[side])
            ax.stairs(share, edges, color=COLORS[side], linewidth=1.2, label=label)
        if curves.get("scale") == "log10":
            ax.set_xscale("log")
        ax.set_title(MODEL_LABELS[name], fontsize=10, color=COLORS[name], fontweight="bold")
        ax.set_xlabel("loss (log scale)")
        _tidy(ax)
    axes[0].set_ylabel("share of the set (%)")
    axes[0].legend(fontsize=8, frameon=False, loc="upper left")
    return {"title": "How surprised each model is by the forget set and by unseen data",
            "caption": f"Per-example loss on the {curves.get('forget', '?')} forgotten records (orange) and the "
                       f"{curves.get('test', '?')} held-out records (grey). A model that memorised the forget set has "
                       "much lower loss on it than on unseen data (orange to the left of grey); after unlearning "
                       "the two should overlap, " + ("as they do for the retrained reference." if exact else
                                                     "as they would for a model that never saw the forget set (no "
                                                     "model was retrained: unseen data is the comparison)."),
            "svg": _svg(fig, salt, "Histograms of per-example loss, forget set against held-out data")}


def _roc_plot(curves: dict[str, Any], salt: str, *, exact: bool = True) -> dict[str, Any] | None:
    rocs = {n: curves["models"][n]["roc"] for n in MODELS if (curves["models"].get(n) or {}).get("roc")}
    if not rocs:
        return None
    fig = _figure(6.8, 4.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#adb5bd", linestyle="--", linewidth=1, label="chance (50)")
    for name, roc in rocs.items():
        ax.plot(roc["fpr"], roc["tpr"], color=COLORS[name], linewidth=1.8,
                label=f"{MODEL_LABELS[name]} (AUC {roc['auc']:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate: held-out records called member")
    ax.set_ylabel("true positive rate: forgotten called member")
    fig.legend(loc="outside right center", fontsize=8.5, frameon=False)
    _tidy(ax)
    return {"title": "Can an attacker still tell the forgotten records were used?",
            "caption": "ROC curves of a loss-threshold membership attack: records with low loss are called "
                       "'member'. The forgotten records play the members, the held-out records the non-members. "
                       "A curve on the diagonal (AUC 50) means the forgotten records look like data the model never "
                       "saw; far above it, the model still recognises them. A curve below the diagonal means they "
                       "look less familiar than unseen data, as records a clean model gets wrong do (poisoned or "
                       "mislabelled ones). " + ("The unlearned model's curve should be close to the reference's."
                                                if exact else "No model was retrained for this certificate: the "
                                                "unlearned model's curve should lie near the diagonal, where a model "
                                                "that never saw the records would be (or below it, for records such a "
                                                "model gets wrong)."),
            "svg": _svg(fig, salt, f"ROC curves of the membership attack for the {_names(list(rocs))} models")}


def _effect_plot(cert: dict[str, Any], salt: str) -> dict[str, Any] | None:
    effect = cert.get("effect")
    metrics = cert.get("metrics") or {}
    models = _models(cert)
    values = {n: (metrics.get(n) or {}).get("effect") for n in models}
    if not effect or all(v is None for v in values.values()):
        return None
    check = (cert.get("checks") or {}).get("effect") or {}
    target = check.get("target") if check.get("decisive") else None
    fig = _figure(6.0, 0.6 * len(models) + 0.4)
    ax = fig.subplots()
    names = models[::-1]
    bars = ax.barh([MODEL_LABELS[n] for n in names], [values[n] or 0 for n in names],
                   color=[COLORS[n] for n in names], height=0.6)
    for bar, n in zip(bars, names, strict=True):
        v = values[n]
        ax.annotate("-" if v is None else f"{v:.1f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
    if target is not None:
        ax.axvline(target, color="#212529", linestyle="--", linewidth=1.2, label=f"target ({target:.1f})")
        ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_xlim(0, max(105, max((v or 0) for v in values.values()) * 1.1))
    ax.set_xlabel(effect.get("name", "effect").replace("_", " ") + " (%)")
    _tidy(ax)
    if "reference" in models:
        tail = "The unlearned model should be at the level of the reference, which never saw the forget set."
    else:
        tail = ("No model was retrained for this certificate: the unlearned model should be at the effect's base "
                "rate, what a model that never saw the forget set scores" +
                (f" ({target:.1f}, the dashed line)." if target is not None else "."))
    return {"title": f"The effect to remove: {effect.get('name', 'effect').replace('_', ' ')}",
            "caption": _sentence(effect.get("help") or "") + tail,
            "svg": _svg(fig, salt, f"Bar chart of the effect probe for the {_names(models)} models")}


def _sentence(text: str) -> str:
    """``text`` as a sentence (capital first, full stop and a space last; empty stays empty)."""
    text = text.strip()
    return "" if not text else text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".") + " "


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _tidy(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=9)
    ax.grid(axis="y", color="#e9ecef", linewidth=0.8)
    ax.set_axisbelow(True)


def _svg(fig: Figure, salt: str, label: str) -> Markup:
    """The figure as an inline ``<svg>`` element at its natural size (the page's CSS shrinks it to fit; text kept as
    text; ids unique to ``salt``, so several plots share a page; no date stamp, so the same data give the same
    bytes)."""
    buf = io.StringIO()
    with mpl.rc_context({**_RC, "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = text.replace("<svg", f'<svg role="img" aria-label="{Markup.escape(label)}"', 1)
    return Markup(text)


# -- template ---------------------------------------------------------------------------------------------------------
def _template() -> jinja2.Template:
    source = resources.files("disgorge.report").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["show"] = _show
    return env.from_string(source)
