"""Shard mode (tar + index, ranged reads), prefetch and the local disk cache."""
from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from blip3o_storage import CorruptDataError, InvalidPathError, ObjectNotFoundError, Storage
from blip3o_storage.training.dataset import BLIP3oDataset
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.reading.prefetch import Prefetcher, worker_stream
from blip3o_storage.transfer.safe_tar import build_data_json, extract_shard
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.transfer.shard_indexing import build_index, build_shard_index, data_json_from_index
from blip3o_storage.reading.sources import CachedSource, ObjectSource, ShardSource

from helpers import jpeg as _jpeg

from blip3o_storage.cli import upload_shards

REPO_ROOT = Path(__file__).resolve().parents[1]

SIZE = 32
TEMPLATE = {"INSTRUCTION": "<|user|>\n{input}<|end|>\n<|assistant|>\n"}
LONG = "l" * 120  # > 100 chars: needs a GNU/PAX long-name header before the member


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@dataclass
class Shards:
    """``tars/<shard>.tar`` and the same data extracted in ``raw/`` with ``data.json``."""

    root: Path
    entries: List[Dict[str, str]]

    @property
    def tars(self) -> Path:
        return self.root / "tars"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"


def make_shards(root: Path, fmt: int = tarfile.PAX_FORMAT) -> Shards:
    (root / "tars").mkdir(parents=True)
    layout = {"dalle3": 5, "text_1": 4}
    seed = 0
    for shard, n in layout.items():
        with tarfile.open(root / "tars" / f"{shard}.tar", "w", format=fmt) as tf:
            _add(tf, "sub", kind=tarfile.DIRTYPE)
            for i in range(n):
                seed += 1
                key = f"{i:05d}" if i != 2 else f"sub/{LONG}"
                _add(tf, f"{key}.jpg", _jpeg(96 + 16 * (i % 3), 120 - 8 * i, seed))
                _add(tf, f"{key}.txt", f"caption {shard} {i}: café ✓\n".encode())
            _add(tf, "notes.md", b"# not a sample\n")
    for tar in sorted((root / "tars").glob("*.tar")):
        extract_shard(tar, root / "raw")
    entries, _ = build_data_json(root / "raw")
    (root / "data.json").write_text(json.dumps(entries))
    return Shards(root, entries)


@pytest.fixture
def shards(tmp_path: Path) -> Shards:
    return make_shards(tmp_path / "blip3o")


def run_cli(endpoint, tmp_path: Path, *args: str) -> int:
    conf = endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    return upload_shards.main(["--config", str(conf), *args])


@pytest.fixture
def uploaded(shards: Shards, s3_bucket, s3_endpoint, tmp_path: Path):
    """Shards uploaded with the CLI under shards/, the extracted files per object under raw/."""
    storage, bucket = s3_bucket
    name = bucket[len("s3://"):]
    assert run_cli(s3_endpoint, tmp_path, "--bucket", name, "--prefix", "shards", str(shards.tars)) == 0
    for path in sorted(shards.raw.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            storage.put(f"{bucket}/raw/{path.relative_to(shards.raw).as_posix()}", path.read_bytes())
    return shards, bucket, s3_endpoint


def ds_for(shards: Shards, bucket: str, endpoint, mode: str, cls: type = BLIP3oDataset, **kw) -> BLIP3oDataset:
    args = dict(data_path=str(shards.data_json), ceph_config=endpoint.ceph_config(),
                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0,
                prompt_template=TEMPLATE, min_image_size=16)
    if mode == "shard":
        args.update(ceph_folder=f"{bucket}/shards", shard_index=f"{bucket}/shards/index.json")
    else:
        args.update(ceph_folder=f"{bucket}/raw")
    args.update(kw)
    return cls(**args)


def assert_same(a: dict, b: dict) -> None:
    assert a["image_file"] == b["image_file"]
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["input_ids"], b["input_ids"])


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
        regular = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}
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


def _hostile(tmp_path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "00001.jpg", b"ok")
        _add(tf, name, b"x", kind, link)
    return path


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
    bad = {"version": 1, "shards": {"x": {"uri_name": "x.tar", "size": 10, "members": {"a": [8, 5]}}}}
    with pytest.raises(CorruptDataError, match="outside"):
        ShardIndex(bad)
    bad["shards"]["x"]["uri_name"] = "../x.tar"
    with pytest.raises(CorruptDataError):
        ShardIndex(bad)


