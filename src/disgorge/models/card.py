"""Hugging Face style model cards: README.md with YAML front matter listing sources and licences."""

from __future__ import annotations

import math
from typing import Any

import yaml


def model_card(*, model_id: str, task: str, family: str, parent: str | None, kind: str, method: str | None,
               sources: list[dict[str, Any]], n_records: int, recipe_toml: str, weights_sha256: str,
               request_id: int | None = None, metrics: dict[str, Any] | None = None,
               privacy: dict[str, Any] | None = None, imported: dict[str, Any] | None = None,
               base: dict[str, Any] | None = None) -> str:
    """The text of a model card. ``sources`` are dicts with ``name``, ``license``, ``origin`` and ``records``;
    ``privacy`` is what differentially private training spent (``FitResult.info["privacy"]``), for a DP model;
    ``imported`` where a model trained elsewhere came from and whether a reference can be retrained for it;
    ``base`` the pretrained network training started from (``name`` and ``sha256``), whose own training data the
    ledger does not hold."""
    licenses = sorted({s["license"] for s in sources})
    front: dict[str, Any] = {
        "library_name": "disgorge",
        "license": licenses[0].lower() if len(licenses) == 1 else "other",
        "tags": ["disgorge", task, family] + (["unlearned"] if kind == "unlearned" else []),
        "datasets": [s["name"] for s in sources],
        "disgorge": {
            "model_id": model_id,
            "kind": kind,
            "parent": parent,
            "method": method,
            "erasure_request": request_id,
            "weights_sha256": weights_sha256,
            "training_records": n_records,
            "sources": [{k: s[k] for k in ("name", "license", "origin", "records")} for s in sources],
            "licenses": licenses,
        },
    }
    if len(licenses) > 1:
        front["license_name"] = "multiple: " + ", ".join(licenses)
    if metrics:
        front["disgorge"]["metrics"] = metrics
    if privacy:
        front["tags"].append("differential-privacy")
        front["disgorge"]["privacy"] = privacy
    if imported:
        front["tags"].append("imported")
        front["disgorge"]["imported"] = imported
    if base:
        front["base_model"] = base["name"]
        front["disgorge"]["base"] = {**base, "data_in_ledger": False}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# Model {model_id}",
        "",
        f"A `{family}` {task} model written by disgorge ({kind}"
        + (f", unlearned from `{parent}` by `{method}` for erasure request {request_id}" if parent else "") + ").",
        "",
        f"It was trained on {n_records} records from {len(sources)} source(s):",
        "",
        "| source | licence | origin | records |",
        "|---|---|---|---|",
        *[f"| {s['name']} | {s['license']} | {s['origin'] or '-'} | {s['records']} |" for s in sources],
        "",
        *(base_section(base) if base else []),
        *(privacy_section(privacy) if privacy else []),
        *(imported_section(imported) if imported else []),
        "## Recipe",
        "",
        "```toml",
        recipe_toml.rstrip(),
        "```",
        "",
        f"Weights: `model.safetensors`, sha256 `{weights_sha256}`. "
        + ("Retrain it from scratch with `disgorge train recipe.toml`." if kind not in ("unlearned", "imported")
           else "It was trained elsewhere; the recipe is how disgorge builds, unlearns and (see above) retrains it."
           if kind == "imported" else
           "Its exact counterpart is `disgorge train recipe.toml` on the records it keeps (`records.roaring`)."),
        "",
    ]
    return "\n".join(lines)


def base_section(base: dict[str, Any]) -> list[str]:
    """The card's lines on the pretrained network training started from: one more source, whose data the ledger
    does not hold, so no erasure request can reach it."""
    return ["## Base network", "",
            f"Training started from the pretrained network `{base['name']}`"
            + (f" (as the package {base['package']} ships it)" if base.get("package") else "")
            + f", safetensors sha256 `{base['sha256']}`. "
            "Its own training data is a further source that this ledger does not hold: erasure requests remove what "
            "the records above taught the model, never what the base network learned before.", ""]


def imported_section(imported: dict[str, Any]) -> list[str]:
    """The card's lines on a model trained elsewhere: the folder it came from, its base network, and whether a model
    retrained without forgotten records (``exact`` verification) can be made."""
    lines = ["## Imported", "",
             f"Trained elsewhere and imported from `{imported['folder']}` ({imported['layout']}); the records it was "
             "trained on were ingested with it, as listed above."
             + (f" It was fine-tuned from the base network `{imported['base']}`." if imported.get("base") else ""),
             "",
             ("Exact verification: " if imported.get("reference") else "No exact verification: ")
             + imported["reference_note"] + ".", ""]
    return lines


def privacy_section(privacy: dict[str, Any]) -> list[str]:
    """The card's lines on differentially private training: the epsilon spent (and its target), delta, the clipping
    norm, the noise multiplier, and what that bounds."""
    eps = float(privacy["epsilon"])
    return [
        "## Differential privacy",
        "",
        f"Trained with differentially private SGD (opacus, `{privacy.get('accountant', 'rdp')}` accountant): "
        f"**epsilon = {eps:g}** spent (target {privacy['target_epsilon']:g}) at **delta = {privacy['delta']:g}**. "
        f"Each record's gradient was clipped to norm {privacy['max_grad_norm']:g} and Gaussian noise of "
        f"{privacy['noise_multiplier']:g} times that norm was added at every step; each step drew each record with "
        f"probability {privacy['sample_rate']:g}.",
        "",
        f"This bounds what these weights can reveal about any one training record: whether or not the record was "
        f"trained on, the probability of anything learned from the weights changes by at most a factor "
        f"e^epsilon = {math.exp(min(eps, 700)):.3g}, except with probability delta. A contributor of k records is "
        "protected only as a group (about k times epsilon), and the noise came from a seeded pseudo-random "
        "generator so that training can be reproduced.",
        "",
    ]
