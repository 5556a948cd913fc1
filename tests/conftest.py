"""Shared fixtures: a digits-backdoor workspace with one trained model, built once and copied per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DISGORGE_PROGRESS", "0")

from disgorge import Workspace, ingest_scenario, train
from disgorge.scenarios import get_scenario


@pytest.fixture(scope="session")
def backdoor_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A closed workspace with digits-backdoor ingested and its default recipe trained (model id returned)."""
    root = tmp_path_factory.mktemp("template") / "ws"
    with Workspace.init(root) as ws:
        ingest_scenario(ws, "digits-backdoor")
        row = train(ws, get_scenario("digits-backdoor").recipe())
    return root, row.id


@pytest.fixture
def backdoor_ws(backdoor_template: tuple[Path, str], tmp_path: Path) -> Iterator[Workspace]:
    """A private copy of the template workspace, open."""
    src, _ = backdoor_template
    dst = tmp_path / "ws"
    shutil.copytree(src, dst)
    ws = Workspace.open(dst)
    yield ws
    ws.close()


@pytest.fixture
def trained_id(backdoor_template: tuple[Path, str]) -> str:
    """Id of the model trained in the template workspace."""
    return backdoor_template[1]
