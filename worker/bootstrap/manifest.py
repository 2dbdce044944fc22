"""The artifact contract under its former name: ``worker.bootstrap.manifest`` is ``artifact.manifest``
(with the hashing that lived beside it, now ``artifact.files``). External tools and older notes name this
path; new code imports ``artifact`` directly."""

from __future__ import annotations

from artifact.files import HASH_CHUNK, sha256_file, sha256_stream
from artifact.manifest import (
    COMPRESSION,
    FORMAT,
    GITHUB_ASSET_LIMIT,
    MANIFEST_NAME,
    Archive,
    Manifest,
    ManifestError,
    Part,
    make_manifest,
    parse_manifest,
    quote,
    read_manifest,
)

__all__ = ["COMPRESSION", "FORMAT", "GITHUB_ASSET_LIMIT", "HASH_CHUNK", "MANIFEST_NAME", "Archive",
           "Manifest", "ManifestError", "Part", "make_manifest", "parse_manifest", "quote", "read_manifest",
           "sha256_file", "sha256_stream"]
