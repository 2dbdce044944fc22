"""devtools.tiny: deterministic tiny models, generated once, that load in the real upstream code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools.tiny import MARKER, TINY_VERSION, ensure_tiny_models, tiny_config

TINY_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "tiny-models"
WEIGHTS = ("f5/model_tiny.safetensors", "vocos/pytorch_model.bin", "whisper/model.bin",
           "align-en/model.safetensors", "whisper/tokenizer.json", "align-en/vocab.json")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cached_models_are_reused_not_regenerated():
    root = ensure_tiny_models(TINY_CACHE)
    assert root.name == TINY_VERSION and (root / MARKER).is_file()
    before = {name: (root / name).stat().st_mtime_ns for name in WEIGHTS}
    assert ensure_tiny_models(TINY_CACHE) == root
    assert {name: (root / name).stat().st_mtime_ns for name in WEIGHTS} == before


@pytest.mark.slow
def test_generation_is_deterministic(tmp_path):
    fresh = ensure_tiny_models(tmp_path)
    cached = ensure_tiny_models(TINY_CACHE)
    for name in WEIGHTS:
        assert _digest(fresh / name) == _digest(cached / name), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_whisper_is_multilingual_with_whisper_token_ids():
    import ctranslate2

    root = ensure_tiny_models(TINY_CACHE)
    assert ctranslate2.models.Whisper(str(root / "whisper"), device="cpu").is_multilingual
    vocab = json.loads((root / "whisper" / "vocabulary.json").read_text())
    assert vocab[50257:50259] == ["<|endoftext|>", "<|startoftranscript|>"]
    assert len(vocab) == 51866 and vocab[-1] == "<|30.00|>"


def test_tiny_config_points_at_local_dirs_only():
    cfg = tiny_config(TINY_CACHE, whisper_batch_size=3)
    assert cfg.whisper_batch_size == 3 and cfg.device == "cpu"
    for spec in (cfg.f5_ckpt, cfg.f5_vocab, cfg.f5_vocoder, cfg.whisper_model, *cfg.align_models.values()):
        assert not spec.startswith("hf:") and Path(spec).exists()


def test_tiny_env_configures_the_same_models_as_tiny_config():
    """`just demo` runs plain `python -m worker`: these variables must make it load the tiny models."""
    from devtools.tiny import tiny_env
    from worker.settings import EngineSettings

    want = tiny_config(TINY_CACHE)
    env = tiny_env(TINY_CACHE / TINY_VERSION) | {"WORKER_VOLUME": str(want.volume), "WORKER_DEVICE": "cpu"}
    assert EngineSettings.from_env(env) == want
