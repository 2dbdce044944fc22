"""The manifest format-1 contract: what every reader accepts, refuses and ignores."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artifact.manifest import GITHUB_ASSET_LIMIT, Archive, ManifestError, Part, make_manifest, parse_manifest

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64


def doc(**over):
    base = {
        "format": 1,
        "env_id": "0123456789abcdef",
        "archive": {"compression": "zstd", "size": 30, "sha256": H1},
        "parts": [{"name": "env.tar.zst.000", "size": 10, "sha256": H2},
                  {"name": "env.tar.zst.001", "size": 20, "sha256": H3}],
    }
    base.update(over)
    return json.dumps(base)


def test_minimal_manifest_parses_and_keeps_part_order():
    m = parse_manifest(doc())
    assert [p.name for p in m.parts] == ["env.tar.zst.000", "env.tar.zst.001"]
    assert m.archive == Archive("zstd", 30, H1)
    assert m.relocatable and m.unpacked_size is None and m.dest_prefix is None


def test_unknown_fields_are_ignored_but_kept():
    m = parse_manifest(doc(future_field={"x": 1}, name="demo", unpacked_size=99))
    assert m.extra["future_field"] == {"x": 1}
    assert m.name == "demo" and m.unpacked_size == 99
    assert json.loads(m.to_json())["future_field"] == {"x": 1}


@pytest.mark.parametrize("fmt", [0, 2, "1", None, True])
def test_unknown_format_is_refused(fmt):
    with pytest.raises(ManifestError, match="unknown manifest format"):
        parse_manifest(doc(format=fmt))


def test_every_issue_is_reported_at_once():
    bad = doc(env_id="XYZ", archive={"compression": "gzip", "size": -1, "sha256": "nothex"},
              parts=[{"name": "../escape", "size": 1, "sha256": H1}, {"name": "ok", "size": "1"}])
    with pytest.raises(ManifestError) as err:
        parse_manifest(bad)
    text = str(err.value)
    for needle in ("env_id", "archive.compression", "archive.size", "archive.sha256",
                   "parts[0].name", "parts[1].size", "parts[1].sha256"):
        assert needle in text


@pytest.mark.parametrize("name", ["a/b", "..", "/abs", ".hidden", "", "manifest.json", "x" * 300])
def test_part_names_must_be_plain_files(name):
    with pytest.raises(ManifestError, match=r"parts\[0\]\.name"):
        parse_manifest(doc(parts=[{"name": name, "size": 30, "sha256": H2}]))


def test_parts_must_add_up_to_the_archive():
    with pytest.raises(ManifestError, match="add up to 31"):
        parse_manifest(doc(parts=[{"name": "p0", "size": 31, "sha256": H2}]))


def test_part_at_github_limit_is_refused():
    size = GITHUB_ASSET_LIMIT
    with pytest.raises(ManifestError, match="2 GiB"):
        parse_manifest(doc(archive={"compression": "zstd", "size": size, "sha256": H1},
                           parts=[{"name": "p0", "size": size, "sha256": H2}]))


def test_duplicate_part_names_are_refused():
    with pytest.raises(ManifestError, match="used twice"):
        parse_manifest(doc(parts=[{"name": "p", "size": 15, "sha256": H2},
                                  {"name": "p", "size": 15, "sha256": H3}]))


def test_not_json_and_not_object():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"\xff{")
    with pytest.raises(ManifestError, match="JSON object"):
        parse_manifest("[1]")


def test_round_trip_is_canonical_and_stable():
    m = make_manifest("fedcba9876543210", Archive("zstd", 5, H1), [Part("p0", 5, H2)],
                      name="n", dest_prefix="/opt/env", unpacked_size=7)
    text = m.to_json()
    assert text == parse_manifest(text).to_json()
    assert text.endswith("\n") and list(json.loads(text)) == sorted(json.loads(text))
    assert not m.relocatable and m.dest_prefix == "/opt/env"


def test_prefixes_must_be_absolute():
    with pytest.raises(ManifestError, match="dest_prefix must be an absolute path"):
        parse_manifest(doc(dest_prefix="relative/path"))


# Hostile text: deep nesting anywhere, huge values, many issues. Every one is a ManifestError with a
# short message, never a RecursionError or a message that quotes megabytes back.
def _nest(depth: int, kind: str, inner: str = "1") -> str:
    opening, closing = {"list": ("[", "]"), "dict": ('{"k":', "}")}[kind]
    return opening * depth + inner + closing * depth


hostile = st.one_of(
    st.builds(lambda d, k: _nest(d, k), st.integers(900, 200_000), st.sampled_from(["list", "dict"])),
    st.builds(lambda d: "[" * d, st.integers(1, 200_000)),  # unterminated
    st.builds(lambda d, k: doc(env_id="PLACEHOLDER").replace('"PLACEHOLDER"', _nest(d, k)),
              st.integers(900, 100_000), st.sampled_from(["list", "dict"])),
    st.builds(lambda n: doc(env_id="x" * n), st.integers(1000, 2_000_000)),
    st.builds(lambda n: doc(parts=[{"name": "/bad", "size": -1}] * n), st.integers(30, 5000)),
    st.builds(lambda n: '{"format": 1, "archive": {"size": ' + "9" * n + "}}", st.integers(4301, 20_000)),
)


@settings(max_examples=40, deadline=None)
@given(text=hostile)
def test_hostile_manifest_text_is_a_short_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    assert len(str(caught.value)) < 3000


def test_a_deeply_nested_manifest_says_so() -> None:
    with pytest.raises(ManifestError, match="nests deeper than the parser can follow"):
        parse_manifest("[" * 100_000 + "]" * 100_000)

