"""F5_COMPILE=1's preparation: the kernel cache on the volume, and a refusal without a C compiler."""

from __future__ import annotations

import os

import pytest

from worker.engine.compile_cache import prepare_compile, use_compile_cache
from worker.errors import SettingsError
from worker.settings import EngineSettings


def test_compiled_kernels_are_cached_on_the_volume(tmp_path, monkeypatch) -> None:
    # As inductor leaves it once it has run: its own default written into the variable.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    cache = use_compile_cache(tmp_path / "volume")
    assert cache == tmp_path / "volume" / "cache" / "torchinductor" and cache.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)


def test_a_compile_cache_the_user_set_wins(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_someone")
    settings = EngineSettings.from_env({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "mine")})
    assert use_compile_cache(tmp_path / "volume", settings.compile_cache_dir) == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "volume").exists()
    assert EngineSettings.from_env({}).compile_cache_dir is None


def test_a_volume_that_refuses_the_cache_leaves_inductor_s_default(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "volume").write_text("a file where the volume should be")
    with caplog.at_level("WARNING"):
        assert use_compile_cache(tmp_path / "volume") is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert "every worker compiles for itself" in caplog.text


def test_compiling_without_a_c_compiler_is_refused_naming_the_variable(tmp_path, monkeypatch) -> None:
    # Triton builds its kernel launcher with a C compiler on first use; the slim image has none.
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc, clang or cc here
    settings = EngineSettings.from_env({"F5_COMPILE": "1", "WORKER_VOLUME": str(tmp_path / "vol")})
    with pytest.raises(SettingsError, match="needs a C compiler") as caught:
        prepare_compile(settings)
    assert caught.value.where == "F5_COMPILE"
    assert not (tmp_path / "vol").exists()
    monkeypatch.setenv("CC", "/usr/bin/gcc")
    assert prepare_compile(settings) == tmp_path / "vol" / "cache" / "torchinductor"
