"""Shard mode: read samples straight out of the original tar shards (the index, read side;
:mod:`blip3o_storage.transfer.shard_indexing` builds it).

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
:func:`blip3o_storage.transfer.safe_tar.shard_name` names it, then the member name)
resolve unchanged, so the same data.json serves both modes. ``uri_name`` is
relative to the folder that holds the tars (the dataset's ``ceph_folder``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blip3o_storage.errors import BucketNotFoundError, CorruptDataError, ObjectNotFoundError
from blip3o_storage.reading.bounded_json import loads_bounded
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.uri import check_relpath, parse_uri

INDEX_VERSION = 1

__all__ = ["INDEX_VERSION", "ShardIndex"]


class ShardIndex:
    """relpath -> (tar relpath, offset, size), loaded once and validated.

    Holds one flat dict (about 100 bytes per member: fine for 60k samples)
    so a lookup is one hash probe; picklable, so DataLoader workers inherit it.
    """

    def __init__(self, index: Mapping[str, Any], source: str = "index") -> None:
        self.source = source
        self._entries: dict[str, tuple[str, int, int]] = {}
        self.shard_sizes: dict[str, int] = {}
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
    def load(cls, storage: Storage, uri: str) -> ShardIndex:
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

    def resolve(self, relpath: str) -> tuple[str, int, int]:
        """``(tar relpath, offset, size)`` of ``relpath``; ObjectNotFoundError names it when absent."""
        hit = self._entries.get(relpath)
        if hit is None:
            hit = self._entries.get(check_relpath(relpath))
        if hit is None:
            raise ObjectNotFoundError(f"{relpath}: not in shard index {self.source} "
                                      f"({len(self.shard_sizes)} shards, {len(self)} members); is data.json "
                                      "from another upload?")
        return hit
