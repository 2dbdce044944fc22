"""``python -m worker.bootstrap``: install the env named by a manifest, then exec the worker in it.

    python -m worker.bootstrap --manifest-url URL --volume DIR [--manifest-sha256 HEX] [--no-exec]
    python -m worker.bootstrap doctor --volume DIR [--json]

stdout's last line is the contract's JSON: ``{"status": "ready", ...}`` (exit 0) or
``{"status": "failed", "phase", "error", "remedy", "exit_code"}`` (exit code by phase, see
docs/installer.md). Logs go to stderr. On RunPod (``RUNPOD_WEBHOOK_GET_JOB`` set) a failure is then
served to every job (fallback.py), and with ``WORKER_MODE=http`` to every HTTP request (fallback_http.py),
unless ``BOOTSTRAP_FAILURE_HANDLER=off``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import config as config_mod
from .errors import EXIT_CODES, BootstrapError
from .layout import Layout

log = logging.getLogger("bootstrap")


def _install_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker.bootstrap",
                                description="Install the packed env on the volume and exec the worker in it.")
    p.add_argument("--manifest-url", help="http(s):// or file:// URL of manifest.json (env MANIFEST_URL)")
    p.add_argument("--volume", help="network volume directory (env RUNPOD_VOLUME, default "
                                    f"{config_mod.DEFAULT_VOLUME})")
    p.add_argument("--manifest-sha256", help="expected sha256 of manifest.json (env MANIFEST_SHA256)")
    p.add_argument("--no-exec", action="store_true", help="install, print the JSON line, exit")
    p.add_argument("--parallel", type=int, help="parts downloaded at once (env BOOTSTRAP_PARALLEL)")
    p.add_argument("--keep-envs", type=int, help="envs kept by GC (env BOOTSTRAP_KEEP_ENVS)")
    p.add_argument("--volume-fallback", choices=("container", "fail"), help="env BOOTSTRAP_VOLUME_FALLBACK")
    p.add_argument("--failure-handler", choices=("auto", "on", "off"), help="env BOOTSTRAP_FAILURE_HANDLER")
    p.add_argument("--placement", choices=config_mod.PLACEMENTS,
                   help="where the env lives: volume, parts or auto (env BOOTSTRAP_PLACEMENT)")
    p.add_argument("worker_args", nargs="*", help="arguments for `python -m worker` (after --)")
    return p


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def doctor_main(argv: Sequence[str]) -> int:
    from pathlib import Path

    from . import doctor

    p = argparse.ArgumentParser(prog="python -m worker.bootstrap doctor",
                                description="Report what the volume holds and the last failure.")
    p.add_argument("--volume", default=os.environ.get("RUNPOD_VOLUME") or config_mod.DEFAULT_VOLUME)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    _configure_logging("WARNING")
    doc = doctor.report(Path(args.volume))
    print(json.dumps(doc, default=str) if args.json else doctor.render(doc))
    return 0 if doc["exists"] else EXIT_CODES["doctor"]


def _emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, default=str) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None, install: Callable[..., Any] | None = None,
         serve_error: Callable[[str], None] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        return doctor_main(argv[1:])
    args = _install_parser().parse_args(argv)
    layout: list[Layout] = []
    cfg = config_mod.Config()
    try:
        cfg = config_mod.with_overrides(
            config_mod.from_environ(), manifest_url=args.manifest_url, volume=args.volume,
            manifest_sha256=args.manifest_sha256, no_exec=args.no_exec or None, parallel=args.parallel,
            keep_envs=args.keep_envs, volume_fallback=args.volume_fallback,
            failure_handler=args.failure_handler, placement=args.placement)
    except BootstrapError as exc:
        _configure_logging("INFO")
        return _fail(exc, layout, cfg, serve_error)
    _configure_logging(cfg.log_level)
    try:
        if install is None:
            from .install import install as install_fn
        else:
            install_fn = install
        result = install_fn(cfg, on_layout=layout.append)
        from .activate import activated_environ, exec_worker
        from .lease import IN_USE_ENV

        extra = {"BOOTSTRAP_ENV_ID": result.env_id, "BOOTSTRAP_VOLUME": str(result.volume)}
        if result.in_use is not None:
            extra[IN_USE_ENV] = result.in_use.environ_value()
        environ = None if cfg.no_exec else activated_environ(result.path, os.environ, extra)
        ready = result.to_dict()
        _record(layout, ready)
        _emit(ready)
        if cfg.no_exec:
            if result.in_use is not None:
                result.in_use.stop()
            return 0
        assert environ is not None
        exec_worker(result.path, environ, args.worker_args)
    except BootstrapError as exc:
        return _fail(exc, layout, cfg, serve_error)
    except Exception as exc:  # a bug: keep the traceback, still honour the contract
        log.error("unexpected error:\n%s", traceback.format_exc())
        wrapped = BootstrapError("internal", f"{type(exc).__name__}: {exc}",
                                 "a bug in the bootstrap: report it with the log above")
        return _fail(wrapped, layout, cfg, serve_error)
    return 0  # not reached: exec_worker does not return


def _record(layout: list[Layout], doc: dict[str, Any]) -> None:
    if layout and layout[0].root.is_dir():
        from .install import record_run

        record_run(layout[0], doc)


def _fail(exc: BootstrapError, layout: list[Layout], cfg: config_mod.Config,
          serve_error: Callable[[str], None] | None) -> int:
    log.error("%s", exc)  # one line: phase, cause, remedy
    doc = {"status": "failed", **exc.to_dict()}
    _record(layout, doc)
    _emit(doc)
    handler = cfg.failure_handler
    on_runpod = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))
    # A load-balancing endpoint has no job queue: there the failure is answered over HTTP.
    http = os.environ.get("WORKER_MODE", "").strip().lower() == "http"
    if not cfg.no_exec and (handler == "on" or (handler == "auto" and (on_runpod or http))):
        if serve_error is not None:
            serve = serve_error
        elif http:
            from .fallback_http import serve_http_error as serve
        else:
            from .fallback import serve_error as serve
        serve(str(exc))
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
