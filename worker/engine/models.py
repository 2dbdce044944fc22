"""Model files: local directories as they are; hub repos pinned by revision and torchaudio bundles,
fetched once onto the volume.

A spec is a local path (file or directory: used in place, nothing is downloaded),
`hf:<repo_id>@<revision>[:<file>]`, or `torchaudio:<BUNDLE>` (a torchaudio pipeline bundle such as
WAV2VEC2_ASR_BASE_960H, WhisperX's English aligner). A hub spec is downloaded onto the volume once, by
one worker at a time (worker.bootstrap.lease: the other workers wait and then reuse it), into a temp
directory that is renamed into place; a marker written last is the only proof of completion. Only the
files the model's loader reads are fetched (worker/engine/model_files.py). A bundle's weight file is fetched
the same way (one worker, temp file, rename) from ALIGN_TORCHAUDIO_URL, to where torch.hub looks for it
(``model_dir``), so torchaudio loads it without a download. Once every spec is resolved the caller sets
HF_HUB_OFFLINE=1, so nothing at run time reaches the hub.

Layout: `<volume>/models/hf/<owner>--<name>/<revision>/` + `.complete` (JSON: repo, revision, files);
`<volume>/models/torchaudio/<weight file>`.
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

from artifact.files import fsync_tree, write_atomic
from worker.engine.model_files import ModelFiles
from worker.errors import ModelError

log = logging.getLogger(__name__)

MARKER = ".complete"
LEASE_TTL_S = 120.0
LEASE_HEARTBEAT_S = 10.0
_SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[\w./-]+?)(?::(?P<file>.+))?$")


@dataclass(frozen=True)
class HubSpec:
    repo_id: str
    revision: str
    filename: str | None = None

    @property
    def key(self) -> str:
        return self.repo_id.replace("/", "--")


@dataclass(frozen=True)
class TorchaudioSpec:
    bundle: str


@dataclass(frozen=True)
class TorchaudioModel:
    """A torchaudio pipeline bundle whose weights are in ``model_dir`` (torch.hub's cache layout)."""

    bundle: str
    model_dir: Path


def parse_spec(spec: str, var: str) -> Path | HubSpec | TorchaudioSpec:
    if spec.startswith("torchaudio:"):
        bundle = spec.removeprefix("torchaudio:")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", bundle):
            raise ModelError(var, value=spec, why="is not torchaudio:<BUNDLE> (e.g. "
                             "torchaudio:WAV2VEC2_ASR_BASE_960H)")
        return TorchaudioSpec(bundle)
    if spec.startswith("hf:"):
        m = _SPEC.match(spec)
        if not m:
            raise ModelError(var, value=spec, why="is not hf:<owner>/<name>@<revision>[:<file>]")
        return HubSpec(m["repo"], m["rev"], m["file"])
    return Path(spec).expanduser()


# Downloader signature: (spec, dest_dir, token, endpoint, needs) -> None; the real one is huggingface_hub's.
Downloader = Callable[[HubSpec, Path, "str | None", "str | None", "ModelFiles | None"], None]


def hub_download(spec: HubSpec, dest: Path, token: str | None, endpoint: str | None,
                 needs: ModelFiles | None = None) -> None:
    """The spec's file, or the files ``needs`` selects from the repo's listing (all when None)."""
    import glob

    from huggingface_hub import HfApi, snapshot_download

    patterns = [glob.escape(spec.filename)] if spec.filename else None
    if patterns is None and needs is not None:
        info = HfApi(endpoint=endpoint, token=token).model_info(spec.repo_id, revision=spec.revision,
                                                                files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        try:
            chosen = needs.select(sorted(sizes))
        except LookupError as exc:
            raise ModelError(f"{spec.repo_id}@{spec.revision}", f"{exc}; point the variable at a "
                             f"{needs.name} model") from None
        log.info("models: %s@%s: fetching %d of %d files, %.1f of %.1f MB (%s)", spec.repo_id, spec.revision,
                 len(chosen), len(sizes), sum(sizes[f] for f in chosen) / 1e6, sum(sizes.values()) / 1e6,
                 ", ".join(chosen))
        patterns = [glob.escape(f) for f in chosen]
    snapshot_download(repo_id=spec.repo_id, revision=spec.revision, local_dir=str(dest), token=token,
                      endpoint=endpoint, allow_patterns=patterns)


def _write_marker(dest: Path, spec: HubSpec) -> None:
    listing = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and p.name != MARKER)
    body = json.dumps({"repo": spec.repo_id, "revision": spec.revision, "files": listing,
                       "completed": time.time()}, indent=1)
    write_atomic(dest / MARKER, body)


def _target(dest: Path, spec: HubSpec, var: str) -> Path:
    path = dest / spec.filename if spec.filename else dest
    if not path.exists():
        raise ModelError(var, f"{spec.filename!r} is not in {spec.repo_id}@{spec.revision}; "
                         "check the file name in the spec")
    return path


def resolve(spec: str, models_dir: Path, var: str, *, token: str | None = None, endpoint: str | None = None,
            download: Downloader = hub_download, wait_s: float | None = 3600.0,
            needs: ModelFiles | None = None, torchaudio_url: str | None = None) -> Path | TorchaudioModel:
    """The local path of a model spec, downloading a hub spec (only the files ``needs`` selects) or a
    torchaudio bundle's weights onto the volume first if needed."""
    parsed = parse_spec(spec, var)
    if isinstance(parsed, TorchaudioSpec):
        from worker.settings import DEFAULT_TORCHAUDIO_URL

        base = torchaudio_url or DEFAULT_TORCHAUDIO_URL
        return resolve_bundle(parsed.bundle, models_dir, var, base, wait_s)
    if isinstance(parsed, Path):
        if not parsed.exists():
            raise ModelError(var, value=spec, why="is no such file or directory; give an existing local "
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
            download(parsed, tmp, token, endpoint, needs)
            lease.check()
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's resume bookkeeping
            fsync_tree(tmp)
            os.replace(tmp, dest)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, ModelError):  # the repo is not what the variable says it is
                raise ModelError(var, str(exc)) from exc
            raise ModelError(var, f"downloading {parsed.repo_id}@{parsed.revision} failed: {exc}; "
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


# -- torchaudio bundles ------------------------------------------------------------------------------
def bundle_weights(bundle: str, var: str) -> str:
    """The weight file's path under torchaudio's model URL (what ``bundle.get_model`` downloads)."""
    import torchaudio

    if bundle not in torchaudio.pipelines.__all__:
        raise ModelError(var, f"{bundle!r} is not a torchaudio pipeline bundle; see "
                         "torchaudio.pipelines (e.g. WAV2VEC2_ASR_BASE_960H)")
    # torchaudio keeps the file's path on the bundle (private); get_model joins it to its models URL.
    path = str(getattr(torchaudio.pipelines, bundle)._path)
    if path.startswith("https://"):
        raise ModelError(var, f"bundle {bundle} downloads from {path}, not from torchaudio's "
                         "model URL; put its weights in a local directory instead")
    return path


def resolve_bundle(bundle: str, models_dir: Path, var: str, base_url: str,
                   wait_s: float | None = 3600.0) -> TorchaudioModel:
    model_dir = models_dir / "torchaudio"
    rel = bundle_weights(bundle, var)
    target = model_dir / os.path.basename(rel)  # torch.hub's cache name: the URL's basename
    if target.is_file():
        return TorchaudioModel(bundle, model_dir)
    from worker.bootstrap.lease import Lease

    model_dir.mkdir(parents=True, exist_ok=True)
    lease = Lease(model_dir / f"{target.name}.lease", ttl_s=LEASE_TTL_S, heartbeat_s=LEASE_HEARTBEAT_S)
    lease.acquire(timeout_s=wait_s)
    try:
        if target.is_file():
            log.info("models: %s was downloaded by another worker", bundle)
            return TorchaudioModel(bundle, model_dir)
        url = f"{base_url.rstrip('/')}/{rel}"
        log.info("models: downloading torchaudio bundle %s from %s to %s", bundle, url, target)
        started = time.monotonic()
        try:
            size = _fetch_file(url, target, lease.check)
        except Exception as exc:
            raise ModelError(var, f"downloading torchaudio bundle {bundle} from {url} failed: "
                             f"{exc}; check the network or ALIGN_TORCHAUDIO_URL") from exc
        log.info("models: %s ready (%.1f MB) in %.1f s", bundle, size / 1e6, time.monotonic() - started)
        return TorchaudioModel(bundle, model_dir)
    finally:
        lease.release()


def _fetch_file(url: str, target: Path, check: Callable[[], None]) -> int:
    """``url`` -> ``target`` through a partial file (resumed with Range after a dropped connection),
    fsynced and renamed into place complete. Returns its size."""
    from worker.bootstrap.fetch import FetchError, RetryPolicy, Transport, read_chunk

    transport = Transport(policy=RetryPolicy(attempts=6, backoff_max_s=10.0))
    partial = target.with_name(f".{target.name}.partial")
    attempt = 0
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        try:
            body = transport.open(url, have)
            try:
                with open(partial, "ab" if body.offset == have else "wb") as out:
                    have = body.offset
                    while chunk := read_chunk(body):
                        check()
                        out.write(chunk)
                        have += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                body.close()
            if body.length is not None and have < body.offset + body.length:
                raise FetchError(f"{url}: short read", retryable=True)
            break
        except FetchError as exc:
            attempt += 1
            if not transport.policy.should_retry(exc, attempt):
                raise
            time.sleep(transport.policy.delay(attempt, exc.retry_after))
    os.replace(partial, target)
    return have


def whisperx_align_default(language: str, var: str) -> str:
    """WhisperX 3.8.6's own default alignment model for ``language``, as a spec: its torchaudio bundles
    (en, fr, de, es, it) or its Hugging Face models (the rest), read from whisperx itself."""
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    from worker.settings import ALIGN_HF_REV

    if language in DEFAULT_ALIGN_MODELS_TORCH:
        return f"torchaudio:{DEFAULT_ALIGN_MODELS_TORCH[language]}"
    if language in DEFAULT_ALIGN_MODELS_HF:
        return f"hf:{DEFAULT_ALIGN_MODELS_HF[language]}@{ALIGN_HF_REV}"
    known = sorted({*DEFAULT_ALIGN_MODELS_TORCH, *DEFAULT_ALIGN_MODELS_HF})
    raise ModelError(var, f"WhisperX has no default alignment model for {language!r} (it has: "
                     f"{', '.join(known)}); give {language}=<dir or hf:owner/repo@revision>")
