"""`python -m worker`: the serverless worker, started by the bootstrap inside the installed env.

Startup order (nothing takes a job before the models can serve):
1. configuration from the environment (worker/config.py), checked;
2. model files present: local directories as they are, pinned hub revisions downloaded onto the volume
   once (under a lease, atomic commit; worker/models.py), then HF_HUB_OFFLINE=1;
3. Engine.load: F5-TTS + vocoder, WhisperX ASR + the default language's alignment model;
4. one warm-up inference of each model;
5. runpod.serverless.start with the job handler (worker/handler.py).
A failure before 5 logs one line naming the phase and what to do, and exits non-zero, so RunPod marks
the worker unhealthy instead of leaving it up without models.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from worker.config import ConfigError, WorkerConfig
from worker.limits import LimitsError

log = logging.getLogger("worker")


def prepare(config: WorkerConfig, *, warmup: bool = True):
    """Steps 2-4: a warm Engine, ready to serve."""
    from worker.engine import Engine

    started = time.monotonic()
    engine = Engine.load(config)  # resolves model files, then takes the process offline
    if warmup:
        engine.warmup()
    log.info("worker: ready in %.1f s (device %s)", time.monotonic() - started, engine.device)
    return engine


def job_setup(engine, config: WorkerConfig) -> dict:
    """Step 5a: the handler and runpod's start config. Job limits are read from the environment here, so a
    malformed WORKER_* variable fails startup with one line, not the first job. ``start_config`` (not a bare
    handler) so a GPU fault under the streaming handler still gets the worker replaced (refresh_worker)."""
    from worker.handler import start_config

    return start_config(engine, config)


def serve(engine, config: WorkerConfig, start: dict | None = None) -> None:
    """Step 5b: hand the warm engine to the runpod SDK (which reads its own flags from sys.argv)."""
    import runpod

    runpod.serverless.start(start if start is not None else job_setup(engine, config))


def _configure_logging() -> None:
    level = os.environ.get("WORKER_LOG_LEVEL", "INFO").upper()
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt)


def hold_env() -> None:
    """Keep the installer's "in use" registration of this env fresh, so GC on the shared volume never
    removes the env a live worker runs from (the installer passes the file in BOOTSTRAP_IN_USE_FILE)."""
    from worker.bootstrap.lease import InUse

    in_use = InUse.from_environ()
    if in_use is not None:
        in_use.start()


def main() -> int:
    _configure_logging()
    hold_env()
    phase = "config"
    try:
        config = WorkerConfig.from_env()
        phase = "models"
        engine = prepare(config)
        phase = "handler"
        start = job_setup(engine, config)
    except (ConfigError, LimitsError) as exc:
        log.error("worker: %s (phase %s); fix the variable and restart", exc, phase)
        return 2
    except Exception as exc:
        from worker.engine import EngineError
        from worker.models import ModelError

        if isinstance(exc, ModelError | EngineError):
            log.error("worker: %s (phase %s)", exc, phase)
            return 2
        log.exception("worker: startup failed in phase %s: %s", phase, exc)
        return 1
    serve(engine, config, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
