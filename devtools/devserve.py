"""`just serve PORT`: the real worker startup on tiny generated models, behind runpod's local API.

    python -m devtools.devserve --port 8000 [--host 127.0.0.1] [--cache-dir .cache/tiny-models]

The tiny random-weight models (``devtools.tiny``) are generated on first use into the cache directory;
after that the startup is exactly production's (``worker.__main__``: load, warm up, start runpod) with
runpod's ``--rp_serve_api --rp_api_port PORT --rp_api_host HOST``, so ``POST /runsync``, ``/run``,
``/stream/<id>`` and ``/status/<id>`` take real jobs (docs at ``http://HOST:PORT/``). Being a developer
tool it allows reference URLs on private addresses (``WORKER_ALLOW_PRIVATE_URLS=1``, unless the
environment says otherwise) so a file server on this machine can serve reference audio.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tiny-models"


def parse_args(argv: list[str] | None, prog: str = "python -m devtools.devserve", doc: str | None = None,
               port_help: str = "port of the local API") -> argparse.Namespace:
    """The dev servers' flags (this one's and ``devtools.serve_http``'s): --port, --host, --cache-dir."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or __doc__).splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help=f"{port_help} (default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("WORKER_TINY_CACHE") or DEFAULT_CACHE),
                        help="where the tiny models are generated and kept (env WORKER_TINY_CACHE)")
    return parser.parse_args(argv)


def runpod_argv(port: int, host: str) -> list[str]:
    """The argv runpod.serverless.start parses (it reads sys.argv itself)."""
    return [sys.argv[0] or "devtools.devserve", "--rp_serve_api", "--rp_api_port", str(port),
            "--rp_api_host", host]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("WORKER_ALLOW_PRIVATE_URLS", "1")
    from devtools.tiny import tiny_config
    from worker import __main__ as startup
    from worker.settings import JobSettings, Settings

    config = tiny_config(args.cache_dir)
    settings = Settings(config, JobSettings.from_env(volume=config.volume))
    engine = startup.prepare(config)
    sys.argv = runpod_argv(args.port, args.host)
    logging.getLogger("devtools.devserve").info("devserve: serving on http://%s:%d", args.host, args.port)
    startup.serve(engine, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
