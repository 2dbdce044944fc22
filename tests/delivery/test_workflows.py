"""The GitHub workflows' policy, beyond what actionlint and zizmor check: every action pinned by commit
SHA with its version, least privilege (nothing at the top, each job its own, id-token only where the
attestation is made), no persisted credentials, the release chain in order, and every command they
run exists with the flags they pass (pack's own CLI parser reads the workflow's `just pack` line)."""

from __future__ import annotations

import re
import shlex
import sys

import pytest
import yaml

from .conftest import REPO

WORKFLOWS = {p.name: p for p in sorted((REPO / ".github" / "workflows").glob("*.yml"))}


def load(name: str) -> dict:
    doc = yaml.safe_load(WORKFLOWS[name].read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc: dict) -> list[tuple[str, dict]]:
    return [(job_id, step) for job_id, job in doc["jobs"].items() for step in job.get("steps", [])]


def test_the_four_workflows_exist() -> None:
    assert {"ci.yml", "pack.yml", "image.yml", "lock.yml"} <= set(WORKFLOWS)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_actions_are_pinned_by_sha_with_their_version(name: str) -> None:
    text = WORKFLOWS[name].read_text()
    uses = re.findall(r"^\s*(?:-\s*)?uses:\s*(\S+)(.*)$", text, re.M)
    assert uses or name == "ci.yml"
    for ref, comment in uses:
        if ref.startswith("./"):
            continue
        pinned = re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref)
        assert pinned, f"{name}: {ref} is not pinned by commit SHA"
        assert re.search(r"#\s*v\d+\.\d+\.\d+", comment), f"{name}: {ref} has no '# vX.Y.Z' comment"


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_least_privilege(name: str) -> None:
    doc = load(name)
    assert doc.get("permissions") == {}, f"{name}: top-level permissions must be {{}}"
    for job_id, job in doc["jobs"].items():
        assert "permissions" in job, f"{name}: job {job_id} must declare its permissions"
        perms = job["permissions"] or {}
        if "id-token" in perms:
            assert (name, job_id) == ("pack.yml", "attest"), "id-token only where the attestation is made"
    for job_id, step in steps(doc):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{name}: {job_id} checkout"


def _commands(name: str, job: str) -> list[list[str]]:
    """The shell commands a job runs, as argv lists: each line (continuations joined) split the way the
    shell does, at ; && || | ( ) and $( ), control words (if, then, else...) left out."""
    text = "\n".join(step.get("run", "") for job_id, step in steps(load(name)) if job_id == job)
    found: list[list[str]] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if set(token) <= set(";&|()"):
                if current:
                    found.append(current)
                current = []
            elif current or token not in ("if", "then", "else", "elif", "fi", "do", "done", "$"):
                current.append(token.removesuffix("$") if token.endswith("=$") else token)
    return found


def _gh_release(name: str, job: str, verb: str) -> list[list[str]]:
    return [c for c in _commands(name, job) if c[:3] == ["gh", "release", verb]]


def test_release_chain_order() -> None:
    """pack uploads to a draft; attest signs what was built; only publish, after both, makes the release
    public; the image is built from the published release."""
    jobs = load("pack.yml")["jobs"]
    assert jobs["attest"]["needs"] == "pack" and jobs["publish"]["needs"] == "attest"
    assert jobs["image"]["needs"] == "publish" and jobs["image"]["uses"] == "./.github/workflows/image.yml"
    assert jobs["attest"]["permissions"] == {"contents": "read", "id-token": "write", "attestations": "write"}
    assert jobs["image"]["permissions"]["packages"] == "write"
    created = _gh_release("pack.yml", "pack", "create")
    assert created and all("--draft" in c for c in created), "the release is created as a draft"
    undrafted = {job for job in jobs for c in _gh_release("pack.yml", job, "edit") if "--draft=false" in c}
    assert undrafted == {"publish"}, "only the publish job, after the attestation, makes it public"
    assert "workflow_call" in load("image.yml")["on"]


