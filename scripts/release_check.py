"""Everything a release tag needs, checked before tagging (`just release TAG`). Creates no tag.

    python scripts/release_check.py TAG [--root DIR] [--skip-tests] [--ci]

Checks, all of them, then one line each and a verdict:
  tag        TAG reads vMAJOR.MINOR.PATCH[-rcN|-alphaN|-betaN] and does not exist yet
  version    pyproject.toml's version is TAG without the "v"
  changelog  CHANGELOG.md has a heading for the version (what the release notes point at)
  branch     HEAD is on main                     (skipped with --ci: CI checks out the tag itself)
  clean      no uncommitted or untracked files   (skipped with --ci)
  locks      env/conda-linux-64.lock is an @EXPLICIT lock with a sha256 on every package, and
             env/requirements.lock pins every requirement with --hash; each records the digest of
             the spec it was made from, and that is the digest of environment.yml as it is now
             (`python -m pack lock --check`, offline). Until the lock workflow has run there is no
             conda lock: this check fails then, naming the workflow to run.
  contract   the manifest format-1 contract tests pass (tests/artifact/test_manifest.py)
  hub        .runpod/hub.json's MANIFEST_URL default (and tests.json's) is this repository's latest release
             (https://github.com/<owner>/<repo>/releases/latest/download/manifest.json): an image the
             RunPod Hub builds from the Dockerfile has no baked URL and installs what that default names.
             The repository is $GITHUB_REPOSITORY in CI, else the origin remote; with neither, it is
             only checked to be a GitHub latest-release URL.
  lint+tests `just test` passes (lint, then the whole suite); --skip-tests or --ci skip it: the ci
             workflow has run it on the commit.
Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG_RE = re.compile(r"v(?P<version>(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-(rc|alpha|beta)\.?\d+)?)")
CONDA_LOCK = "env/conda-linux-64.lock"
PIP_LOCK = "env/requirements.lock"
ENV_SPEC = "environment.yml"
CONTRACT_TESTS = "tests/artifact/test_manifest.py"
HUB_JSON = ".runpod/hub.json"
TESTS_JSON = ".runpod/tests.json"
LATEST_MANIFEST = "https://github.com/{repo}/releases/latest/download/manifest.json"
_LATEST_RE = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+)/releases/latest/download/manifest\.json")
_REMOTE_RE = re.compile(r"github\.com[:/]([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
_CONDA_LINE = re.compile(r"\S+#[0-9a-f]{64}")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


@dataclass(frozen=True)
class Context:
    root: Path
    tag: str
    ci: bool
    skip_tests: bool
    python: str = sys.executable


def _git(ctx: Context, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ctx.root), *args], capture_output=True, text=True)


def check_tag(ctx: Context) -> Check:
    if not TAG_RE.fullmatch(ctx.tag):
        return Check("tag", False, f"{ctx.tag!r} is not vMAJOR.MINOR.PATCH[-rcN]", "use a tag such as v1.2.0")
    if ctx.ci:
        return Check("tag", True, f"{ctx.tag} (format)")
    if _git(ctx, "rev-parse", "-q", "--verify", f"refs/tags/{ctx.tag}").returncode == 0:
        return Check("tag", False, f"{ctx.tag} already exists", "pick the next version")
    return Check("tag", True, f"{ctx.tag} is new")


def check_version(ctx: Context) -> Check:
    match = TAG_RE.fullmatch(ctx.tag)
    want = match["version"] if match else ctx.tag.removeprefix("v")
    try:
        version = tomllib.loads((ctx.root / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        return Check("version", False, f"cannot read [project].version from pyproject.toml: {exc}",
                     "fix pyproject.toml")
    if version != want:
        return Check("version", False, f"pyproject.toml says {version}, the tag says {want}",
                     f'set version = "{want}" in pyproject.toml and commit')
    return Check("version", True, f"pyproject.toml version {version}")


def check_changelog(ctx: Context) -> Check:
    version = ctx.tag.removeprefix("v")
    path = ctx.root / "CHANGELOG.md"
    if not path.is_file():
        return Check("changelog", False, "CHANGELOG.md is missing",
                     f"add CHANGELOG.md with a '## {ctx.tag}' section")
    heading = re.compile(rf"^#+\s*\[?v?{re.escape(version)}\]?(\s|$)", re.M)
    if not heading.search(path.read_text(errors="replace")):
        return Check("changelog", False, f"CHANGELOG.md has no heading for {version}",
                     f"add a '## {ctx.tag}' section saying what changed")
    return Check("changelog", True, f"CHANGELOG.md has a section for {version}")


def check_branch(ctx: Context) -> Check:
    if ctx.ci:
        return Check("branch", True, "skipped (--ci)")
    branch = _git(ctx, "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch != "main":
        return Check("branch", False, f"HEAD is on {branch or '(no branch)'}, not main",
                     "tag releases from main: git switch main && git pull")
    return Check("branch", True, "on main")


def check_clean(ctx: Context) -> Check:
    if ctx.ci:
        return Check("clean", True, "skipped (--ci)")
    status = _git(ctx, "status", "--porcelain", "--untracked-files=normal")
    if status.returncode:
        return Check("clean", False, f"git status failed: {status.stderr.strip()}", "run it inside the repo")
    dirty = [line[3:] for line in status.stdout.splitlines()]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        return Check("clean", False, f"uncommitted changes: {shown}", "commit or remove them, then rerun")
    return Check("clean", True, "working tree clean")


def check_locks(ctx: Context) -> Check:
    problems: list[str] = []
    conda = ctx.root / CONDA_LOCK
    if not conda.is_file():
        problems.append(f"{CONDA_LOCK} does not exist (it is made where conda-forge is reachable)")
    else:
        lines = [ln.strip() for ln in conda.read_text(errors="replace").splitlines()]
        body = [ln for ln in lines if ln and not ln.startswith("#")]
        if not body or body[0] != "@EXPLICIT":
            problems.append(f"{CONDA_LOCK} is not an @EXPLICIT lock")
        else:
            unhashed = [ln for ln in body[1:] if not _CONDA_LINE.fullmatch(ln)]
            if unhashed:
                problems.append(
                    f"{CONDA_LOCK}: {len(unhashed)} line(s) without url#sha256, e.g. {unhashed[0]!r}")
            if not body[1:]:
                problems.append(f"{CONDA_LOCK} lists no package")
    pip = ctx.root / PIP_LOCK
    if not pip.is_file():
        problems.append(f"{PIP_LOCK} does not exist")
    else:
        joined = re.sub(r"\\\n", " ", pip.read_text(errors="replace"))
        reqs = [ln.strip() for ln in joined.splitlines()
                if ln.strip() and not ln.lstrip().startswith(("#", "-"))]
        unhashed = [r.split()[0] for r in reqs if "--hash=sha256:" not in r]
        if not reqs:
            problems.append(f"{PIP_LOCK} pins no requirement")
        elif unhashed:
            problems.append(f"{PIP_LOCK}: {len(unhashed)} requirement(s) without --hash, e.g. {unhashed[0]}")
    if not problems:
        problems += _stale_locks(ctx)
    if problems:
        return Check("locks", False, "; ".join(problems),
                     "run the lock workflow (.github/workflows/lock.yml, or `just lock` where conda-forge is "
                     "reachable) and merge its pull request")
    return Check("locks", True, f"{CONDA_LOCK} and {PIP_LOCK} present, hashed, made from {ENV_SPEC} as it is")


def _stale_locks(ctx: Context) -> list[str]:
    """The recorded spec digests against the spec (pack/solve.py's check: the files alone, offline)."""
    sys.path.insert(0, str(ROOT))
    from pack.errors import PackError
    from pack.solve import check

    try:
        findings = check(ctx.root / ENV_SPEC, ctx.root / "env")
    except PackError as exc:
        return [str(exc)]
    return [f"{f.path.relative_to(ctx.root)}: {f.detail}" for f in findings if not f.ok]


def _run(ctx: Context, name: str, argv: list[str], remedy: str) -> Check:
    proc = subprocess.run(argv, cwd=ctx.root, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    if proc.returncode:
        return Check(name, False, f"`{' '.join(argv[-3:])}` exited {proc.returncode}: {tail[0]}", remedy)
    return Check(name, True, tail[0])


def check_contract(ctx: Context) -> Check:
    if not (ctx.root / CONTRACT_TESTS).is_file():
        return Check("contract", False, f"{CONTRACT_TESTS} is missing", "restore the manifest contract tests")
    return _run(ctx, "contract", [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", CONTRACT_TESTS],
                "the manifest format-1 contract is broken: fix artifact/manifest.py")


def _repository(ctx: Context) -> str | None:
    import os

    if os.environ.get("GITHUB_REPOSITORY"):
        return os.environ["GITHUB_REPOSITORY"]
    match = _REMOTE_RE.search(_git(ctx, "remote", "get-url", "origin").stdout.strip())
    return match.group(1) if match else None


def _hub_manifest_urls(ctx: Context) -> dict[str, str | None]:
    """MANIFEST_URL as hub.json's default and as tests.json's test environment sets it."""
    import json

    urls: dict[str, str | None] = {}
    hub = json.loads((ctx.root / HUB_JSON).read_text())
    hub_env = {e["key"]: e["input"] for e in hub["config"]["env"]}
    urls[HUB_JSON] = hub_env.get("MANIFEST_URL", {}).get("default")
    tests = ctx.root / TESTS_JSON
    if tests.is_file():
        env = {e["key"]: e["value"] for e in json.loads(tests.read_text())["config"].get("env", [])}
        urls[TESTS_JSON] = env.get("MANIFEST_URL")
    return urls


def check_hub(ctx: Context) -> Check:
    if not (ctx.root / HUB_JSON).is_file():
        return Check("hub", True, f"no {HUB_JSON}: not listed on the RunPod Hub")
    try:
        urls = _hub_manifest_urls(ctx)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Check("hub", False, f"cannot read {HUB_JSON} / {TESTS_JSON}: {exc}", "fix their JSON")
    repo = _repository(ctx)
    want = LATEST_MANIFEST.format(repo=repo or "<owner>/<repo>")
    for where, url in urls.items():
        match = _LATEST_RE.fullmatch(url or "")
        if match is None or (repo is not None and match.group(1).lower() != repo.lower()):
            return Check("hub", False, f"{where} has MANIFEST_URL {url!r}: a Hub-built image would install "
                         "nothing (or another repository's release)", f"set it to {want}")
    unknown = "" if repo else " (no GitHub remote to compare the owner with)"
    return Check("hub", True, f"Hub images install {urls[HUB_JSON]}{unknown}")


def check_tests(ctx: Context) -> Check:
    if ctx.ci or ctx.skip_tests:
        return Check("lint+tests", True, "skipped (" + ("--ci" if ctx.ci else "--skip-tests") + ")")
    just = Path(ctx.python).parent / "just"
    return _run(ctx, "lint+tests", [str(just) if just.exists() else "just", "test"],
                "make `./dev test` green on this commit first")


CHECKS: tuple[Callable[[Context], Check], ...] = (
    check_tag, check_version, check_changelog, check_branch, check_clean, check_locks, check_contract,
    check_hub, check_tests,
)


def run_checks(ctx: Context) -> list[Check]:
    return [check(ctx) for check in CHECKS]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", help="the tag to release, e.g. v1.2.0")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository to check (default: this one)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run `just test`")
    parser.add_argument("--ci", action="store_true",
                        help="running on the tag in CI: skip branch, clean-tree, tag-exists and test checks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ctx = Context(root=args.root.resolve(), tag=args.tag, ci=args.ci, skip_tests=args.skip_tests)
    results = run_checks(ctx)
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}" + ("" if r.ok else f" -> {r.remedy}"))
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"release: {args.tag} is NOT ready ({', '.join(failed)}); no tag was created")
        return 1
    print(f"release: {args.tag} is ready: git tag -s {args.tag} -m {args.tag} && git push origin {args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
