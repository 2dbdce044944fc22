"""Where everything lives on the volume (docs/installer.md draws the same tree)::

    <volume>/envs/<env_id>/                 an installed env (complete only when its marker exists)
    <volume>/envs/<env_id>.ready.json       marker: written last, via temp + fsync + os.replace
    <volume>/downloads/<env_id>/<part>      verified parts (<part>.partial while incomplete)
    <volume>/parts/<env_id>/<part>          parts kept on the volume (placement "parts"), complete only
    <volume>/parts/<env_id>.ready.json      when this marker exists (written last)
    <volume>/placement.json                 the "auto" placement's measurement and choice
    <volume>/leases/<env_id>.lease          install lease (+ .progress); inuse/<env_id>/ heartbeats
    <volume>/logs/runs.jsonl                one JSON line per run; last-failure.json
    <volume>/manifests/<sha256>.json        pinned manifests seen before (a warm start reads no URL)
    <volume>/trash/                         trees being deleted (deleted again at every start)
    <volume>/models/                        owned by the worker
    <volume>/cache/                         owned by the worker (F5_COMPILE=1: compiled kernels)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARKER_SUFFIX = ".ready.json"
INSTALL_ID_FILE = ".bootstrap-install"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def envs(self) -> Path:
        return self.root / "envs"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def leases(self) -> Path:
        return self.root / "leases"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def parts(self) -> Path:
        return self.root / "parts"

    @property
    def placement_file(self) -> Path:
        return self.root / "placement.json"

    def env_dir(self, env_id: str) -> Path:
        return self.envs / env_id

    def marker(self, env_id: str) -> Path:
        return self.envs / f"{env_id}{MARKER_SUFFIX}"

    def download_dir(self, env_id: str) -> Path:
        return self.downloads / env_id

    def parts_dir(self, env_id: str) -> Path:
        return self.parts / env_id

    def parts_marker(self, env_id: str) -> Path:
        return self.parts / f"{env_id}{MARKER_SUFFIX}"

    def lease(self, env_id: str) -> Path:
        return self.leases / f"{env_id}.lease"

    def in_use_dir(self, env_id: str) -> Path:
        return self.leases / "inuse" / env_id

    def ensure(self) -> None:
        for path in (self.envs, self.downloads, self.parts, self.leases, self.logs, self.manifests,
                     self.trash):
            path.mkdir(parents=True, exist_ok=True)
