"""Build the shard-mode index (``index.json``) and its data.json from tar shards.

The read side (:class:`blip3o_storage.reading.shard_index.ShardIndex`) only
loads and resolves; building needs the tar scanning of
:mod:`blip3o_storage.transfer.safe_tar`, so it lives with the preparation tools.
"""
from __future__ import annotations

import contextlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from blip3o_storage.errors import CorruptDataError, InvalidPathError
from blip3o_storage.reading.shard_index import INDEX_VERSION
from blip3o_storage.storage.uri import check_relpath
from blip3o_storage.transfer.safe_tar import (
    MARKER_NAME,
    DataJsonReport,
    ShardOrder,
    add_candidate,
    check_member,
    finish_report,
    image_caption_exts,
    key_and_ext,
    pair_shard,
    scan_tar,
    shard_name,
)
from blip3o_storage.transfer.tree_walk import is_hidden

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["IndexSummary", "build_index", "build_shard_index", "data_json_from_index", "write_index_files"]


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


def _ordered(tar_paths: Iterable[PathLike]) -> list[tuple[str, Path]]:
    """``(shard name, tar)`` in shard-name order (the index's key order); two tars giving one name
    are an error naming both (the first such pair in path order)."""
    seen: Dict[str, Path] = {}
    for tar_path in sorted(Path(p) for p in tar_paths):
        name = shard_name(tar_path)
        if name in seen:
            raise InvalidPathError(f"two shard files give the shard name {name!r} ({tar_path} and "
                                   f"{seen[name].name}); rename one")
        seen[name] = tar_path
    return sorted(seen.items())


def build_index(tar_paths: Iterable[PathLike]) -> Dict[str, Any]:
    """The full index of several shards, keyed by shard name (sorted)."""
    return {"version": INDEX_VERSION, "shards": {name: build_shard_index(p) for name, p in _ordered(tar_paths)}}


def _shard_pairs(shard: str, members: Iterable[str], exts: Tuple[set, str], report: DataJsonReport
                 ) -> List[Dict[str, str]]:
    """One shard's entries (unsorted) from its member names, :func:`data_json_from_index`'s rules."""
    report.shards.append(shard)
    images: Dict[str, List[str]] = {}
    captions: Dict[str, List[str]] = {}
    for member in sorted(members):
        if member == MARKER_NAME:  # extraction writes its own marker there
            continue
        rel = f"{shard}/{member}"
        if is_hidden(rel):  # the tree walk's rule: dot-files and dot-folders are not samples
            report.hidden.append(rel)
            continue
        add_candidate(rel, *key_and_ext(rel), exts, images, captions, report)
    entries: List[Dict[str, str]] = []
    pair_shard(images, captions, entries, report)
    return entries


def data_json_from_index(index: Mapping[str, Any],
                         image_exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp"),
                         caption_ext: str = ".txt") -> Tuple[List[Dict[str, str]], DataJsonReport]:
    """What :func:`safe_tar.build_data_json` gives for the extracted tree, from the index alone.

    Same rules and order: dot-files and dot-folders are skipped and listed in ``report.hidden``
    (:func:`~blip3o_storage.transfer.tree_walk.is_hidden`), ``{key}.<img>`` pairs with ``{key}.txt`` per shard
    (extensions case-insensitive), the alphabetically first image/caption of
    a key wins and the rest are reported as duplicates, unpaired files are
    reported, entries are sorted by image path.
    """
    exts = image_caption_exts(image_exts, caption_ext)
    report = DataJsonReport()
    entries: List[Dict[str, str]] = []
    for shard in sorted(index["shards"]):
        entries += _shard_pairs(shard, index["shards"][shard]["members"], exts, report)
    finish_report(entries, report)
    return entries, report


@dataclass
class IndexSummary:
    """What :func:`write_index_files` wrote: counts for the log, and the data.json report."""

    shards: int = 0
    members: int = 0
    entries: int = 0
    #: shard name -> its repeated member names (only shards that repeat names)
    repeated: Dict[str, List[str]] = field(default_factory=dict)
    report: DataJsonReport = field(default_factory=DataJsonReport)


def write_index_files(tar_paths: Iterable[PathLike], index_path: Path, data_json_path: Optional[Path],
                      image_exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp"),
                      caption_ext: str = ".txt") -> IndexSummary:
    """Write index.json (and data.json) of ``tar_paths`` one shard at a time: the bytes of
    ``json.dump(build_index(...), sort_keys=True, separators=(",", ":"))`` plus a newline, and
    of ``data_json_text(data_json_from_index(...))``, with one shard's members in memory instead
    of every shard's (issue #14: an index of millions of members is not held)."""
    exts = image_caption_exts(image_exts, caption_ext)
    summary = IndexSummary()
    order = ShardOrder()
    with contextlib.ExitStack() as stack:
        index = stack.enter_context(open(index_path, "w", encoding="utf-8"))
        data = stack.enter_context(open(data_json_path, "w", encoding="utf-8")) if data_json_path else None

        def put(entries: Iterable[Dict[str, str]]) -> None:
            if data is None:
                return
            for entry in entries:
                data.write(("[\n" if summary.entries == 0 else ",\n") + json.dumps(entry))
                summary.entries += 1

        index.write('{"shards":{')
        for i, (name, tar) in enumerate(_ordered(tar_paths)):
            entry = build_shard_index(tar)
            index.write(("," if i else "") + json.dumps(name) + ":" + json.dumps(entry, sort_keys=True,
                                                                                separators=(",", ":")))
            summary.shards += 1
            summary.members += len(entry["members"])
            if entry.get("duplicates"):
                summary.repeated[name] = entry["duplicates"]
            if data is not None:
                put(order.push(name, _shard_pairs(name, entry["members"], exts, summary.report)))
        index.write("}," + json.dumps("version") + ":" + json.dumps(INDEX_VERSION) + "}\n")
        put(order.finish())
        if data is not None:
            data.write("\n]\n" if summary.entries else "[\n]\n")
    finish_report([], summary.report)
    summary.report.pairs = summary.entries
    return summary
