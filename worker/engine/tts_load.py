"""F5-TTS's models from local files: the DiT's arguments, the CFM(DiT) with a checkpoint's EMA weights, the
Vocos vocoder, and the dtype the DiT runs in. Heavy imports (f5_tts, vocos, safetensors, omegaconf) happen
inside the loaders, once, at startup (worker/engine/core.py, ``Engine.load``).

The audio format the models are built for: 24 kHz, 100 mel bins, a hop of 256 samples per frame.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import torch

from worker.errors import ModelError

SAMPLE_RATE = 24_000
HOP = 256
N_MELS = 100


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load_arch(arch: str) -> dict:
    """DiT arguments: an f5_tts config name (F5TTS_v1_Base) or a JSON file of arguments."""
    path = Path(arch)
    if path.suffix == ".json" and path.is_file():
        return json.loads(path.read_text())
    from omegaconf import OmegaConf

    cfg_file = files("f5_tts").joinpath(f"configs/{arch}.yaml")
    if not cfg_file.is_file():
        raise ModelError("F5_ARCH", f"{arch!r} is neither an f5_tts config name nor a .json file")
    return dict(OmegaConf.to_container(OmegaConf.load(str(cfg_file)).model.arch))


def load_cfm(arch: dict, ckpt: Path, vocab: Path, device: str, dtype: torch.dtype):
    """The upstream CFM(DiT) with the checkpoint's EMA weights, in `dtype`, on `device`, eval mode."""
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer

    vocab_map, vocab_size = get_tokenizer(str(vocab), "custom")
    model = CFM(
        transformer=DiT(**arch, text_num_embeds=vocab_size, mel_dim=N_MELS),
        mel_spec_kwargs={"n_fft": 1024, "hop_length": HOP, "win_length": 1024, "n_mel_channels": N_MELS,
                         "target_sample_rate": SAMPLE_RATE, "mel_spec_type": "vocos"},
        odeint_kwargs={"method": "euler"},
        vocab_char_map=vocab_map,
    )
    if ckpt.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(ckpt), device="cpu")
    else:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        state = state.get("ema_model_state_dict", state.get("model_state_dict", state))
    # Released checkpoints hold the EMA copy ("ema_model." prefix, plus bookkeeping entries).
    state = {k.removeprefix("ema_model."): v for k, v in state.items() if k not in ("initted", "step")}
    for key in ("mel_spec.mel_stft.mel_scale.fb", "mel_spec.mel_stft.spectrogram.window"):
        state.pop(key, None)
    model.load_state_dict(state)
    return model.to(dtype).to(device).eval()


def load_vocos(directory: Path, device: str):
    from vocos import Vocos

    vocos = Vocos.from_hparams(str(directory / "config.yaml"))
    state = torch.load(str(directory / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    vocos.load_state_dict(state)
    return vocos.eval().to(device)

