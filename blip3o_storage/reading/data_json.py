"""Parse and validate data.json: a JSON list of ``{"image", "annotation"[, "caption"]}`` entries.

Three paths, one result. The scan (:func:`_scan`) reads the layout
tools/make_data_json.py writes (``json.dumps`` of one entry a line, only
``image`` and ``annotation``, no escapes) straight into the two path columns
with numpy, with no Python object per entry, and refuses anything else;
then msgspec decodes into typed structs (types and required fields checked
in C). Either way every relative path is checked at once over the joined
column. On a 1,000,000-entry make_data_json file (73 MB) the scan takes
about 0.3 s on one thread, msgspec 0.26 s plus 0.2 s to join its strings,
``json.loads`` alone 0.7-1.0 s (the 2-core dev machine). Anything neither
accepts -- a malformed file, a wrong type, a missing field, a path that is
bad or merely needs normalising (``./a``, ``a//b``) -- goes through the exact
path (``json.loads`` + per-entry :func:`check_relpath`), which raises today's
errors, naming the file, the entry number and the field, or returns the
normalised entries. So errors read exactly as before and only clean files
are fast (tests/unit/test_data_json_scan.py runs both on the same inputs).

An entry keeps ``image``, ``annotation`` and ``caption`` (when present); other
keys are not read by the datasets and are not kept.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Union

import msgspec
import numpy as np

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.bounded_json import loads_bounded
from blip3o_storage.storage.uri import check_relpath

__all__ = ["Column", "Entry", "Parsed", "derive", "derive_file", "entry_dict", "parse_data_json",
           "parse_data_json_columns", "parse_data_json_exact", "swap"]

_BOM = b"\xef\xbb\xbf"


class Entry(msgspec.Struct, omit_defaults=True, gc=False):
    """One sample of data.json (``caption`` only with ``make_data_json.py --inline-captions``).

    ``gc=False``: a million of them are never scanned by the cycle collector (they hold only
    strings), which was a third of the decode time on 1M entries."""

    image: str
    annotation: str
    caption: Union[str, msgspec.UnsetType] = msgspec.UNSET


_DECODER = msgspec.json.Decoder(list[Entry])
_NL, _SLASH, _DOT = 10, 47, 46
_CHUNK = 1 << 22  # bytes of a column checked at once: the temporaries stay small (4 MB each)


def entry_dict(entry: Entry) -> dict[str, str]:
    """``entry`` as the dict the datasets index (``caption`` only when present)."""
    out = {"image": entry.image, "annotation": entry.annotation}
    if entry.caption is not msgspec.UNSET:
        out["caption"] = entry.caption
    return out


@dataclass
class Column:
    """One path field of every entry as UTF-8, newline-separated with a newline before the first
    and after the last; entry ``i`` is ``data[ends[i] + 1:ends[i + 1]]`` (``ends``: the newlines)."""

    data: bytes
    ends: np.ndarray


class Parsed:
    """A data.json's entries; ``columns`` (image, annotation) when a fast path took it. The scan
    (:func:`_scan`) makes no Entry objects: ``entries`` then builds them from the columns when
    asked (the sample table never asks)."""

    def __init__(self, entries: list[Entry] | None, columns: tuple[Column, Column] | None = None,
                 captions: bool = True, count: int | None = None, derived: bytes | None = None) -> None:
        if entries is None and columns is None:
            raise ValueError("Parsed needs entries or columns")
        self._entries = entries
        self.columns = columns
        #: False only when no entry can have a caption (the file never says "caption" and has no escape)
        self.captions = captions
        self.count = len(entries) if entries is not None else int(count or 0)
        #: ``old/new`` when every annotation is its image with extension ``.old`` made ``.new`` (:func:`derive_file`)
        self.derived = derived

    @property
    def entries(self) -> list[Entry]:
        if self._entries is None:
            assert self.columns is not None
            images, annotations = (c.data.decode().split("\n")[1:-1] for c in self.columns)
            self._entries = [Entry(image=i, annotation=a) for i, a in zip(images, annotations)]
        return self._entries


def swap(ext: bytes) -> bytes:
    return b"." + ext + b"\n"


def derive(images: bytes, annotations: bytes) -> bytes | None:
    """``old + b"/" + new`` when replacing ``.old`` by ``.new`` at the end of every image of the
    block gives exactly its annotations (``x.jpg`` -> ``x.txt``, make_data_json's pairs), else
    None. Not storing (nor compressing) the annotation column takes 0.16 s off 1M entries."""
    first = images[:images.find(b"\n")] if b"\n" in images else images
    name = first[first.rfind(b"/") + 1:]
    dot = name.rfind(b".")
    end = annotations.find(b"\n")
    ann = annotations[:end] if end >= 0 else annotations
    if dot < 0 or ann[:len(first) - len(name) + dot + 1] != first[:len(first) - len(name) + dot + 1]:
        return None
    old, new = name[dot + 1:], ann[len(first) - len(name) + dot + 1:]
    if b"/" in old + new or b"\0" in old + new:
        return None
    if (images + b"\n").replace(swap(old), swap(new)) != annotations + b"\n":
        return None
    return old + b"/" + new


def derive_file(images: bytes, annotations: bytes) -> bytes | None:
    """:func:`derive` for a whole file's joined columns at once (one ``replace`` over the image
    column, 0.03 s for 1M entries, instead of one per block, 0.11 s): every block is then stored
    with these extensions. The swap matches only at the end of a path (it ends with the newline),
    so the file's columns agree if and only if every block's do."""
    first, ann = images[1:images.find(b"\n", 1)], annotations[1:annotations.find(b"\n", 1)]
    derived = derive(first, ann)
    if derived is None:
        return None
    old, _, new = derived.partition(b"/")
    return derived if images.replace(swap(old), swap(new)) == annotations else None


def _check_column(joined: bytes, count: int) -> Column | None:
    """``joined`` (``"\n" + "\n".join(paths) + "\n"``) as a Column if every path is a relative path
    check_relpath returns unchanged, else None (the exact path then decides).

    Checked in numpy on the joined column: a backslash, NUL or ':' (drive letter, scheme)
    anywhere, a newline inside a path, or a '/' or newline followed by '/', '.' or a newline
    (absolute, empty, '.' or '..' segment, empty path) may be a path check_relpath rejects or
    rewrites. The joined columns are also what the sample table stores, so the check costs only
    the numpy pass (about 0.04 s for 1M entries)."""
    if joined.find(b"\\") >= 0 or joined.find(b"\0") >= 0 or joined.find(b":") >= 0:
        return None
    a = np.frombuffer(joined, np.uint8)
    found = []
    for start in range(0, len(a), _CHUNK):  # chunks: 10M entries' 200 MB column at once took 9 s, not 1 s
        c = a[start:start + _CHUNK + 1]  # one byte more: the pair across the chunk's end
        newline = c == _NL
        boundary = newline | (c == _SLASH)
        follower = boundary | (c == _DOT)
        if (boundary[:-1] & follower[1:]).any():
            return None
        found.append(np.flatnonzero(newline[:_CHUNK]) + start)
    ends = np.concatenate(found)
    if len(ends) != count + 1:  # a path with a newline in it
        return None
    return Column(joined, ends)


def _clean_column(entries: Sequence[Entry], field: str) -> Column | None:
    """The column of ``field`` of decoded entries, if clean (:func:`_check_column`). A list
    comprehension feeds the join: 0.06 s for 1M entries against 0.10 s with map(attrgetter)."""
    values = [e.image for e in entries] if field == "image" else [e.annotation for e in entries]
    joined = ("\n" + "\n".join(values) + "\n").encode()
    del values
    return _check_column(joined, len(entries))


# The one layout the scan reads: tools/make_data_json.py's (json.dumps of each entry, one a line).
_HEAD, _TAIL, _SEP = b"[\n", b"\n]\n", b",\n"
_UNIT = b'{"image": "', b'", "annotation": "', b'"}'
# A unit's bytes outside its two strings, each string's closing quote counted with the string.
_SKELETON = _UNIT[0] + _UNIT[1][1:] + _UNIT[2][1:] + _SEP
_QUOTE = 34
_SCAN_CHUNK = 1 << 20  # bytes scanned at once: the temporaries stay in cache (4 MB chunks: ~10% slower)
_SCAN_THREADS = max(1, min(4, os.cpu_count() or 1))
_LABELS = np.array([0, 1, 0, 2], np.uint8)  # skeleton, image, skeleton, annotation


def _scan_units(chunk: bytes | memoryview) -> tuple[np.ndarray, np.ndarray, int] | None:
    """``chunk`` = whole units ``{"image": "X", "annotation": "Y"},\n``: the columns ``X1\nX2\n...``
    and ``Y1\nY2\n...`` (uint8 arrays) and the number of units, or None if it is anything else.

    Exact, with no Python object per entry: every '"' of the chunk is found; units have eight
    each, and the bytes between the 3rd and 4th (X) and 7th and 8th (Y) of each unit are the
    strings. Those (with their closing quote, made a newline) are gathered into the two
    columns, everything else into the skeleton, which must equal ``k`` copies of a unit's
    skeleton byte for byte. So X and Y contain no quote and every other byte is where the
    layout puts it. About 4 ms per 1 MB chunk (0.26 s for 1M entries)."""
    a = np.frombuffer(chunk, np.uint8)
    quotes = np.flatnonzero(a == _QUOTE)
    k = len(quotes) // 8
    if len(quotes) != 8 * k or k == 0 or np.count_nonzero(a < 32) != k:  # control bytes: each unit's newline only
        return None
    q = quotes.reshape(k, 8)
    edges = np.empty((k, 4), np.int64)
    edges[:, 0], edges[:, 1], edges[:, 2], edges[:, 3] = q[:, 2] + 1, q[:, 3] + 1, q[:, 6] + 1, q[:, 7] + 1
    labels = np.repeat(np.append(np.tile(_LABELS, k), np.uint8(0)), np.diff(edges.ravel(), prepend=0, append=len(a)))
    if not np.array_equal(a[labels == 0], np.frombuffer(_SKELETON * k, np.uint8)):
        return None
    b = a.copy()  # 4 MB, 0.3 ms: the closing quotes become the columns' newlines
    b[q[:, 3]] = _NL
    b[q[:, 7]] = _NL
    return b[labels == 1], b[labels == 2], k


def _cuts(body: bytes) -> Iterator[memoryview | bytes]:
    """The units of ``body`` (between its head and tail) in chunks of about :data:`_SCAN_CHUNK`
    bytes, each cut after a unit's ``,\n`` (the last one, which has none, gets it appended). A cut
    in a wrong place (the layout is not what it seems) fails its chunk's check, never passes it."""
    view = memoryview(body)
    end = len(body) - len(_TAIL)
    start = len(_HEAD)
    while start < end:
        cut = body.find(_UNIT[2] + _SEP + _UNIT[0], min(start + _SCAN_CHUNK, end), end)
        if cut < 0:
            yield body[start:end] + _SEP
            return
        yield view[start:cut + len(_UNIT[2] + _SEP)]
        start = cut + len(_UNIT[2] + _SEP)


