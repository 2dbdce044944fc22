"""Rewrite the packed prefix to where the env now lives: ``python3 <env>/bin/conda-unpack``.

conda-unpack computes the new prefix from its own location, so it runs after extraction into the
final directory, never in a staging copy. An env without ``bin/conda-unpack`` has nothing to relocate.
Its shebang is ``/usr/bin/env python``, which the slim image may lack: run it with our interpreter.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from .errors import BootstrapError
from .layout import INSTALL_ID_FILE

log = logging.getLogger("relocate")


def destination(dest_prefix: str | None, default: Path) -> Path:
    """Where the env must live: its ``dest_prefix`` when packed for one (it works only there)."""
    if dest_prefix is None:
        return default
    target = Path(dest_prefix)
    if target.exists() and not (target / INSTALL_ID_FILE).exists() and any(target.iterdir()):
        raise BootstrapError(
            "relocate", f"this artifact was packed for {dest_prefix} (dest_prefix), which already holds "
            "something this installer did not put there; refusing to overwrite it",
            f"empty or remove {dest_prefix}, or pack a relocatable artifact (without --dest-prefix)")
    return target


def relocate(env_dir: Path, timeout_s: float = 1800.0) -> bool:
    """Run conda-unpack when present; True when it ran."""
    script = env_dir / "bin" / "conda-unpack"
    if not script.is_file():
        log.info("no bin/conda-unpack in %s: nothing to relocate", env_dir)
        return False
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=env_dir, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BootstrapError("relocate", f"conda-unpack in {env_dir} ran over {timeout_s:.0f} s",
                             "check the volume's speed; the next start retries") from None
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise BootstrapError("relocate", f"conda-unpack exited with {proc.returncode}: {tail}",
                             "the artifact's conda-unpack failed: rebuild it with `just pack`")
    for line in proc.stdout.splitlines():
        log.debug("conda-unpack: %s", line)
    return True
