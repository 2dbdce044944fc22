"""Which files of a hub repo each model needs: only those are downloaded.

A model repo often carries the same weights several times (PyTorch, safetensors, TensorFlow, Flax, ONNX),
plus READMEs and training leftovers: facebook/wav2vec2-base-960h is ~1.1 GB whole, ~0.4 GB of it is what
transformers loads. Each entry below lists what its loader reads, as fnmatch patterns over the repo's
file names: ``always`` (every match is taken) and ``weights`` (alternatives in the loader's order of
preference: the first that matches anything is taken, the others are left on the hub).

- ``WHISPER``: a CTranslate2 Whisper, as faster-whisper's own ``download_model`` fetches it.
- ``VOCOS``: what ``Vocos.from_pretrained`` reads (config.yaml, pytorch_model.bin).
- ``WAV2VEC2``: a transformers Wav2Vec2ForCTC + Wav2Vec2Processor (configs, tokenizer files, and one
  weights format: safetensors first, as transformers prefers, else pytorch_model.bin; sharded or not).
- ``F5_CHECKPOINT`` / ``F5_VOCAB``: for a repo spec without a file (the default names one file).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class ModelFiles:
    name: str
    always: tuple[str, ...] = ()
    weights: tuple[tuple[str, ...], ...] = ()

    def select(self, files: list[str]) -> list[str]:
        """The files to fetch out of a repo's listing. Raises ``LookupError`` naming what is missing."""
        chosen = [f for f in files if any(fnmatchcase(f, p) for p in self.always)]
        if self.weights:
            for group in self.weights:
                found = [f for f in files if any(fnmatchcase(f, p) for p in group)]
                if found:
                    chosen += found
                    break
            else:
                wanted = " or ".join(", ".join(g) for g in self.weights)
                raise LookupError(f"no {self.name} weights in the repo (looked for {wanted})")
        return sorted(set(chosen))


WHISPER = ModelFiles("CTranslate2 Whisper", always=(
    "config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"))
VOCOS = ModelFiles("Vocos", always=("config.yaml", "pytorch_model.bin"))
WAV2VEC2 = ModelFiles("wav2vec2", always=(
    "config.json", "preprocessor_config.json", "vocab.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json"), weights=(
    ("model.safetensors",), ("model-*-of-*.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin",), ("pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")))
F5_CHECKPOINT = ModelFiles("F5-TTS checkpoint", weights=(("*.safetensors",), ("*.pt",)))
F5_VOCAB = ModelFiles("F5-TTS vocab", always=("vocab.txt",))
