"""Serving figures on one GPU: transcription against faster-whisper, and the http mode end to end.

Two parts, each in its own process so that one's GPU memory is not counted in the other's:

``--part asr``   WhisperX as the worker runs it (worker.engine.asr.WhisperX: CTranslate2 Whisper in WhisperX's
                 batched pipeline, pyannote VAD, then wav2vec2 alignment) against faster-whisper's own
                 ``BatchedInferencePipeline`` (Silero VAD) on the same 60 s of speech, same model, batch
                 size, beam size and compute type; median of --runs warm runs each.
``--part http``  ``python -m worker`` with WORKER_MODE=http on the loopback, every model loaded on the GPU:
                 start to ``/ping`` 200, time to the first audio byte of a streamed ``/v1/audio/speech``
                 (and its whole time), the whole file unstreamed, ``/v1/audio/transcriptions`` on the 60 s,
                 N concurrent streamed requests, and the GPU memory in use (nvidia-smi, the worker's
                 process, every 0.1 s): idle with every model loaded, and the peak under load.

Models: full-size random weights, nothing downloaded: F5TTS_v1_Base + Vocos and a wav2vec2-base-shaped
aligner as bench/gpu_tts.py makes them, and a Whisper large-v3-shaped model (1.55 B parameters, 128 mel
bins, 32+32 layers) made with transformers and converted to CTranslate2 float16 as the tests convert
their tiny one (devtools' tokenizer layout). Random weights decode no real words: each 30 s window runs
to Whisper's 448-token limit or an early end token, the same work for both pipelines (the token and
character counts are printed beside the times). The speech is the English reference clip shipped in the
f5_tts wheel, repeated to 60 s, so both VADs find speech.

    python bench/gpu_serving.py --part all --json-out gpu_serving.json     # on the GPU machine
    python bench/gpu_serving.py --part all --tiny --runs 2                 # CPU smoke run, tiny models

``--cublas13-shim``: CTranslate2's wheels (4.8.5, the lock's) are CUDA 12 builds that dlopen
``libcublas.so.12`` by name and look up nine cuBLAS functions (cublasCreate_v2, cublasDestroy_v2,
cublasSetStream_v2, cublasGetMathMode, cublasGetProperty, cublasSgemm_v2, cublasSgemmStridedBatched,
cublasGemmEx, cublasGemmStridedBatchedEx); the GPU machine has CUDA 13 only. The shim is a directory
where ``libcublas.so.12`` names the machine's libcublas.so.13 (those nine functions keep their
signatures in 13), put first on LD_LIBRARY_PATH of the processes this script starts. Production runs
cuBLAS 12.8 from the lock; say so beside any figure measured through the shim.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SPEECH_S = 60.0
REF_CLIP = "infer/examples/basic/basic_ref_en.wav"
REF_TEXT = "Some call me nature, others call me mother nature."
# The text of bench/gpu_tts.py: ~11 s of speech at this reference's pace.
GEN_TEXT = ("I don't really care what you call me. I've been a silent spectator, watching species evolve, "
            "empires rise and fall.")
LARGE_V3 = dict(num_mel_bins=128, encoder_layers=32, decoder_layers=32, d_model=1280,
                encoder_attention_heads=20, decoder_attention_heads=20, encoder_ffn_dim=5120,
                decoder_ffn_dim=5120)


# --------------------------------------------------------------------------------------------- models

def ensure_models(cache: Path, tiny: bool) -> dict:
    """Every model both parts load, made once into ``cache`` (a later part of the same run reuses it)."""
    import gpu_tts

    from devtools import tiny as tiny_mod

    gpu_tts.import_f5_for_inference()  # the GPU image lacks the trainer's packages (see gpu_tts)
    tiny_root = tiny_mod.ensure_tiny_models(cache / "tiny")  # also the NLTK punkt data the aligner reads
    if tiny:
        env = tiny_mod.tiny_env(tiny_root)
        return {"env": env, "whisper": Path(env["WHISPER_MODEL"]), "align": tiny_root / "align-en",
                "nltk": tiny_root / "nltk", "compute_type": "float32"}
    full = cache / "full"
    done = full / "done.json"
    if not done.exists():
        shutil.rmtree(full, ignore_errors=True)
        full.mkdir(parents=True)
        paths = gpu_tts.make_models(full, tiny=False)
        write_whisper_large(tiny_mod, full / "whisper-large-v3", full / "whisper-hf")
        done.write_text(json.dumps({"ckpt": str(paths["ckpt"]), "vocab": str(paths["vocab"]),
                                    "vocos": str(paths["vocos"]), "align": str(paths["align"])}))
    paths = json.loads(done.read_text())
    env = {"F5_ARCH": "F5TTS_v1_Base", "F5_CKPT": paths["ckpt"], "F5_VOCAB": paths["vocab"],
           "F5_VOCODER": paths["vocos"], "WHISPER_MODEL": str(full / "whisper-large-v3"),
           "WHISPER_COMPUTE_TYPE": "float16", "ALIGN_MODELS": f"en={paths['align']}",
           "DEFAULT_LANGUAGE": "en", "NLTK_DATA": str(tiny_root / "nltk")}
    return {"env": env, "whisper": full / "whisper-large-v3", "align": Path(paths["align"]),
            "nltk": tiny_root / "nltk", "compute_type": "float16"}


def write_whisper_large(tiny_mod, dest: Path, work: Path) -> None:
    """A random Whisper large-v3-shaped model in CTranslate2 float16, through transformers' Whisper and
    CTranslate2's converter, with the tiny model's tokenizer layout (Whisper's special-token ids)."""
    import ctranslate2.converters
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    work.mkdir(parents=True)
    langs = tiny_mod._whisper_tokenizer_json(work)
    text_tokens = tiny_mod.WHISPER_TEXT_TOKENS
    sot = text_tokens + 1
    no_ts = sot + 1 + len(langs) + len(tiny_mod.NON_LANG_SPECIALS_AFTER) - 1
    cfg = WhisperConfig(vocab_size=tiny_mod.WHISPER_VOCAB, max_source_positions=1500,
                        max_target_positions=448, pad_token_id=text_tokens, bos_token_id=text_tokens,
                        eos_token_id=text_tokens, decoder_start_token_id=sot, suppress_tokens=[],
                        begin_suppress_tokens=[text_tokens], **LARGE_V3)
    torch.manual_seed(3)
    model = WhisperForConditionalGeneration(cfg).half()  # transformers' own random init
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=text_tokens, pad_token_id=text_tokens, suppress_tokens=[],
        begin_suppress_tokens=[text_tokens],
        lang_to_id={f"<|{c}|>": sot + 1 + i for i, c in enumerate(langs)},
        task_to_id={"translate": no_ts - 5, "transcribe": no_ts - 4}, no_timestamps_token_id=no_ts,
        is_multilingual=True, max_length=448)
    model.save_pretrained(work, safe_serialization=True)
    del model
    WhisperTokenizerFast(tokenizer_file=str(work / "tokenizer.json")).save_pretrained(work)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(work)
    ctranslate2.converters.TransformersConverter(
        str(work), copy_files=["tokenizer.json", "preprocessor_config.json"], load_as_float16=True,
        low_cpu_mem_usage=True,
    ).convert(str(dest), quantization="float16", force=True)
    shutil.rmtree(work)


