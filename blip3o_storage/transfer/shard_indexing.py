"""Build the shard-mode index (``index.json``) and its data.json from tar shards.

The read side (:class:`blip3o_storage.reading.shard_index.ShardIndex`) only
loads and resolves; building needs the tar scanning of
:mod:`blip3o_storage.transfer.safe_tar`, so it lives with the preparation tools.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

from blip3o_storage.errors import CorruptDataError, InvalidPathError
from blip3o_storage.reading.shard_index import INDEX_VERSION
from blip3o_storage.storage.uri import check_relpath
from blip3o_storage.transfer.safe_tar import (
    MARKER_NAME,
    DataJsonReport,
    add_candidate,
    check_member,
    finish_report,
    image_caption_exts,
    pair_shard,
    scan_tar,
    shard_name,
)
from blip3o_storage.transfer.tree_walk import is_hidden

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["build_index", "build_shard_index", "data_json_from_index"]


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
        report.shards.append(shard)
        images: Dict[str, List[str]] = {}
        captions: Dict[str, List[str]] = {}
        for member in sorted(index["shards"][shard]["members"]):
            if member == MARKER_NAME:  # extraction writes its own marker there
                continue
            rel = f"{shard}/{member}"
            if is_hidden(rel):  # the tree walk's rule: dot-files and dot-folders are not samples
                report.hidden.append(rel)
                continue
            pure = PurePosixPath(rel)
            key = str(pure.with_name(os.path.splitext(pure.name)[0]))
            ext = os.path.splitext(pure.name)[1].lower()
            add_candidate(rel, key, ext, exts, images, captions, report)
        pair_shard(images, captions, entries, report)
    finish_report(entries, report)
    return entries, report
