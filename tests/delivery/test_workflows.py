"""The GitHub workflows' policy, beyond what actionlint and zizmor check: every action pinned by commit
SHA with its version, least privilege (nothing at the top, each job its own, id-token only where the
attestation is made), no persisted credentials, the release chain in order, and every command they
run exists with the flags they pass (pack's own CLI parser reads the workflow's `just pack` line)."""

from __future__ import annotations

import re
import shlex

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


def test_release_chain_order() -> None:
    jobs = load("pack.yml")["jobs"]
    assert jobs["attest"]["needs"] == "pack" and jobs["publish"]["needs"] == "attest"
    assert jobs["image"]["needs"] == "publish" and jobs["image"]["uses"] == "./.github/workflows/image.yml"
    assert jobs["attest"]["permissions"] == {"contents": "read", "id-token": "write", "attestations": "write"}
    assert jobs["image"]["permissions"]["packages"] == "write"
    runs = " ".join(step.get("run", "") for _, step in steps(load("pack.yml")))
    assert "--draft" in runs and "--draft=false" in runs
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
    assert "./dev test" in _run_lines("ci.yml")
    assert "./dev test" in (REPO / "README.md").read_text()


def test_release_check_knows_the_ci_flag() -> None:
    line = next(ln for ln in _run_lines("pack.yml") if "release_check.py" in ln)
    assert "--ci" in line
    assert "--ci" in (REPO / "scripts" / "release_check.py").read_text()


def test_image_budget_matches_the_docs() -> None:
    job = load("image.yml")["jobs"]["image"]
    assert int(job["env"]["SIZE_BUDGET_BYTES"]) == 150_000_000
    assert "150 MB compressed" in (REPO / "docs" / "image.md").read_text()