# -- the CLI ----------------------------------------------------------------------
def test_upload_shards_cli_uploads_resumes_and_verifies(shards: Shards, s3_bucket, s3_endpoint, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    storage, bucket = s3_bucket
    name = bucket[len("s3://"):]
    args = ["--bucket", name, "--prefix", "p/q", "--multipart-threshold-mb", "0.01", str(shards.tars)]
    assert run_cli(s3_endpoint, tmp_path, *args) == 0
    keys = sorted(info.key for info in storage.list(f"{bucket}/p/q/"))
    assert keys == ["dalle3.tar", "data.json", "index.json", "text_1.tar"]
    for tar in shards.tars.glob("*.tar"):
        assert storage.get(f"{bucket}/p/q/{tar.name}") == tar.read_bytes()
        assert "-" in storage.stat(f"{bucket}/p/q/{tar.name}").etag  # went multipart
    assert json.loads(storage.get(f"{bucket}/p/q/data.json")) == shards.entries
    index = ShardIndex.load(storage, f"{bucket}/p/q/index.json")
    assert len(index) == sum(1 for p in shards.raw.rglob("*") if p.is_file() and not p.name.startswith("."))
    out = capsys.readouterr().out
    assert "uploaded 4 files" in out and "verified 4 ok" in out
    # a re-run sends nothing, --verify-only passes
    assert run_cli(s3_endpoint, tmp_path, *args) == 0
    assert "uploaded 0 files" in capsys.readouterr().out
    assert run_cli(s3_endpoint, tmp_path, "--verify-only", *args) == 0
    # a hostile tar: exit 2, nothing sent
    evil = _hostile(tmp_path, "../x.txt")
    assert run_cli(s3_endpoint, tmp_path, "--bucket", name, "--prefix", "evil", str(evil)) == 2
    assert list(storage.list(f"{bucket}/evil/")) == []
    # a changed tar is seen by --verify-only
    storage.put(f"{bucket}/p/q/text_1.tar", b"other")
    assert run_cli(s3_endpoint, tmp_path, "--verify-only", *args) == 1


# -- the dataset in shard mode -------------------------------------------------------
def test_shard_mode_gives_the_same_samples_as_per_object(uploaded) -> None:
    shards, bucket, endpoint = uploaded
    per_object = ds_for(shards, bucket, endpoint, "object")
    shard = ds_for(shards, bucket, endpoint, "shard", data_path=f"{bucket}/shards/data.json")
    assert isinstance(shard.sample_source, ShardSource) and isinstance(per_object.sample_source, ObjectSource)
    assert len(shard) == len(per_object) == 9
    for i in range(len(shard)):
        assert_same(shard[i], per_object[i])
    assert shard.bad_sample_counts == {} and shard.read_counts == {"remote": 18}


def test_missing_member_is_a_counted_bad_sample_naming_the_relpath(uploaded, tmp_path: Path) -> None:
    shards, bucket, endpoint = uploaded
    entries = shards.entries + [{"image": "dalle3/09999.jpg", "annotation": "dalle3/09999.txt"}]
    data = tmp_path / "with-missing.json"
    data.write_text(json.dumps(entries))
    ds = ds_for(shards, bucket, endpoint, "shard", data_path=str(data))
    sample = ds[len(entries) - 1]
    assert sample["image_file"] != "dalle3/09999.jpg"
    assert ds.bad_sample_counts == {"missing": 1}
    bad = ds.bad_samples_log[-1]
    assert "dalle3/09999.jpg" in bad.uri and "dalle3/09999.jpg" in bad.message


def test_replaced_tar_is_detected(uploaded) -> None:
    shards, bucket, endpoint = uploaded
    Storage(endpoint.ceph_config()).put(f"{bucket}/shards/text_1.tar", b"x" * 100)
    ds = ds_for(shards, bucket, endpoint, "shard", max_retries=0)
    i = next(i for i, e in enumerate(shards.entries) if e["image"].startswith("text_1/"))
    with pytest.raises(Exception, match="corrupt"):
        ds[i]
    assert ds.bad_sample_counts == {"corrupt": 1}
    assert "changed after indexing" in ds.bad_samples_log[-1].message


def test_shard_mode_with_two_dataloader_workers(uploaded) -> None:
    shards, bucket, endpoint = uploaded
    ds = ds_for(shards, bucket, endpoint, "shard")
    reference = {s["image_file"]: s for s in (ds_for(shards, bucket, endpoint, "object")[i] for i in range(9))}
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: b)
    seen = []
    for batch in loader:
        for sample in batch:
            assert_same(sample, reference[sample["image_file"]])
            seen.append(sample["image_file"])
    assert sorted(seen) == sorted(reference)


# -- prefetch ---------------------------------------------------------------------------
class _WhoGetsWhat(Dataset):
    def __len__(self) -> int:
        return 23

    def __getitem__(self, idx: int):
        return idx, get_worker_info().id


@pytest.mark.parametrize("batch_size,drop_last", [(3, False), (4, True), (1, False)])
def test_worker_stream_matches_torch_batch_assignment(batch_size: int, drop_last: bool) -> None:
    """The documented assumption: batch k goes to worker k % num_workers."""
    order = list(np.random.default_rng(0).permutation(23))
    loader = DataLoader(_WhoGetsWhat(), sampler=order, batch_size=batch_size, num_workers=2, drop_last=drop_last)
    got: Dict[int, List[int]] = {0: [], 1: []}
    for idxs, wids in loader:
        for i, w in zip(idxs.tolist(), wids.tolist()):
            got[w].append(i)
    for w in (0, 1):
        assert got[w] == list(worker_stream(order, batch_size, w, 2, drop_last))
    assert list(worker_stream(order, 5)) == order


