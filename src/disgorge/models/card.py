"""Hugging Face style model cards: README.md with YAML front matter listing sources and licences."""

from __future__ import annotations

from typing import Any

import yaml


def model_card(*, model_id: str, task: str, family: str, parent: str | None, kind: str, method: str | None,
               sources: list[dict[str, Any]], n_records: int, recipe_toml: str, weights_sha256: str,
               request_id: int | None = None, metrics: dict[str, Any] | None = None) -> str:
    """The text of a model card. ``sources`` are dicts with ``name``, ``license``, ``origin`` and ``records``."""
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
        "## Recipe",
        "",
        "```toml",
        recipe_toml.rstrip(),
        "```",
        "",
        f"Weights: `model.safetensors`, sha256 `{weights_sha256}`. "
        + ("Retrain it from scratch with `disgorge train recipe.toml`." if kind != "unlearned" else
           "Its exact counterpart is `disgorge train recipe.toml` on the records it keeps (`records.roaring`)."),
        "",
    ]
    return "\n".join(lines)
