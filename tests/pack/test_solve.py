"""`pack lock` for real, offline: a spec solved against a local channel (built from the repo's recipes)
and a local wheel directory, reproducibly, then built into an env; conda and pip kept from fighting;
the production spec and its pip lock agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packtest_helpers import build_wheel, options_for, pip_lock_for

from artifact.files import sha256_file
from pack.__main__ import main
from pack.build import build
from pack.errors import PackError
from pack.lockfile import logical_lines, read_conda_lock
from pack.solve import CUTOFF_KEY, DIGEST_KEY, check, lock, read_header
from pack.spec import python_version, read_spec

REPO = Path(__file__).resolve().parents[2]
CUTOFF = "2100-01-01T00:00:00Z"  # after the local channel's packages were built


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in logical_lines(path.read_text()):
        if m := re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def write_spec(path: Path, channel: Path, wheels: Path | None, pip: list[str], conda: list[str] | None = None
               ) -> Path:
    deps: list[object] = conda or ["python=3.11", "hello-prefix", "hello-noarch"]
    if pip:
        assert wheels is not None
        deps.append({"pip": ["--no-index", f"--find-links {wheels}", *pip]})
    path.write_text(yaml.safe_dump({"name": "t", "channels": [channel.as_uri()], "dependencies": deps}))
    return path


@pytest.fixture(scope="session")
def channel(example_lock: Path) -> Path:
    return example_lock.parent


@pytest.fixture(scope="session")
def local_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links directory: tinypkg 1.0.0, and hello-noarch 1.0.0 and 2.0.0 (the conda package's name)."""
    root = tmp_path_factory.mktemp("find-links")
    build_wheel(root)
    build_wheel(root, "hello-noarch", "1.0.0")
    build_wheel(root, "hello-noarch", "2.0.0")
    return root


