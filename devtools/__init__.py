"""Development tools shared by the demo, benchmarks and tests (never shipped in the image)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment for an installer or worker started from this checkout: no RUNPOD_, BOOTSTRAP_ or
    MANIFEST_ variable of the caller's shell leaks into it (they would redirect the run), and this
    checkout's code is on PYTHONPATH, as the image puts /opt/app there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "BOOTSTRAP_", "MANIFEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env
