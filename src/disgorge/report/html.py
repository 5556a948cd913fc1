"""The human report of an erasure request: one self-contained HTML file (inline CSS and SVG, nothing fetched).

It is written for people who never run Python (a data subject, a rights holder, an auditor): what was asked and why,
what was removed, the models' lineage, the verification figures and checks against the retrained reference, plots of
the loss distributions and membership-attack ROC curves stored in the certificate, and the environment and hashes.
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

from .._io import atomic_write_text
from ..errors import InvalidRequest, NotFound
from ..evidence.certificate import figure_rows, software_versions
from ..evidence.signing import signature_problem
from ..ledger import ModelRow, RequestRow
from ..workspace import Workspace

TEMPLATE = "report.html.j2"
"""The Jinja2 template (in ``disgorge/report/templates``) the report is rendered from."""

MODELS = ("original", "unlearned", "reference")
"""The three models a certificate measures, in the order the report shows them."""
MODEL_LABELS = {"original": "original", "unlearned": "unlearned", "reference": "retrained reference"}
"""How the report names each of :data:`MODELS`."""
COLORS = {"original": "#868e96", "unlearned": "#1c7ed6", "reference": "#2f9e44", "forget": "#e8590c",
          "test": "#495057"}
"""Plot colours of the models and of the forget and held-out sets (the template's CSS uses the same)."""

CHECKS = {
    "changed": ("The unlearned model's weights differ from the original's", "must be yes"),
    "avg_gap": ("Avg Gap: mean distance to the retrained reference over the main figures", "at most the limit"),
    "ta_drop": ("Drop in held-out (test) accuracy relative to the reference", "at most the limit"),
    "ra_drop": ("Drop in retain accuracy relative to the reference", "at most the limit"),
    "mia_gap": ("Distance to the reference's membership-attack figure", "at most the limit"),
    "effect_gap": ("Distance to the reference's effect probe", "at most the limit"),
    "forget_quality": ("Forget quality: p-value that the forget set looks as in the reference",
                       "at least the limit"),
}
"""Plain-language description and comparison of each certificate check."""

THRESHOLDS = {
    "effect_gap": "effect probe gap (points)", "ta_drop": "test accuracy drop (points)",
    "ra_drop": "retain accuracy drop (points)", "mia_gap": "membership-attack gap (points)",
    "avg_gap": "Avg Gap (points)", "forget_quality": "forget quality (minimum p-value)",
}
"""Plain-language name of each certificate threshold."""

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
    verdicts = [s["verdict"] for s in sections]
    if not verdicts or "NOT VERIFIED" in verdicts:
        verdict = "NOT VERIFIED"
    else:
        verdict = "PASSED" if all(v == "PASSED" for v in verdicts) else "FAILED"
    context = {
        "title": f"Erasure request r{request_id}" + (f", model {only}" if only else ""),
        "request_id": request_id,
        "request": request,
        "verdict": verdict,
        "sections": sections,
        "environment": _environment(),
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workspace": str(ws.root),
        "scenario": ws.scenario,
    }
    return _template().render(**context)


def write_report_html(ws: Workspace, target: str, out: Path | None = None) -> Path:
    """Render :func:`render_report` and write it atomically to ``out`` (default ``reports/r<request>/report.html``
    in the workspace, ``reports/r<request>/<model>/report.html`` for one model); return the path."""
    html = render_report(ws, target)
    if out is None:
        request_id, only = _resolve(ws, target)
        folder = ws.report_dir(request_id)
        out = (folder / only if only else folder) / "report.html"
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
    """A child's certificate: its file (which may carry more, e.g. a signature), else the ledger's copy."""
    path = ws.report_dir(request_id) / child / "certificate.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    try:
        return ws.ledger.request(request_id).results.get("certificates", {}).get(child)
    except NotFound:
        return None


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
        section.update(verdict="NOT VERIFIED",
                       lineage=_lineage_svg(ws, row.parent if row else None, child,
                                            row.method if row else None, None),
                       plots=[], missing=[])
        return section
    salt = f"r{request_id}-{child}"
    models = cert["models"]
    section.update(
        verdict="PASSED" if cert.get("passed") else "FAILED",
        figures=figure_rows(cert),
        checks=[{"name": name, "what": CHECKS.get(name, (name.replace("_", " "), ""))[0],
                 "how": CHECKS.get(name, ("", ""))[1], "value": _show(c.get("value")),
                 "limit": _show(c.get("limit")), "passed": bool(c.get("passed"))}
                for name, c in cert.get("checks", {}).items()],
        thresholds=[(THRESHOLDS.get(k, k), _show(v)) for k, v in cert.get("thresholds", {}).items()],
        units=(cert.get("figures") or {}).get("units", "Figures in percent."),
        lineage=_lineage_svg(ws, models["parent"]["id"], child, cert.get("method"), models["reference"]["id"]),
        hashes=[(MODEL_LABELS.get(k, k) if k != "parent" else "original (parent)", v["id"], v["sha256"])
                for k, v in ((("parent", models["parent"]), ("child", models["child"]),
                              ("reference", models["reference"])))],
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
            plots.append(_histogram_plot(curves, f"{salt}-hist"))
            roc = _roc_plot(curves, f"{salt}-roc")
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
                 reference: str | None) -> dict[str, Any]:
    """Boxes and arrows of the lineage, for the template to draw as an inline SVG: the parent's last ancestors,
    parent -> child (the method), the retrained reference below the parent, and the comparison child - reference."""
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
    width = kid["x"] + _BOX_W + _PAD
    height = (y_ref if reference and chain else _PAD) + _BOX_H + _PAD
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


def _accuracy_plot(cert: dict[str, Any], salt: str) -> dict[str, Any] | None:
    metrics = cert.get("metrics") or {}
    values = {name: _accuracies(metrics.get(name) or {}) for name in MODELS}
    if all(v is None for vs in values.values() for v in vs):
        return None
    fig = _figure(7.0, 3.4)
    ax = fig.subplots()
    groups = ["forget set", "retain set", "held-out (test) set"]
    width = 0.26
    for i, name in enumerate(MODELS):
        xs = [g + (i - 1) * width for g in range(len(groups))]
        heights = [v if v is not None else 0 for v in values[name]]
        bars = ax.bar(xs, heights, width * 0.94, color=COLORS[name], label=MODEL_LABELS[name])
        for bar, v in zip(bars, values[name], strict=True):
            ax.annotate("-" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 112)
    ax.legend(loc="upper center", ncols=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 1.17))
    _tidy(ax)
    return {"title": "Accuracy on the forget, retain and held-out sets",
            "caption": "The unlearned model (blue) should look like the retrained reference (green), which never "
                       "saw the forget set: on the forget set it should be about as accurate as on unseen data, "
                       "and on the retain and held-out sets it should keep the original's accuracy.",
            "svg": _svg(fig, salt, "Bar chart: accuracy of the original, unlearned and reference models")}


