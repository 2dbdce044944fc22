"""F5-TTS latency on one GPU: upstream `f5_tts.api.F5TTS.infer` vs the worker's engine, side by side.

Full-size F5TTS_v1_Base + Vocos (mel-24khz) architectures with random weights (nothing is downloaded);
the reference is the English example clip shipped inside the f5_tts wheel, the text ~10 s of speech.
Per NFE (32, 16) and variant: warm latency (median of --runs), time to the first streamed chunk, peak
GPU memory; then WhisperX alignment time for the generated audio with a full-size random wav2vec2.

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
GEN_TEXT = ("I don't really care what you call me. I've been a silent spectator, watching species evolve, "
            "empires rise and fall. But always remember, I am mighty and enduring.")
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
    from worker.engine import tts

    if tiny:
        root = tiny_mod.ensure_tiny_models(ROOT / ".cache" / "tiny-models")
        return {"ckpt": root / "f5" / "model_tiny.safetensors", "vocab": root / "f5" / "vocab.txt",
                "vocos": root / "vocos", "arch": dict(tiny_mod.TINY_DIT), "align": root / "align-en"}
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from vocos import Vocos

    vocab = Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))
    arch = tts.load_arch("F5TTS_v1_Base")
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


def engine_variant(paths: dict, device: str, name: str):
    import torch

    from worker.engine import tts

    dtype = torch.float16 if device == "cuda" else torch.float32
    cfm = tts.load_cfm(paths["arch"], paths["ckpt"], paths["vocab"], device, dtype)
    vocos = tts.load_vocos(paths["vocos"], device)
    options = {
        "engine-upstream-sampler": {"sampler": "upstream"},
        "engine-fast": {},
        "engine-fast-graphs": {"bucket_frames": 64, "cuda_graphs": True},
        # The production default: lengths rounded up to the bucket (no mask), graphs pre-captured.
        "engine-fast-graphs-snap": {"bucket_frames": 64, "cuda_graphs": True, "length_snap": True},
        "engine-fast-graphs-snap32": {"bucket_frames": 32, "cuda_graphs": True, "length_snap": True},
        # One graph per exact length, no attention mask: prices the mask (not for production: a new
        # length pays a capture).
        "engine-fast-graphs-exact": {"bucket_frames": 1, "cuda_graphs": True},
        "engine-fast-graphs-compile": {"bucket_frames": 64, "cuda_graphs": True,
                                       "compile_mode": "max-autotune-no-cudagraphs"},
    }[name]
    return tts.F5Synth(cfm, vocos, device, **options)


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


def measure_upstream(api, ref_path: Path, nfe: int, runs: int, device: str) -> tuple[list[float], np.ndarray]:
    out: dict = {}

    def call() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            out["wav"], _, _ = api.infer(str(ref_path), REF_TEXT, GEN_TEXT, nfe_step=nfe, seed=0,
                                         progress=None)

    call()  # warm: caches the preprocessed reference, initialises kernels
    return [timed(call, device) for _ in range(runs)], np.asarray(out["wav"])


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
    return {"times": times, "first_chunk": firsts, "audio": np.concatenate(out["chunks"])}


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
    ap.add_argument("--nfe", type=int, nargs="+", default=[32, 16])
    ap.add_argument("--variants", nargs="+", default=["upstream", "engine-upstream-sampler", "engine-fast",
                                                      "engine-fast-graphs", "engine-fast-graphs-snap",
                                                      "engine-fast-graphs-exact"])
    ap.add_argument("--warmup", action="store_true",
                    help="also time the production warm-up (every bucket's graph pre-captured, as "
                         "Engine.warmup does) and serve texts of several lengths from those graphs")
    ap.add_argument("--no-align", action="store_true")
    args = ap.parse_args(argv)

    import torch

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_tts: no CUDA device; use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    if device == "cpu":
        args.variants = [v for v in args.variants if "graphs" not in v]
    import_f5_for_inference()
    patch_torchaudio_load()
    import soundfile as sf

    ref_path = Path(str(files("f5_tts").joinpath("infer/examples/basic/basic_ref_en.wav")))
    # The engine gets the reference exactly as upstream's F5TTS.infer prepares it (silence-trimmed).
    from f5_tts.infer.utils_infer import preprocess_ref_audio_text

    with contextlib.redirect_stdout(io.StringIO()):
        prepared, _ = preprocess_ref_audio_text(str(ref_path), REF_TEXT)
    ref, sr = sf.read(prepared, dtype="float32")
    assert sr == 24000
    tmp = Path(tempfile.mkdtemp(prefix="gpu_tts."))
    paths = make_models(tmp, args.tiny)
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                     "torch": torch.__version__, "runs": args.runs, "variants": {}}
    last_audio = None
    for variant in args.variants:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        per_nfe: dict = {}
        if variant == "upstream":
            api = upstream_api(paths, device, args.tiny)
            for nfe in args.nfe:
                times, wav = measure_upstream(api, ref_path, nfe, args.runs, device)
                per_nfe[nfe] = {"median_s": statistics.median(times), "times": times,
                                "audio_s": len(wav) / 24000}
            del api
        else:
            synth = engine_variant(paths, device, variant)
            for nfe in args.nfe:
                m = measure_engine(synth, ref, nfe, args.runs, device)
                per_nfe[nfe] = {"median_s": statistics.median(m["times"]), "times": m["times"],
                                "first_chunk_s": statistics.median(m["first_chunk"]),
                                "audio_s": len(m["audio"]) / 24000}
                last_audio = m["audio"]
            del synth
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results["variants"][variant] = {"nfe": per_nfe, "peak_gib": peak}
    if not args.no_align and last_audio is not None:
        times = measure_alignment(paths["align"], last_audio, device, args.runs)
        results["alignment"] = {"median_s": statistics.median(times), "times": times,
                                "audio_s": len(last_audio) / 24000}
    if args.warmup and device == "cuda":
        results["warmup"] = measure_warmup(paths, device, ref, args.runs)
    print(markdown(results, args.nfe))
    if "warmup" in results:
        print(warmup_markdown(results["warmup"]))
    print(json.dumps(results, default=float))
    return 0


WARMUP_TEXTS = {
    "short": "Hello there, this is short.",
    "medium": "I don't really care what you call me. I've been a silent spectator, watching species evolve.",
    "long": GEN_TEXT + " " + GEN_TEXT,
}


def measure_warmup(paths: dict, device: str, ref: np.ndarray, runs: int) -> dict:
    """The production path: all buckets captured up front (Engine.warmup), then requests of several
    lengths served without a single new capture."""
    import torch

    from worker.engine import tts

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    synth = engine_variant(paths, device, "engine-fast-graphs-snap")
    max_frames = int(tts.BATCH_SECONDS * tts.SAMPLE_RATE / tts.HOP) + 1
    capture_s = timed(lambda: synth.capture_buckets(max_frames), device)
    graphs = len(synth._graphs)
    rows = {}
    for name, text in WARMUP_TEXTS.items():
        def call(text=text) -> np.ndarray:
            return np.concatenate(list(synth.synthesize(text, ref, REF_TEXT, nfe_step=32, seed=0)))

        audio = call()
        times = [timed(call, device) for _ in range(runs)]
        rows[name] = {"median_s": statistics.median(times), "audio_s": len(audio) / 24000}
    return {"capture_s": capture_s, "graphs": graphs, "new_graphs_while_serving": len(synth._graphs) - graphs,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "texts": rows}


def warmup_markdown(w: dict) -> str:
    lines = ["", f"Warm-up: {w['graphs']} bucket graphs captured in {w['capture_s']:.2f} s, peak "
             f"{w['peak_gib']:.2f} GiB; new captures while serving: {w['new_graphs_while_serving']}", "",
             "| text | audio s | latency s (NFE 32) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v['audio_s']:.1f} | {v['median_s']:.3f} |" for k, v in w["texts"].items()]
    return "\n".join(lines)


def markdown(results: dict, nfes: list[int]) -> str:
    base = results["variants"].get("upstream", {}).get("nfe", {})
    lines = [f"device: {results['device']}, torch {results['torch']}, median of {results['runs']} runs", "",
             "| variant | NFE | latency s | vs upstream | first chunk s | audio s | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in results["variants"].items():
        for nfe in nfes:
            row = v["nfe"][nfe]
            ratio = row["median_s"] / base[nfe]["median_s"] if nfe in base else float("nan")
            first = row.get("first_chunk_s")
            peak = v["peak_gib"]
            lines.append(f"| {name} | {nfe} | {row['median_s']:.3f} | {ratio:.2f}x | "
                         f"{'-' if first is None else f'{first:.3f}'} | {row['audio_s']:.1f} | "
                         f"{'-' if peak is None else f'{peak:.2f}'} |")
    if "alignment" in results:
        a = results["alignment"]
        lines += ["", f"WhisperX alignment (random wav2vec2-base shape) of {a['audio_s']:.1f} s of audio: "
                  f"{a['median_s']:.3f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