def test_spec_reads() -> None:
    spec = read_spec(REPO / "environment.yml")
    assert spec.channels == ("conda-forge",)
    assert spec.python == "3.11" and spec.pip_options == ()
    assert any(s.startswith("ffmpeg") for s in spec.conda) and "pip" in spec.conda
    names = {re.split(r"[<>=~! ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in spec.pip}
    assert {"torch", "torchaudio", "f5-tts", "whisperx", "runpod", "huggingface-hub", "soundfile",
            "datasets"} <= names


def test_pip_lock_is_hashed_consistent_and_fresh() -> None:
    lock_path = REPO / "env" / "requirements.lock"
    pins = _pins(lock_path)
    assert pins["torch"] == "2.8.0" and pins["torchaudio"] == "2.8.0"  # whisperx: torch~=2.8
    assert pins["whisperx"] == "3.8.6" and pins["f5-tts"] == "1.1.22"
    assert tuple(int(x) for x in pins["numpy"].split(".")[:2]) >= (2, 1)
    assert tuple(int(x) for x in pins["runpod"].split(".")[:3]) >= (1, 10, 1)
    # datasets 2.14.4 fails to import against the locked pyarrow (environment.yml says why)
    assert int(pins["datasets"].split(".")[0]) >= 3
    assert "gradio" not in pins  # dropped by env/pip-overrides.txt
    assert any(name.startswith("nvidia-cudnn-cu12") for name in pins)  # CUDA 12 torch wheels
    # Made from the spec as it is now (offline: the recorded digest), with a recorded cutoff.
    [finding] = check(REPO / "environment.yml", REPO / "env", only="pip")
    assert finding.ok, finding.detail
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", read_header(lock_path)[CUTOFF_KEY])


def test_python_pin_required() -> None:
    with pytest.raises(PackError):
        python_version(["pip", "python>=3"])


def test_example_lock_has_relative_urls(example_lock: Path) -> None:
    text = example_lock.read_text()
    assert "file://" not in text and str(example_lock.parent) not in text
    conda_lock = read_conda_lock(example_lock)
    names = [e.filename.rsplit("-", 2)[0] for e in conda_lock.entries]
    assert names == ["python", "hello-prefix", "hello-noarch"]
    assert all(e.url.startswith(example_lock.parent.as_uri()) for e in conda_lock.entries)


def test_lock_solves_a_local_channel_reproducibly_and_builds_the_env(
    channel: Path, local_wheels: Path, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, local_wheels, ["tinypkg==1.0.0"])
    one, two = tmp_path / "one", tmp_path / "two"
    # Through the CLI contract: python -m pack lock --spec FILE --out DIR [--platform P] [--only ...]
    assert main(["lock", "--spec", str(spec), "--out", str(one), "--platform", "linux-64",
                 "--exclude-newer", CUTOFF]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(one / "conda-linux-64.lock"), str(one / "requirements.lock")]
    lock(spec, two, exclude_newer=CUTOFF)
    for name in ("conda-linux-64.lock", "requirements.lock"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name

    conda_lock = read_conda_lock(one / "conda-linux-64.lock")
    assert conda_lock.platform == "linux-64" and "@EXPLICIT" in (one / "conda-linux-64.lock").read_text()
    names = sorted(e.filename.rsplit("-", 2)[0] for e in conda_lock.entries)
    assert names == ["hello-noarch", "hello-prefix", "python"]
    for entry in conda_lock.entries:  # absolute file:// URLs with the files' real sha256
        assert entry.url.startswith(channel.as_uri())
        assert sha256_file(Path(entry.url.removeprefix("file://"))) == entry.sha256
    header = read_header(one / "conda-linux-64.lock")
    assert header[CUTOFF_KEY] == CUTOFF and len(header[DIGEST_KEY]) == 64
    assert header["python-packages"] == "hello-noarch==1.0.0"
    assert _pins(one / "requirements.lock") == {"tinypkg": "1.0.0"}
    assert read_header(one / "requirements.lock")[CUTOFF_KEY] == CUTOFF

    assert all(f.ok for f in check(spec, one, resolve=True))  # solving again at the cutoff: same bytes

    options = options_for(work, tmp_path / "out", lock=one / "conda-linux-64.lock",
                          pip_lock=one / "requirements.lock", wheelhouse=local_wheels, name="locked")
    result = build(options)
    prefix = result.prefix
    assert (prefix / "bin" / "tinycmd").is_file() and (prefix / "bin" / "hello-prefix").is_file()
    run = subprocess.run([str(prefix / "bin" / "python"), "-c", "import tinypkg, hello_noarch"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert set(result.manifest.extra["locks"]) == {"conda-linux-64.lock", "requirements.lock"}


def test_check_names_a_stale_lock(channel: Path, local_wheels: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, local_wheels, ["tinypkg==1.0.0"])
    lock(spec, tmp_path, exclude_newer=CUTOFF)
    write_spec(spec, channel, local_wheels, ["tinypkg>=1"])  # the pip part changes, the conda part not
    conda, pip = check(spec, tmp_path)
    assert conda.ok and not pip.ok and "stale" in pip.detail and "--only pip" in pip.detail
    assert main(["lock", "--check", "--spec", str(spec), "--out", str(tmp_path)]) == 1


def test_resolve_tells_a_lock_that_the_solver_would_not_write(channel: Path, local_wheels: Path,
                                                              tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, local_wheels, ["tinypkg==1.0.0"])
    lock(spec, tmp_path, exclude_newer=CUTOFF)
    pip_lock = tmp_path / "requirements.lock"
    pip_lock.write_text(pip_lock.read_text().replace("tinypkg==1.0.0", "tinypkg==1.0.1"))  # hand edit
    assert all(f.ok for f in check(spec, tmp_path))  # the digest says nothing about the body
    _, pip = check(spec, tmp_path, resolve=True)
    assert not pip.ok and "tinypkg==1.0.0" in pip.detail and "other bytes" in pip.detail


def test_cutoff_excludes_what_was_published_after_it(channel: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, None, [])
    with pytest.raises(PackError) as err:
        lock(spec, tmp_path / "out", exclude_newer="2001-01-01")
    assert err.value.phase == "lock" and "2001-01-01T00:00:00Z" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_cutoff_is_refused(channel: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, None, [])
    with pytest.raises(PackError) as err:
        lock(spec, tmp_path, exclude_newer="last tuesday")
    assert "--exclude-newer" in str(err.value)


def test_lock_refuses_pip_replacing_a_conda_package_by_name(channel: Path, local_wheels: Path,
                                                            tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "environment.yml", channel, local_wheels, ["hello-noarch==2.0.0"])
    with pytest.raises(PackError) as err:
        lock(spec, tmp_path / "out", exclude_newer=CUTOFF)
    msg = str(err.value)
    assert err.value.phase == "lock" and "hello-noarch: conda installs 1.0.0, the pip lock pins 2.0.0" in msg
    assert not (tmp_path / "out").exists()  # neither part written


def test_lock_pins_an_overlap_to_condas_version(channel: Path, local_wheels: Path, work: Path,
                                                tmp_path: Path) -> None:
    # Unpinned, uv would take 2.0.0; conda's version is a constraint, so both sides say 1.0.0 and pip
    # leaves conda's files alone (conda-pack would refuse the env otherwise).
    spec = write_spec(tmp_path / "environment.yml", channel, local_wheels, ["hello-noarch", "tinypkg"])
    lock(spec, tmp_path / "lock", exclude_newer=CUTOFF)
    assert _pins(tmp_path / "lock" / "requirements.lock") == {"hello-noarch": "1.0.0", "tinypkg": "1.0.0"}
    result = build(options_for(work, tmp_path / "out", lock=tmp_path / "lock" / "conda-linux-64.lock",
                               pip_lock=tmp_path / "lock" / "requirements.lock", wheelhouse=local_wheels,
                               name="agreed"))
    installer = result.prefix / "lib" / "python3.11" / "site-packages" / "hello_noarch-1.0.0.dist-info"
    assert (installer / "INSTALLER").read_text().strip() == "conda"  # still conda's


def test_build_refuses_a_pip_lock_that_replaces_a_conda_distribution(
    example_lock: Path, local_wheels: Path, work: Path, tmp_path: Path
) -> None:
    pip_lock = pip_lock_for(local_wheels / "hello_noarch-2.0.0-py3-none-any.whl", tmp_path / "req.lock")
    with pytest.raises(PackError) as err:
        build(options_for(work, tmp_path / "out", pip_lock=pip_lock, wheelhouse=local_wheels, name="clash"))
    assert err.value.phase == "pip"
    assert "hello-noarch: conda installs 1.0.0, the pip lock pins 2.0.0" in str(err.value)
    site = work / "envs" / "clash" / "lib" / "python3.11" / "site-packages"
    assert (site / "hello_noarch-1.0.0.dist-info").is_dir()
    assert not (site / "hello_noarch-2.0.0.dist-info").exists()
