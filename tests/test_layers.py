"""The layers of docs/architecture.md, as imports: each package imports only what its layer may.

Read from the code (an AST walk over every import, top-level or inside a function), so a new import
across a layer fails here rather than in a review.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports(package: str) -> dict[str, set[str]]:
    """Top-level names of what each module of ``package`` imports (relative imports resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(package if node.level else (node.module or "").split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_contract_is_stdlib_only() -> None:
    for module, names in imports("artifact").items():
        foreign = {n for n in names if n not in sys.stdlib_module_names} - {"artifact", "__future__"}
        assert not foreign, f"{module} imports {sorted(foreign)}: the contract must stay stdlib-only"


def test_the_builder_does_not_depend_on_the_worker() -> None:
    for module, names in imports("pack").items():
        assert "worker" not in names and "devtools" not in names, module


@pytest.mark.parametrize("package", ["artifact", "worker"])
def test_the_image_tree_imports_no_development_tool(package: str) -> None:
    for module, names in imports(package).items():
        assert not names & {"devtools", "pack", "bench", "tests"}, module
