"""Model files: local directories as they are; Hugging Face repos pinned by revision, fetched once.

A spec is either a local path (file or directory: used in place, nothing is downloaded) or
`hf:<repo_id>@<revision>[:<file>]`. A hub spec is downloaded onto the volume once, by one worker at a
time (worker.bootstrap.lease: the other workers wait and then reuse it), into a temp directory that is
renamed into place; a marker written last is the only proof of completion. Once every spec is resolved
the caller sets HF_HUB_OFFLINE=1, so nothing at run time reaches the hub.

Layout: `<volume>/models/hf/<owner>--<name>/<revision>/` + `.complete` (JSON: repo, revision, files).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".complete"
LEASE_TTL_S = 120.0
LEASE_HEARTBEAT_S = 10.0
_SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[\w./-]+?)(?::(?P<file>.+))?$")


class ModelError(RuntimeError):
    """A model spec cannot be resolved; the message names the variable, the spec and what to do."""


@dataclass(frozen=True)
class HubSpec:
    repo_id: str
    revision: str
    filename: str | None = None

    @property
    def key(self) -> str:
        return self.repo_id.replace("/", "--")


def parse_spec(spec: str, var: str) -> Path | HubSpec:
    if spec.startswith("hf:"):
        m = _SPEC.match(spec)
        if not m:
            raise ModelError(f"models: {var}={spec!r} is not hf:<owner>/<name>@<revision>[:<file>]")
        return HubSpec(m["repo"], m["rev"], m["file"])
    return Path(spec).expanduser()


# Downloader signature: (spec, dest_dir, token, endpoint) -> None; the real one is huggingface_hub's.
Downloader = Callable[[HubSpec, Path, "str | None", "str | None"], None]


def hub_download(spec: HubSpec, dest: Path, token: str | None, endpoint: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=spec.repo_id, revision=spec.revision, local_dir=str(dest), token=token, endpoint=endpoint,
        allow_patterns=[spec.filename] if spec.filename else None,
    )


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_marker(dest: Path, spec: HubSpec) -> None:
    listing = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.name != MARKER)
    body = json.dumps({"repo": spec.repo_id, "revision": spec.revision, "files": listing,
                       "completed": time.time()}, indent=1)
    tmp = dest / f".{MARKER}.tmp"
    tmp.write_text(body)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest / MARKER)


def _target(dest: Path, spec: HubSpec, var: str) -> Path:
    path = dest / spec.filename if spec.filename else dest
    if not path.exists():
        raise ModelError(f"models: {var}: {spec.filename!r} is not in {spec.repo_id}@{spec.revision}; "
                         "check the file name in the spec")
    return path


def resolve(spec: str, models_dir: Path, var: str, *, token: str | None = None, endpoint: str | None = None,
            download: Downloader = hub_download, wait_s: float | None = 3600.0) -> Path:
    """The local path of a model spec, downloading a hub spec onto the volume first if needed."""
    parsed = parse_spec(spec, var)
    if isinstance(parsed, Path):
        if not parsed.exists():
            raise ModelError(f"models: {var}={spec!r}: no such file or directory; give an existing local "
                             "path or hf:<repo>@<revision>")
        return parsed
    dest = models_dir / "hf" / parsed.key / parsed.revision
    if (dest / MARKER).is_file():
        return _target(dest, parsed, var)
    from worker.bootstrap.lease import Lease

    dest.parent.mkdir(parents=True, exist_ok=True)
    lease = Lease(dest.parent / f"{parsed.revision}.lease", ttl_s=LEASE_TTL_S, heartbeat_s=LEASE_HEARTBEAT_S)
    lease.acquire(timeout_s=wait_s)
    try:
        if (dest / MARKER).is_file():  # another worker finished while we waited
            log.info("models: %s@%s was downloaded by another worker", parsed.repo_id, parsed.revision)
            return _target(dest, parsed, var)
        if dest.exists():  # renamed in but never marked: an interrupted commit; start over
            shutil.rmtree(dest)
        tmp = dest.parent / f".{parsed.revision}.tmp-{secrets.token_hex(4)}"
        log.info("models: downloading %s@%s (%s) to %s", parsed.repo_id, parsed.revision,
                 parsed.filename or "all files", dest)
        started = time.monotonic()
        try:
            download(parsed, tmp, token, endpoint)
            lease.check()
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
            _fsync_tree(tmp)
            os.replace(tmp, dest)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"models: {var}: downloading {parsed.repo_id}@{parsed.revision} failed: {exc}; "
                             "check the repo id, revision, network and HF_TOKEN") from exc
        _write_marker(dest, parsed)
        log.info("models: %s@%s ready in %.1f s", parsed.repo_id, parsed.revision, time.monotonic() - started)
        return _target(dest, parsed, var)
    finally:
        lease.release()


def write_punkt_tab(nltk_dir: Path, languages: tuple[str, ...]) -> Path:
    """Untrained Punkt parameters (empty tables) for WhisperX's sentence splitter, so alignment never
    downloads punkt_tab at run time. Untrained Punkt still splits at sentence punctuation; it only lacks
    learned abbreviations. A real punkt_tab already in the directory is left alone."""
    for lang in languages:
        lang_dir = nltk_dir / "tokenizers" / "punkt_tab" / lang
        if (lang_dir / "ortho_context.tab").is_file():
            continue
        lang_dir.mkdir(parents=True, exist_ok=True)
        for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
            tmp = lang_dir / f".{name}.tmp"
            tmp.write_text("")
            os.replace(tmp, lang_dir / name)
    return nltk_dir