class _Probe(BLIP3oDataset):
    """Adds this process's prefetch counters to each sample."""

    def __getitem__(self, idx: int):
        sample = super().__getitem__(idx)
        sample["prefetch"] = dict(self._prefetcher.stats())
        return sample


def test_prefetch_with_a_sampler_hits_and_changes_nothing(uploaded) -> None:
    shards, bucket, endpoint = uploaded
    plain = ds_for(shards, bucket, endpoint, "shard")
    ds = ds_for(shards, bucket, endpoint, "shard", prefetch=3, prefetch_threads=2)
    sampler = DefaultSampler(ds, shuffle=True, seed=3)
    ds.set_sampler(sampler, batch_size=2)
    out = [s for batch in DataLoader(ds, sampler=sampler, batch_size=2, collate_fn=lambda b: b) for s in batch]
    assert [s["image_file"] for s in out] == [shards.entries[i]["image"] for i in sampler]
    for s, i in zip(out, sampler):
        assert_same(s, plain[i])
    stats = ds.stats()["prefetch"]
    assert stats["hits"] + stats["waits"] == 18 and stats["hits"] > 0 and stats["misses"] == 0
    # in two workers: each worker predicts its own batches
    ds2 = _Probe(**{**_args(shards, bucket, endpoint), "prefetch": 2})
    ds2.set_sampler(sampler, batch_size=2)
    loader = DataLoader(ds2, sampler=sampler, batch_size=2, num_workers=2, collate_fn=lambda b: b)
    out2 = [s for batch in loader for s in batch]
    for s, i in zip(out2, sampler):
        assert_same(s, plain[i])
    assert max(s["prefetch"]["hits"] for s in out2) > 0
    assert all(s["prefetch"]["misses"] == 0 for s in out2)


def _args(shards: Shards, bucket: str, endpoint) -> dict:
    return dict(data_path=str(shards.data_json), ceph_config=endpoint.ceph_config(),
                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0, prompt_template=TEMPLATE,
                min_image_size=16, ceph_folder=f"{bucket}/shards", shard_index=f"{bucket}/shards/index.json")


def test_prefetch_survives_a_wrong_prediction(uploaded) -> None:
    shards, bucket, endpoint = uploaded
    plain = ds_for(shards, bucket, endpoint, "object")
    ds = ds_for(shards, bucket, endpoint, "object", prefetch=2)
    ds.set_epoch_order(list(range(9)))
    for i in [8, 3, 3, 0, 5, 1, 7, 2]:  # nothing like the announced order
        assert_same(ds[i], plain[i])
    assert ds.bad_sample_counts == {}


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


def test_cached_shard_mode_second_pass_hits(uploaded, tmp_path: Path) -> None:
    shards, bucket, endpoint = uploaded
    ds = ds_for(shards, bucket, endpoint, "shard", cache_dir=str(tmp_path / "cache"), cache_max_bytes=50 << 20)
    assert isinstance(ds.sample_source, CachedSource)
    first = [ds[i] for i in range(9)]
    assert ds.stats()["cache"]["hits"] == 0 and ds.stats()["cache"]["puts"] == 18
    second = [ds[i] for i in range(9)]
    for a, b in zip(first, second):
        assert_same(a, b)
    assert ds.stats()["cache"]["hits"] == 18
    # a small bound holds under eviction, and results stay right
    small = ds_for(shards, bucket, endpoint, "shard", cache_dir=str(tmp_path / "small"), cache_max_bytes=20_000)
    for i in list(range(9)) * 2:
        assert_same(small[i], first[i])
        assert small.sample_source.cache.total_bytes() <= 20_000
    assert small.stats()["cache"]["evictions"] > 0


def test_pickling_a_used_dataset_with_prefetch_and_cache(uploaded, tmp_path: Path) -> None:
    shards, bucket, endpoint = uploaded
    ds = ds_for(shards, bucket, endpoint, "shard", prefetch=2, cache_dir=str(tmp_path / "cache"))
    ds.set_epoch_order(range(9))
    before = [ds[i] for i in range(3)]
    assert ds._prefetcher._pool is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._prefetcher._pool is None and clone._prefetcher.stats()["hits"] == 0
    assert clone.stats()["cache"]["hits"] == 0
    assert clone._prefetcher.sampler == list(range(9))
    for i in range(3):
        assert_same(clone[i], before[i])
    assert clone.stats()["cache"]["hits"] >= 6  # + samples prefetched ahead
    ds._prefetcher.close()


def test_prefetcher_bounds_its_buffer() -> None:
    p = Prefetcher(depth=2, threads=1)
    for i in range(50):
        p.submit([f"k{i}"], lambda i=i: [bytes([i])])
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
    # the process ends here with one fetch running and nine queued


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
