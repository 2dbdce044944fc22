"""Tiny random-weight models that run the real F5-TTS, Vocos, CTranslate2-Whisper and Wav2Vec2 code.

Nothing is downloaded: every file (weights, configs, tokenizers, the punkt_tab sentence-splitter data)
is generated here from a fixed seed, once, into `<cache_dir>/<TINY_VERSION>/`, built in a temp dir and
moved into place with a marker written last, so concurrent test processes never see half a tree.
The models produce noise-like audio and nonsense text, but every code path is the production one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

from worker.settings import EngineSettings

log = logging.getLogger(__name__)

# Bump when anything generated here changes, so stale caches are never reused.
TINY_VERSION = "tiny-v2"
SEED = 1234
MARKER = "COMPLETE"

TINY_DIT = {
    "dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "ff_mult": 2, "text_dim": 32,
    "text_mask_padding": True, "qk_norm": None, "conv_layers": 2, "pe_attn_head": None,
    "attn_backend": "torch", "attn_mask_enabled": False, "checkpoint_activations": False,
}

VOCOS_TINY_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 32, intermediate_dim: 64, num_layers: 2}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 32, n_fft: 1024, hop_length: 256, padding: center}
"""

# Whisper's special-token layout (multilingual): CTranslate2 and faster-whisper find tokens by name, and
# CTranslate2 calls a model multilingual only when its vocabulary has the full multilingual size.
WHISPER_TEXT_TOKENS = 50257
WHISPER_VOCAB = 51866  # large-v3 layout: 100 languages (faster-whisper's list), 1501 timestamps
NON_LANG_SPECIALS_AFTER = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                           "<|nocaptions|>", "<|notimestamps|>"]
W2V2_LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def _randomize(module, std: float) -> None:
    """Random values for every parameter: upstream inits zero the DiT's output layers, which would make
    the network a constant and hide any difference between two inference paths."""
    import torch

    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def _write_f5(dest: Path) -> None:
    import torch
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from safetensors.torch import save_file

    vocab = Path(str(files("f5_tts").joinpath("infer/examples/vocab.txt")))
    shutil.copyfile(vocab, dest / "vocab.txt")
    (dest / "arch.json").write_text(json.dumps(TINY_DIT, indent=1, sort_keys=True) + "\n")
    _, vocab_size = get_tokenizer(str(vocab), "custom")
    torch.manual_seed(SEED)
    model = CFM(transformer=DiT(**TINY_DIT, text_num_embeds=vocab_size, mel_dim=100))
    _randomize(model, 0.05)
    # The upstream checkpoint layout (EMA weights under "ema_model."), so upstream's loader reads it too.
    state = {f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(dest / "model_tiny.safetensors"))


def _write_vocos(dest: Path) -> None:
    import torch
    from vocos import Vocos

    (dest / "config.yaml").write_text(VOCOS_TINY_YAML)
    torch.manual_seed(SEED + 1)
    vocos = Vocos.from_hparams(str(dest / "config.yaml"))
    _randomize(vocos.backbone, 0.05)
    torch.save(vocos.state_dict(), dest / "pytorch_model.bin")


