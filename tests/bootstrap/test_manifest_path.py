"""``worker.bootstrap.manifest``, the contract's former path, named by external tools: it re-exports the
contract. The contract's own test is tests/artifact/test_manifest.py (the release check runs it alone)."""

from __future__ import annotations


def test_the_former_path_is_the_contract_itself() -> None:
    """``worker.bootstrap.manifest`` (named by external tools) re-exports the contract: the same objects,
    so a manifest read through either path is one type."""
    import artifact.files
    import artifact.manifest
    from worker.bootstrap import manifest as former

    for name in former.__all__:
        source = artifact.files if hasattr(artifact.files, name) else artifact.manifest
        assert getattr(former, name) is getattr(source, name), name
    assert former.Manifest is artifact.manifest.Manifest