def _histogram_plot(curves: dict[str, Any], salt: str) -> dict[str, Any]:
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
                       "the two should overlap as they do for the retrained reference.",
            "svg": _svg(fig, salt, "Histograms of per-example loss, forget set against held-out data")}


def _roc_plot(curves: dict[str, Any], salt: str) -> dict[str, Any] | None:
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
                       "mislabelled ones). The unlearned model's curve should be close to the reference's.",
            "svg": _svg(fig, salt, "ROC curves of the membership attack for the three models")}


def _effect_plot(cert: dict[str, Any], salt: str) -> dict[str, Any] | None:
    effect = cert.get("effect")
    metrics = cert.get("metrics") or {}
    values = {n: (metrics.get(n) or {}).get("effect") for n in MODELS}
    if not effect or all(v is None for v in values.values()):
        return None
    fig = _figure(6.0, 2.2)
    ax = fig.subplots()
    names = list(MODELS)[::-1]
    bars = ax.barh([MODEL_LABELS[n] for n in names], [values[n] or 0 for n in names],
                   color=[COLORS[n] for n in names], height=0.6)
    for bar, n in zip(bars, names, strict=True):
        v = values[n]
        ax.annotate("-" if v is None else f"{v:.1f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax.set_xlim(0, max(105, max((v or 0) for v in values.values()) * 1.1))
    ax.set_xlabel(effect.get("name", "effect").replace("_", " ") + " (%)")
    _tidy(ax)
    return {"title": f"The effect to remove: {effect.get('name', 'effect').replace('_', ' ')}",
            "caption": _sentence(effect.get("help") or "") + "The unlearned model should be at the level of the "
                       "reference, which never saw the forget set.",
            "svg": _svg(fig, salt, "Bar chart of the effect probe for the three models")}


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
