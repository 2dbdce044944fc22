"""Benchmark: batching of concurrent requests (worker/engine/batching.py), on the CPU with the tiny models.

    python bench/batching.py [--clients 1 4 8] [--rounds 3] [--nfe 16]

For each client count N: N clients at once, each sending 3 requests one after the other (a closed
loop; text, reference and seed each their own), through an engine with batching on (F5_BATCH_ROWS=8,
window 10 ms), against the same requests served one at a time by an engine with batching off
(F5_BATCH_ROWS=1). The two alternate (A B A B ...), --rounds times; the figure is audio seconds produced
per wall second, median of the rounds, and their ratio; plus p50/p95 latency from when a client sent a
request (the one-at-a-time side queues, as the clients of an unbatched worker would) and the rows per
ODE run batching achieved. Tiny random-weight models on a CPU: the ratio says what sharing the DiT
forwards buys on a CPU; it is not a GPU figure (docs/BENCHMARKS.md has those).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from devtools.tiny import ensure_tiny_models  # noqa: E402
from worker.engine import tts, tts_load  # noqa: E402

REF_TEXT = "This is the reference voice."
TEXTS = [
    "Hello world, this is a small test of the engine and its batching.",
    "A second request arrives at the same time, with its own voice and seed.",
    "The third one speaks about the weather, which is fine today, thank you.",
    "Number four reads a line from a book it found on the shelf.",
    "Five is short, but not that short; it has a clause or two.",
    "The sixth request is here to make the batch a little fuller than before.",
    "Seven asks a question: will the batcher let it join the others?",
    "And the eighth closes the round with a sentence of its own.",
]


def synth(root: Path, rows: int) -> tts.F5Synth:
    arch = tts_load.load_arch(str(root / "f5" / "arch.json"))
    cfm = tts_load.load_cfm(arch, root / "f5" / "model_tiny.safetensors", root / "f5" / "vocab.txt", "cpu",
                            torch.float32)
    return tts.F5Synth(cfm, tts_load.load_vocos(root / "vocos", "cpu"), "cpu", batch_rows=rows,
                       batch_window_s=0.01)


def ref(i: int) -> np.ndarray:
    wave = np.random.default_rng(i).standard_normal(int((1.0 + 0.1 * i) * tts.SAMPLE_RATE))
    return (wave * 0.1 / np.sqrt(np.mean(wave**2))).astype(np.float32)


def one(engine: tts.F5Synth, i: int, nfe: int) -> tuple[float, float]:
    """(audio seconds, latency seconds) of request i."""
    t0 = time.perf_counter()
    audio = np.concatenate(list(engine.synthesize(TEXTS[i % len(TEXTS)], ref(i), REF_TEXT, nfe_step=nfe,
                                                  seed=i)))
    return len(audio) / tts.SAMPLE_RATE, time.perf_counter() - t0


PER_CLIENT = 3


def concurrent(engine: tts.F5Synth, n: int, nfe: int) -> dict:
    engine.gatherer.runs = []
    t0 = time.perf_counter()

    def client(i: int) -> list[tuple[float, float]]:
        return [one(engine, i * PER_CLIENT + k, nfe) for k in range(PER_CLIENT)]

    with ThreadPoolExecutor(n) as pool:
        results = [r for rs in pool.map(client, range(n)) for r in rs]
    wall = time.perf_counter() - t0
    lat = sorted(r[1] for r in results)
    return {"audio_s": sum(r[0] for r in results), "wall_s": wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
            "rows_per_run": statistics.mean(engine.gatherer.runs) if engine.gatherer.runs else 0.0}


def sequential(engine: tts.F5Synth, n: int, nfe: int) -> dict:
    t0 = time.perf_counter()
    sent = [0.0] * n
    lat, audio = [], 0.0
    for k in range(PER_CLIENT):
        for i in range(n):
            audio += one(engine, i * PER_CLIENT + k, nfe)[0]
            now = time.perf_counter() - t0
            lat.append(now - sent[i])
            sent[i] = now
    wall = time.perf_counter() - t0
    lat.sort()
    return {"audio_s": audio, "wall_s": wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nfe", type=int, default=16)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one core per side's model thread; the box has two, shared
    root = ensure_tiny_models(ROOT / ".cache" / "tiny-models")
    batched, plain = synth(root, 8), synth(root, 1)
    one(batched, 0, args.nfe), one(plain, 0, args.nfe)  # warm both (lazy init, allocator)
    rows = []
    for n in args.clients:
        got: dict[str, list[dict]] = {"batched": [], "sequential": []}
        for _ in range(args.rounds):
            got["batched"].append(concurrent(batched, n, args.nfe))
            got["sequential"].append(sequential(plain, n, args.nfe))
        med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in got.items()}
        thr = {k: med[k]["audio_s"] / med[k]["wall_s"] for k in med}
        row = {"clients": n, "batched_audio_s_per_s": round(thr["batched"], 3),
               "sequential_audio_s_per_s": round(thr["sequential"], 3),
               "ratio": round(thr["batched"] / thr["sequential"], 3),
               "batched_p50_s": round(med["batched"]["p50_s"], 3),
               "batched_p95_s": round(med["batched"]["p95_s"], 3),
               "sequential_p50_s": round(med["sequential"]["p50_s"], 3),
               "sequential_p95_s": round(med["sequential"]["p95_s"], 3),
               "rows_per_run": round(med["batched"]["rows_per_run"], 2)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print("| clients | batched audio s/s | one after another | ratio | batched p50 / p95 | one after another "
          "p50 / p95 | rows per ODE run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['clients']} | {r['batched_audio_s_per_s']} | {r['sequential_audio_s_per_s']} | "
              f"**{r['ratio']}x** | {r['batched_p50_s']} / {r['batched_p95_s']} s | "
              f"{r['sequential_p50_s']} / {r['sequential_p95_s']} s | {r['rows_per_run']} |")
    print(json.dumps({"nfe": args.nfe, "rounds": args.rounds, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
