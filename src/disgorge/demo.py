"""The main job on bundled data: ingest a scenario, train, forget its default request, verify."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .api import forget, ingest_scenario, train
from .errors import DisgorgeError
from .evidence.certificate import render_markdown
from .scenarios import get_scenario
from .workspace import STATE_DIR, Workspace

log = logging.getLogger(__name__)

DEFAULT_METHOD = "grad_diff"


def run_demo(out: str | Path = "demo-output", *, scenario: str = "digits-backdoor",
             method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Run the whole flow in ``out/workspace`` (recreated) and copy the certificate to ``out/``.

    Returns the certificate.
    """
    out = Path(out)
    case = get_scenario(scenario)
    root = out / "workspace"
    if root.exists():
        if not (root / STATE_DIR).is_dir():
            raise DisgorgeError(f"{root} exists and is not a disgorge workspace; choose another --out")
        shutil.rmtree(root)
    with Workspace.init(root) as ws:
        log.info("ingesting scenario %s", scenario)
        ingest_scenario(ws, scenario)
        log.info("training %s", case.recipe().name)
        model = train(ws, case.recipe())
        ids = case.forget_ids(ws)
        log.info("forgetting %d records from %s with %s", len(ids), model.id, method)
        result = forget(ws, records=sorted(ids), method=method, reason=f"demo: {case.description}")
    certificate = result.certificates[0]
    atomic_write_text(out / "certificate.json", json.dumps(certificate, indent=2) + "\n")
    atomic_write_text(out / "certificate.md", render_markdown(certificate))
    return certificate
