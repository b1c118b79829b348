"""URI parsing and joining: edge cases and property-based checks."""
from __future__ import annotations

import re
from typing import Literal, Tuple

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from blip3o_storage import InvalidPathError, StorageURI, check_relpath, is_s3_uri, join_uri, parse_uri


@pytest.mark.parametrize("uri, expected", [
    ("s3://bucket/key.jpg", StorageURI("s3", bucket="bucket", key="key.jpg")),
    ("s3://bucket", StorageURI("s3", bucket="bucket", key="")),
    ("s3://bucket/", StorageURI("s3", bucket="bucket", key="")),
    ("cluster1:s3://b/a/b c+d%20#e.jpg", StorageURI("s3", bucket="b", key="a/b c+d%20#e.jpg", cluster="cluster1")),
    ("s3://b/日本/é.txt", StorageURI("s3", bucket="b", key="日本/é.txt")),
    ("/abs/path.jpg", StorageURI("file", path="/abs/path.jpg")),
    ("rel/path.jpg", StorageURI("file", path="rel/path.jpg")),
    ("file:///abs/x", StorageURI("file", path="/abs/x")),
])
def test_parse(uri, expected):
    assert parse_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "http://host/x", "gs://b/k", "", "a\x00b"])
def test_parse_rejects(uri):
    with pytest.raises(InvalidPathError):
        parse_uri(uri)


@pytest.mark.parametrize("folder, rel, expected", [
    ("s3://b/raw", "dalle3/1.jpg", "s3://b/raw/dalle3/1.jpg"),
    ("s3://b/raw/", "dalle3/1.jpg", "s3://b/raw/dalle3/1.jpg"),
    ("s3://b", "x.jpg", "s3://b/x.jpg"),
    ("c:s3://b/raw", "./a//b.jpg", "c:s3://b/raw/a/b.jpg"),
    ("/data/raw", "a b/c+d#e%.jpg", "/data/raw/a b/c+d#e%.jpg"),
])
def test_join(folder, rel, expected):
    assert join_uri(folder, rel) == expected


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "a/..", "/etc/passwd", "C:/x", "a\\b", "", ".", "./",
                                  "s3://other/key", "a\x00b"])
def test_join_rejects_escapes_with_message_naming_path(rel):
    with pytest.raises(InvalidPathError) as info:
        join_uri("s3://b/raw", rel, source="data.json entry 3")
    assert "data.json entry 3" in str(info.value)


SURROGATES: Tuple[Literal["Cs"], ...] = ("Cs",)
segment = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=SURROGATES), min_size=1,
                  max_size=12).filter(lambda s: s not in (".", ".."))


@given(st.lists(segment, min_size=1, max_size=5), st.sampled_from(["s3://bkt/pre", "c1:s3://bkt", "/tmp/base"]))
def test_join_keeps_every_segment_and_stays_inside(parts, folder):
    rel = "/".join(parts)
    assume(not re.match(r"^[A-Za-z]:", rel))  # drive letters are rejected as absolute
    joined = join_uri(folder, rel)
    assert joined.startswith(folder.rstrip("/") + "/")
    assert joined.endswith(rel)
    if is_s3_uri(folder):
        parsed = parse_uri(joined)
        assert parsed.key.endswith(rel)
        assert str(parsed) == joined


@given(st.lists(st.sampled_from(["a", "b", ".", "..", ""]), min_size=1, max_size=6))
def test_check_relpath_never_returns_escaping_path(parts):
    rel = "/".join(parts)
    try:
        normal = check_relpath(rel)
    except InvalidPathError:
        assert ".." in parts or not [p for p in parts if p not in ("", ".")] or rel.startswith("/")
    else:
        assert ".." not in normal.split("/") and not normal.startswith("/") and normal


@given(st.text(max_size=40))
def test_parse_never_crashes_unexpectedly(text):
    try:
        parsed = parse_uri(text)
    except InvalidPathError:
        return
    if parsed.is_s3:
        assert parsed.bucket and "/" not in parsed.bucket
