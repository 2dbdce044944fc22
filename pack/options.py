"""The one options value of ``pack build``; the CLI only turns flags into it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from artifact.manifest import GITHUB_ASSET_LIMIT

from .errors import PackError

# Below GitHub's 2 GiB release-asset limit with a margin.
DEFAULT_PART_SIZE = 2000 * 1024**2
# zstd -19 --long=27: 0.171 of tar on a torch venv (shared/DESIGN.md); the release default.
DEFAULT_LEVEL = 19
DEFAULT_LONG = 27
# conda's binary prefix placeholder is 255 characters; a longer destination cannot be patched in.
PLACEHOLDER_LENGTH = 255
# Fixed default for tar mtimes and .pyc hashes when SOURCE_DATE_EPOCH is unset: 2026-01-01T00:00:00Z.
DEFAULT_SOURCE_DATE_EPOCH = 1767225600


@dataclass(frozen=True)
class PackOptions:
    """Everything ``build()`` needs, checked by ``validate()``."""

    lock: Path | None = None  # conda @EXPLICIT lock file, or a dir holding conda-<platform>.lock
    pip_lock: Path | None = None  # hashed requirements (pip --require-hashes)
    wheelhouse: Path | None = None  # offline pip: --no-index --find-links DIR
    out: Path = Path("build/pack")
    work: Path = Path("build/work")  # env prefix, package cache, example channel
    name: str = "env"
    level: int = DEFAULT_LEVEL
    threads: int = 2
    long: int = DEFAULT_LONG  # zstd window log; 0 disables long-distance matching
    part_size: int = DEFAULT_PART_SIZE
    dest_prefix: str | None = None
    # Channel root URL that relative lock lines resolve against (default: the lock file's directory).
    channels: tuple[str, ...] = field(default_factory=tuple)
    source_date_epoch: int | None = None  # None: $SOURCE_DATE_EPOCH, else fixed from the locks
    platform: str = "linux-64"
    # Globs relative to the env root, removed after the pip part and before packing (e.g. compiled
    # extensions that cannot load on the target); part of env_id, recorded in the manifest.
    prune: tuple[str, ...] = field(default_factory=tuple)
    # Keep an existing pack in --out when it was built from the same inputs and its parts still verify.
    reuse: bool = False

    def validate(self) -> None:
        """Collect every problem with the options, then raise one PackError."""
        issues: list[str] = []
        if not 1 <= self.level <= 22:
            issues.append(f"--level must be 1..22, got {self.level}")
        if self.threads < 1:
            issues.append(
                f"--threads must be >= 1 (0 gives different, single-threaded output), got {self.threads}"
            )
        if self.long != 0 and not 10 <= self.long <= 31:
            issues.append(f"--long must be 0 (off) or a window log 10..31, got {self.long}")
        if not 1 <= self.part_size < GITHUB_ASSET_LIMIT:
            issues.append(
                f"--part-size must be 1..{GITHUB_ASSET_LIMIT - 1} bytes (below 2 GiB), got {self.part_size}"
            )
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name) or self.name[0] in ".-":
            issues.append(f"--name must be letters, digits, '.', '_' or '-', got {self.name!r}")
        if self.dest_prefix is not None:
            if not os.path.isabs(self.dest_prefix):
                issues.append(f"--dest-prefix must be an absolute path, got {self.dest_prefix!r}")
            elif len(self.dest_prefix) > PLACEHOLDER_LENGTH:
                issues.append(
                    f"--dest-prefix is {len(self.dest_prefix)} characters, longer than the "
                    f"{PLACEHOLDER_LENGTH}-character prefix placeholder binaries can be patched with"
                )
        if self.source_date_epoch is not None and self.source_date_epoch < 0:
            issues.append(f"SOURCE_DATE_EPOCH must be >= 0, got {self.source_date_epoch}")
        if len(self.channels) > 1:
            issues.append("--channel may be given once (the root that relative lock URLs resolve against)")
        if self.wheelhouse is not None and self.pip_lock is None:
            issues.append("--wheelhouse needs --pip-lock (the wheelhouse only stands in for the index)")
        for pattern in self.prune:
            if not pattern or os.path.isabs(pattern) or ".." in Path(pattern).parts:
                issues.append(f"--prune takes globs relative to the env root, got {pattern!r}")
        if issues:
            raise PackError("options", "; ".join(issues), "fix the flags and run again")
