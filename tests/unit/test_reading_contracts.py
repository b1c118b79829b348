"""Contracts of the read pipeline (issue #15): what a SampleSource offers, and per-process state.

* every capability the dataset uses is a method of :class:`SampleSource` with a default,
  and :class:`CachedSource` passes each one on (the dataset never unwraps or probes);
* every reading class that holds a lock, pool, buffer or counters is a
  :class:`ProcessLocal`: a forked child gets fresh state even while a parent
  thread holds the lock, a pickled copy starts empty, counters come from one helper.

Local files only (no server): the Storage reads them through its local backend.
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import threading
from pathlib import Path

import pytest

from blip3o_storage.reading.block_reader import BlockReader
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.reading.prefetch import Prefetcher
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.reading.sources import CachedSource, ObjectSource, Ref, SampleSource, ShardSource, build_source
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.testing.forking import in_forked_child

BLOCK = 4096
TAR_SIZE = 3 * BLOCK + 100


@pytest.fixture
def shard(tmp_path: Path):
    """A fake "tar" (only byte ranges matter) of three members, and its index."""
    data = os.urandom(TAR_SIZE)
    (tmp_path / "s.tar").write_bytes(data)
    members = {"a.jpg": [10, 100], "a.txt": [200, 50], "b.jpg": [2 * BLOCK + 5, 1000]}
    index = ShardIndex({"version": 1, "shards": {"s": {"uri_name": "s.tar", "size": TAR_SIZE, "members": members}}},
                       source="test-index")
    return Storage(), str(tmp_path), data, index


# -- SampleSource capabilities -------------------------------------------------------------
def test_a_source_needs_only_locate_and_read_the_rest_has_defaults(tmp_path: Path) -> None:
    class Minimal(SampleSource):
        def locate(self, folder: str, relpath: str) -> Ref:
            return Ref(uri=f"{folder}/{relpath}", label=relpath)

        def read(self, storage: Storage, ref: Ref) -> bytes:
            return storage.get(ref.uri)

    (tmp_path / "x").write_bytes(b"xx")
    (tmp_path / "y").write_bytes(b"yyy")
    for source in (Minimal(), ObjectSource()):
        refs = [source.locate(str(tmp_path), name) for name in ("x", "y")]
        assert source.read_many(Storage(), refs) == [b"xx", b"yyy"]
        assert not source.has_locality() and source.locality_key(str(tmp_path), "x") is None
        assert not source.resident(refs[0]) and source.disk_cache() is None and source.stats() == {}
    with pytest.raises(TypeError):
        SampleSource()  # type: ignore[abstract]  # locate and read are abstract


def test_cached_source_passes_every_capability_on(shard, tmp_path: Path) -> None:
    storage, folder, data, index = shard
    inner = ShardSource(index, block_bytes=BLOCK)
    source = CachedSource(inner, DiskCache(tmp_path / "cache", 1 << 20))
    assert source.has_locality() and inner.has_locality()
    assert source.locality_key(folder, "s/b.jpg") == inner.locality_key(folder, "s/b.jpg") == (f"{folder}/s.tar", 2)
    ref = source.locate(folder, "s/a.jpg")
    assert not source.resident(ref)
    assert source.read(storage, ref) == data[10:110]
    assert source.resident(ref) and inner.resident(ref)  # its block is held by the inner source
    assert source.disk_cache() is source.cache
    stats = source.stats()
    assert set(stats) == {"blocks", "cache"}
    assert stats["blocks"]["fetches"] == 1 and stats["cache"]["puts"] == 1
    assert source.read(storage, ref) == data[10:110] and source.stats()["cache"]["hits"] == 1


def test_shard_source_without_block_reads_coalesces_and_reports_no_blocks(shard) -> None:
    storage, folder, data, index = shard
    source = build_source(storage)
    assert isinstance(source, ObjectSource)
    shards = ShardSource(index)
    refs = [shards.locate(folder, rel) for rel in ("s/a.jpg", "s/a.txt", "s/b.jpg")]
    assert shards.read_many(storage, refs) == [data[10:110], data[200:250], data[2 * BLOCK + 5:2 * BLOCK + 1005]]
    assert shards.stats() == {} and not shards.resident(refs[0])


def test_the_read_pipeline_names_its_store_type() -> None:
    """The store is a Storage in every signature of the read pipeline (no ``Any``)."""
    for fn in (SampleSource.read, SampleSource.read_many, ObjectSource.read, ShardSource.read_many,
               CachedSource.read_many, BlockReader.read, ShardIndex.load, build_source):
        assert inspect.signature(fn).parameters["storage"].annotation == "Storage", fn


# -- one per-process-state mechanism -------------------------------------------------------
@pytest.mark.parametrize("cls", [BlockReader, DiskCache, Prefetcher, ShardSource])
def test_reading_classes_with_process_state_are_process_local(cls) -> None:
    assert issubclass(cls, ProcessLocal) and cls._process_state
    assert not hasattr(cls, "_reset"), "the per-class _reset copies are gone"


def test_forked_child_reads_blocks_while_a_parent_thread_holds_the_lock(shard) -> None:
    storage, folder, data, index = shard
    source = ShardSource(index, block_bytes=BLOCK)
    ref = source.locate(folder, "s/a.jpg")
    assert source.read(storage, ref) == data[10:110]
    assert source.blocks is not None
    reader = source.blocks
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with reader._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)

    def child() -> int:
        # fresh lock, no blocks, zero counters, tar size checked again; then it reads
        zero = {"reads": 0, "fetches": 0, "fetched_bytes": 0, "waits": 0, "unplanned": 0}
        if source.resident(ref) or reader.stats() != zero:
            return 1
        if source._checked:
            return 2
        return 0 if source.read(storage, ref) == data[10:110] and reader.stats()["fetches"] == 1 else 3

    try:
        code = in_forked_child(child)
    finally:
        release.set()
        thread.join()
    assert code == 0
    assert reader.stats()["fetches"] == 1  # the parent's counters are its own


def test_pickled_copies_start_empty_with_their_settings(shard, tmp_path: Path) -> None:
    storage, folder, data, index = shard
    source = CachedSource(ShardSource(index, block_bytes=BLOCK, max_blocks=2), DiskCache(tmp_path / "c", 1 << 20))
    ref = source.locate(folder, "s/a.txt")
    source.read(storage, ref)
    copy = pickle.loads(pickle.dumps(source))
    assert copy.stats() == {"blocks": {"reads": 0, "fetches": 0, "fetched_bytes": 0, "waits": 0, "unplanned": 0},
                            "cache": {"hits": 0, "misses": 0, "evictions": 0, "puts": 0, "corrupt": 0,
                                      "refused": 0}}
    assert isinstance(copy.inner, ShardSource) and copy.inner.blocks is not None
    assert (copy.inner.blocks.block_bytes, copy.inner.blocks.max_blocks) == (BLOCK, 2)
    assert not copy.resident(ref) and copy.read(storage, ref) == data[200:250]
    assert copy.stats()["cache"]["hits"] == 1  # the cache folder travels, its counters do not


def test_prefetcher_pool_and_counters_are_per_process() -> None:
    p = Prefetcher(depth=2, threads=1)
    p.submit(["k"], lambda: [b"v"])
    assert p.take("k") == b"v" and p.stats()["hits"] + p.stats()["waits"] == 1
    assert p._pool is not None
    assert in_forked_child(lambda: 0 if p._pool is None and p.stats()["hits"] == 0 and p.take("k") is None else 1) == 0
    clone = pickle.loads(pickle.dumps(p))
    assert clone._pool is None and clone.stats() == dict.fromkeys(p.stats(), 0)
    p.close()
    assert p._pool is None and p.stats()["hits"] == 0


def test_dataset_capabilities_come_from_the_source_not_probing(tmp_path: Path) -> None:
    """The dataset asks its source (stats sections, locality) through the base-class methods."""
    pytest.importorskip("torch")
    from blip3o_storage.training.dataset import CaptionDataset

    assert issubclass(CaptionDataset, ProcessLocal)
    assert set(CaptionDataset._process_state) == {"_storage", "_remote_down_until", "_fallback_logged"}
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "data.json").write_text(json.dumps([{"image": "a.jpg", "annotation": "a.txt"}]))
    ds = CaptionDataset(str(tmp_path / "data.json"), ceph_folder=str(tmp_path), tokenizer=dict(type="ByteTokenizer"),
                        cache_dir=str(tmp_path / "cache"))
    assert isinstance(ds.sample_source, CachedSource)
    assert ds.locality_groups() is None  # one object per file: no locality
    assert set(ds.stats()) == {"bad_samples", "reads", "read_bytes", "storage_retries", "cache"}
    assert ds._read(ds.ceph_folder, None, "a.txt", [], ds.sample_source) == b"a caption"
    assert ds.stats()["cache"]["puts"] == 1 and ds._storage is not None
    assert in_forked_child(lambda: 0 if ds._storage is None and ds.stats()["cache"]["puts"] == 0 else 1) == 0
    assert pickle.loads(pickle.dumps(ds))._storage is None
