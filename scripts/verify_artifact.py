"""Verify a packed artifact directory against its manifest, and write its SHA256SUMS.

    python scripts/verify_artifact.py DIR [--sums FILE] [--no-sums]

Re-reads every part named by DIR/manifest.json: size and sha256 of each part, and the sha256 of the
parts concatenated in order against archive.sha256 (one pass over the bytes). Then writes DIR/SHA256SUMS
in `sha256sum -c` format (manifest.json and every part), the file a release ships so anyone can check a
download with standard tools (docs/artifact.md). The pack workflow runs this before anything is uploaded.
Exit 0 when everything matches; 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The repo root goes on sys.path first.
from artifact.files import HASH_CHUNK, sha256_file, write_atomic  # noqa: E402
from artifact.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest  # noqa: E402

SUMS_NAME = "SHA256SUMS"


def verify(directory: Path) -> tuple[Manifest | None, list[str]]:
    """The manifest and every problem found (empty when the artifact is intact)."""
    try:
        manifest = read_manifest(directory / MANIFEST_NAME)
    except ManifestError as exc:
        return None, [str(exc)]
    problems: list[str] = []
    whole = hashlib.sha256()
    for part in manifest.parts:
        path = directory / part.name
        try:
            size = path.stat().st_size
        except OSError as exc:
            problems.append(f"part {part.name}: missing ({exc.strerror or exc})")
            continue
        if size != part.size:
            problems.append(f"part {part.name}: size {size}, manifest says {part.size}")
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
                whole.update(chunk)
        if digest.hexdigest() != part.sha256:
            problems.append(f"part {part.name}: sha256 {digest.hexdigest()}, manifest says {part.sha256}")
    if not problems and whole.hexdigest() != manifest.archive.sha256:
        problems.append(f"archive: parts concatenated hash to {whole.hexdigest()}, "
                        f"manifest says {manifest.archive.sha256}")
    return manifest, problems


def write_sums(directory: Path, manifest: Manifest, target: Path) -> None:
    """SHA256SUMS: the manifest first, then the parts in order (hashes from the manifest, just checked)."""
    lines = [f"{sha256_file(directory / MANIFEST_NAME)}  {MANIFEST_NAME}"]
    lines += [f"{part.sha256}  {part.name}" for part in manifest.parts]
    write_atomic(target, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="directory holding manifest.json and its parts")
    parser.add_argument("--sums", type=Path, help=f"where to write the checksums (default DIR/{SUMS_NAME})")
    parser.add_argument("--no-sums", action="store_true", help="only verify")
    args = parser.parse_args(argv)
    manifest, problems = verify(args.directory)
    if problems or manifest is None:
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        print(f"verify: {args.directory} does not match its manifest: repack it (just pack)", file=sys.stderr)
        return 1
    if not args.no_sums:
        write_sums(args.directory, manifest, args.sums or args.directory / SUMS_NAME)
    print(f"verify: {len(manifest.parts)} part(s), {manifest.archive.size} bytes, "
          f"env_id {manifest.env_id}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
