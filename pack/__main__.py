"""``python -m pack build|lock``: flags -> options -> library call. Logs go to stderr; stdout's last
line is the result (the manifest path for ``build``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import PackError
from .options import DEFAULT_LEVEL, DEFAULT_LONG, DEFAULT_PART_SIZE, PackOptions

log = logging.getLogger("pack")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pack", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build", help="create the env from the locks and pack it (default: the bundled example)"
    )
    b.add_argument(
        "--lock",
        type=Path,
        help="conda @EXPLICIT lock, or a dir with conda-<platform>.lock "
        "(default: build the bundled example env offline)",
    )
    b.add_argument(
        "--pip-lock", type=Path, help="hashed requirements installed with --no-deps --require-hashes"
    )
    b.add_argument("--wheelhouse", type=Path, help="offline pip: --no-index --find-links DIR")
    b.add_argument("--out", type=Path, default=Path("build/pack"), help="where parts + manifest.json go")
    b.add_argument(
        "--work", type=Path, default=Path("build/work"), help="env prefix, package cache, example channel"
    )
    b.add_argument("--name", default=None, help="artifact name (default: example, or env with --lock)")
    b.add_argument("--level", type=int, default=DEFAULT_LEVEL, help="zstd level (default %(default)s)")
    b.add_argument(
        "--threads", type=int, default=2, help="zstd compression threads, >= 1 (output is the same for any)"
    )
    b.add_argument(
        "--long", type=int, default=DEFAULT_LONG, help="zstd window log, 0 = off (default %(default)s)"
    )
    b.add_argument("--part-size", type=int, default=DEFAULT_PART_SIZE, help="bytes per part, below 2 GiB")
    b.add_argument("--dest-prefix", help="fixed install path: rewrite prefixes now, no conda-unpack")
    b.add_argument(
        "--channel",
        action="append",
        default=[],
        help="channel root URL that relative lines of the lock resolve against (default: the lock's dir)",
    )
    b.add_argument("--platform", default="linux-64")
    b.add_argument("--prune", action="append", default=[], metavar="GLOB",
                   help="remove files matching GLOB (relative to the env root) before packing; repeatable")
    b.add_argument("--reuse", action="store_true",
                   help="keep the pack in --out if it has the same env_id and its parts verify")

    lk = sub.add_parser("lock", help="regenerate env/ locks from environment.yml (needs conda-forge / PyPI)")
    lk.add_argument("--spec", type=Path, default=Path("environment.yml"))
    lk.add_argument("--out", type=Path, default=Path("env"))
    lk.add_argument("--platform", default="linux-64")
    lk.add_argument("--only", choices=("conda", "pip"), help="regenerate only one of the two locks")
    lk.add_argument("--exclude-newer", metavar="WHEN",
                    help="cutoff: nothing published after it is considered (YYYY-MM-DD or "
                    "YYYY-MM-DDTHH:MM:SSZ; default: the start of today, UTC); recorded in the lock")
    lk.add_argument("--check", action="store_true",
                    help="write nothing: report whether each lock in --out was made from the spec as it "
                    "is now (recorded digests, offline); exit 1 if not")
    lk.add_argument("--resolve", action="store_true",
                    help="with --check: also solve again at each lock's recorded cutoff and compare bytes "
                    "(needs the spec's channels and index)")
    return parser


def options_from_args(args: argparse.Namespace) -> PackOptions:
    return PackOptions(
        lock=args.lock,
        pip_lock=args.pip_lock,
        wheelhouse=args.wheelhouse,
        out=args.out,
        work=args.work,
        name=args.name or ("env" if args.lock else "example"),
        level=args.level,
        threads=args.threads,
        long=args.long,
        part_size=args.part_size,
        dest_prefix=args.dest_prefix,
        channels=tuple(args.channel),
        platform=args.platform,
        prune=tuple(args.prune),
        reuse=args.reuse,
    )


def main(
    argv: Sequence[str] | None = None, build: Callable | None = None, lock: Callable | None = None
) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "build":
            if build is None:
                from .build import build
            result = build(options_from_args(args))
            print(result.manifest_path)
        else:
            if args.check or args.resolve:
                return _check_locks(args)
            if lock is None:
                from .solve import lock
            for path in lock(args.spec, args.out, args.platform, args.only, args.exclude_newer):
                print(path)
    except PackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_locks(args: argparse.Namespace) -> int:
    from .solve import check

    findings = check(args.spec, args.out, args.platform, args.only, resolve=args.resolve)
    for finding in findings:
        print(f"{'ok' if finding.ok else 'STALE'} {finding.path}: {finding.detail}")
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
