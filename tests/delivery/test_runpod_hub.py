""".runpod/hub.json documents every environment variable the code reads, and nothing else; its defaults
are the code's defaults; .runpod/tests.json is in RunPod's hub format and uses real job inputs.

The variables are found by reading the code (an AST walk over worker/**/*.py), not from a list: a new
`env.get("X")` without a hub.json entry fails here.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import wave
from collections.abc import Iterator

import pytest

from .conftest import REPO

HUB = json.loads((REPO / ".runpod" / "hub.json").read_text())
TESTS = json.loads((REPO / ".runpod" / "tests.json").read_text())
HUB_ENV = {entry["key"]: entry["input"] for entry in HUB["config"]["env"]}

# Set by RunPod itself (or by the process), never by the person deploying: documented in docs/deploy.md.
PLATFORM = {"RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT", "RUNPOD_WEBHOOK_PING", "RUNPOD_POD_ID",
            "RUNPOD_POD_HOSTNAME", "RUNPOD_AI_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_REALTIME_PORT",
            "RUNPOD_REALTIME_CONCURRENCY", "RUNPOD_PING_INTERVAL", "PATH", "PYTHONPATH", "HOME",
            "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_SHLVL", "LD_LIBRARY_PATH", "TMPDIR"}
# Handed by the installer to the worker it execs (docs/installer.md), never set by the person deploying.
SET_BY_INSTALLER = {"BOOTSTRAP_VOLUME", "BOOTSTRAP_ENV_ID", "BOOTSTRAP_IN_USE_FILE"}
# Documented in hub.json but read by the runpod SDK's rp_upload rather than by our code.
READ_BY_RUNPOD_SDK = {"BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY"}
# Set on the template for RunPod's platform itself (how long a worker may take to start).
READ_BY_RUNPOD_PLATFORM = {"RUNPOD_INIT_TIMEOUT"}


def _env_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        name = node.value
        if name.isupper() and name.replace("_", "").isalnum() and not name[0].isdigit() and len(name) > 2:
            return name
    return None


def _is_env(node: ast.AST) -> bool:
    """`env`, `environ`, `os.environ`, `self.env`... : a mapping of environment variables."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name in ("env", "environ", "environment") or name.endswith("_env")


def read_variables(tree: ast.AST) -> Iterator[str]:
    """Names read from the environment: env.get("X"), environ["X"], os.getenv("X"), and helpers called
    as helper(env, "X", ...) or, for closures over env, helper("X", ...) defined next to an env read."""
    helpers: set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.args.args:
            first = [a.arg for a in fn.args.args[:2]]
            reads = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                        and _is_env(n.func.value) and n.args and isinstance(n.args[0], ast.Name)
                        and n.args[0].id in first for n in ast.walk(fn))
            if reads:
                helpers.add(fn.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_env(node.value)
                and (name := _env_name(node.slice))):
            yield name
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        # setdefault/pop/assignment set variables for libraries (HF_HUB_OFFLINE...): not configuration.
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_env(func.value):
            if node.args and (name := _env_name(node.args[0])):
                yield name
        elif isinstance(func, ast.Attribute) and func.attr == "getenv" and node.args:
            if name := _env_name(node.args[0]):
                yield name
        elif isinstance(func, ast.Name) and func.id in helpers:
            for arg in node.args[:2]:
                if name := _env_name(arg):
                    yield name


def code_variables() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "worker").rglob("*.py")):
        for name in read_variables(ast.parse(path.read_text(), str(path))):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def test_the_scanner_finds_every_kind_of_read() -> None:
    sample = ast.parse(
        "import os\n"
        "def _num(env, name, default):\n    return env.get(name, default)\n"
        "def f(env):\n"
        "    a = env.get('A_ONE'); b = os.environ['B_TWO']; c = os.getenv('C_THREE')\n"
        "    d = _num(env, 'D_FOUR', 1)\n"
        "    def number(name):\n        return env.get(name, '')\n"
        "    e = number('E_FIVE'); logging_level = {'NOT_ENV': 1}\n"
        "    os.environ['SET_ONLY'] = '1'; os.environ.setdefault('LIB_DEFAULT', '0')\n"
    )
    assert set(read_variables(sample)) == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE"}