def _whisper_tokenizer_json(dest: Path) -> list[str]:
    """A byte-level BPE tokenizer with Whisper's special tokens at Whisper's ids; returns the lang codes."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
    # Fill the text ids with two-letter "words" so the random decoder still emits readable text.
    letters = "abcdefghijklmnopqrstuvwxyz"
    fill = (f"\u0120{a}{b}" for a in letters for b in letters + "0123456789")
    fill3 = (f"\u0120{a}{b}{c}" for a in letters for b in letters for c in letters)
    fill4 = (f"\u0120{a}{b}{c}{d}" for a in letters for b in letters for c in letters for d in letters)
    for word in itertools.chain(fill, fill3, fill4):
        if len(vocab) >= WHISPER_TEXT_TOKENS - 1:
            break
        vocab.setdefault(word, len(vocab))
    # CTranslate2 reports a Whisper model as multilingual only when its vocabulary holds the empty token
    # (as OpenAI's multilingual vocabulary does); without it, language detection and <|lang|> are off.
    vocab[""] = len(vocab)
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in _LANGUAGE_CODES),
                *NON_LANG_SPECIALS_AFTER]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.save(str(dest / "tokenizer.json"))
    return list(_LANGUAGE_CODES)


def _write_whisper(dest: Path, work: Path) -> None:
    import ctranslate2.converters
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    hf = work / "whisper-hf"
    hf.mkdir()
    langs = _whisper_tokenizer_json(hf)
    sot = WHISPER_TEXT_TOKENS + 1
    lang_to_id = {f"<|{c}|>": sot + 1 + i for i, c in enumerate(langs)}
    no_ts = sot + 1 + len(langs) + len(NON_LANG_SPECIALS_AFTER) - 1
    cfg = WhisperConfig(
        vocab_size=WHISPER_VOCAB, num_mel_bins=80, encoder_layers=2, decoder_layers=2, d_model=64,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448, pad_token_id=WHISPER_TEXT_TOKENS,
        bos_token_id=WHISPER_TEXT_TOKENS, eos_token_id=WHISPER_TEXT_TOKENS, decoder_start_token_id=sot,
        suppress_tokens=[], begin_suppress_tokens=[WHISPER_TEXT_TOKENS],
    )
    torch.manual_seed(SEED + 2)
    model = WhisperForConditionalGeneration(cfg)
    _randomize(model, 0.05)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=WHISPER_TEXT_TOKENS, pad_token_id=WHISPER_TEXT_TOKENS,
        suppress_tokens=[], begin_suppress_tokens=[WHISPER_TEXT_TOKENS], lang_to_id=lang_to_id,
        task_to_id={"translate": no_ts - 5, "transcribe": no_ts - 4}, no_timestamps_token_id=no_ts,
        is_multilingual=True, max_length=448,
    )
    model.save_pretrained(hf, safe_serialization=True)
    WhisperTokenizerFast(tokenizer_file=str(hf / "tokenizer.json")).save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)
    ctranslate2.converters.TransformersConverter(
        str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]
    ).convert(str(dest), quantization="float32", force=True)


def _write_wav2vec2(dest: Path) -> None:
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    vocab.update({ch: 5 + i for i, ch in enumerate(W2V2_LETTERS)})
    (dest / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    tokenizer = Wav2Vec2CTCTokenizer(str(dest / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(dest)
    cfg = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, pad_token_id=0, feat_extract_norm="group",
    )
    torch.manual_seed(SEED + 3)
    model = Wav2Vec2ForCTC(cfg)
    _randomize(model, 0.05)
    model.save_pretrained(dest, safe_serialization=True)


def _build(root: Path) -> None:
    work = root / "_work"
    for name in ("f5", "vocos", "whisper", "align-en", "_work"):
        (root / name).mkdir()
    _write_f5(root / "f5")
    _write_vocos(root / "vocos")
    _write_whisper(root / "whisper", work)
    _write_wav2vec2(root / "align-en")
    shutil.rmtree(work)
    # punkt_tab for WhisperX's sentence splitter is written by the engine itself (worker/engine/models.py).
    (root / MARKER).write_text(TINY_VERSION + "\n")


def ensure_tiny_models(cache_dir: Path) -> Path:
    """The directory of the tiny models, generating it on first use; safe to call concurrently."""
    final = Path(cache_dir) / TINY_VERSION
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("tiny: generating tiny random-weight models into %s", final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_VERSION}.", dir=final.parent))
    try:
        _build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            # Someone else finished first (rename onto a non-empty dir fails): theirs is as good as ours.
            if not (final / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_config(cache_dir: Path, **overrides) -> EngineSettings:
    """EngineSettings on the tiny models, CPU, offline; keyword overrides replace fields."""
    root = ensure_tiny_models(cache_dir)
    cfg = EngineSettings(
        volume=root / "volume",
        device="cpu",
        f5_arch=str(root / "f5" / "arch.json"),
        f5_ckpt=str(root / "f5" / "model_tiny.safetensors"),
        f5_vocab=str(root / "f5" / "vocab.txt"),
        f5_vocoder=str(root / "vocos"),
        f5_dtype="float32",
        whisper_model=str(root / "whisper"),
        whisper_compute_type="float32",
        whisper_batch_size=2,
        # Random audio rarely looks like speech to the VAD; the whole clip is transcribed instead.
        whisper_vad="none",
        align_models={"en": str(root / "align-en")},
        default_language="en",
        nltk_data=root / "nltk",
    )
    return dataclasses.replace(cfg, **overrides)


def tiny_env(root: Path) -> dict[str, str]:
    """The worker's environment variables for the tiny models in ``root`` (from ensure_tiny_models), so a
    plain ``python -m worker`` (as the installer execs it) loads them: EngineSettings.from_env of this
    mapping equals tiny_config's model settings. The caller adds WORKER_VOLUME and WORKER_DEVICE."""
    return {
        "F5_ARCH": str(root / "f5" / "arch.json"),
        "F5_CKPT": str(root / "f5" / "model_tiny.safetensors"),
        "F5_VOCAB": str(root / "f5" / "vocab.txt"),
        "F5_VOCODER": str(root / "vocos"),
        "F5_DTYPE": "float32",
        "WHISPER_MODEL": str(root / "whisper"),
        "WHISPER_COMPUTE_TYPE": "float32",
        "WHISPER_BATCH_SIZE": "2",
        "WHISPER_VAD": "none",
        "ALIGN_MODELS": f"en={root / 'align-en'}",
        "DEFAULT_LANGUAGE": "en",
        "NLTK_DATA": str(root / "nltk"),
    }