def _run_lines(name: str) -> list[str]:
    text = "\n".join(step.get("run", "") for _, step in steps(load(name)))
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def test_the_pack_command_is_one_packs_cli_accepts() -> None:
    from pack.__main__ import _parser

    env = load("pack.yml")["env"]
    line = next(ln for ln in _run_lines("pack.yml") if "just pack" in ln)
    words = shlex.split(line.split("just pack", 1)[1])
    words = [w.replace("$ARTIFACT_NAME", env["ARTIFACT_NAME"]).replace("$RUNNER_TEMP", "/tmp") for w in words]
    args = _parser().parse_args(["build", *words])
    assert str(args.lock) == "env" and str(args.pip_lock) == "env/requirements.lock"
    assert (REPO / "env" / "requirements.lock").is_file()


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_scripts_and_recipes_they_call_exist(name: str) -> None:
    justfile = (REPO / "justfile").read_text()
    for line in _run_lines(name):
        for script in re.findall(r"(?:^|\s)(scripts/[\w./-]+)", line):
            assert (REPO / script).is_file(), f"{name} runs {script}, which does not exist"
        for recipe in re.findall(r"just (\w+)", line):
            assert re.search(rf"^{recipe}\b", justfile, re.M), f"{name} runs `just {recipe}`: no such recipe"


def test_ci_runs_the_readme_test_command() -> None:
    """The README's commands (`./dev RECIPE`) are recipes of the justfile, and CI runs `./dev test`."""
    readme = [line.split() for line in (REPO / "README.md").read_text().splitlines()
              if line.strip().startswith("./dev ")]
    justfile = (REPO / "justfile").read_text()
    assert ["./dev", "test"] in readme
    for words in readme:
        assert re.search(rf"^{words[1]}\b", justfile, re.M), f"README runs ./dev {words[1]}: no such recipe"
    assert ["./dev", "test"] in [c for job in load("ci.yml")["jobs"] for c in _commands("ci.yml", job)]


def test_release_check_is_run_with_flags_it_accepts() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("release_check", REPO / "scripts" / "release_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("release_check", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    runs = [c for job in load("pack.yml")["jobs"] for c in _commands("pack.yml", job)
            if any(w.endswith("scripts/release_check.py") for w in c)]
    assert runs
    for words in runs:
        script = next(i for i, w in enumerate(words) if w.endswith("release_check.py"))
        args = module.parser().parse_args(words[script + 1:])
        assert args.ci and args.tag == "$TAG"  # CI checks the tag it runs on, skipping the local checks


def _budget_step() -> tuple[str, dict[str, str]]:
    job = load("image.yml")["jobs"]["image"]
    step = next(s for s in job["steps"] if s.get("name", "").startswith("Size budget"))
    return step["run"], job["env"]


@pytest.mark.parametrize(("image_bytes", "passes"), [(2_000, True), (400_000, False)])
def test_the_image_size_budget_fails_an_image_over_it(tmp_path, image_bytes: int, passes: bool) -> None:
    """The workflow's own step, run with a stub `docker` whose saved image is random bytes: over the
    budget (scaled down here) it fails with an error naming both sizes."""
    import os
    import subprocess

    script, env = _budget_step()
    assert int(env["SIZE_BUDGET_BYTES"]) == 150_000_000  # docs/image.md: the 150 MB compressed budget
    stub = tmp_path / "docker"
    stub.write_text('#!/bin/sh\n[ "$1" = save ] && head -c "$IMAGE_BYTES" /dev/urandom\nexit 0\n')
    stub.chmod(0o755)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "IMAGE": "img", "TAG": "v1.0.0",
                               "SIZE_BUDGET_BYTES": "100000", "IMAGE_BYTES": str(image_bytes)})
    assert (proc.returncode == 0) is passes, proc.stdout + proc.stderr
    if not passes:
        assert "::error title=image over budget::" in proc.stdout and "> 100000" in proc.stdout
