"""What ``F5_COMPILE=1`` needs before torch.compile runs: a C compiler, and a kernel cache on the volume.

Triton builds its kernel launcher with a C compiler on first use (triton/runtime/build.py), and the slim
image has none unless the env brings one: without this check the failure would come in the warm-up as a
long traceback. The compiled kernels (inductor's and triton's) are cached at TORCHINDUCTOR_CACHE_DIR as
the worker started with it, else ``<volume>/cache/torchinductor``, so the first worker on a volume
compiles and the next ones load its kernels (inductor writes each entry atomically, so workers can share
it; on an H200 the warm-up went from 100 s to 21 s, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from worker.errors import SettingsError
from worker.settings import EngineSettings

log = logging.getLogger(__name__)


def find_c_compiler() -> str | None:
    """What triton builds its launcher with; it looks for the same: CC, else gcc, clang or cc on PATH."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang") or shutil.which("cc")


def prepare_compile(settings: EngineSettings) -> Path | None:
    """Refuse F5_COMPILE=1 without a C compiler, naming the variable; then place the kernel cache."""
    if not find_c_compiler():
        raise SettingsError("F5_COMPILE", "needs a C compiler (CC, gcc or clang on PATH): torch.compile's "
                            "GPU kernels (triton) build their launcher with it; add conda-forge's gcc to "
                            "environment.yml, or unset F5_COMPILE", value="1")
    return use_compile_cache(settings.volume, settings.compile_cache_dir)


def use_compile_cache(volume: Path, chosen: Path | None = None) -> Path | None:
    """The cache at ``chosen`` or ``<volume>/cache/torchinductor``; one that cannot be made leaves
    inductor's default (the container's /tmp), with a warning."""
    cache = Path(chosen) if chosen else Path(volume) / "cache" / "torchinductor"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("engine: no compile cache at %s (%s); every worker compiles for itself", cache, exc)
        return None
    # Set even when the variable holds a value: inductor writes its /tmp default there once it has run,
    # which is why EngineSettings reads the user's value at startup.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return cache
