"""Configuration, read from the environment once into a frozen value; CLI flags override it.

Every variable (documented in docs/installer.md, the one table to keep in step with this file):

=============================  ====================  =================================================
variable                       default               meaning
=============================  ====================  =================================================
MANIFEST_URL                   (required)            http(s):// or file:// URL of manifest.json
MANIFEST_SHA256                (none)                pin: sha256 of the manifest bytes (baked in image)
RUNPOD_VOLUME                  /runpod-volume        the network volume (``--volume``)
GITHUB_TOKEN                   (none)                token for private release assets; sent to the
                                                     manifest's host only, never to redirect targets
BOOTSTRAP_PARALLEL             4                     parts downloaded at once
BOOTSTRAP_KEEP_ENVS            2                     installed envs kept by GC (the current one included)
BOOTSTRAP_VOLUME_FALLBACK      container             volume missing: ``container`` (install on container
                                                     disk, loud warning) or ``fail``
BOOTSTRAP_CONTAINER_DIR        /var/tmp/bootstrap-volume   the container disk: where ``container`` installs,
                                                     and where placement ``parts`` extracts the env
BOOTSTRAP_PLACEMENT            auto                  ``volume`` (env extracted onto the volume), ``parts``
                                                     (the volume keeps the verified parts; each container
                                                     extracts them onto its own disk) or ``auto`` (probe
                                                     the volume once, pick; see placement.py)
BOOTSTRAP_LEASE_TTL            30                    seconds without heartbeat before a lease is stale
BOOTSTRAP_WAIT_TIMEOUT         0                     seconds to wait for a live installer (0: no limit)
BOOTSTRAP_RETRIES              8                     attempts per request (connection errors, 5xx, 429)
BOOTSTRAP_BACKOFF_MAX          30                    cap of the exponential backoff, seconds
BOOTSTRAP_HTTP_TIMEOUT         60                    socket timeout, seconds
BOOTSTRAP_PROGRESS_INTERVAL    5                     seconds between progress lines
BOOTSTRAP_FAILURE_HANDLER      auto                  after a failure, answer jobs with the error:
                                                     ``auto`` (only on RunPod), ``on``, ``off``
BOOTSTRAP_LOG_LEVEL            INFO                  logging level of the bootstrap
=============================  ====================  =================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import BootstrapError

DEFAULT_VOLUME = "/runpod-volume"
DEFAULT_CONTAINER_DIR = "/var/tmp/bootstrap-volume"
_HEX64 = re.compile(r"[0-9a-f]{64}")
PLACEMENTS = ("auto", "volume", "parts")


@dataclass(frozen=True)
class Config:
    manifest_url: str | None = None
    manifest_sha256: str | None = None
    volume: Path = Path(DEFAULT_VOLUME)
    token: str | None = None
    parallel: int = 4
    keep_envs: int = 2
    volume_fallback: str = "container"
    container_dir: Path = Path(DEFAULT_CONTAINER_DIR)
    placement: str = "auto"
    lease_ttl_s: float = 30.0
    wait_timeout_s: float = 0.0
    retries: int = 8
    backoff_max_s: float = 30.0
    http_timeout_s: float = 60.0
    progress_s: float = 5.0
    failure_handler: str = "auto"
    log_level: str = "INFO"
    no_exec: bool = False

    @property
    def heartbeat_s(self) -> float:
        return max(0.05, self.lease_ttl_s / 6)


def _num(env: Mapping[str, str], name: str, default: float, kind: type, low: float) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BootstrapError("config", f"{name}={raw!r} is not a {kind.__name__}",
                             f"set {name} to a number >= {low} or unset it") from None
    if value < low:
        raise BootstrapError("config", f"{name}={raw!r} is below {low}", f"set {name} >= {low}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in allowed:
        raise BootstrapError("config", f"{name}={value!r} is not one of {', '.join(allowed)}",
                             f"set {name} to one of {', '.join(allowed)}")
    return value


def from_environ(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    return Config(
        manifest_url=env.get("MANIFEST_URL") or None,
        manifest_sha256=(env.get("MANIFEST_SHA256") or "").strip().lower() or None,
        volume=Path(env.get("RUNPOD_VOLUME") or DEFAULT_VOLUME),
        token=env.get("GITHUB_TOKEN") or None,
        parallel=_num(env, "BOOTSTRAP_PARALLEL", 4, int, 1),
        keep_envs=_num(env, "BOOTSTRAP_KEEP_ENVS", 2, int, 1),
        volume_fallback=_choice(env, "BOOTSTRAP_VOLUME_FALLBACK", "container", ("container", "fail")),
        container_dir=Path(env.get("BOOTSTRAP_CONTAINER_DIR") or DEFAULT_CONTAINER_DIR),
        placement=_choice(env, "BOOTSTRAP_PLACEMENT", "auto", PLACEMENTS),
        lease_ttl_s=_num(env, "BOOTSTRAP_LEASE_TTL", 30.0, float, 0.5),
        wait_timeout_s=_num(env, "BOOTSTRAP_WAIT_TIMEOUT", 0.0, float, 0),
        retries=_num(env, "BOOTSTRAP_RETRIES", 8, int, 1),
        backoff_max_s=_num(env, "BOOTSTRAP_BACKOFF_MAX", 30.0, float, 0),
        http_timeout_s=_num(env, "BOOTSTRAP_HTTP_TIMEOUT", 60.0, float, 0.1),
        progress_s=_num(env, "BOOTSTRAP_PROGRESS_INTERVAL", 5.0, float, 0.1),
        failure_handler=_choice(env, "BOOTSTRAP_FAILURE_HANDLER", "auto", ("auto", "on", "off")),
        log_level=(env.get("BOOTSTRAP_LOG_LEVEL") or "INFO").upper(),
    )


def with_overrides(config: Config, **flags: Any) -> Config:
    """CLI flags win over the environment; ``None`` means "flag not given"."""
    given = {k: v for k, v in flags.items() if v is not None}
    if "volume" in given:
        given["volume"] = Path(given["volume"])
    if given.get("manifest_sha256"):
        given["manifest_sha256"] = given["manifest_sha256"].strip().lower()
    return validate(replace(config, **given))


def validate(config: Config) -> Config:
    if config.manifest_sha256 is not None and not _HEX64.fullmatch(config.manifest_sha256):
        raise BootstrapError("config", f"manifest sha256 pin {config.manifest_sha256!r} is not 64 hex digits",
                             "pass the sha256 of manifest.json (sha256sum manifest.json)")
    if config.volume_fallback not in ("container", "fail"):
        raise BootstrapError("config", f"volume fallback {config.volume_fallback!r} is unknown",
                             "use 'container' or 'fail'")
    return config

