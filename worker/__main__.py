"""`python -m worker`: the serverless worker, started by the bootstrap inside the installed env.

Startup order (nothing takes a job before the models can serve):
1. configuration from the environment (worker/settings.py), checked;
2. model files present: local directories as they are, pinned hub revisions downloaded onto the volume
   once (under a lease, atomic commit; worker/engine/models.py), then HF_HUB_OFFLINE=1;
3. Engine.load: F5-TTS + vocoder, WhisperX ASR + the default language's alignment model;
4. one warm-up inference of each model;
5. runpod.serverless.start with the job handler (worker/queue/handler.py).
With WORKER_MODE=http (RunPod load-balancing endpoints) the same steps run behind an HTTP server instead
(worker/serving/server.py), which answers /ping 204 from the start and every request with a failure.
A failure before 5 logs one line naming the phase, the cause and the remedy
(worker/queue/failure.py); then, where a job queue is there (on RunPod, or runpod's local API), the
worker stays up and answers every job with that line as its ``{"error"}`` (asking to be replaced after the
job where a fresh container could help, a CUDA fault), instead of exiting into RunPod's restart loop with
the jobs waiting unanswered.
Without a queue (a plain local run) it exits non-zero: 2 for a variable or a model spec, else 1.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from worker.errors import SettingsError
from worker.settings import EngineSettings, Settings, log_level, mode

log = logging.getLogger("worker")


def prepare(config: EngineSettings, *, warmup: bool = True, on_phase: Callable[[str], None] = lambda _: None):
    """Steps 2-4: a warm Engine, ready to serve. ``on_phase`` hears each step's name as it starts
    (models, load, warmup), so a failure can say where it happened."""
    from worker.engine.core import Engine, resolve_models

    started = time.monotonic()
    on_phase("models")
    paths = resolve_models(config)  # local paths as they are; pinned hub revisions fetched once
    on_phase("load")
    engine = Engine.load(config, paths)  # takes the process offline first
    if warmup:
        on_phase("warmup")
        engine.warmup()
    log.info("worker: ready in %.1f s (device %s)", time.monotonic() - started, engine.device)
    return engine


def job_setup(engine, settings: Settings) -> dict:
    """Step 5a: the handler and runpod's start config. ``start_config`` (not a bare handler) so a GPU fault
    under the streaming handler still gets the worker replaced (refresh_worker)."""
    from worker.queue.handler import start_config

    return start_config(engine, settings)


def serve(engine, settings: Settings, start: dict | None = None) -> None:
    """Step 5b: hand the warm engine to the runpod SDK (which reads its own flags from sys.argv)."""
    import runpod

    runpod.serverless.start(start if start is not None else job_setup(engine, settings))


def _configure_logging() -> None:
    level = log_level()
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
    try:
        http = mode() == "http"
    except SettingsError as exc:  # a malformed WORKER_MODE
        return fail(exc, "config")
    if http:  # RunPod load-balancing endpoints: the worker is the HTTP server (worker/serving/server.py)
        from worker.serving.server import main as serve_http

        return serve_http()
    phase = ["config"]
    try:
        # Every variable first (job limits too): a malformed one fails in a second, not after the models.
        settings = Settings.from_env()
        engine = prepare(settings.engine, on_phase=lambda name: phase.__setitem__(0, name))
        phase[0] = "handler"
        start = job_setup(engine, settings)
    except Exception as exc:
        return fail(exc, phase[0])
    serve(engine, settings, start)
    return 0


def fail(exc: BaseException, phase: str, serve_failure: Callable | None = None) -> int:
    """Log the startup failure as one line; answer jobs with it where a queue is there, else exit."""
    from worker.queue import failure

    found = failure.classify(exc, phase)
    if not found.expected:  # a bug or a broken environment: the traceback helps
        log.error("startup failed in %s:", found.phase, exc_info=exc)
    log.error("%s", found.line)
    if not failure.answers_jobs():
        return found.exit_code
    (serve_failure or failure.serve_queue)(found)
    return found.exit_code


if __name__ == "__main__":
    sys.exit(main())
