"""Batching of concurrent requests (worker/batching.py + F5Synth's batched ODE).

The gatherer on its own (a stand-in run function that records what it was given): who goes first, who
waits, what a failure reaches. Then the real engine on the tiny models: requests synthesized
concurrently, their text batches sharing ODE runs, each equal to what it gets alone for the same seed
(the eager path and the graph path's plumbing, as in test_upstream_equivalence.py).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_upstream_equivalence import REF_TEXT, _EagerGraph, _ref, _synth, root  # noqa: F401

from worker import batching, tts

WAIT = 30.0  # seconds a test waits for a result before calling it lost (never a timing assertion)


class _Recorder:
    def __init__(self, fail: set | None = None) -> None:
        self.calls: list[list] = []
        self.fail = fail or set()
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()

    def __call__(self, items):
        self.started.set()
        self.release.wait(WAIT)
        self.calls.append(list(items))
        return [ValueError(f"row {i} failed") if i in self.fail else i * 10 for i in items]


def test_a_lone_stream_runs_at_once_without_waiting_for_the_window() -> None:
    run = _Recorder()
    g = batching.Gatherer(run, key=lambda i: 0, max_rows=8, window_s=600.0)
    g.open_stream()
    assert g.submit(1).result(timeout=WAIT) == 10  # a 600 s window would time this out
    g.close_stream()


def test_active_streams_are_waited_for_and_batched_together() -> None:
    run = _Recorder()
    g = batching.Gatherer(run, key=lambda i: 0, max_rows=8, window_s=600.0)
    for _ in range(3):
        g.open_stream()
    futures = [g.submit(i) for i in (1, 2, 3)]  # the run starts once all three active streams are in
    assert [f.result(timeout=WAIT) for f in futures] == [10, 20, 30]
    assert run.calls == [[1, 2, 3]] and g.runs == [3]


def test_first_batches_go_before_later_ones_and_max_rows_bounds_a_run() -> None:
    run = _Recorder()
    run.release.clear()  # hold the model busy while the queue fills
    g = batching.Gatherer(run, key=lambda i: 0, max_rows=2, window_s=0.0)
    busy = g.submit(0)
    assert run.started.wait(WAIT)  # the model is busy with item 0 alone
    later = [g.submit(i, batching.LATER) for i in (1, 2)]
    first = g.submit(3, batching.FIRST)
    run.release.set()
    for f in (busy, *later, first):
        f.result(timeout=WAIT)
    # While it was busy, two later batches and then a stream's first batch queued: the first leads.
    assert run.calls == [[0], [3, 1], [2]]


def test_items_that_cannot_share_an_ode_run_apart() -> None:
    run = _Recorder()
    # The window ends the wait for the two streams that were answered first and hand in nothing more.
    g = batching.Gatherer(run, key=lambda i: i % 2, max_rows=8, window_s=0.2)
    for _ in range(4):
        g.open_stream()
    futures = [g.submit(i) for i in (1, 2, 3, 4)]
    assert [f.result(timeout=WAIT) for f in futures] == [10, 20, 30, 40]
    assert sorted(sorted(c) for c in run.calls) == [[1, 3], [2, 4]]


def test_a_rows_failure_is_its_own_and_a_runs_failure_reaches_every_row() -> None:
    run = _Recorder(fail={2})
    g = batching.Gatherer(run, key=lambda i: 0, max_rows=8, window_s=600.0)
    for _ in range(2):
        g.open_stream()
    ok, bad = g.submit(1), g.submit(2)
    assert ok.result(timeout=WAIT) == 10
    with pytest.raises(ValueError, match="row 2 failed"):
        bad.result(timeout=WAIT)

    def broken(items):
        raise RuntimeError("CUDA error: an illegal memory access")

    g2 = batching.Gatherer(broken, key=lambda i: 0, max_rows=8, window_s=600.0)
    for _ in range(2):
        g2.open_stream()
    futures = [g2.submit(i) for i in (1, 2)]
    for f in futures:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            f.result(timeout=WAIT)
    for _ in range(2):
        g2.close_stream()
    with pytest.raises(RuntimeError):  # the batcher thread survived the failure: it still answers
        g2.submit(3).result(timeout=WAIT)


# ---- the real engine ----------------------------------------------------------------------------

# Different texts (so different lengths and batch counts), references and seeds.
REQUESTS = [
    ("Hello world, this is a small test of the engine.", 1.0, 4),
    ("A second request. It has two sentences, and a clause.", 1.3, 5),
    ("Short one.", 0.8, 6),
    ("The fourth voice speaks a little longer than the others do, on purpose.", 1.1, 7),
]


def _concurrently(synth: tts.F5Synth, requests, checks=None) -> list:
    """Every request's stream in its own thread; each stream's first check waits for all of them, so
    they are all active before any hands in a batch (the batching is then deterministic)."""
    barrier = threading.Barrier(len(requests))

    def one(i: int):
        first = [True]
        own = checks[i] if checks else None

        def check() -> None:
            if first[0]:
                first[0] = False
                barrier.wait(WAIT)
            if own is not None:
                own()

        text, ref_s, seed = requests[i]
        gen = synth.synthesize(text, _ref(ref_s, 0.1, seed=seed), REF_TEXT, nfe_step=6, seed=seed,
                               check=check)
        try:
            return np.concatenate(list(gen))
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, range(len(requests))))


def _alone(root, requests, **kw) -> list[np.ndarray]:  # noqa: F811 - root is the fixture's value
    synth = _synth(root, **kw)
    return [np.concatenate(list(synth.synthesize(text, _ref(ref_s, 0.1, seed=seed), REF_TEXT, nfe_step=6,
                                                 seed=seed)))
            for text, ref_s, seed in requests]


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-plumbing"])
def test_concurrent_requests_share_runs_and_each_equals_its_audio_alone(root, graphs):  # noqa: F811
    kw = {"bucket_frames": 64} if graphs else {}
    alone = _alone(root, REQUESTS, **kw)
    batched = _synth(root, batch_rows=8, batch_window_s=30.0, **kw)
    if graphs:
        batched.cuda_graphs = True
        batched._graph_factory = _EagerGraph
    got = _concurrently(batched, REQUESTS)
    assert max(batched.gatherer.runs) == len(REQUESTS)  # the first batches of all four: one run
    for one, ref in zip(got, alone, strict=True):
        assert isinstance(one, np.ndarray) and len(one) == len(ref)
        np.testing.assert_allclose(one, ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))
    if graphs:  # 4 rows: one graph of 4 rows per bucket used; 3 rows would round up to 4 as well
        assert {rows for _, rows in batched._batch_graphs} <= {2, 4}


def test_one_requests_deadline_stops_its_row_and_not_the_others(root):  # noqa: F811
    alone = _alone(root, REQUESTS[:3])
    batched = _synth(root, batch_rows=8, batch_window_s=30.0)
    calls = [0]

    class Deadline(Exception):
        pass

    def deadline() -> None:  # the second request's job runs out of time a few ODE steps in
        calls[0] += 1
        if calls[0] > 3:
            raise Deadline("job ran past WORKER_JOB_TIMEOUT_S")

    got = _concurrently(batched, REQUESTS[:3], checks=[None, deadline, None])
    assert isinstance(got[1], Deadline)
    for i in (0, 2):
        np.testing.assert_allclose(got[i], alone[i], rtol=0, atol=1e-4 * float(np.abs(alone[i]).max()))
