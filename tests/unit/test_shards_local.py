"""Tar shards without a server: the shard index, hostile and damaged tars, the disk cache, the prefetcher."""
from __future__ import annotations

import json
import multiprocessing
import pickle
import tarfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Dict, List, cast

import numpy as np
import pytest
from PIL import Image

from blip3o_storage import CorruptDataError, InvalidPathError, ObjectNotFoundError
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.reading.prefetch import Prefetcher
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.reading.sources import ObjectSource, Ref
from blip3o_storage.testing.shards import LONG, Shards, make_shards
from blip3o_storage.testing.shards import add_member as _add
from blip3o_storage.testing.shards import hostile_tar as _hostile
from blip3o_storage.training.dataset import BLIP3oDataset
from blip3o_storage.transfer.safe_tar import build_data_json
from blip3o_storage.transfer.shard_indexing import build_index, build_shard_index, data_json_from_index


# -- the index ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_index_offsets_point_at_member_bytes(tmp_path: Path, fmt: int) -> None:
    shards = make_shards(tmp_path / "d", fmt=fmt)
    tar = shards.tars / "dalle3.tar"
    entry = build_shard_index(tar)
    assert entry["uri_name"] == "dalle3.tar" and entry["size"] == tar.stat().st_size
    assert "sub" not in entry["members"]  # directories are not samples
    assert f"sub/{LONG}.jpg" in entry["members"]
    blob = tar.read_bytes()
    with tarfile.open(tar) as tf:
        regular = {m.name: cast(IO[bytes], tf.extractfile(m)).read() for m in tf if m.isreg()}  # set for regular files
    assert set(entry["members"]) == set(regular)
    for name, (offset, size) in entry["members"].items():
        assert blob[offset:offset + size] == regular[name]
        assert (shards.raw / "dalle3" / name).read_bytes() == regular[name]  # where extraction put it


def test_data_json_from_index_equals_the_extracted_build(shards: Shards) -> None:
    index = build_index(sorted(shards.tars.glob("*.tar")))
    entries, report = data_json_from_index(index)
    expected, expected_report = build_data_json(shards.raw)
    assert entries == expected == shards.entries
    assert report.other_files == expected_report.other_files == ["dalle3/notes.md", "text_1/notes.md"]
    assert report.shards == expected_report.shards and report.pairs == 9
    idx = ShardIndex(json.loads(json.dumps(index)))
    for e in entries:  # every data.json relpath resolves
        for rel in (e["image"], e["annotation"]):
            tar, offset, size = idx.resolve(rel)
            assert (shards.tars / tar).read_bytes()[offset:offset + size] == (shards.raw / rel).read_bytes()


def test_data_json_from_index_skips_hidden_members_as_the_extracted_build_does(tmp_path: Path) -> None:
    """One rule for both modes: dot-files and dot-folders inside a tar are not samples, whether
    data.json comes from the extracted tree or from the shard index (same entries, same hidden list)."""
    import io

    from blip3o_storage.transfer.safe_tar import extract_shard

    tar = tmp_path / "tars" / "s1.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        for name in ("a.jpg", "a.txt", ".cache/b.jpg", ".cache/b.txt", "sub/.c.jpg", "sub/.c.txt", "sub/d.jpg",
                     "sub/d.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    extract_shard(tar, tmp_path / "raw")
    expected, expected_report = build_data_json(tmp_path / "raw")
    entries, report = data_json_from_index(build_index([tar]))
    assert [e["image"] for e in expected] == ["s1/a.jpg", "s1/sub/d.jpg"]
    assert entries == expected
    # the tree walk names a hidden folder once; the index, which has no folders, names its files
    assert sorted(expected_report.hidden) == ["s1/.cache", "s1/sub/.c.jpg", "s1/sub/.c.txt"]
    assert sorted(report.hidden) == ["s1/.cache/b.jpg", "s1/.cache/b.txt", "s1/sub/.c.jpg", "s1/sub/.c.txt"]
    assert report.pairs == expected_report.pairs == 2


