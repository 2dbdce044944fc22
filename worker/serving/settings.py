"""The http mode's settings, read from the environment once into a frozen value.

``WORKER_MODE`` [queue]          queue (the runpod job handler) or http (this package)
``PORT`` [80]                    the HTTP app's port (RunPod load-balancing endpoints set it)
``PORT_HEALTH`` [PORT]           the port of ``GET /ping``; another port: a second listener serves only /ping
``WORKER_HTTP_HOST`` [0.0.0.0]   the address both listen on
``WORKER_MAX_INFLIGHT`` [2]      requests worked on at once (speech, transcription, jobs); one more is
                                 answered 429 with Retry-After at once: a load-balancing endpoint has no
                                 queue, so the worker sheds load itself instead of letting requests
                                 pile up into RunPod's ~5.5 min cut
``WORKER_RETRY_AFTER_S`` [2]     the Retry-After of a 429 (and of a 503 while the models load)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from worker.config import ConfigError

MODES = ("queue", "http")


class SettingsError(ConfigError):
    """A variable of the http mode is malformed; the message names it."""


def mode(env: Mapping[str, str] | None = None) -> str:
    """``WORKER_MODE``: queue (default) or http."""
    env = os.environ if env is None else env
    value = env.get("WORKER_MODE", "").strip().lower() or "queue"
    if value not in MODES:
        raise SettingsError(f"config: WORKER_MODE={value!r} must be one of {', '.join(MODES)}")
    return value


@dataclass(frozen=True)
class ServingSettings:
    host: str = "0.0.0.0"
    port: int = 80
    health_port: int = 80
    max_inflight: int = 2
    retry_after_s: int = 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        env = os.environ if env is None else env
        issues: list[str] = []

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                issues.append(f"{name}={raw!r} is not an integer")
                return default
            if not low <= value <= high:
                issues.append(f"{name}={raw!r} must be from {low} to {high}")
                return default
            return value

        port = integer("PORT", cls.port, 1, 65535)
        settings = cls(
            host=env.get("WORKER_HTTP_HOST", "").strip() or cls.host,
            port=port,
            health_port=integer("PORT_HEALTH", port, 1, 65535),
            max_inflight=integer("WORKER_MAX_INFLIGHT", cls.max_inflight, 1, 1024),
            retry_after_s=integer("WORKER_RETRY_AFTER_S", cls.retry_after_s, 0, 3600),
        )
        if issues:
            raise SettingsError("config: " + "; ".join(issues))
        return settings
