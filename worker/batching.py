"""Batching of concurrent synthesis: the text batches of requests in flight at once share DiT forwards.

Each request's stream hands its next text batch to the `Gatherer` and waits for that batch's audio. One
thread runs the model: it takes the most urgent waiting item (a stream's first batch before any later
batch, then the oldest), waits up to ``window_s`` for the other *active* streams to hand in theirs
(a stream between two batches is cross-fading and encoding: it will be back within milliseconds), and
runs up to ``max_rows`` items that can share one ODE (same step count, sway and guidance on/off) as
one batch. A lone stream never waits: with one active stream there is nobody to wait for.

Items are opaque here (the engine's `_RowJob`); ``key(item)`` says which can share a run, ``run(items)``
returns one result (or exception) per item. A failure of one row (its job's deadline) is that row's
alone; a failure of the whole run goes to every item in it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

FIRST = 0  # a stream's first batch: its time to first audio
LATER = 1


@dataclass(order=True)
class _Waiting:
    priority: int
    seq: int
    item: Any = field(compare=False)
    future: Future = field(compare=False)


class Gatherer:
    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], key: Callable[[Any], Hashable], *,
                 max_rows: int, window_s: float) -> None:
        self._run, self._key = run, key
        self.max_rows = max(1, max_rows)
        self.window_s = max(0.0, window_s)
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._active = 0  # streams that may hand in another batch
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self.runs: list[int] = []  # rows per run, newest last (bounded): what the batching achieved

    # ---- the streams' side -----------------------------------------------------------------------
    def open_stream(self) -> None:
        with self._cond:
            self._active += 1
            self._cond.notify_all()

    def close_stream(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def submit(self, item: Any, priority: int = LATER) -> Future:
        future: Future = Future()
        with self._cond:
            self._ensure_thread()
            self._queue.append(_Waiting(priority, next(self._seq), item, future))
            self._cond.notify_all()
        return future

    # ---- the model's side ------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="tts-batcher", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Waiting]:
        """Under the lock: wait for work, then for the other active streams (bounded by the window)."""
        while not self._queue:
            self._cond.wait()
        deadline = time.monotonic() + self.window_s
        while True:
            head = min(self._queue)
            fits = [w for w in self._queue if self._key(w.item) == self._key(head.item)]
            left = deadline - time.monotonic()
            # Every active stream has handed in a batch (or the batch is full): nothing to wait for.
            if len(fits) >= self.max_rows or len(self._queue) >= self._active or left <= 0:
                break
            self._cond.wait(left)
        chosen = sorted(fits)[: self.max_rows]
        for w in chosen:
            self._queue.remove(w)
        return chosen

    def _loop(self) -> None:
        while True:
            with self._cond:
                chosen = self._take()
            live = [w for w in chosen if w.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._run([w.item for w in live])
            except BaseException as exc:  # the whole run failed: every row learns why
                log.warning("tts: a batched run of %d rows failed: %s", len(live), exc)
                for w in live:
                    w.future.set_exception(exc)
                continue
            self.runs = [*self.runs[-255:], len(live)]
            for w, result in zip(live, results, strict=True):
                if isinstance(result, BaseException):
                    w.future.set_exception(result)
                else:
                    w.future.set_result(result)
