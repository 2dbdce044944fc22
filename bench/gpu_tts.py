"""F5-TTS latency on one GPU: upstream `f5_tts.api.F5TTS.infer` vs the worker's engine, side by side.

Full-size F5TTS_v1_Base + Vocos (mel-24khz) architectures with random weights (nothing is downloaded);
the reference is the English example clip shipped inside the f5_tts wheel, the text ~11 s of speech.
Per NFE (32, 16, 7: both sides use upstream's own schedule for the count, EPSS at 16 and 7) and variant:
warm latency (median of --runs), time to the first streamed chunk, output length against upstream's,
peak GPU memory; then WhisperX alignment time for the generated audio with a full-size random wav2vec2.
`--warmup`: the production warm-up (every bucket's graph) and peak memory with every model loaded;
`--profile`: the GPU kernels of one NFE-32 synthesis (what is left per ODE step).

    python bench/gpu_tts.py                     # on the GPU machine (see bench/gpu_wheels.sh)
    python bench/gpu_tts.py --tiny --runs 2     # CPU smoke run of the same code on the tiny models

Prints a markdown table, then one JSON line (the last line of stdout).

Harness notes (say them with the figures): torchaudio 2.11 loads files through torchcodec, which the
GPU image lacks, so `torchaudio.load` (used by upstream `infer_process` to read the reference) is
replaced by a soundfile reader; and f5_tts's inference modules are imported without running
`f5_tts/model/__init__.py`, whose only extra import is the training loop (wandb, accelerate, datasets,
ema_pytorch) that inference never calls. Both only change what gets imported, not what runs per call.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
import types
from importlib.resources import files
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REF_TEXT = "Some call me nature, others call me mother nature."
# ~11.2 s of speech at this reference's pace (upstream's length rule: 1513 frames with the reference).
GEN_TEXT = ("I don't really care what you call me. I've been a silent spectator, watching species evolve, "
            "empires rise and fall.")
VOCOS_FULL_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 512, intermediate_dim: 1536, num_layers: 8}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 512, n_fft: 1024, hop_length: 256, padding: center}
"""


def import_f5_for_inference() -> None:
    """Register f5_tts.model as a package without executing its __init__ (which imports the trainer),
    then import the real inference modules and expose what __init__ would (CFM, DiT)."""
    if "f5_tts.model" in sys.modules:
        return
    try:
        importlib.import_module("f5_tts.model")
        return
    except ImportError as exc:
        print(f"# f5_tts.model __init__ not importable here ({exc}); importing inference modules only",
              file=sys.stderr)
        for name in [n for n in sys.modules if n.startswith("f5_tts.model")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("f5_tts")
    pkg_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    pkg = types.ModuleType("f5_tts.model")
    pkg.__path__ = [str(pkg_dir)]
    pkg.__package__ = "f5_tts.model"
    sys.modules["f5_tts.model"] = pkg
    pkg.CFM = importlib.import_module("f5_tts.model.cfm").CFM
    pkg.DiT = importlib.import_module("f5_tts.model.backbones.dit").DiT


def patch_torchaudio_load() -> None:
    import soundfile as sf
    import torch
    import torchaudio

    def load(path, *args, **kwargs):
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), sr

    torchaudio.load = load