@pytest.mark.parametrize("name,kind,link", [
    ("../escape.txt", tarfile.REGTYPE, ""),
    ("/etc/passwd", tarfile.REGTYPE, ""),
    ("a\\b.txt", tarfile.REGTYPE, ""),
    ("link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
    ("hard.jpg", tarfile.LNKTYPE, "00001.jpg"),
    ("fifo", tarfile.FIFOTYPE, ""),
    ("C:evil.txt", tarfile.REGTYPE, ""),
])
def test_hostile_tars_are_refused(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    with pytest.raises(InvalidPathError, match="cannot index"):
        build_shard_index(_hostile(tmp_path, name, kind, link))


def test_compressed_or_truncated_tars_are_refused(shards: Shards, tmp_path: Path) -> None:
    gz = tmp_path / "dalle3.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        _add(tf, "a.txt", b"a")
    with pytest.raises(InvalidPathError, match="uncompressed"):
        build_shard_index(gz)
    cut = tmp_path / "cut" / "dalle3.tar"
    cut.parent.mkdir()
    cut.write_bytes((shards.tars / "dalle3.tar").read_bytes()[:3000])
    with pytest.raises(CorruptDataError):
        build_shard_index(cut)


def test_shard_index_resolve_and_validation(shards: Shards) -> None:
    idx = ShardIndex(build_index(sorted(shards.tars.glob("*.tar"))), source="mem")
    assert idx.resolve("./dalle3/00001.jpg") == idx.resolve("dalle3/00001.jpg")
    with pytest.raises(ObjectNotFoundError, match="dalle3/99999.jpg"):
        idx.resolve("dalle3/99999.jpg")
    with pytest.raises(CorruptDataError, match="version"):
        ShardIndex({"version": 2, "shards": {}})
    bad: Dict[str, Any] = {"version": 1, "shards": {"x": {"uri_name": "x.tar", "size": 10, "members": {"a": [8, 5]}}}}
    with pytest.raises(CorruptDataError, match="outside"):
        ShardIndex(bad)
    bad["shards"]["x"]["uri_name"] = "../x.tar"
    with pytest.raises(CorruptDataError):
        ShardIndex(bad)


# -- cache --------------------------------------------------------------------------------
def test_disk_cache_hits_bound_and_corruption(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", max_bytes=10_000)
    assert cache.get("a") is None and cache.put("a", b"A" * 100)
    assert cache.get("a") == b"A" * 100 and cache.stats()["hits"] == 1
    for i in range(200):
        cache.put(f"k{i}", bytes([i % 256]) * 400)
        assert cache.total_bytes() <= 10_000
    assert cache.stats()["evictions"] > 0 and cache.get("k199") == bytes([199]) * 400
    assert not cache.put("huge", b"x" * 20_000)
    path = cache.path_for("k199")
    path.write_bytes(path.read_bytes()[:-1] + b"?")  # a flipped byte is caught, not served
    assert cache.get("k199") is None and not path.exists() and cache.stats()["corrupt"] == 1
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.stats()["hits"] == 0 and clone.get("k198") == bytes([198]) * 400


def _hammer(root: str, seed: int, rounds: int, queue) -> None:
    cache = DiskCache(root, max_bytes=60_000)
    rng = np.random.default_rng(seed)
    bad = 0
    for _ in range(rounds):
        k = int(rng.integers(0, 40))
        expected = (f"{k}:".encode() * 2000)[: 500 + 97 * k]
        data = cache.get(f"key{k}")
        if data is None:
            cache.put(f"key{k}", expected)
        elif data != expected:
            bad += 1
    queue.put((bad, cache.stats()["hits"], cache.stats()["evictions"]))


def test_disk_cache_concurrent_writers_never_serve_corrupt_bytes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "c"), seed, 400, queue)) for seed in (1, 2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(r[0] for r in results) == 0
    assert sum(r[1] for r in results) > 0 and sum(r[2] for r in results) > 0
    assert not any((tmp_path / "c" / "tmp").iterdir())  # no temp files left behind
    assert DiskCache(tmp_path / "c", 60_000).total_bytes() <= 60_000 + 2 * 5_000  # + in-flight slack


def test_prefetcher_bounds_its_buffer() -> None:
    p = Prefetcher(depth=2, threads=1)
    for i in range(50):
        def fetch(i: int = i) -> List[bytes]:
            return [bytes([i])]
        p.submit([f"k{i}"], fetch)
    assert len(p._pending) <= p.max_pending and p.stats()["dropped"] == 50 - p.max_pending
    assert p.take("k49") == bytes([49]) and p.take("k0") is None
    p.close()


def test_prefetch_without_a_sampler_stops_guessing_when_requests_jump() -> None:
    p = Prefetcher(depth=3, threads=1)
    assert p.plan(0, 100) == [1, 2, 3] and p.plan(1, 100) == [2, 3, 4]  # sequential: guesses pay off
    jumps = [57, 3, 91, 40, 12, 77, 25, 64]
    plans = [p.plan(i, 100) for i in jumps]
    assert all(plans[:-1]) and plans[-1] == []  # after 8 jumps in a row: no more wasted GETs
    assert p.plan(33, 100) == []
    assert p.plan(34, 100) == [35, 36, 37]  # sequential again: guessing resumes
    p.close()


def test_plan_new_hands_out_each_upcoming_index_once() -> None:
    order = [int(i) for i in np.random.default_rng(1).permutation(40)]
    p = Prefetcher(depth=3)
    p.set_sampler(order, batch_size=1)
    assert p.plan_new(order[0], 40) == order[1:4]
    for k in range(1, 10):  # the window slides by one: one new index per call
        assert p.plan_new(order[k], 40) == [order[k + 3]]
    p.set_sampler(order, batch_size=1)  # a new epoch: the whole window is new again
    assert p.plan_new(order[0], 40) == order[1:4]
    # without a sampler (sequential guesses), epoch after epoch over a small dataset
    seq = Prefetcher(depth=2)
    got = [seq.plan_new(i, 5) for _ in range(3) for i in range(5)]
    assert got == [[1, 2]] + [[(i + 2) % 5] for i in range(1, 15)]


def test_plan_next_says_whether_the_index_asked_for_was_planned_before() -> None:
    """The dataset locates (and submits) an index only when no earlier call planned it."""
    order = [int(i) for i in np.random.default_rng(2).permutation(40)]
    p = Prefetcher(depth=3)
    p.set_sampler(order, batch_size=1)
    assert p.plan_next(order[0], 40) == (False, order[1:4])  # the first call: nothing planned yet
    for k in range(1, 6):
        assert p.plan_next(order[k], 40) == (True, [order[k + 3]])
    assert p.plan_next(order[30], 40)[0] is False  # a jump outside the window: never planned
    p.close()


class _CountingSource(ObjectSource):
    """Our ObjectSource, counting how often the dataset asks where a relpath lives."""

    def __init__(self) -> None:
        self.located = 0

    def locate(self, folder: str, relpath: str) -> Ref:
        self.located += 1
        return super().locate(folder, relpath)


def test_a_prefetched_sample_is_located_once_for_its_prefetch_and_once_for_its_read(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    entries = []
    for i in range(12):
        (root / "s").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 96), (i * 20, 0, 0)).save(root / "s" / f"{i}.jpg")
        entries.append({"image": f"s/{i}.jpg", "annotation": f"s/{i}.txt", "caption": f"red {i}"})
    (tmp_path / "data.json").write_text(json.dumps(entries))
    ds = BLIP3oDataset(data_path=str(tmp_path / "data.json"), ceph_folder=str(root),
                       tokenizer=dict(type="ByteTokenizer"), image_size=32, min_image_size=16, prefetch=3,
                       prefetch_threads=1, table_cache_dir=False)
    source = ds.sample_source = _CountingSource()
    order = [int(i) for i in np.random.default_rng(3).permutation(12)]
    ds.set_sampler(order, batch_size=1)
    for i in order:
        assert ds[i]["image_file"] == f"s/{i}.jpg"
    stats = ds.stats()["prefetch"]
    assert stats["hits"] + stats["waits"] == 12 and stats["misses"] == 0  # every sample came through prefetch
    # the first sample: located for its prefetch and its read, plus the first window of 3; then one new
    # sample a call (its prefetch) and the read: 2 a sample (3 before: the asked-for index was located again)
    assert source.located == 2 + 3 + 2 * 11 - 3, source.located
    assert ds._prefetcher is not None
    ds._prefetcher.close()