def _scan(body: bytes) -> tuple[bytes, bytes, int] | None:
    """The image and annotation columns (joined as :class:`Column` wants them) of a body in
    make_data_json's exact layout with only plain strings (no escape, no control character,
    valid UTF-8), and the entry count; None for anything else, which the general parser then reads.

    Such a body is valid JSON whose entries are exactly these strings, so the result is what
    decoding gives, without a Python object per entry. The chunks are scanned by
    :data:`_SCAN_THREADS` threads (numpy releases the GIL): 1,000,000 entries (73 MB) in about
    0.3 s on one thread, against 0.28 s to decode with msgspec plus 0.2 s to join its strings
    into columns, and 0.7-0.9 s for ``json.loads``."""
    if not (body.startswith(_HEAD + _UNIT[0]) and body.endswith(_UNIT[2] + _TAIL)) or b"\\" in body:
        return None
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if len(body) <= 8 * _SCAN_CHUNK or _SCAN_THREADS == 1:  # a small file: starting threads costs more
        scanned = list(map(_scan_units, _cuts(body)))
    else:
        with ThreadPoolExecutor(_SCAN_THREADS) as pool:
            scanned = list(pool.map(_scan_units, _cuts(body)))
    if not scanned or any(s is None for s in scanned):
        return None
    images: list[Any] = [b"\n"]  # bytes and uint8 arrays (both buffers)
    annotations: list[Any] = [b"\n"]
    count = 0
    for units in scanned:
        assert units is not None
        images.append(units[0])
        annotations.append(units[1])
        count += units[2]
    del scanned
    return b"".join(images), b"".join(annotations), count


