"""The main job on bundled data: ingest a scenario, train, forget its default request, verify."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .api import forget, ingest_scenario, train
from .errors import InvalidRequest
from .evidence.certificate import render_markdown
from .scenarios import get_scenario
from .workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_METHOD = "grad_diff"
DEMO_MARKER = ".disgorge-demo"
"""File :func:`run_demo` leaves in the workspace folder it makes: only a folder carrying it (or an empty one) is
replaced by the next run without ``force``."""


def run_demo(out: str | Path = "demo-output", *, scenario: str = "digits-backdoor",
             method: str = DEFAULT_METHOD, force: bool = False, device: str | None = None) -> dict[str, Any]:
    """Run the whole flow in ``out/workspace`` (recreated) and copy the certificate to ``out/``.

    An existing ``out/workspace`` is only replaced when it is empty, was made by an earlier demo (it holds
    :data:`DEMO_MARKER`) or ``force`` is given. Returns the certificate.
    """
    out = Path(out)
    case = get_scenario(scenario)
    root = out / "workspace"
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise InvalidRequest(f"{root} exists and is not a folder; choose another --out")
    if root.exists() and any(root.iterdir()):
        if not force and not (root / DEMO_MARKER).is_file():
            raise InvalidRequest(f"{root} exists and was not made by `disgorge demo`; choose another --out, or pass "
                                 "--force to delete it and start again")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("made by `disgorge demo`: the next demo with the same --out replaces this folder\n",
                                    encoding="utf-8")
    with Workspace.init(root) as ws:
        ws.device = device
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
