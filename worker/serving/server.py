"""``WORKER_MODE=http``: uvicorn on PORT (and PORT_HEALTH) at once, the models loading behind it.

Startup order, as the queue mode's (worker/__main__.py), with the HTTP listeners first so that
``/ping`` answers 204 from the first second (RunPod measures the cold start from there):
1. the http settings (PORT, PORT_HEALTH, WORKER_MAX_INFLIGHT...); malformed: one line and exit 2, since
   there is no port to answer on;
2. the listeners start; on a thread, the queue mode's own steps: configuration, model files, load,
   warm-up (``worker.__main__.prepare``), then the service; ``/ping`` turns 200;
3. a failure in 2 is the queue mode's ``StartupFailure`` (worker/queue/failure.py), logged as its one line and
   answered to every request (503 with that line, naming the phase).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from worker.errors import SettingsError
from worker.serving.state import WorkerState
from worker.settings import ServingSettings, Settings

log = logging.getLogger("worker.serving")


def load(state: WorkerState, make_settings: Callable[[], Settings] | None = None) -> None:
    """Step 2's loading: settings, models, load, warm-up, service; a failure is kept in ``state``."""
    from worker.__main__ import prepare
    from worker.queue.failure import classify

    try:
        settings = (make_settings or Settings.from_env)()
        engine = prepare(settings.engine, on_phase=state.loading)
        state.loading("handler")
        from worker.serving.service import Service

        state.ready(Service(engine, settings.engine, settings.jobs, on_fatal=state.fault))
        log.info("serving: ready")
    except Exception as exc:  # every startup failure is answered over HTTP, never an exit
        found = classify(exc, state.phase)
        if not found.expected:
            log.error("startup failed in %s:", found.phase, exc_info=exc)
        log.error("%s", found.line)
        log.error("serving this failure to every request so it shows in the HTTP response")
        state.failed(found)


def main(make_settings: Callable[[], Settings] | None = None, settings: ServingSettings | None = None
         ) -> int:
    try:
        settings = settings or ServingSettings.from_env()
    except SettingsError as exc:  # no port to answer on: the one line, and exit
        from worker.queue.failure import classify

        found = classify(exc, "config")
        log.error("%s", found.line)
        return found.exit_code
    state = WorkerState()
    threading.Thread(target=load, args=(state, make_settings), name="serving-load", daemon=True).start()
    asyncio.run(serve(state, settings))
    return 0


async def serve(state: WorkerState, settings: ServingSettings) -> None:
    import uvicorn

    from worker.serving.app import build_app, build_health_app

    apps = [(build_app(state, settings), settings.port)]
    if settings.health_port != settings.port:
        apps.append((build_health_app(state, settings), settings.health_port))
    def stop_work() -> None:
        for app, _ in apps:
            app.state.slots.stop()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Shutting down: running work stops at its next check, so its request ends and uvicorn's
            # graceful shutdown does not wait for minutes of synthesis nobody will receive.
            stop_work()
            super().handle_exit(sig, frame)

    servers = [Server(uvicorn.Config(app, host=settings.host, port=port, log_config=None, access_log=False,
                                     lifespan="off", timeout_keep_alive=30, timeout_graceful_shutdown=10))
               for app, port in apps]
    for _, port in apps:
        log.info("serving: listening on http://%s:%d", settings.host, port)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    # Each server traps SIGINT/SIGTERM; when one stops, stop the other too.
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_work()
