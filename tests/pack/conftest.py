"""Session fixtures: the example channel and two full packs are built once, for real.

Everything is real: py-rattler-build builds the channel, py-rattler creates the env, the env's own pip
installs a real wheel, conda-pack collects, zstd compresses. Tiny parts give several of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packtest_helpers import Packed, build_wheel, options_for, pip_lock_for

from pack import example
from pack.build import build


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def example_lock(work: Path) -> Path:
    return example.ensure_example_lock(work)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("wheels")
    wheel = build_wheel(root / "wheelhouse")
    return root / "wheelhouse", pip_lock_for(wheel, root / "requirements.lock")


@pytest.fixture(scope="session")
def packed(
    work: Path, example_lock: Path, wheelhouse: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Packed:
    wh, pip_lock = wheelhouse
    options = options_for(work, tmp_path_factory.mktemp("out1"), pip_lock=pip_lock, wheelhouse=wh)
    return Packed(build(options), options)