def _exit_with_queued_fetches(path: str) -> None:
    prefetcher = Prefetcher(depth=2, threads=1)

    def fetch(i: int):
        def run() -> List[bytes]:
            with open(path, "a") as out:
                out.write(f"{i}\n")
            time.sleep(0.2)
            return [b""]
        return run

    for i in range(10):
        prefetcher.submit([f"key{i}"], fetch(i))


def test_queued_prefetches_are_dropped_when_the_process_exits(tmp_path: Path) -> None:
    """A DataLoader worker that exits must not first send every fetch still queued."""
    ran = tmp_path / "ran"
    proc = multiprocessing.get_context("fork").Process(target=_exit_with_queued_fetches, args=(str(ran),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert 1 <= len(ran.read_text().split()) <= 2  # the running one (maybe a second just picked up), not all 10


def test_dropped_prefetches_that_have_not_started_are_not_sent() -> None:
    release, ran = threading.Event(), []

    def fetch(i: int):
        def run() -> List[bytes]:
            ran.append(i)
            release.wait(10)
            return [b""]
        return run

    prefetcher = Prefetcher(depth=1, threads=1)  # keeps at most 8 pending
    for i in range(11):
        prefetcher.submit([f"key{i}"], fetch(i))
    assert prefetcher.stats()["dropped"] == 3  # key0 (running), key1 and key2 (queued)
    release.set()
    assert prefetcher.take("key10") == b""
    prefetcher.close()
    assert sorted(ran) == [0] + list(range(3, 11))  # key1 and key2 were never fetched