def parse_data_json(data: bytes, source: str) -> list[Entry]:
    """The entries of one data.json's bytes, validated (see the module docstring)."""
    return parse_data_json_columns(data, source).entries


def parse_data_json_columns(data: bytes, source: str) -> Parsed:
    """:func:`parse_data_json`, plus the path columns when a fast path took the file."""
    body = data[len(_BOM):] if data.startswith(_BOM) else data
    scanned = _scan(body)
    if scanned is not None:
        image_col, annotation_col, count = scanned
        images = _check_column(image_col, count)
        derived = derive_file(image_col, annotation_col) if images is not None and count else None
        old, _, new = (derived or b"").partition(b"/")
        if (images is not None and derived is not None and not any(c in new for c in b":\\\0\n")
                and image_col.count(swap(old)) == count):
            # every annotation is its clean image with the extension swapped for one with no ':',
            # backslash, NUL, newline or '/': clean too (a segment's start is checked, never its
            # extension), and longer by the same number of bytes: no second check (0.035 s for 1M)
            ends = images.ends + np.arange(count + 1) * (len(new) - len(old))
            return Parsed(None, (images, Column(annotation_col, ends)), captions=False, count=count, derived=derived)
        annotations = _check_column(annotation_col, count) if images is not None else None
        if images is not None and annotations is not None:
            return Parsed(None, (images, annotations), captions=False, count=count)
    try:
        entries = _DECODER.decode(body)
    except (msgspec.MsgspecError, ValueError):  # ValueError: e.g. UnicodeDecodeError, a bad string
        entries = None
    if entries is not None:
        images = _clean_column(entries, "image")
        annotations = _clean_column(entries, "annotation") if images is not None else None
        if images is not None and annotations is not None:
            # any backslash (an escaped key, 0.004 s a memchr) rather than b"\\u" (0.075 s on 73 MB)
            return Parsed(entries, (images, annotations), captions=b'"caption"' in body or b"\\" in body)
    return Parsed([Entry(**{k: v for k, v in e.items() if k in ("image", "annotation", "caption")})
                   for e in parse_data_json_exact(data, source)])