def test_hub_lists_every_variable_the_code_reads() -> None:
    found: dict[str, set[str]] = code_variables()
    core = {"MANIFEST_URL", "RUNPOD_VOLUME", "WORKER_VOLUME", "F5_CKPT", "WORKER_MAX_TEXT_CHARS"}
    assert core <= set(found), "the scanner lost track of the config modules"
    missing = {name: sorted(where) for name, where in found.items()
               if name not in HUB_ENV and name not in PLATFORM | SET_BY_INSTALLER}
    assert not missing, f"add these to .runpod/hub.json (read in): {missing}"


def test_hub_lists_nothing_the_code_does_not_read() -> None:
    stale = set(HUB_ENV) - set(code_variables()) - READ_BY_RUNPOD_SDK - READ_BY_RUNPOD_PLATFORM
    assert not stale, f"hub.json documents variables nothing reads: {sorted(stale)}"


def test_hub_entries_are_complete() -> None:
    assert HUB["type"] == "serverless"
    assert HUB["category"] in ("audio", "embedding", "language", "video", "image")
    assert HUB["title"] and HUB["description"] and HUB["config"]["runsOn"] == "GPU"
    for key, spec in HUB_ENV.items():
        assert spec.get("name") and len(spec.get("description", "")) > 15, key
        assert spec["type"] in ("string", "number", "boolean"), key
        if "default" in spec:
            kind = {"string": str, "number": (int, float), "boolean": bool}[spec["type"]]
            assert isinstance(spec["default"], kind), key
        for option in spec.get("options", []):
            assert set(option) == {"label", "value"}, key
        if "options" in spec and "default" in spec:
            assert spec["default"] in [o["value"] for o in spec["options"]], key


def _as_env(value: object) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _defaults(prefix_filter: tuple[str, ...]) -> list[tuple[str, object]]:
    return [(k, v["default"]) for k, v in HUB_ENV.items() if "default" in v and k.startswith(prefix_filter)]


@pytest.mark.parametrize(("key", "default"), _defaults(("BOOTSTRAP_", "RUNPOD_VOLUME")))
def test_documented_bootstrap_default_is_the_code_default(key: str, default: object) -> None:
    from worker.bootstrap.config import from_environ

    assert from_environ({key: _as_env(default)}) == from_environ({})


@pytest.mark.parametrize(("key", "default"), _defaults(("WORKER_", "F5_", "WHISPER_", "ALIGN_", "DEFAULT_L")))
def test_documented_worker_default_is_the_code_default(key: str, default: object) -> None:
    from worker.settings import EngineSettings, JobSettings

    env = {key: _as_env(default)}
    assert EngineSettings.from_env(env) == EngineSettings.from_env({})
    assert JobSettings.from_env(env) == JobSettings.from_env({})


def test_the_first_start_has_time_to_install() -> None:
    """RunPod marks a worker unhealthy after 7 minutes by default; the first start on an empty volume
    installs the env and downloads the models, so the template and the Hub's own test endpoint extend it."""
    assert HUB_ENV["RUNPOD_INIT_TIMEOUT"]["default"] >= 900
    tests_env = {e["key"]: e["value"] for e in TESTS["config"]["env"]}
    assert int(tests_env["RUNPOD_INIT_TIMEOUT"]) >= 900


def test_runpod_tests_json_is_hub_format_with_real_inputs() -> None:
    from worker.jobs.schema import parse_job  # the job layer's own validation
    from worker.settings import JobSettings

    assert TESTS["tests"] and {"gpuTypeId", "gpuCount", "env"} <= set(TESTS["config"])
    for env in TESTS["config"]["env"]:
        assert set(env) == {"key", "value"} and env["key"] in HUB_ENV
    for test in TESTS["tests"]:
        assert {"name", "input", "timeout"} <= set(test) and test["timeout"] > 0
        for field in ("ref_audio", "audio"):
            if field in test["input"]:
                with wave.open(io.BytesIO(base64.b64decode(test["input"][field]))) as wav:
                    assert wav.getnframes() > 0
        parse_job(test["input"], JobSettings.from_env({}))  # raises on an input the worker would refuse
