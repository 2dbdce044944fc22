"""The development venv is the production pip lock: installed as ``pack build`` installs it, then checked.

    python3 -m devtools.devenv install [--venv .venv]   (scripts/install-requirements runs it)
    python3 -m devtools.devenv check [--venv .venv]
    python3 -m devtools.devenv wheels [--wheelhouse .cache/wheels]   (step 1 alone; `just demo` runs it)

install:
1. wheels  every file env/requirements.lock names, hash-checked, into the wheelhouse .cache/wheels
           (PyPI, once; `just demo` packs from the same files), plus the build backend of the lock's
           sdist-only packages, so everything after this step runs offline
2. lock    ``pack.create.pip_install``, the function ``pack build`` installs the pip part with
           (``--no-deps --require-hashes`` from that wheelhouse): the same versions and the same files
           as the shipped env, CUDA torch and the nvidia wheels included (they run on a CPU)
3. tools   requirements/dev.txt and worker-test.txt on top, constrained to the lock's versions
check: every locked distribution is installed at its locked version, and ``pip check`` reports nothing
but what env/pip-overrides.txt removes on purpose. CI runs it (tests/delivery/test_devenv.py), so the
venv the tests run in cannot drift from what ships.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python3 -m devtools.devenv` by a fresh machine's system Python
    sys.path.insert(0, str(ROOT))

from artifact.files import sha256_file, write_atomic  # noqa: E402
from pack.agree import normalize, pip_pins  # noqa: E402
from pack.create import pip_install  # noqa: E402
from pack.lockfile import logical_lines  # noqa: E402
from pack.options import DEFAULT_SOURCE_DATE_EPOCH  # noqa: E402

LOCK = ROOT / "env" / "requirements.lock"
OVERRIDES = ROOT / "env" / "pip-overrides.txt"
WHEELHOUSE = ROOT / ".cache" / "wheels"
TOOLS = (ROOT / "requirements" / "dev.txt", ROOT / "requirements" / "worker-test.txt")
# What pip's isolated builds of the lock's sdist-only packages need, offline, from the wheelhouse.
SDIST_BUILD_BACKEND = ("setuptools==84.2.1", "wheel==0.48.0")
INDEX_NAME = ".sha256-index.json"


def say(msg: str) -> None:
    print(f"devenv: {msg}", file=sys.stderr, flush=True)


def isolated_pip_env() -> dict[str, str]:
    """pip without this machine's pip config (find-links, constraints): only the lock decides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def fill_wheelhouse(python: Path, lock: Path = LOCK, wheelhouse: Path = WHEELHOUSE) -> None:
    """Download what the lock names (pip skips files already there whose hash matches)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    common = [str(python), "-m", "pip", "download", "-q", "--no-cache-dir", "--no-deps",
              "-d", str(wheelhouse)]
    env = isolated_pip_env() | {"PIP_DEFAULT_TIMEOUT": "120"}
    subprocess.run([*common, "--require-hashes", "-r", str(lock)], check=True, env=env)
    subprocess.run([*common, "--only-binary=:all:", *SDIST_BUILD_BACKEND], check=True, env=env)


def locked_hashes(lock: Path = LOCK) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock.read_text()))


def wheelhouse_hashes(wheelhouse: Path = WHEELHOUSE) -> dict[str, str]:
    """File name -> sha256 of every file in the wheelhouse. Digests are kept in an index beside the files
    and computed again only for files whose size or mtime changed (4 GB take a minute to hash on a busy
    box). The index only decides what to download: pip checks every hash again when it installs."""
    index_path = wheelhouse / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    fresh: dict[str, list] = {}
    for path in sorted(wheelhouse.iterdir()) if wheelhouse.is_dir() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        st = path.stat()
        known = index.get(path.name)
        if known and known[:2] == [st.st_size, st.st_mtime_ns]:
            fresh[path.name] = known
        else:
            fresh[path.name] = [st.st_size, st.st_mtime_ns, sha256_file(path)]
    if fresh != index and wheelhouse.is_dir():
        write_atomic(index_path, json.dumps(fresh, indent=0, sort_keys=True))
    return {name: entry[2] for name, entry in fresh.items()}


def wheelhouse_missing(wheelhouse: Path = WHEELHOUSE, lock: Path = LOCK) -> list[str]:
    """The locked requirements (and build backend) with no file in the wheelhouse: by hash for the lock
    (one of each requirement's hashes), by name for the backend."""
    hashes = wheelhouse_hashes(wheelhouse)
    have = set(hashes.values())
    missing = []
    for line in logical_lines(lock.read_text()):
        wanted = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        if wanted and not wanted & have:
            missing.append(line.split()[0])
    for spec in SDIST_BUILD_BACKEND:
        if not any(name.startswith(spec.replace("==", "-") + "-") for name in hashes):
            missing.append(spec)
    return missing


def constraints_from(lock: Path, dest: Path) -> Path:
    """``name==version`` for every locked distribution: the tools may not move any of them."""
    pins = pip_pins(lock.read_text())
    dest.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    return dest


def install(venv: Path) -> None:
    python = venv / "bin" / "python"
    say(f"1/4 wheels: {LOCK.relative_to(ROOT)} -> {WHEELHOUSE.relative_to(ROOT)}")
    fill_wheelhouse(python)
    say("2/4 lock: pip install --no-deps --require-hashes (pack.create.pip_install, as pack build)")
    pip_install(venv, LOCK, WHEELHOUSE, DEFAULT_SOURCE_DATE_EPOCH)
    say("3/4 tools: " + ", ".join(str(t.relative_to(ROOT)) for t in TOOLS) + ", constrained to the lock")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = constraints_from(LOCK, Path(tmp) / "lock-constraints.txt")
        cmd = [str(python), "-m", "pip", "install", "-q", "-c", str(constraints)]
        for req in TOOLS:
            cmd += ["-r", str(req)]
        subprocess.run(cmd, check=True, env=isolated_pip_env())
    say("4/4 check")
    problems = check(venv)
    if problems:
        raise SystemExit("devenv: the venv does not match the lock:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Installed:
    versions: dict[str, str]  # normalized name -> version
    pip_check: list[str]  # lines of `pip check`


def installed(venv: Path) -> Installed:
    python = str(venv / "bin" / "python")
    code = ("import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([python, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    versions = {normalize(name): version for name, version in json.loads(out).items()}
    proc = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True,
                          env=isolated_pip_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("No broken")]
    return Installed(versions, lines)


def overridden_names(overrides: Path = OVERRIDES) -> set[str]:
    """Names env/pip-overrides.txt removes from the resolution on purpose (pip check reports them)."""
    names = set()
    for line in overrides.read_text().splitlines():
        if (line := line.split("#", 1)[0].strip()) and (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)):
            names.add(normalize(m.group(0)))
    return names


def drift(lock_pins: dict[str, str], state: Installed, allowed_missing: set[str]) -> list[str]:
    """Every way the venv differs from the lock, one line each."""
    problems = [f"{name}: the lock pins {version}, the venv has {state.versions.get(name, 'nothing')}"
                for name, version in sorted(lock_pins.items()) if state.versions.get(name) != version]
    for line in state.pip_check:
        # "f5-tts 1.1.22 requires gradio, which is not installed." is the override doing its job.
        m = re.match(r"\S+ \S+ requires ([A-Za-z0-9._-]+), which is not installed", line)
        if not (m and normalize(m.group(1)) in allowed_missing):
            problems.append(f"pip check: {line}")
    return problems


def check(venv: Path) -> list[str]:
    return drift(pip_pins(LOCK.read_text()), installed(venv), overridden_names())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m devtools.devenv", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("install", "check", "wheels"))
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--wheelhouse", type=Path, default=WHEELHOUSE)
    args = parser.parse_args(argv)
    venv = args.venv.absolute()
    if args.command == "wheels":
        fill_wheelhouse(Path(sys.executable), wheelhouse=args.wheelhouse)
        missing = wheelhouse_missing(args.wheelhouse)
        say(f"{args.wheelhouse}: "
            + (f"still missing {', '.join(missing)}" if missing else "every locked file"))
        return 1 if missing else 0
    if args.command == "install":
        install(venv)
        say(f"{venv} is env/requirements.lock plus the tools")
        return 0
    problems = check(venv)
    for line in problems:
        print(line)
    say("matches the lock" if not problems else f"{len(problems)} difference(s) from the lock")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