def make_models(tmp: Path, tiny: bool, seed: int = 0) -> dict:
    """Random-weight checkpoints in upstream's formats: ckpt (EMA safetensors), vocab, vocos dir, arch."""
    import torch
    from safetensors.torch import save_file

    from devtools import tiny as tiny_mod
    from worker.engine import tts_load

    if tiny:
        root = tiny_mod.ensure_tiny_models(ROOT / ".cache" / "tiny-models")
        return {"ckpt": root / "f5" / "model_tiny.safetensors", "vocab": root / "f5" / "vocab.txt",
                "vocos": root / "vocos", "arch": dict(tiny_mod.TINY_DIT), "align": root / "align-en"}
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from vocos import Vocos

    vocab = Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))
    arch = tts_load.load_arch("F5TTS_v1_Base")
    _, vocab_size = get_tokenizer(str(vocab), "custom")
    torch.manual_seed(seed)
    model = CFM(transformer=DiT(**arch, text_num_embeds=vocab_size, mel_dim=100))
    with torch.no_grad():  # upstream zero-inits the output layers; real-looking weights everywhere instead
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    ckpt = tmp / "model_random.safetensors"
    save_file({f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    vocos_dir = tmp / "vocos"
    vocos_dir.mkdir()
    (vocos_dir / "config.yaml").write_text(VOCOS_FULL_YAML)
    vocos = Vocos.from_hparams(str(vocos_dir / "config.yaml"))
    torch.save(vocos.state_dict(), vocos_dir / "pytorch_model.bin")
    return {"ckpt": ckpt, "vocab": vocab, "vocos": vocos_dir, "arch": arch, "align": make_align_model(tmp)}


def make_align_model(tmp: Path) -> Path:
    """A full-size (wav2vec2-base shape) random CTC model + processor, as load_align_model reads it."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    d = tmp / "align-en"
    d.mkdir()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({ch: 5 + i for i, ch in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")})
    (d / "vocab.json").write_text(json.dumps(vocab))
    Wav2Vec2Processor(
        feature_extractor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                                                   return_attention_mask=False),
        tokenizer=Wav2Vec2CTCTokenizer(str(d / "vocab.json")),
    ).save_pretrained(d)
    torch.manual_seed(1)
    Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0)).save_pretrained(d)
    return d


def upstream_api(paths: dict, device: str, tiny: bool):
    from f5_tts.api import F5TTS

    if not tiny:
        return F5TTS(model="F5TTS_v1_Base", ckpt_file=str(paths["ckpt"]), vocab_file=str(paths["vocab"]),
                     vocoder_local_path=str(paths["vocos"]), device=device)
    # The tiny arch has no f5_tts config file, so set what F5TTS.__init__ sets, with upstream's loaders.
    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT

    api = object.__new__(F5TTS)
    api.mel_spec_type, api.target_sample_rate, api.device = "vocos", 24000, device
    api.ode_method, api.use_ema = "euler", True
    api.vocoder = load_vocoder("vocos", True, str(paths["vocos"]), device)
    api.ema_model = load_model(DiT, paths["arch"], str(paths["ckpt"]), "vocos", str(paths["vocab"]),
                               device=device)
    return api


# Engine variants. "engine-default" is what EngineSettings's defaults build on a GPU (worker/engine/core.py).
VARIANTS = {
    "engine-upstream-sampler": {"sampler": "upstream"},
    "engine-fast": {},
    # Padded 64-frame buckets with the key-padding bias, one graph per bucket, no snap: the default.
    "engine-default": None,
    # Each batch's length rounded up to its bucket (no mask; not upstream's length): F5_LENGTH_SNAP=1.
    "engine-snap": {"bucket_frames": 64, "cuda_graphs": True, "length_snap": True},
    # One graph per exact length, no mask: the floor the mask is priced against (a new length pays a
    # ~0.5 s capture, so not a serving mode).
    "engine-exact-graphs": {"bucket_frames": 1, "cuda_graphs": True},
    # The default plus torch.compile (inductor, no autotune) inside the graphs: what fusing the small
    # kernels buys.
    "engine-default-compile": {"bucket_frames": 64, "cuda_graphs": True, "compile_mode": "default"},
    # Numerics checks: the same padded, masked math launched op by op (no graphs), and the graphs with
    # one SDPA kernel forced (efficient attention with the bias; flash for the unmasked exact length).
    "engine-eager-padded": {"bucket_frames": 64},
    "engine-default-efficient": {"bucket_frames": 64, "cuda_graphs": True, "sdpa": "EFFICIENT_ATTENTION"},
    "engine-exact-graphs-flash": {"bucket_frames": 1, "cuda_graphs": True, "sdpa": "FLASH_ATTENTION"},
}


def default_options() -> dict:
    from worker.settings import EngineSettings

    cfg = EngineSettings.from_env({})
    return {"sampler": cfg.f5_sampler, "bucket_frames": cfg.f5_bucket_frames,
            "cuda_graphs": cfg.f5_cuda_graphs, "length_snap": cfg.f5_length_snap,
            "compile_mode": cfg.f5_compile_mode if cfg.f5_compile else None}


def engine_variant(paths: dict, device: str, name: str):
    import torch

    from worker.engine import tts, tts_load

    dtype = torch.float16 if device == "cuda" else torch.float32
    cfm = tts_load.load_cfm(paths["arch"], paths["ckpt"], paths["vocab"], device, dtype)
    vocos = tts_load.load_vocos(paths["vocos"], device)
    options = VARIANTS[name]
    if options is None:
        options = default_options()
    if device != "cuda":  # as Engine.load does: no buckets without graphs
        options = dict(options, bucket_frames=1)
    options = dict(options)
    sdpa = options.pop("sdpa", None)
    synth = tts.F5Synth(cfm, vocos, device, **options)
    if sdpa and device == "cuda":
        from torch.nn.attention import SDPBackend

        from worker.engine.attention import KeyPaddingAttnProcessor

        for block in synth.dit.transformer_blocks:
            if isinstance(block.attn.processor, KeyPaddingAttnProcessor):
                block.attn.processor.backends = [getattr(SDPBackend, sdpa)]
    return synth


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def upstream_stream_input(ref: np.ndarray, ref_text: str):
    """What upstream's infer_process hands infer_batch_process: the reference and the text batches."""
    import torch
    from f5_tts.infer.utils_infer import chunk_text

    secs = len(ref) / 24000
    max_chars = int(len(ref_text.encode("utf-8")) / secs * (22 - secs))
    return (torch.from_numpy(ref).unsqueeze(0), 24000), chunk_text(GEN_TEXT, max_chars=max_chars)


def measure_upstream(api, ref_path: Path, ref: np.ndarray, ref_text: str, nfe: int, runs: int,
                     device: str) -> dict:
    import torch
    from f5_tts.infer.utils_infer import infer_batch_process

    out: dict = {}

    def call() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            out["wav"], _, _ = api.infer(str(ref_path), REF_TEXT, GEN_TEXT, nfe_step=nfe, seed=0,
                                         progress=None)

    call()  # warm: caches the preprocessed reference, initialises kernels
    times = [timed(call, device) for _ in range(runs)]
    # Upstream's own streaming (infer_batch_process(streaming=True), what its socket server uses): the
    # first chunk comes once the first text batch is synthesized.
    audio, batches = upstream_stream_input(ref, ref_text)

    def first() -> None:
        torch.manual_seed(0)
        stream = infer_batch_process(audio, ref_text, batches, api.ema_model, api.vocoder, nfe_step=nfe,
                                     device=device, streaming=True, progress=None)
        next(stream)
        stream.close()

    first()
    firsts = [timed(first, device) for _ in range(runs)]
    wav = np.asarray(out["wav"])
    return {"times": times, "first_chunk": firsts, "samples": len(wav), "audio": wav,
            "nonfinite": int((~np.isfinite(wav)).sum())}


def measure_engine(synth, ref: np.ndarray, nfe: int, runs: int, device: str) -> dict:
    kw: dict = {"nfe_step": nfe, "seed": 0}
    list(synth.synthesize(GEN_TEXT, ref, REF_TEXT, **kw))  # warm (captures graphs for this length)
    out: dict = {}

    def call() -> None:
        out["chunks"] = list(synth.synthesize(GEN_TEXT, ref, REF_TEXT, **kw))

    times = [timed(call, device) for _ in range(runs)]
    # First streamed chunk: a short first batch (SynthesisParams.first_chunk_chars / F5_FIRST_CHUNK_CHARS)
    # so the stream can start early.
    kw["first_chunk_chars"] = 40
    next(iter(synth.synthesize(GEN_TEXT, ref, REF_TEXT, **kw)))  # warm this shape too
    firsts = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        stream = synth.synthesize(GEN_TEXT, ref, REF_TEXT, **kw)
        next(stream)
        sync(device)
        firsts.append(time.perf_counter() - t0)
        stream.close()
    audio = np.concatenate(out["chunks"])
    return {"times": times, "first_chunk": firsts, "samples": len(audio), "audio": audio,
            "nonfinite": int((~np.isfinite(audio)).sum())}


def measure_alignment(align_dir: Path, audio24: np.ndarray, device: str, runs: int) -> list[float]:
    import torch
    import torchaudio
    import whisperx

    from worker.engine.models import write_punkt_tab

    nltk_dir = Path(tempfile.mkdtemp()) / "nltk"
    write_punkt_tab(nltk_dir, ("english",))
    import nltk

    nltk.data.path.insert(0, str(nltk_dir))
    wave = torch.from_numpy(audio24.astype(np.float32))
    speech = torchaudio.functional.resample(wave, 24000, 16000).numpy()
    with contextlib.redirect_stdout(io.StringIO()):
        model, meta = whisperx.load_align_model("en", device, model_name=str(align_dir))
    seg = [{"text": GEN_TEXT, "start": 0.0, "end": len(speech) / 16000}]

    def call() -> None:
        whisperx.align(seg, model, meta, speech, device)

    call()
    return [timed(call, device) for _ in range(runs)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: a smoke run of this script")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nfe", type=int, nargs="+", default=[32, 16, 7])
    ap.add_argument("--variants", nargs="+", default=["upstream", "engine-default", "engine-snap",
                                                      "engine-exact-graphs"],
                    help=f"upstream and any of: {', '.join(VARIANTS)}")
    ap.add_argument("--warmup", action="store_true",
                    help="also time the production warm-up (every bucket's graph pre-captured, as "
                         "Engine.warmup does), serve texts of several lengths from those graphs, and "
                         "report peak GPU memory with every model loaded")
    ap.add_argument("--warmup-variants", nargs="+", default=["engine-default"])
    ap.add_argument("--profile", action="store_true", help="GPU kernels of one NFE-32 synthesis")
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--late-variants", nargs="*", default=[],
                    help="variants run after everything else (slow ones: engine-default-compile)")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help=">0: start no new variant after this many seconds (a bounded device call)")
    ap.add_argument("--json-out", type=Path, help="also write the results here after every variant")
    ap.add_argument("--batched", type=int, nargs="*", default=[],
                    help="client counts (e.g. 1 4 8 16): concurrent requests through the batching engine "
                         "against the same requests one after another (NFE 32)")
    ap.add_argument("--only-batched", action="store_true", help="skip everything but --batched")
    ap.add_argument("--batched-text", choices=("long", "short"), default="long",
                    help="the ~11 s text (one bucket), or a ~2.4 s one")
    args = ap.parse_args(argv)
    started = time.monotonic()

    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_tts: no CUDA device; use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    if device == "cpu":
        args.variants = [v for v in args.variants if "graphs" not in v and "compile" not in v]
    import_f5_for_inference()
    patch_torchaudio_load()
    import soundfile as sf

    ref_path = Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))
    # The engine gets the reference exactly as upstream's F5TTS.infer prepares it (silence-trimmed).
    from f5_tts.infer.utils_infer import preprocess_ref_audio_text

    with contextlib.redirect_stdout(io.StringIO()):
        prepared, up_ref_text = preprocess_ref_audio_text(str(ref_path), REF_TEXT)
    ref, sr = sf.read(prepared, dtype="float32")
    assert sr == 24000
    tmp = Path(tempfile.mkdtemp(prefix="gpu_tts."))
    paths = make_models(tmp, args.tiny)
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                     "torch": torch.__version__, "runs": args.runs, "ref_s": len(ref) / 24000,
                     "default_options": default_options(), "variants": {}, "skipped": []}

    def save() -> None:  # after every step: a device call cut at its limit keeps what was measured
        if args.json_out:
            args.json_out.write_text(json.dumps(results, default=float))
            args.json_out.with_suffix(".md").write_text(report(results, args.nfe) + "\n")

    state: dict = {"last_audio": None, "up_audio": {}}
    if args.batched:
        try:
            text = SHORT_TEXT if args.batched_text == "short" else GEN_TEXT
            results["batched"] = measure_batched(paths, device, ref, args.batched, max(2, args.runs // 2),
                                                 text=text)
            results["batched"]["text"] = args.batched_text
        except Exception as exc:
            results["batched"] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        save()
        if args.only_batched:
            print(batched_markdown(results["batched"]))
            print(json.dumps(results, default=float))
            return 0
    run_variants(args, args.variants, paths, device, ref, ref_path, up_ref_text, results, state, started,
                 save)
    last_audio = state["last_audio"]
    if not args.no_align and last_audio is not None:
        times = measure_alignment(paths["align"], last_audio, device, args.runs)
        results["alignment"] = {"median_s": statistics.median(times), "times": times,
                                "audio_s": len(last_audio) / 24000}
        save()
    if args.profile:
        results["profile"] = profile_synthesis(paths, device, ref)
        save()
    if args.warmup and device == "cuda":
        results["warmup"] = {}
        for variant in args.warmup_variants:
            try:
                results["warmup"][variant] = measure_warmup(paths, device, ref, args.runs, variant)
            except Exception as exc:
                results["warmup"][variant] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            save()
    if device == "cpu":
        args.late_variants = [v for v in args.late_variants if "compile" not in v]
    run_variants(args, args.late_variants, paths, device, ref, ref_path, up_ref_text, results, state, started,
                 save)
    print(report(results, args.nfe))
    print(json.dumps(results, default=float))
    return 0


# --batched-text short: ~2.4 s of speech at this reference's pace, where one request leaves the GPU
# idle between kernels (batching's case), against GEN_TEXT's ~11 s.
SHORT_TEXT = "Nature is patient, and she is kind."


def measure_batched(paths: dict, device: str, ref: np.ndarray, clients: list[int], rounds: int,
                    nfe: int = 32, text: str = GEN_TEXT) -> dict:
    """N clients at once, each sending 3 requests one after the other, through the default engine with
    batching (worker/engine/batching.py), against the same requests served one at a time with batching off;
    each request its own seed, the same ~11 s text (so one bucket: batching's best case). Latency: from
    when a client sent the request to its last sample (the one-at-a-time side queues, as clients of an
    unbatched worker would)."""
    import threading

    import torch

    from worker.engine import tts, tts_load

    dtype = torch.float16 if device == "cuda" else torch.float32

    def make(rows: int):
        cfm = tts_load.load_cfm(paths["arch"], paths["ckpt"], paths["vocab"], device, dtype)
        options = default_options()
        if device != "cuda":
            options["bucket_frames"] = 1
        vocos = tts_load.load_vocos(paths["vocos"], device)
        return tts.F5Synth(cfm, vocos, device, **options, batch_rows=rows, batch_window_s=0.01)

    batched, plain = make(max(2, *clients)), make(1)

    def one(synth, seed: int) -> int:
        return sum(len(c) for c in synth.synthesize(text, ref, REF_TEXT, nfe_step=nfe, seed=seed))

    per_client = 3  # each client sends its next request when the last one is done (a closed loop)

    def concurrent(n: int) -> dict:
        batched.gatherer.runs = []
        done: list[tuple[int, float]] = []
        lock = threading.Lock()
        sync(device)
        t0 = time.perf_counter()

        def client(i: int) -> None:
            for k in range(per_client):
                start = time.perf_counter()
                samples = one(batched, i * per_client + k)
                with lock:
                    done.append((samples, time.perf_counter() - start))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        runs = list(batched.gatherer.runs)
        return {"audio_s": sum(d[0] for d in done) / 24000, "wall_s": wall, "lat": [d[1] for d in done],
                "rows_per_run": statistics.mean(runs) if runs else 0.0}

    def sequential(n: int) -> dict:
        """The same n * per_client requests served one at a time: a request's latency counts from when
        its client sent it (all clients send at once; each waits for its previous one)."""
        sync(device)
        t0 = time.perf_counter()
        sent = [0.0] * n
        lat, samples = [], 0
        for k in range(per_client):
            for i in range(n):
                samples += one(plain, i * per_client + k)
                now = time.perf_counter() - t0
                lat.append(now - sent[i])
                sent[i] = now
        return {"audio_s": samples / 24000, "wall_s": time.perf_counter() - t0, "lat": lat}

    for n in sorted(set(clients)):  # warm: capture the (bucket, rows) graphs these runs use
        concurrent(n)
    sequential(1)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for n in clients:
        got: dict[str, list[dict]] = {"batched": [], "sequential": []}
        for _ in range(rounds):  # alternating, so a change in the machine's load hits both sides
            got["batched"].append(concurrent(n))
            got["sequential"].append(sequential(n))
        row: dict = {"clients": n}
        for side, runs in got.items():
            wall = statistics.median(r["wall_s"] for r in runs)
            audio = statistics.median(r["audio_s"] for r in runs)
            lat = sorted(x for r in runs for x in r["lat"])
            row[side] = {"audio_s_per_s": audio / wall, "wall_s": wall, "p50_s": statistics.median(lat),
                         "p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]}
        row["batched"]["rows_per_run"] = statistics.median(r["rows_per_run"] for r in got["batched"])
        row["ratio"] = row["batched"]["audio_s_per_s"] / row["sequential"]["audio_s_per_s"]
        rows.append(row)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    # Each request's audio when batched, against the same request alone (the same seed): the batched
    # graphs on the real GPU, where the CPU tests only check their plumbing.
    got: dict[int, np.ndarray] = {}

    def keep(seed: int) -> None:
        got[seed] = np.concatenate(list(batched.synthesize(text, ref, REF_TEXT, nfe_step=nfe, seed=seed)))

    batched.gatherer.runs = []
    threads = [threading.Thread(target=keep, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    diffs = []
    for seed, audio in sorted(got.items()):
        alone = np.concatenate(list(plain.synthesize(text, ref, REF_TEXT, nfe_step=nfe, seed=seed)))
        same = len(alone) == len(audio)
        diffs.append({"seed": seed, "same_length": same, "finite": bool(np.isfinite(audio).all()),
                      "max_abs_diff_over_peak": float(np.abs(audio - alone).max() / np.abs(alone).max())
                      if same else None})
    return {"nfe": nfe, "rounds": rounds, "rows": rows, "peak_gib_under_batched_load": peak,
            "batch_graphs": len(batched._batch_graphs), "equality": diffs,
            "equality_rows_per_run": list(batched.gatherer.runs)}


def batched_markdown(b: dict) -> str:
    if "error" in b:
        return f"batched: {b['error']}"
    lines = ["| clients | batched audio s/s | one after another | ratio | batched p50 / p95 "
             "| one after another p50 / p95 | rows per run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in b["rows"]:
        bt, sq = r["batched"], r["sequential"]
        lines.append(f"| {r['clients']} | {bt['audio_s_per_s']:.1f} | {sq['audio_s_per_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {bt['p50_s']:.3f} / {bt['p95_s']:.3f} s | {sq['p50_s']:.3f} / "
                     f"{sq['p95_s']:.3f} s | {bt['rows_per_run']:.1f} |")
    lines.append(f"peak GPU memory under the batched load: {b['peak_gib_under_batched_load']} GiB; "
                 f"batched graphs captured: {b['batch_graphs']}; batched vs alone: {b['equality']} "
                 f"(rows per run {b['equality_rows_per_run']})")
    return "\n".join(lines)


def report(results: dict, nfes: list[int]) -> str:
    parts = [markdown(results, nfes)]
    if "profile" in results:
        parts.append(profile_markdown(results["profile"]))
    for variant, w in results.get("warmup", {}).items():
        parts.append(f"\nWarm-up of {variant}: {w['error']}" if "error" in w else warmup_markdown(w, variant))
    return "\n".join(parts)


def run_variants(args, variants, paths, device, ref, ref_path, up_ref_text, results, state, started,
                 save) -> None:
    import torch

    up_audio = state["up_audio"]
    for variant in variants:
        if args.deadline_s and time.monotonic() - started > args.deadline_s:
            results["skipped"].append(variant)
            continue
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        per_nfe: dict = {}
        t_variant = time.monotonic()
        try:
            if variant == "upstream":
                api = upstream_api(paths, device, args.tiny)
                for nfe in args.nfe:
                    m = measure_upstream(api, ref_path, ref, up_ref_text, nfe, args.runs, device)
                    up_audio[nfe] = m.pop("audio")
                    per_nfe[nfe] = summary(m)
                del api
            else:
                synth = engine_variant(paths, device, variant)
                for nfe in args.nfe:
                    m = measure_engine(synth, ref, nfe, args.runs, device)
                    audio = state["last_audio"] = m.pop("audio")
                    per_nfe[nfe] = summary(m)
                    if nfe in up_audio:
                        per_nfe[nfe]["vs_upstream_max_abs"] = max_abs_diff(audio, up_audio[nfe])
                del synth
        except Exception as exc:  # one broken variant must not lose the others' figures
            results["variants"][variant] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            print(f"# {variant} failed: {exc}", file=sys.stderr)
            save()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results["variants"][variant] = {"nfe": per_nfe, "peak_gib": peak,
                                        "wall_s": time.monotonic() - t_variant}
        save()


def summary(m: dict) -> dict:
    row = {"median_s": statistics.median(m["times"]), "times": m["times"], "samples": m["samples"],
           "audio_s": m["samples"] / 24000, "nonfinite": m["nonfinite"]}
    if m.get("first_chunk"):
        row["first_chunk_s"] = statistics.median(m["first_chunk"])
        row["first_chunks"] = m["first_chunk"]
    return row


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """Largest sample difference over the peak of b (None when the lengths differ)."""
    if len(a) != len(b):
        return None
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))


WARMUP_TEXTS = {
    "short": "Hello there, this is short.",
    "medium": GEN_TEXT,
    "long": GEN_TEXT + " But always remember, I am mighty and enduring. " + GEN_TEXT,
}


def measure_warmup(paths: dict, device: str, ref: np.ndarray, runs: int, variant: str) -> dict:
    """The production path: all buckets captured up front (Engine.warmup), then requests of several
    lengths served without a single new capture; then the alignment model loaded and run beside it, for
    the peak memory of every model this bench can load (the CTranslate2 Whisper cannot: docs)."""
    import torch

    from worker.engine import tts, tts_text

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    synth = engine_variant(paths, device, variant)
    max_frames = int(tts_text.BATCH_SECONDS * tts.SAMPLE_RATE / tts.HOP) + 1
    capture_s = timed(lambda: synth.capture_buckets(max_frames), device)
    graphs = len(synth._graphs)
    rows = {}
    audio = None
    for name, text in WARMUP_TEXTS.items():
        def call(text=text) -> np.ndarray:
            return np.concatenate(list(synth.synthesize(text, ref, REF_TEXT, nfe_step=32, seed=0)))

        audio = call()
        times = [timed(call, device) for _ in range(runs)]
        rows[name] = {"median_s": statistics.median(times), "audio_s": len(audio) / 24000,
                      "nonfinite": int((~np.isfinite(audio)).sum())}
    tts_peak = torch.cuda.max_memory_allocated() / 2**30
    align_s = statistics.median(measure_alignment(paths["align"], audio, device, 2))
    free, total = torch.cuda.mem_get_info()
    return {"capture_s": capture_s, "graphs": graphs, "new_graphs_while_serving": len(synth._graphs) - graphs,
            "peak_gib": tts_peak, "texts": rows, "align_s": align_s,
            "all_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "all_reserved_gib": torch.cuda.memory_reserved() / 2**30,
            "device_used_gib": (total - free) / 2**30}


def profile_synthesis(paths: dict, device: str, ref: np.ndarray) -> dict:
    """Kernels of one NFE-32 synthesis of GEN_TEXT: the default's graphs, and the same padded, masked
    math run eagerly (launched op by op), each profiled once after a warm call."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    for label, graphs in (("graphs", True), ("eager", False)):
        synth = engine_variant(paths, device, "engine-default")
        if not graphs:
            synth.disable_graphs()
        def call(synth=synth) -> None:
            list(synth.synthesize(GEN_TEXT, ref, REF_TEXT, nfe_step=32, seed=0))

        call()
        wall = timed(call, device)
        activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
        with profile(activities=activities) as prof:
            call()
            sync(device)
        kernels = []
        for e in prof.key_averages():
            if device == "cuda":
                t = getattr(e, "self_device_time_total", None)
                t = getattr(e, "self_cuda_time_total", 0) if t is None else t
            else:  # the CPU smoke run: op times instead of kernels
                t = e.self_cpu_time_total
            if t > 0:
                kernels.append({"name": e.key[:90], "count": e.count, "us": float(t)})
        kernels.sort(key=lambda k: -k["us"])
        total = sum(k["us"] for k in kernels)
        cats: dict = {}
        for k in kernels:
            cats[kernel_category(k["name"])] = cats.get(kernel_category(k["name"]), 0.0) + k["us"]
        out[label] = {"wall_s": wall, "kernel_s": total / 1e6, "launches": sum(k["count"] for k in kernels),
                      "categories_s": {c: v / 1e6 for c, v in sorted(cats.items(), key=lambda kv: -kv[1])},
                      "top": kernels[:12]}
        del synth
    return out


def kernel_category(name: str) -> str:
    n = name.lower()
    if any(w in n for w in ("fmha", "flash", "attention", "sdpa", "cudnn_generated_fort_native_sdpa")):
        return "attention"
    if any(w in n for w in ("gemm", "cutlass", "nvjet", "sm90_xmma", "cublas", "matmul", "addmm")):
        return "matmul"
    if "conv" in n:
        return "conv"
    if "memcpy" in n or "memset" in n:
        return "copy"
    return "elementwise/norm/other"


def profile_markdown(p: dict) -> str:
    lines = ["", "Profile, one NFE-32 synthesis of the bench text (engine-default):", "",
             "| path | wall s | GPU kernel time s | kernels launched | by kind (s) |",
             "| --- | --- | --- | --- | --- |"]
    for label, r in p.items():
        kinds = ", ".join(f"{c} {v:.3f}" for c, v in r["categories_s"].items())
        lines.append(f"| {label} | {r['wall_s']:.3f} | {r['kernel_s']:.3f} | {r['launches']} | {kinds} |")
    lines += ["", "Top kernels (graphs path): " + "; ".join(
        f"{k['name']} x{k['count']} {k['us'] / 1e3:.1f} ms" for k in p.get("graphs", {}).get("top", [])[:8])]
    return "\n".join(lines)


def warmup_markdown(w: dict, variant: str) -> str:
    lines = ["", f"Warm-up of {variant}: {w['graphs']} bucket graphs captured in {w['capture_s']:.2f} s; "
             f"new captures while serving: {w['new_graphs_while_serving']}; "
             f"peak {w['peak_gib']:.2f} GiB (TTS), "
             f"{w['all_peak_allocated_gib']:.2f} GiB with the alignment model too (reserved "
             f"{w['all_reserved_gib']:.2f} GiB, device in use {w['device_used_gib']:.2f} GiB with the CUDA "
             "context)",
             "", "| text | audio s | latency s (NFE 32) | non-finite samples |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {v['audio_s']:.1f} | {v['median_s']:.3f} | {v['nonfinite']} |"
              for k, v in w["texts"].items()]
    return "\n".join(lines)


def markdown(results: dict, nfes: list[int]) -> str:
    up = results["variants"].get("upstream", {}).get("nfe", {})
    lines = [f"device: {results['device']}, torch {results['torch']}, median of {results['runs']} runs; "
             f"default options: {results['default_options']}", "",
             "| variant | NFE | latency s | vs upstream | first chunk s | vs upstream's first | audio s | "
             "length = upstream's | non-finite samples | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in results["variants"].items():
        if "error" in v:
            lines.append(f"| {name} | - | {v['error']} | | | | | | | |")
            continue
        for nfe in nfes:
            row = v["nfe"][nfe]
            base = up.get(nfe, {})
            ratio = row["median_s"] / base["median_s"] if base else float("nan")
            first = row.get("first_chunk_s")
            up_first = base.get("first_chunk_s")
            first_ratio = first / up_first if first and up_first else float("nan")
            same = "-" if not base or name == "upstream" else ("yes" if row["samples"] == base["samples"] else
                                                               f"no ({row['samples'] - base['samples']:+d})")
            peak = v["peak_gib"]
            lines.append(f"| {name} | {nfe} | {row['median_s']:.3f} | {ratio:.2f}x | "
                         f"{'-' if first is None else f'{first:.3f}'} | {first_ratio:.2f}x | "
                         f"{row['audio_s']:.2f} | {same} | {row.get('nonfinite', '-')} | "
                         f"{'-' if peak is None else f'{peak:.2f}'} |")
    if results.get("skipped"):
        lines += ["", f"Skipped (past --deadline-s): {', '.join(results['skipped'])}"]
    if "alignment" in results:
        a = results["alignment"]
        lines += ["", f"WhisperX alignment (random wav2vec2-base shape) of {a['audio_s']:.1f} s of audio: "
                  f"{a['median_s']:.3f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
