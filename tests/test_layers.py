"""The layers of docs/architecture.md, as imports: each part of the tree imports only what its layer may.

Read from the code (an AST walk over every import, top-level or inside a function), so a new import
across a layer fails here rather than in a review.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("artifact", "pack", "worker", "devtools", "bench", "scripts", "tests")


def imported(part: str) -> dict[str, set[str]]:
    """What each module under ``part`` (a package folder or one file) imports: our modules by full
    dotted name (relative imports resolved), third-party and stdlib ones by their top-level name."""
    root = REPO / part
    found: dict[str, set[str]] = {}
    for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(filter(None, (base, node.module)))
                names.add(module)
        found[str(path.relative_to(REPO))] = {n if n.split(".")[0] in OURS else n.split(".")[0]
                                              for n in names}
    return found


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in OURS}


def allowed(names: set[str], *prefixes: str) -> set[str]:
    """The imports of ours that are not under one of ``prefixes``."""
    return {n for n in ours(names) if not any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_the_contract_is_stdlib_only() -> None:
    for module, names in imported("artifact").items():
        foreign = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names} - {"__future__"}
        assert not allowed(foreign, "artifact"), f"{module}: the contract must stay stdlib-only"
        assert not {n for n in foreign if n.split(".")[0] not in OURS}, module


def test_the_builder_does_not_depend_on_the_worker() -> None:
    for module, names in imported("pack").items():
        assert not allowed(names, "artifact", "pack"), module


def test_the_installer_needs_only_the_contract() -> None:
    """It runs in the slim image before any environment exists: stdlib, zstandard, the contract."""
    for module, names in imported("worker/bootstrap").items():
        assert not allowed(names, "artifact", "worker.bootstrap"), module


@pytest.mark.parametrize(("part", "may"), [
    ("worker/errors.py", ()),
    ("worker/settings.py", ("worker.errors", "worker.bootstrap.config")),
    ("worker/engine", ("worker.engine", "worker.errors", "worker.settings", "worker.bootstrap", "artifact")),
    ("worker/jobs", ("worker.jobs", "worker.errors", "worker.settings", "worker.engine.core")),
    ("worker/queue", ("worker.queue", "worker.jobs", "worker.errors", "worker.settings",
                           "worker.engine.core", "worker.bootstrap.fallback")),
    # The http mode: a front end beside queue/ on the same job layer (worker.jobs.runner answers for
    # both); from queue/ it takes only the bucket upload and the startup failure (StartupFailure,
    # classify), and it loads the models through the entry point's prepare().
    ("worker/serving", ("worker.serving", "worker.jobs", "worker.errors", "worker.settings",
                        "worker.engine.core", "worker.queue.bucket", "worker.queue.failure",
                        "worker.__main__")),
])
def test_each_worker_layer_imports_only_the_layers_below(part: str, may: tuple[str, ...]) -> None:
    for module, names in imported(part).items():
        assert not allowed(names, *may), f"{module} imports {sorted(allowed(names, *may))}"


def test_only_the_runpod_glue_and_the_entry_point_use_the_runpod_sdk() -> None:
    for part in ("worker/engine", "worker/jobs", "worker/serving", "worker/errors.py", "worker/settings.py"):
        for module, names in imported(part).items():
            assert "runpod" not in names, module


def test_no_layer_below_a_front_end_imports_one() -> None:
    """queue/ and serving/ are two front ends over the job layer: the engine and the job layer know
    neither, and the queue mode does not know the http mode."""
    for part in ("worker/engine", "worker/jobs", "worker/queue", "worker/errors.py", "worker/settings.py"):
        for module, names in imported(part).items():
            assert not {n for n in ours(names) if n.startswith("worker.serving")}, module
    for part in ("worker/engine", "worker/jobs"):
        for module, names in imported(part).items():
            assert not {n for n in ours(names) if n.startswith("worker.queue")}, module
            assert not {"starlette", "uvicorn"} & names, module


def test_the_image_tree_holds_no_development_tool() -> None:
    for part in ("artifact", "worker"):
        for module, names in imported(part).items():
            assert not allowed(names, "artifact", "worker"), module
    for tool in ("tiny.py", "devserve.py", "serve_http.py"):
        assert not list((REPO / "worker").rglob(tool)), tool
