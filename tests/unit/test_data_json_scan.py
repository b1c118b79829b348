"""The byte scan of make_data_json's layout (issue #14, load time) against the general parser.

Differential: every input goes through ``parse_data_json_columns`` (scan, else msgspec, else the
exact parser) and through ``parse_data_json_exact`` alone (``json.loads`` + per-entry checks), and
the sample table built from the first must hold exactly the entries of the second, or both raise
the same error. Each deviation from the layout is also checked to be refused by the scan itself
(so it is the general parser that reads it), and thousands of random documents, most in the
layout and many mutated by a byte, cross small scan chunks.
"""
from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest

from blip3o_storage import CorruptDataError, InvalidPathError
from blip3o_storage.reading import data_json
from blip3o_storage.reading.data_json import Parsed, parse_data_json_columns, parse_data_json_exact
from blip3o_storage.reading.sample_table import SampleTable, TableWriter

KEPT = ("image", "annotation", "caption")


def layout(entries: list[dict[str, Any]]) -> bytes:
    """tools/make_data_json.py's bytes (data_json_text)."""
    return ("[\n" + ",\n".join(json.dumps(e) for e in entries) + ("\n]\n" if entries else "]\n")).encode()


def table_of(parsed: Parsed) -> list[dict[str, str]]:
    out = io.BytesIO()
    writer = TableWriter(out)
    writer.add(parsed)
    writer.close()
    return list(SampleTable(out.getvalue()))


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except (CorruptDataError, InvalidPathError) as exc:
        return type(exc).__name__, str(exc)


def assert_same(data: bytes) -> Parsed | None:
    """Both paths agree on ``data``; returns the Parsed of the fast function (None if it raised)."""
    parsed: list[Parsed] = []

    def fast() -> list[dict[str, str]]:
        parsed.append(parse_data_json_columns(data, "d.json"))
        return table_of(parsed[0])

    def exact() -> list[dict[str, str]]:
        return [{k: v for k, v in e.items() if k in KEPT} for e in parse_data_json_exact(data, "d.json")]

    got, want = outcome(fast), outcome(exact)
    assert got == want, data[:300]
    if got[0] == "ok":
        parsed[0].lazy = parsed[0]._entries is None  # type: ignore[attr-defined]  # the table made no Entry
        assert [data_json.entry_dict(e) for e in parsed[0].entries] == want[1]
    return parsed[0] if parsed else None


def pairs(n: int, ext: str = ".txt") -> list[dict[str, str]]:
    return [{"image": f"s{i // 7:03d}/{i:06d}.jpg", "annotation": f"s{i // 7:03d}/{i:06d}{ext}"} for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 127, 128, 129, 1000])
def test_the_layout_is_scanned(n: int) -> None:
    data = layout(pairs(n))
    assert data_json._scan(data) is not None
    parsed = assert_same(data)
    assert parsed is not None and parsed.count == n and parsed.derived == b"jpg/txt"
    assert parsed.lazy  # type: ignore[attr-defined]  # no Entry objects were made


def test_scan_across_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_json, "_SCAN_CHUNK", 100)
    data = layout(pairs(500))
    assert data_json._scan(data) is not None
    assert assert_same(data) is not None


def test_unicode_is_scanned_and_kept() -> None:
    entries = [{"image": "ünï/ç😀.jpg", "annotation": "ünï/ç😀.txt"}, {"image": "b.jpg", "annotation": "x/b.txt"}]
    data = ("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n").encode()
    assert data_json._scan(data) is not None
    assert assert_same(data) is not None


