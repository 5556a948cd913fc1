"""The package's layers import one way: every import, including those inside functions, goes to a lower layer.

The layer order is the one docs/DESIGN.md draws; a module that imports upwards (the usual way an import cycle
starts) fails here with the offending import named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "disgorge"

# Lowest first. A group is a top-level module or a subpackage of disgorge; groups on one line are independent.
LAYERS = [
    ["errors", "_progress"],
    ["_io", "_registry"],
    ["spec", "catalogue"],
    ["ledger", "evaluate", "executors", "devices"],
    ["models"],
    ["tasks"],
    ["training", "data"],
    ["methods"],
    ["direct", "workspace"],
    ["evidence"],
    ["scenarios", "doctor"],
    ["erasure", "transfer", "audit"],
    ["jobs"],
    ["api"],
    ["report"],
    ["bench", "demo"],
    ["cli"],
    ["__init__"],
]
RANK = {group: i for i, line in enumerate(LAYERS) for group in line}


def _group(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _imports(source: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, disgorge group) of every import in ``source`` at any depth; ``package`` is the file's package
    inside disgorge (``()`` for a top-level module, ``("tasks",)`` for tasks/x.py)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                here = ["disgorge", *package]
                module = here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                module = (node.module or "").split(".")
            if module[0] != "disgorge":
                continue
            groups = [module[1]] if len(module) > 1 else [a.name for a in node.names]
            found += [(node.lineno, g) for g in groups]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "disgorge":
                    found.append((node.lineno, parts[1] if len(parts) > 1 else "__init__"))
    return found


FILES = sorted(p for p in SRC.rglob("*.py"))


def test_every_group_has_a_layer():
    """A new module or subpackage must be placed in the layer order before it can land."""
    assert {_group(p) for p in FILES} <= set(RANK), sorted({_group(p) for p in FILES} - set(RANK))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down(path: Path):
    """Every import of another group goes to a lower layer (imports inside functions count too)."""
    mine = _group(path)
    package = path.relative_to(SRC).parent.parts
    wrong = [f"line {line}: {mine} imports {target}" for line, target in _imports(path.read_text(), package)
             if target != mine and target in RANK and RANK[target] >= RANK[mine]]
    assert not wrong, wrong


def test_the_check_sees_every_kind_of_import():
    """The import reader finds relative, absolute and function-level imports (so the check above can fail)."""
    source = ("from ..errors import InvalidRequest\n"
              "from .base import Task\n"
              "def f():\n"
              "    from ..erasure import forget\n"
              "    import disgorge.cli\n"
              "    from disgorge import api\n")
    assert _imports(source, ("tasks",)) == [(1, "errors"), (2, "tasks"), (4, "erasure"), (5, "cli"), (6, "api")]
    assert _imports("from . import api\nfrom .spec import Recipe\n", ()) == [(1, "api"), (2, "spec")]
