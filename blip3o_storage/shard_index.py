"""Shard mode: read samples straight out of the original tar shards.

60k small objects make every read latency-bound (one request per file, and
RGW/S3 pay a fixed cost per object). In shard mode the 11 BLIP3o tars are
uploaded as they are, next to an ``index.json`` that records where each
member's bytes lie inside its tar; a sample is then one ranged GET, with no
extraction and no small objects.

Index format (JSON, version 1)::

    {"version": 1,
     "shards": {"dalle3": {"uri_name": "dalle3.tar", "size": 123456,
                           "members": {"00001.jpg": [offset, size], ...},
                           "duplicates": ["k.jpg"]}}}

``duplicates`` (only present when non-empty; readers ignore it) lists the
member names the tar holds more than once: the index points at the last
copy, the one extraction writes.

Keys are laid out so that the relpaths of a data.json made from the
*extracted* tree (``dalle3/00001.jpg``: shard folder as
:func:`blip3o_storage.safe_tar.shard_name` names it, then the member name)
resolve unchanged, so the same data.json serves both modes. ``uri_name`` is
relative to the folder that holds the tars (the dataset's ``ceph_folder``).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

from .bounded_json import loads_bounded
from .errors import BucketNotFoundError, CorruptDataError, InvalidPathError, ObjectNotFoundError
from .safe_tar import (MARKER_NAME, DataJsonReport, add_candidate, check_member, finish_report, image_caption_exts,
                       pair_shard, scan_tar, shard_name)
from .uri import check_relpath, parse_uri


INDEX_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["INDEX_VERSION", "ShardIndex", "build_index", "build_shard_index", "data_json_from_index"]


def build_shard_index(tar_path: PathLike) -> Dict[str, Any]:
    """One shard's index entry: ``{"uri_name", "size", "members": {name: [offset, size]}}``
    (plus ``"duplicates": [name, ...]`` when the tar repeats names).

    Scans the tar headers only (no member data is read). The listing is
    extraction's (:func:`safe_tar.scan_tar`): a damaged or truncated tar
    raises :class:`CorruptDataError` naming the byte offset instead of
    indexing only the members before the damage, and a repeated name keeps
    its last copy, as extraction does. Every member gets the same checks as
    extraction (:func:`safe_tar.check_member`: no links, devices, absolute or
    ``..`` names), so an archive we would refuse to extract is never served
    by range either. Sparse members are refused (their bytes are not
    contiguous), as are compressed tars (offsets would be into the
    compressed stream). Directories are skipped; names are normalised like
    extraction writes them (``./a`` -> ``a``).
    """
    path = Path(tar_path)
    if not path.name.endswith(".tar"):
        raise InvalidPathError(f"{path}: shard mode needs uncompressed .tar files (ranged reads index raw bytes); "
                               "decompress it first")
    shard = shard_name(path)
    size = path.stat().st_size
    members: Dict[str, List[int]] = {}
    try:
        with tarfile.open(path, mode="r:") as tf:
            listing = scan_tar(tf, path, shard, file_size=size)
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptDataError(f"{path}: not a readable uncompressed tar ({exc}); re-download the shard") from exc
    for member in listing.members:
        try:
            check_member(member, shard)
        except InvalidPathError as exc:
            raise InvalidPathError(f"cannot index {path}: {exc}") from None
    for member in listing.kept:
        if member.isdir():
            continue
        if member.issparse():
            raise InvalidPathError(f"cannot index {path}: member {member.name!r} is a sparse file, "
                                   "whose bytes are not contiguous; repack the shard without --sparse")
        name = check_relpath(member.name, source=f"{path} member")
        members[name] = [member.offset_data, member.size]
    entry: Dict[str, Any] = {"uri_name": path.name, "size": size, "members": members}
    if listing.duplicates:  # absent otherwise, so the index of a clean tar keeps its bytes (and ETag)
        entry["duplicates"] = list(listing.duplicates)
    return entry


def build_index(tar_paths: Iterable[PathLike]) -> Dict[str, Any]:
    """The full index of several shards, keyed by shard name (sorted)."""
    shards: Dict[str, Dict[str, Any]] = {}
    for tar_path in sorted(Path(p) for p in tar_paths):
        name = shard_name(tar_path)
        if name in shards:
            raise InvalidPathError(f"two shard files give the shard name {name!r} ({tar_path} and "
                                   f"{shards[name]['uri_name']}); rename one")
        shards[name] = build_shard_index(tar_path)
    return {"version": INDEX_VERSION, "shards": shards}


def data_json_from_index(index: Mapping[str, Any],
                         image_exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp"),
                         caption_ext: str = ".txt") -> Tuple[List[Dict[str, str]], DataJsonReport]:
    """What :func:`safe_tar.build_data_json` gives for the extracted tree, from the index alone.

    Same rules and order: ``{key}.<img>`` pairs with ``{key}.txt`` per shard
    (extensions case-insensitive), the alphabetically first image/caption of
    a key wins and the rest are reported as duplicates, unpaired files are
    reported, entries are sorted by image path.
    """
    exts = image_caption_exts(image_exts, caption_ext)
    report = DataJsonReport()
    entries: List[Dict[str, str]] = []
    for shard in sorted(index["shards"]):
        report.shards.append(shard)
        images: Dict[str, List[str]] = {}
        captions: Dict[str, List[str]] = {}
        for member in sorted(index["shards"][shard]["members"]):
            if member == MARKER_NAME:  # extraction writes its own marker there
                continue
            rel = f"{shard}/{member}"
            pure = PurePosixPath(rel)
            key = str(pure.with_name(os.path.splitext(pure.name)[0]))
            ext = os.path.splitext(pure.name)[1].lower()
            add_candidate(rel, key, ext, exts, images, captions, report)
        pair_shard(images, captions, entries, report)
    finish_report(entries, report)
    return entries, report


class ShardIndex:
    """relpath -> (tar relpath, offset, size), loaded once and validated.

    Holds one flat dict (about 100 bytes per member: fine for 60k samples)
    so a lookup is one hash probe; picklable, so DataLoader workers inherit it.
    """

    def __init__(self, index: Mapping[str, Any], source: str = "index") -> None:
        self.source = source
        self._entries: Dict[str, Tuple[str, int, int]] = {}
        self.shard_sizes: Dict[str, int] = {}
        if not isinstance(index, Mapping) or index.get("version") != INDEX_VERSION:
            raise CorruptDataError(f"shard index {source}: not a version-{INDEX_VERSION} index "
                                   f"(got version {index.get('version') if isinstance(index, Mapping) else None!r}); "
                                   "rebuild it with tools/upload_shards.py")
        shards = index.get("shards")
        if not isinstance(shards, Mapping):
            raise CorruptDataError(f"shard index {source}: 'shards' must be an object")
        for shard, entry in shards.items():
            try:
                uri_name = check_relpath(entry["uri_name"], source=f"shard index {source} shard {shard!r}")
                check_relpath(shard, source=f"shard index {source}")
                size = int(entry["size"])
                for member, (offset, length) in entry["members"].items():
                    offset, length = int(offset), int(length)
                    if offset < 0 or length < 0 or offset + length > size:
                        raise ValueError(f"member {member!r} range {offset}+{length} outside the {size}-byte tar")
                    rel = check_relpath(f"{shard}/{member}", source=f"shard index {source}")
                    self._entries[rel] = (uri_name, offset, length)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CorruptDataError(f"shard index {source}: shard {shard!r} is malformed "
                                       f"({type(exc).__name__}: {exc}); rebuild it") from None
            self.shard_sizes[uri_name] = size

    @classmethod
    def load(cls, storage: Any, uri: str) -> "ShardIndex":
        """Read and validate ``index.json`` from any Storage location."""
        try:
            raw = storage.get(uri)
        except BucketNotFoundError:
            bucket = parse_uri(uri).bucket
            raise BucketNotFoundError(f"shard index {uri}: bucket {bucket!r} does not exist; fix shard_index= "
                                      "(a typo in the bucket?) or create the bucket and run "
                                      "tools/upload_shards.py") from None
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"shard index {uri} does not exist; upload it with tools/upload_shards.py "
                                      "or drop shard_index=") from None
        try:
            data = loads_bounded(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, nested too deeply
            raise CorruptDataError(f"shard index {uri}: not valid UTF-8 JSON ({exc}); "
                                   "rebuild it with tools/upload_shards.py") from None
        return cls(data, source=uri)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._entries

    def resolve(self, relpath: str) -> Tuple[str, int, int]:
        """``(tar relpath, offset, size)`` of ``relpath``; ObjectNotFoundError names it when absent."""
        hit = self._entries.get(relpath)
        if hit is None:
            hit = self._entries.get(check_relpath(relpath))
        if hit is None:
            raise ObjectNotFoundError(f"{relpath}: not in shard index {self.source} "
                                      f"({len(self.shard_sizes)} shards, {len(self)} members); is data.json "
                                      "from another upload?")
        return hit