MOD: list[tuple[str, bytes]] = [
    ("escaped slash", b'[\n{"image": "a\\/b.jpg", "annotation": "a/b.txt"}\n]\n'),
    ("escaped unicode", b'[\n{"image": "\\u0061.jpg", "annotation": "a.txt"}\n]\n'),
    ("escaped quote", b'[\n{"image": "a\\".jpg", "annotation": "a.txt"}\n]\n'),
    ("escaped key", b'[\n{"image": "a.jpg", "annotation": "a.txt", "\\u0063aption": "hi"}\n]\n'),
    ("not UTF-8", b'[\n{"image": "a\xff.jpg", "annotation": "a.txt"}\n]\n'),
    ("extra key", b'[\n{"image": "a.jpg", "annotation": "a.txt", "x": 1}\n]\n'),
    ("caption", b'[\n{"image": "a.jpg", "annotation": "a.txt", "caption": "c"}\n]\n'),
    ("missing annotation", b'[\n{"image": "a.jpg"}\n]\n'),
    ("missing image", b'[\n{"annotation": "a.txt"}\n]\n'),
    ("keys swapped", b'[\n{"annotation": "a.txt", "image": "a.jpg"}\n]\n'),
    ("int image", b'[\n{"image": 5, "annotation": "a.txt"}\n]\n'),
    ("null annotation", b'[\n{"image": "a.jpg", "annotation": null}\n]\n'),
    ("list entry", b'[\n["a.jpg", "a.txt"]\n]\n'),
    ("CRLF", b'[\r\n{"image": "a.jpg", "annotation": "a.txt"},\r\n{"image": "b.jpg", "annotation": "b.txt"}\r\n]\r\n'),
    ("no newline at end", b'[\n{"image": "a.jpg", "annotation": "a.txt"}\n]'),
    ("compact", b'[{"image":"a.jpg","annotation":"a.txt"}]'),
    ("json.dumps of a list", b'[{"image": "a.jpg", "annotation": "a.txt"}, {"image": "b.jpg", "annotation": "b.txt"}]'),
    ("indented", b'[\n  {\n    "image": "a.jpg",\n    "annotation": "a.txt"\n  }\n]\n'),
    ("tab", b'[\n{"image":\t"a.jpg", "annotation": "a.txt"}\n]\n'),
    ("two spaces", b'[\n{"image":  "a.jpg", "annotation": "a.txt"}\n]\n'),
    ("trailing space", b'[\n{"image": "a.jpg", "annotation": "a.txt"} \n]\n'),
    ("blank line", b'[\n{"image": "a.jpg", "annotation": "a.txt"},\n\n{"image": "b.jpg", "annotation": "b.txt"}\n]\n'),
    ("duplicate image key", b'[\n{"image": "a.jpg", "image": "b.jpg", "annotation": "a.txt"}\n]\n'),
    ("duplicate annotation key", b'[\n{"image": "a.jpg", "annotation": "x.txt", "annotation": "a.txt"}\n]\n'),
    ("empty file", b""),
    ("empty list", b"[\n]\n"),
    ("empty list compact", b"[]"),
    ("object", b'{"image": "a.jpg", "annotation": "a.txt"}'),
    ("trailing comma", b'[\n{"image": "a.jpg", "annotation": "a.txt"},\n]\n'),
    ("truncated", b'[\n{"image": "a.jpg", "annotation": "a.txt"},\n{"image": "b.jpg", "annot'),
    ("garbage after", b'[\n{"image": "a.jpg", "annotation": "a.txt"}\n]\nx'),
    ("raw tab in a path", b'[\n{"image": "a\t.jpg", "annotation": "a.txt"}\n]\n'),
    ("raw NUL in a path", b'[\n{"image": "a\x00.jpg", "annotation": "a.txt"}\n]\n'),
    ("raw newline in a path", b'[\n{"image": "a\n.jpg", "annotation": "a.txt"}\n]\n'),
    ("raw CR in a path", b'[\n{"image": "a\r.jpg", "annotation": "a.txt"}\n]\n'),
]
PATHS: list[tuple[str, bytes]] = [  # the layout, but paths that the exact parser normalises or rejects
    ("dot segment", layout([{"image": "./a.jpg", "annotation": "a.txt"}])),
    ("double slash", layout([{"image": "a//b.jpg", "annotation": "a/b.txt"}])),
    ("dot annotation", layout([{"image": "a.jpg", "annotation": "x/./a.txt"}])),
    ("absolute", layout([{"image": "/a.jpg", "annotation": "a.txt"}])),
    ("parent", layout([{"image": "../a.jpg", "annotation": "a.txt"}])),
    ("parent in annotation", layout([{"image": "a/b.jpg", "annotation": "a/../b.txt"}])),
    ("empty image", layout([{"image": "", "annotation": "a.txt"}])),
    ("empty annotation", layout([{"image": "a.jpg", "annotation": ""}])),
    ("scheme", layout([{"image": "s3://b/a.jpg", "annotation": "a.txt"}])),
    ("drive", layout([{"image": "c:a.jpg", "annotation": "c:a.txt"}])),
    ("colon extension", layout([{"image": "a.jpg", "annotation": "a.t:t"}])),
    ("trailing slash", layout([{"image": "a/", "annotation": "a.txt"}])),
    ("hidden name", layout([{"image": ".a.jpg", "annotation": ".a.txt"}])),
    ("empty extension", layout([{"image": "a.jpg", "annotation": "a."}])),
    ("same path", layout([{"image": "a.jpg", "annotation": "a.jpg"}, {"image": "b.jpg", "annotation": "b.jpg"}])),
    ("some derived", layout([{"image": "a.jpg", "annotation": "a.txt"}, {"image": "b.png", "annotation": "b.png"}])),
    ("mixed extensions",
     layout([{"image": "a.jpg", "annotation": "a.txt"}, {"image": "b.png", "annotation": "b.txt"}])),
    ("dots in extension",
     layout([{"image": "a.jpg", "annotation": "a..txt"}, {"image": "b.jpg", "annotation": "b..txt"}])),
    ("no extension", layout([{"image": "a", "annotation": "a.txt"}])),
    ("backslash path", layout([{"image": "a\\b.jpg", "annotation": "a.txt"}])),
]