def speech_60s() -> np.ndarray:
    """The f5_tts English reference clip at 16 kHz, repeated with 0.3 s pauses to SPEECH_S seconds."""
    import soundfile as sf
    from scipy.signal import resample_poly

    clip, sr = sf.read(str(files("f5_tts").joinpath(REF_CLIP)), dtype="float32", always_2d=True)
    clip = resample_poly(clip.mean(axis=1), 16_000, sr).astype(np.float32)
    piece = np.concatenate([clip, np.zeros(4800, np.float32)])
    reps = -(-round(SPEECH_S * 16_000) // len(piece))
    return np.tile(piece, reps)[: int(SPEECH_S * 16_000)]


# ------------------------------------------------------------------------------------------ GPU memory

class GpuMemory:
    """nvidia-smi's memory in use by one process (MiB), sampled every 0.1 s on a thread: the peak since
    the last mark, and the last sample. No GPU (the CPU smoke run): nothing, and ``peak`` is None."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.ok = bool(shutil.which("nvidia-smi")) and subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True).returncode == 0
        if self.ok:
            threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while not self.stop.wait(0.1):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            used = sum(int(m) for p, m in (line.split(",") for line in out.splitlines() if "," in line)
                       if int(p) == self.pid)
            self.samples.append(used)

    def mark(self) -> int:
        return len(self.samples)

    def peak(self, since: int = 0) -> int | None:
        return max(self.samples[since:], default=None) if self.ok else None

    def now(self) -> int | None:
        return self.samples[-1] if self.ok and self.samples else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ asr part

def part_asr(models: dict, device: str, runs: int, batch_size: int) -> dict:
    import types

    from worker.engine import asr as asr_mod
    from worker.engine.core import _use_nltk_dir

    _use_nltk_dir(types.SimpleNamespace(nltk_dir=models["nltk"]))  # the punkt data, as Engine.load does
    audio = speech_60s()
    mem = GpuMemory(os.getpid())
    out: dict = {"audio_s": len(audio) / 16_000, "batch_size": batch_size, "device": device,
                 "compute_type": models["compute_type"]}

    def median_of(fn) -> tuple[float, list[float], object]:
        result = fn()  # warm
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times, result

    for vad in ("pyannote", "none"):
        t0 = time.perf_counter()
        wx = asr_mod.WhisperX(str(models["whisper"]), {"en": str(models["align"])}, "en", device,
                              models["compute_type"], batch_size, vad)
        load_s = time.perf_counter() - t0
        med, times, result = median_of(functools.partial(wx.transcribe, audio, "en"))
        segments = result["segments"]
        amed, atimes, _ = median_of(functools.partial(wx.align, segments, audio, "en"))
        out[f"whisperx_vad_{vad}"] = {
            "load_s": load_s, "transcribe_s": med, "transcribe_runs": times, "align_s": amed,
            "align_runs": atimes, "segments": len(segments), "chars": sum(len(s["text"]) for s in segments)}
        print(f"# whisperx vad={vad}: transcribe {med:.3f} s, align {amed:.3f} s, "
              f"{len(segments)} segments", flush=True)
        del wx
        _free(device)

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(str(models["whisper"]), device=device, compute_type=models["compute_type"])
    pipe = BatchedInferencePipeline(model)

    def fw():
        segments, _info = pipe.transcribe(audio, language="en", batch_size=batch_size, beam_size=5)
        return list(segments)

    med, times, segs = median_of(fw)
    out["faster_whisper_batched"] = {"transcribe_s": med, "transcribe_runs": times, "segments": len(segs),
                                     "chars": sum(len(s.text) for s in segs),
                                     "tokens": sum(len(s.tokens) for s in segs)}
    print(f"# faster-whisper batched: {med:.3f} s, {len(segs)} segments", flush=True)
    out["gpu_mem_peak_mib"] = mem.peak()
    mem.stop.set()
    return out


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- http part

def part_http(models: dict, device: str, runs: int, concurrency: list[int], first_chunks: list[int],
              work: Path, log: Path) -> dict:
    """The whole suite on a worker with the default settings; then, per other F5_FIRST_CHUNK_CHARS, a
    fresh worker and only the streamed speech (what that setting changes)."""
    out = serve_and_measure(models, device, runs, concurrency, first_chunks[0], work, log, full=True)
    out["first_chunk_chars"] = first_chunks[0]
    out["other_first_chunk_chars"] = {}
    for chars in first_chunks[1:]:
        other = serve_and_measure(models, device, runs, [], chars, work, log.with_suffix(f".{chars}.log"),
                                  full=False)
        out["other_first_chunk_chars"][str(chars)] = other
    return out


def serve_and_measure(models: dict, device: str, runs: int, concurrency: list[int], first_chunk: int,
                      work: Path, log: Path, full: bool) -> dict:
    import httpx
    import soundfile as sf

    volume = work / "volume"
    voices = volume / "voices"
    voices.mkdir(parents=True, exist_ok=True)
    clip, sr = sf.read(str(files("f5_tts").joinpath(REF_CLIP)), dtype="float32")
    sf.write(voices / "en.wav", clip, sr)
    (voices / "en.txt").write_text(REF_TEXT)
    port = free_port()
    most = max([1, *concurrency])
    env = dict(os.environ, **models["env"], WORKER_MODE="http", PORT=str(port), WORKER_HTTP_HOST="127.0.0.1",
               WORKER_DEVICE=device, WORKER_VOLUME=str(volume), WORKER_MAX_INFLIGHT=str(most),
               F5_FIRST_CHUNK_CHARS=str(first_chunk), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # The worker, as the installer execs it, but with f5_tts's inference modules imported as
    # bench/gpu_tts.py imports them (the GPU image lacks the trainer's packages; see its docstring).
    paths = [str(ROOT), str(ROOT / "bench")]
    launcher = (f"import sys, runpy; sys.path[:0] = {paths!r}; import gpu_tts; "
                "gpu_tts.import_f5_for_inference(); "
                "runpy.run_module('worker', run_name='__main__', alter_sys=True)")
    t0 = time.perf_counter()
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-c", launcher], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    mem = GpuMemory(proc.pid)
    base = f"http://127.0.0.1:{port}"
    out: dict = {"device": device, "max_inflight": most}
    try:
        with httpx.Client(timeout=600) as client:
            first_ping = ready = None
            while ready is None:
                if proc.poll() is not None:
                    raise SystemExit(f"worker exited {proc.returncode} before ready; see {log}")
                try:
                    code = client.get(base + "/ping", timeout=2).status_code
                    first_ping = first_ping or time.perf_counter() - t0
                    if code == 200:
                        ready = time.perf_counter() - t0
                    elif code not in (204,):
                        raise SystemExit(f"/ping answered {code}; see {log}")
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            out.update(start_to_first_ping_s=first_ping, start_to_ready_s=ready)
            time.sleep(1.0)
            out["gpu_mem_idle_mib"] = mem.now()
            mark = mem.mark()
            print(f"# http: /ping 204 after {first_ping:.1f} s, 200 after {ready:.1f} s", flush=True)

            speech = {"model": "tts-1", "input": GEN_TEXT, "voice": "en", "response_format": "pcm",
                      "stream_format": "audio"}
            streamed = [stream_speech(client, base, speech) for _ in range(runs + 1)][1:]
            out["speech_streamed"] = summarize(streamed)
            print(f"# http speech (F5_FIRST_CHUNK_CHARS={first_chunk}): first byte "
                  f"{out['speech_streamed']['first_byte_s']:.3f} s, streamed total "
                  f"{out['speech_streamed']['total_s']:.3f} s", flush=True)
            if not full:
                out["gpu_mem_peak_mib"] = mem.peak(mark)
                return out
            whole = {k: v for k, v in speech.items() if k != "stream_format"}
            unstreamed = [stream_speech(client, base, whole) for _ in range(runs + 1)][1:]
            out["speech_whole"] = summarize(unstreamed)
            print(f"# http speech, whole file: {out['speech_whole']['total_s']:.3f} s", flush=True)

            if models.get("skip_transcription"):
                out["concurrent"] = {}
                out["gpu_mem_peak_mib"] = mem.peak(mark)
                return out
            wav = work / "speech60.wav"
            sf.write(wav, speech_60s(), 16_000)
            upload = wav.read_bytes()  # read once, outside the timed requests
            times = []
            for i in range(runs + 1):
                t1 = time.perf_counter()
                r = client.post(base + "/v1/audio/transcriptions",
                                files={"file": ("speech.wav", upload, "audio/wav")},
                                data={"model": "whisper-1", "response_format": "json"})
                r.raise_for_status()
                if i:
                    times.append(time.perf_counter() - t1)
            out["transcription_60s"] = {"total_s": statistics.median(times), "runs": times}
            print(f"# http transcription of 60 s: {statistics.median(times):.3f} s", flush=True)

            out["concurrent"] = {}
            for n in concurrency:
                rows = concurrent_speech(base, speech, n, rounds=max(2, runs // 2))
                out["concurrent"][str(n)] = rows
                print(f"# http {n} concurrent: first byte p50 {rows['first_byte_p50_s']:.3f} s, "
                      f"total p50 {rows['total_p50_s']:.3f} / p95 {rows['total_p95_s']:.3f} s, "
                      f"{rows['audio_s_per_s']:.1f} audio s/s", flush=True)
            out["gpu_mem_peak_mib"] = mem.peak(mark)
    finally:
        mem.stop.set()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def stream_speech(client, base: str, body: dict) -> dict:
    """One speech request: seconds to the response headers, to the first body byte, to the end."""
    t0 = time.perf_counter()
    first = None
    size = 0
    with client.stream("POST", base + "/v1/audio/speech", json=body) as r:
        headers = time.perf_counter() - t0
        if r.status_code != 200:
            raise SystemExit(f"/v1/audio/speech answered {r.status_code}: {r.read()[:300]!r}")
        for chunk in r.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
    return {"headers_s": headers, "first_byte_s": first, "total_s": time.perf_counter() - t0,
            "audio_s": size / 2 / 24_000}  # pcm: 16-bit mono 24 kHz


def summarize(rows: list[dict]) -> dict:
    keys = ("headers_s", "first_byte_s", "total_s", "audio_s")
    return {**{k: statistics.median(r[k] for r in rows) for k in keys}, "runs": rows}


def concurrent_speech(base: str, body: dict, n: int, rounds: int) -> dict:
    import httpx

    rows: list[dict] = []
    walls = []
    for _ in range(rounds):
        results: list[dict] = [{}] * n

        def one(i: int, results: list[dict] = results) -> None:
            with httpx.Client(timeout=600) as c:
                results[i] = stream_speech(c, base, body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        walls.append(time.perf_counter() - t0)
        rows.extend(results)
    totals = sorted(r["total_s"] for r in rows)
    firsts = sorted(r["first_byte_s"] for r in rows)
    audio = sum(r["audio_s"] for r in rows)
    return {"requests": len(rows), "first_byte_p50_s": statistics.median(firsts),
            "total_p50_s": statistics.median(totals), "total_p95_s": _p95(totals),
            "audio_s_per_s": audio / sum(walls), "walls_s": walls}


def _p95(sorted_values: list[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(0.95 * (len(sorted_values) - 1)))]


# ----------------------------------------------------------------------------------------------- check

def part_check(cache: Path, device: str) -> dict:
    """Before the long run: what imports, and whether CTranslate2 runs a (tiny) Whisper on this device,
    with the cuBLAS it actually mapped."""
    import importlib

    out: dict = {"imports": {}}
    for name in ("ctranslate2", "faster_whisper", "av", "pyannote.audio", "whisperx.asr", "starlette",
                 "uvicorn", "multipart", "f5_tts.infer.utils_infer"):
        try:
            importlib.import_module(name)
            out["imports"][name] = "ok"
        except Exception as exc:  # report every failure, not only the first
            out["imports"][name] = f"{type(exc).__name__}: {exc}"[:300]
    import ctranslate2

    from devtools import tiny as tiny_mod

    dest = cache / "check-whisper"
    if not (dest / "model.bin").exists():
        shutil.rmtree(cache / "check-work", ignore_errors=True)
        (cache / "check-work").mkdir(parents=True)
        tiny_mod._write_whisper(dest, cache / "check-work")
    out["ct2"] = ctranslate2.__version__
    out["cuda_devices"] = ctranslate2.get_cuda_device_count()
    model = ctranslate2.models.Whisper(str(dest), device=device,
                                       compute_type="float16" if device == "cuda" else "float32")
    feats = ctranslate2.StorageView.from_array(np.random.default_rng(0).standard_normal(
        (2, 80, 3000)).astype(np.float32))
    t0 = time.perf_counter()
    res = model.generate(feats, [[50258]] * 2, max_length=32, beam_size=5)
    out["generate_s"] = time.perf_counter() - t0
    out["generated_tokens"] = [len(r.sequences_ids[0]) for r in res]
    maps = Path("/proc/self/maps").read_text()
    out["cublas_mapped"] = sorted({line.split()[-1] for line in maps.splitlines() if "libcublas" in line})
    return out


# ------------------------------------------------------------------------------------------------ main

def cublas13_shim(dest: Path) -> str:
    """The directory where libcublas.so.12 names this machine's CUDA 13 cuBLAS (see the docstring)."""
    import glob

    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(glob.glob("/opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib/libcublas.so.13")
                   + glob.glob("/usr/local/cuda*/targets/x86_64-linux/lib/libcublas.so.13"))
    if not found:
        raise SystemExit("cublas13 shim: no libcublas.so.13 on this machine")
    lib = Path(found[0])
    for name, target in (("libcublas.so.12", lib), ("libcublasLt.so.12", lib.with_name("libcublasLt.so.13"))):
        link = dest / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return f"{dest}:{lib.parent}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("asr", "http", "all", "check"), default="all")
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke run of this script")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8, help="Whisper batch size (WHISPER_BATCH_SIZE's)")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 4, 8])
    ap.add_argument("--first-chunk-chars", type=int, nargs="+", default=[0, 40],
                    help="F5_FIRST_CHUNK_CHARS per worker started (the first: the whole suite)")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-serving")
    ap.add_argument("--cublas13-shim", action="store_true")
    ap.add_argument("--worker-env", nargs="*", default=[], metavar="NAME=VALUE",
                    help="more variables for the http part's workers (F5_COMPILE=1, ...)")
    ap.add_argument("--skip-transcription", action="store_true",
                    help="http part: no transcription requests (a run about synthesis only)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if args.cublas13_shim and "GPU_SERVING_SHIM" not in os.environ:
        ld = cublas13_shim(args.cache / "cublas13-shim")
        env = dict(os.environ, GPU_SERVING_SHIM="1",
                   LD_LIBRARY_PATH=":".join(p for p in (ld, os.environ.get("LD_LIBRARY_PATH")) if p))
        again = argv if argv is not None else sys.argv[1:]
        return subprocess.call([sys.executable, __file__, *again], env=env)
    if args.part == "all":  # each part in its own process; the results merged
        results = {}
        for part in ("asr", "http"):
            out = args.cache / f"{part}.json"
            out.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--part", part, "--runs", str(args.runs), "--batch-size",
                   str(args.batch_size), "--cache", str(args.cache), "--json-out", str(out),
                   "--concurrency", *map(str, args.concurrency),
                   "--first-chunk-chars", *map(str, args.first_chunk_chars),
                   *(["--tiny"] if args.tiny else []), "--worker-env", *args.worker_env,
                   *(["--skip-transcription"] if args.skip_transcription else [])]
            code = subprocess.call(cmd)
            results[part] = json.loads(out.read_text()) if out.exists() else {"failed": code}
        write(results, args.json_out)
        return 0 if all("failed" not in r for r in results.values()) else 1
    if args.part == "check":
        result = part_check(args.cache, device)
        write(result, args.json_out)
        return 0
    models = ensure_models(args.cache, args.tiny)
    if args.part == "asr":
        result = part_asr(models, device, args.runs, args.batch_size)
    else:
        work = args.cache / "http-work"
        models["env"].update(dict(item.split("=", 1) for item in args.worker_env))
        models["skip_transcription"] = args.skip_transcription
        result = part_http(models, device, args.runs, args.concurrency, args.first_chunk_chars, work,
                           args.cache / "http-worker.log")
        result["worker_env"] = args.worker_env
    result["cublas13_shim"] = bool(os.environ.get("GPU_SERVING_SHIM"))
    write(result, args.json_out)
    return 0


def write(result: dict, path: Path | None) -> None:
    text = json.dumps(result, default=str)
    if path:
        path.write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