def parse_data_json_exact(data: bytes, source: str) -> list[dict[str, Any]]:
    """The exact path: ``json.loads`` and per-entry checks, errors naming ``source`` and the entry."""
    try:
        entries = loads_bounded(data.decode("utf-8-sig"))  # -sig: a leading BOM is dropped, not an error
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"data file {source}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CorruptDataError(f"data file {source}: malformed JSON ({exc.msg} at line {exc.lineno} "
                               f"column {exc.colno})") from None
    except ValueError as exc:
        raise CorruptDataError(f"data file {source}: {exc}; write it as a flat list of entries") from None
    if not isinstance(entries, list):
        raise CorruptDataError(f"data file {source}: expected a JSON list of {{'image', 'annotation'}} "
                               f"entries, got a {type(entries).__name__}")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CorruptDataError(f"data file {source}: entry {i} is a {type(entry).__name__}, not an object")
        missing = [k for k in ("image", "annotation") if k not in entry]
        if missing:
            raise CorruptDataError(f"data file {source}: entry {i} has no {' or '.join(repr(k) for k in missing)}")
        if "caption" in entry and not isinstance(entry["caption"], str):
            raise CorruptDataError(f"data file {source}: entry {i} 'caption' is a "
                                   f"{type(entry['caption']).__name__}, not a string")
        normalised = dict(entry)
        for k in ("image", "annotation"):
            normalised[k] = check_relpath(entry[k], source=f"data file {source} entry {i} {k!r}")
        out.append(normalised)
    return out