@pytest.mark.parametrize("data", [d for _, d in MOD], ids=[n for n, _ in MOD])
def test_each_deviation_goes_to_the_general_parser(data: bytes) -> None:
    assert data_json._scan(data) is None
    assert_same(data)


@pytest.mark.parametrize("data", [d for _, d in PATHS], ids=[n for n, _ in PATHS])
def test_paths_are_checked_as_the_exact_parser_does(data: bytes) -> None:
    assert_same(data)


def test_bom_is_dropped() -> None:
    assert assert_same(b"\xef\xbb\xbf" + layout(pairs(3))) is not None


ALPHABET = ["a", "b", "Z", "0", "/", "/", ".", ".", "-", "_", " ", ":", "\\", '"', "ü", "😀",
            "\t", "\n", "\x00", "\x7f"]


def _path(rng: random.Random, nasty: float, unicode: bool = False) -> str:
    if rng.random() >= nasty:  # plain paths (any of them may still need normalising)
        segments = ["a", "bb", "s001", "x-y", "ü" if unicode else "c"]
        return "/".join(rng.choice(segments) for _ in range(rng.randint(1, 3))) + \
            rng.choice([".jpg", ".png", ".txt", ""])
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))


def _document(rng: random.Random) -> bytes:
    entries: list[dict[str, Any]] = []
    nasty = rng.choice([0.0, 0.0, 0.05, 0.3])  # how often a path is random characters
    style = rng.random()
    for _ in range(rng.randint(0, 12)):
        image = _path(rng, nasty, unicode=0.6 <= style < 0.7)
        e: dict[str, Any] = {"image": image}
        r = rng.random()
        e["annotation"] = image.rsplit(".", 1)[0] + ".txt" if r < 0.5 else _path(rng, nasty)
        if rng.random() < 0.01:
            e["caption"] = _path(rng, nasty)
        if rng.random() < 0.01:
            del e[rng.choice(["image", "annotation"])]
        if rng.random() < 0.01:
            e["image"] = rng.choice([1, None, ["a"]])
        entries.append(e)
    if style < 0.6:
        data = layout(entries)
    elif style < 0.7:
        data = ("[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n").encode()
    elif style < 0.8:
        data = json.dumps(entries).encode()
    else:
        data = json.dumps(entries, indent=rng.choice([1, 2])).encode()
    if data and rng.random() < 0.3:  # one byte changed, inserted or deleted
        i = rng.randrange(len(data))
        b = bytes([rng.choice(b'"{}[],:\n\r \\/.a\x00\xff')])
        data = rng.choice([data[:i] + b + data[i + 1:], data[:i] + b + data[i:], data[:i] + data[i + 1:]])
    return data


def test_random_documents_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """3000 random documents: the scan (chunks of 64 bytes, so many cuts) and the exact parser agree."""
    monkeypatch.setattr(data_json, "_SCAN_CHUNK", 64)
    rng = random.Random(14)
    scanned = 0
    for _ in range(3000):
        data = _document(rng)
        scanned += data_json._scan(data) is not None
        assert_same(data)
    assert scanned > 500  # the scan itself was exercised, not only the fallback


def test_threaded_scan_and_compression_give_the_same_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large files are scanned and compressed by thread pools: shrink the thresholds so that 5,000
    entries take those paths (chunks of 1 KB, groups of 2 blocks) and compare with the exact parser."""
    from blip3o_storage.reading import sample_table

    monkeypatch.setattr(data_json, "_SCAN_CHUNK", 1024)
    monkeypatch.setattr(data_json, "_SCAN_THREADS", 2)
    monkeypatch.setattr(sample_table, "_GROUP", 2)
    monkeypatch.setattr(sample_table, "_THREADS", 2)
    data = layout(pairs(5000))
    assert len(data) > 8 * 1024 and 8 * sample_table.BLOCK * 2 < 5000  # both pools are used
    parsed = assert_same(data)
    assert parsed is not None and parsed.count == 5000
    mixed = layout(pairs(2500) + pairs(2500, ext=".json"))  # annotation column stored, not derived
    assert assert_same(mixed) is not None
