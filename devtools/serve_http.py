"""`just serve-http PORT`: the http mode on tiny generated models, for development and tests.

    python -m devtools.serve_http --port 8000 [--host 127.0.0.1] [--cache-dir .cache/tiny-models]

Like `just serve` (devtools/devserve.py) for the queue mode: the tiny random-weight models (devtools.tiny)
are generated on first use, then production's http startup runs (worker.serving.server: /ping 204 while
loading, 200 when warm). Preset voices: WORKER_VOICES_DIR when set; else a directory under the cache
holding ``default``, the English reference clip shipped in the f5_tts wheel with its transcript. Reference
URLs on private addresses are allowed (WORKER_ALLOW_PRIVATE_URLS=1 unless set), as `just serve` does.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from importlib.resources import files
from pathlib import Path

from devtools.devserve import parse_args

# The clip and its transcript as f5_tts ships them (infer/examples/basic/basic.toml).
DEFAULT_VOICE = "infer/examples/basic/basic_ref_en.wav"
DEFAULT_VOICE_TEXT = "Some call me nature, others call me mother nature."


def default_voices(cache_dir: Path) -> Path:
    """A voices directory holding ``default.wav`` + ``default.txt``."""
    voices = cache_dir / "voices"
    voices.mkdir(parents=True, exist_ok=True)
    wav = voices / "default.wav"
    if not wav.is_file():
        part = voices / "default.wav.part"
        shutil.copyfile(str(files("f5_tts").joinpath(DEFAULT_VOICE)), part)
        os.replace(part, wav)
    (voices / "default.txt").write_text(DEFAULT_VOICE_TEXT + "\n")
    return voices


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, "python -m devtools.serve_http", __doc__, "port of the app and /ping")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("WORKER_ALLOW_PRIVATE_URLS", "1")
    if not os.environ.get("WORKER_VOICES_DIR", "").strip():
        os.environ["WORKER_VOICES_DIR"] = str(default_voices(args.cache_dir))
    from devtools.tiny import tiny_config
    from worker.serving import server
    from worker.settings import JobSettings, ServingSettings, Settings

    settings = ServingSettings.from_env({**os.environ, "PORT": str(args.port), "PORT_HEALTH": str(args.port),
                                         "WORKER_HTTP_HOST": args.host})

    def tiny_settings() -> Settings:
        config = tiny_config(args.cache_dir)
        return Settings(config, JobSettings.from_env(volume=config.volume))

    return server.main(make_settings=tiny_settings, settings=settings)


if __name__ == "__main__":
    sys.exit(main())
