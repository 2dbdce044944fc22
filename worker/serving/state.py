"""What the worker is doing, as ``GET /ping`` and every route see it: loading, ready or failed.

RunPod's load-balancing contract: ``/ping`` 204 while initializing, 200 when ready, anything else is
unhealthy (the worker is replaced). A failed start answers 200 on ``/ping`` so that requests still reach
the worker and read why (every route answers 503 with the startup failure's line, naming the phase),
except where a fresh container could help (``StartupFailure.replace``: a CUDA fault, a GPU that is not
visible) or a GPU fault hit a request: then ``/ping`` answers 500 once one request has been told, so
RunPod replaces the worker after it has said why, never in a silent loop.
"""

from __future__ import annotations

import threading
from typing import Any

from worker.queue.failure import StartupFailure


class WorkerState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = "config"
        self.service: Any = None
        self.failure: StartupFailure | None = None
        self.told = 0  # requests answered with the failure
        self.gpu_fault = False

    def loading(self, phase: str) -> None:
        with self._lock:
            self.phase = phase

    def ready(self, service: Any) -> None:
        with self._lock:
            self.service, self.phase = service, "ready"

    def failed(self, failure: StartupFailure) -> None:
        with self._lock:
            self.failure, self.phase = failure, "failed"

    def fault(self) -> None:
        """A request hit a GPU fault (its answer says so): the worker should be replaced."""
        with self._lock:
            self.gpu_fault = True

    def tell(self) -> None:
        with self._lock:
            self.told += 1

    def ping(self) -> int:
        """The status ``/ping`` answers."""
        with self._lock:
            if self.gpu_fault:
                return 500
            if self.failure is not None:
                return 500 if self.failure.replace and self.told else 200
            return 200 if self.service is not None else 204
