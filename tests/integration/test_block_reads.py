"""Block reads (one GET per aligned block of a tar) and the LocalitySampler that feeds them."""
from __future__ import annotations

import collections
import os
import pickle
import threading
from typing import Dict, List

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from blip3o_storage import ConfigError, CorruptDataError, ObjectNotFoundError
from blip3o_storage.reading.block_reader import BlockReader
from blip3o_storage.reading.sources import ShardSource
from blip3o_storage.testing.shards import assert_same, ds_for
from blip3o_storage.training.dataset import BLIP3oDataset
from blip3o_storage.training.locality_sampler import LocalitySampler, deal_batches

BLOCK = 4096


@pytest.fixture
def blob(s3_bucket):
    """A 50,000-byte object of known bytes (the last block is partial)."""
    storage, bucket = s3_bucket
    data = os.urandom(50_000)
    uri = f"{bucket}/blob.bin"
    storage.put(uri, data)
    return storage, uri, data


# -- BlockReader ---------------------------------------------------------------------------
def test_block_reader_serves_any_range_and_fetches_each_block_once(blob) -> None:
    storage, uri, data = blob
    reader = BlockReader(BLOCK, max_blocks=2)
    ranges = [(0, 10), (5, 4000), (4090, 20), (4096, 4096), (8000, 9000), (49_990, 10), (45_000, 5000)]
    for start, length in ranges:
        assert reader.read(storage, uri, start, length, len(data)) == data[start:start + length]
    # walking the object front to back touches each of its 13 blocks once
    walker = BlockReader(BLOCK, max_blocks=2)
    for start in range(0, len(data), 700):
        length = min(700, len(data) - start)
        assert walker.read(storage, uri, start, length, len(data)) == data[start:start + length]
    stats = walker.stats()
    assert stats["fetches"] == 13 and stats["fetched_bytes"] == len(data)
    assert stats["reads"] == len(range(0, len(data), 700))


def test_expected_ranges_trim_each_block_and_other_reads_still_work(blob) -> None:
    """With expectations, a block is fetched from the first to the last expected byte in it; a
    member crossing a boundary reads the tail of one block and the head of the next; a read
    nobody announced is one ranged GET of just its bytes (counted), never wrong bytes."""
    storage, uri, data = blob
    reader = BlockReader(BLOCK, max_blocks=8)
    expected = [(100, 50), (900, 100), (4000, 200), (9000, 10), (12_400, 8000)]  # 4000+200 and 12_400+8000 cross
    for start, length in expected:
        reader.expect(uri, start, length)
    for start, length in expected + [(950, 20)]:
        assert reader.read(storage, uri, start, length, len(data)) == data[start:start + length]
    stats = reader.stats()
    # blocks 0 [100, 4096), 1 [4096, 4200), 2 [9000, 9010), 3 [12_400, 16_384), 4 [16_384, 20_400)
    assert stats["fetches"] == 5 and stats["unplanned"] == 0
    assert stats["fetched_bytes"] == (4096 - 100) + 104 + 10 + (16_384 - 12_400) + (20_400 - 16_384)
    assert reader.holds(uri, 120, 10) and not reader.holds(uri, 20, 10)  # block 0 is held from byte 100 on
    assert reader.read(storage, uri, 20, 10, len(data)) == data[20:30]  # before the span: its own GET
    assert reader.read(storage, uri, 30_000, 100, len(data)) == data[30_000:30_100]  # a block nobody expected
    assert reader.stats()["unplanned"] == 2 and reader.stats()["fetches"] == 7


def test_block_reader_evicts_least_recently_used(blob) -> None:
    storage, uri, data = blob
    reader = BlockReader(BLOCK, max_blocks=2)
    for start in (0, BLOCK, 0, 2 * BLOCK, 0, BLOCK):  # block 1 is evicted by block 2, block 0 stays in use
        reader.read(storage, uri, start, 100, len(data))
    assert reader.stats()["fetches"] == 4  # 0, 1, 2, then 1 again


def test_block_reads_without_locality_warn_once(blob, caplog) -> None:
    storage, uri, data = blob
    reader = BlockReader(BLOCK, max_blocks=1)
    with caplog.at_level("WARNING", logger="blip3o_storage.reading.block_reader"):
        for i in range(100):  # blocks 0 and 2 in turn: every read is a new GET
            start = (i % 2) * 2 * BLOCK
            assert reader.read(storage, uri, start, 10, len(data)) == data[start:start + 10]
    warnings = [r for r in caplog.records if "do not stay within blocks" in r.getMessage()]
    assert len(warnings) == 1 and "LocalitySampler" in warnings[0].getMessage()
    caplog.clear()
    walker = BlockReader(BLOCK)  # a front-to-back walk reuses each block: no warning
    with caplog.at_level("WARNING", logger="blip3o_storage.reading.block_reader"):
        for start in range(0, len(data) - 100, 300):
            walker.read(storage, uri, start, 100, len(data))
    assert walker.stats()["reads"] >= 64 and not caplog.records


def test_threads_reading_one_block_share_one_fetch(blob) -> None:
    storage, uri, data = blob
    reader = BlockReader(16 * BLOCK)
    barrier = threading.Barrier(8)
    got: Dict[int, bytes] = {}

    def read(i: int) -> None:
        barrier.wait()
        got[i] = reader.read(storage, uri, i * 1000, 900, len(data))

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == data[i * 1000:i * 1000 + 900] for i in range(8))
    assert reader.stats()["fetches"] == 1 and reader.stats()["reads"] == 8


def test_failed_block_fetch_raises_and_is_retried_next_time(blob) -> None:
    storage, uri, data = blob
    reader = BlockReader(BLOCK)
    storage.delete(uri)
    with pytest.raises(ObjectNotFoundError, match="blob.bin"):
        reader.read(storage, uri, 0, 10, len(data))
    storage.put(uri, data)
    assert reader.read(storage, uri, 0, 10, len(data)) == data[:10]
    with pytest.raises(CorruptDataError, match="outside the object"):
        reader.read(storage, uri, 49_999, 2, len(data))


def test_block_reader_starts_empty_after_pickling(blob) -> None:
    storage, uri, data = blob
    reader = BlockReader(BLOCK, max_blocks=3)
    reader.read(storage, uri, 0, 10, len(data))
    copy = pickle.loads(pickle.dumps(reader))
    assert (copy.block_bytes, copy.max_blocks) == (BLOCK, 3)
    assert copy.stats()["fetches"] == 0
    assert copy.read(storage, uri, 100, 10, len(data)) == data[100:110]


@pytest.mark.parametrize("bad", [dict(block_bytes=100), dict(max_blocks=0)])
def test_block_reader_rejects_bad_settings(bad) -> None:
    with pytest.raises(ValueError):
        BlockReader(**{"block_bytes": BLOCK, **bad})


# -- LocalitySampler -----------------------------------------------------------------------
class _Grouped(Dataset):
    """``n`` indices in groups of ``size``; returns (index, worker id)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def locality_groups(self) -> List[List[int]]:
        return [list(range(i, min(i + self.size, self.n))) for i in range(0, self.n, self.size)]

    def __getitem__(self, idx: int):
        info = get_worker_info()
        return idx, info.id if info is not None else 0


def test_deal_batches_keeps_every_index_once() -> None:
    groups = [list(range(0, 7)), list(range(7, 9)), list(range(9, 30))]
    for bs in (1, 3, 8):
        for nw in (0, 1, 2, 5):
            for mix in (1, 2, 3):
                assert sorted(deal_batches(groups, bs, nw, mix)) == list(range(30))


@pytest.mark.parametrize("mix", [1, 2])
def test_each_group_is_read_by_one_dataloader_worker(mix: int) -> None:
    ds = _Grouped(96, 12)  # 8 groups of 12 = 3 batches of 4 each
    sampler = LocalitySampler(ds, batch_size=4, num_workers=2, seed=5, mix=mix)
    loader = DataLoader(ds, sampler=sampler, batch_size=4, num_workers=2)
    batches = [list(zip(idxs.tolist(), wids.tolist())) for idxs, wids in loader]
    seen = [pair for batch in batches for pair in batch]
    assert [i for i, _ in seen] == list(sampler)
    assert sorted(i for i, _ in seen) == list(range(96))
    workers_per_group = collections.defaultdict(set)
    for i, w in seen:
        workers_per_group[i // 12].add(w)
    assert all(len(w) == 1 for w in workers_per_group.values()), workers_per_group
    assert {w.pop() for w in workers_per_group.values()} == {0, 1}
    # and samples within a batch are shuffled, not in storage order
    assert [i for i, _ in seen] != sorted(i for i, _ in seen)
    groups_per_batch = [len({i // 12 for i, _ in batch}) for batch in batches]
    if mix == 1:
        assert groups_per_batch == [1] * 24  # groups of exactly 3 batches: one group per batch
    else:
        # (a third group opens when one of the two runs out mid-batch)
        assert sum(n > 1 for n in groups_per_batch) > len(batches) // 2 and max(groups_per_batch) <= 3


def test_locality_sampler_epochs_seeds_and_ranks() -> None:
    ds = _Grouped(50, 8)
    a = LocalitySampler(ds, batch_size=4, num_workers=2, seed=1)
    b = LocalitySampler(ds, batch_size=4, num_workers=2, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(50)) and len(a) == 50
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(50))
    assert list(LocalitySampler(ds, shuffle=False)) == list(range(50))
    # three ranks: equal lengths (padded by repeats, like DefaultSampler), together every index
    ranks = [list(LocalitySampler(ds, batch_size=4, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(r) for r in ranks] == [17, 17, 17]
    assert set().union(*map(set, ranks)) == set(range(50))
    truncated = [list(LocalitySampler(ds, seed=1, rank=r, world_size=3, round_up=False)) for r in range(3)]
    assert [len(r) for r in truncated] == [16, 16, 16] and len(set().union(*map(set, truncated))) == 48
    with pytest.raises(ValueError, match="rank 3"):
        LocalitySampler(ds, rank=3, world_size=3)
    with pytest.raises(ValueError, match="mix"):
        LocalitySampler(ds, mix=0)
    mixed = LocalitySampler(ds, batch_size=4, num_workers=2, seed=1, mix=2)
    assert list(mixed) == list(LocalitySampler(ds, batch_size=4, num_workers=2, seed=1, mix=2))  # reproducible
    assert sorted(mixed) == list(range(50)) and list(mixed) != list(b)


def test_locality_sampler_falls_back_to_runs_for_other_datasets() -> None:
    class Plain(Dataset):
        def __len__(self) -> int:
            return 70

        def __getitem__(self, idx: int) -> int:
            return idx

    sampler = LocalitySampler(Plain(), batch_size=4, num_workers=2, seed=0)
    assert sorted(sampler) == list(range(70)) and len(sampler.groups) == 3


# -- the dataset in block mode ---------------------------------------------------------------
class _Counting(BLIP3oDataset):
    """Adds this worker's block-read counters to each sample."""

    def __getitem__(self, idx: int):
        sample = super().__getitem__(idx)
        stats = self.stats()
        assert self.ceph_folder is not None
        backend = self.storage.s3_backend(self.ceph_folder)
        sample["blocks"] = dict(stats["blocks"], pid=os.getpid(), prefetch_misses=stats["prefetch"]["misses"],
                                boto3_client=backend._client is not None)
        return sample


def test_block_mode_gives_the_same_samples_with_two_workers_and_few_gets(uploaded) -> None:
    tree, bucket, endpoint = uploaded
    reference = ds_for(tree, bucket, endpoint, "object")
    ds = ds_for(tree, bucket, endpoint, "shard", _Counting, shard_block_bytes=4 * BLOCK, prefetch=4,
                prefetch_threads=2)
    assert isinstance(ds.sample_source, ShardSource) and ds.sample_source.blocks is not None
    groups = ds.locality_groups()
    assert sorted(i for g in groups for i in g) == list(range(9)) and len(groups) < 9
    sampler = LocalitySampler(ds, batch_size=2, num_workers=2, seed=0)
    ds.set_sampler(sampler, batch_size=2)
    loader = DataLoader(ds, sampler=sampler, batch_size=2, num_workers=2, collate_fn=lambda b: b)
    out = [s for batch in loader for s in batch]
    assert [s["image_file"] for s in out] == [tree.entries[i]["image"] for i in sampler]
    for s, i in zip(out, sampler):
        assert_same(s, reference[i])
    last: Dict[int, dict] = {}
    for s in out:
        last[s["blocks"]["pid"]] = s["blocks"]
    assert len(last) == 2
    reads = sum(c["reads"] for c in last.values())
    fetches = sum(c["fetches"] for c in last.values())
    assert reads == 18  # image + caption file of 9 samples (this data.json has no inline captions)
    assert fetches < 9, fetches  # fewer GETs than samples: members sharing a block came from one GET
    assert all(c["prefetch_misses"] == 0 for c in last.values())  # prefetch followed the LocalitySampler
    # the tars' size checks (a HEAD each) went over the signed-HTTP path: building a boto3 client
    # cost each worker ~0.5 s of CPU, 0.9 ms a sample of a 1,100-sample pass (issue #16)
    assert not any(c["boto3_client"] for c in last.values())


def test_block_mode_fetches_only_what_the_data_json_uses(uploaded, tmp_path) -> None:
    """A data.json that keeps every other sample: each tar's one block is fetched from its first
    to its last used member (not whole), every sample still equal to the per-object read."""
    import json

    tree, bucket, endpoint = uploaded
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(tree.entries[::2]))
    reference = ds_for(tree, bucket, endpoint, "object", data_path=str(subset))
    ds = ds_for(tree, bucket, endpoint, "shard", data_path=str(subset), shard_block_bytes=64 * BLOCK, prefetch=0)
    sampler = LocalitySampler(ds, batch_size=2, num_workers=0, seed=0)  # asks for locality_groups()
    for i in sampler:
        assert_same(ds[i], reference[i])
    source = ds.sample_source
    refs = [source.locate(ds.ceph_folder, rel) for e in ds.data_list for rel in (e["image"], e["annotation"])]
    spans: Dict[str, List[int]] = {}
    for ref in refs:
        lo, hi = spans.setdefault(ref.uri, [ref.start, ref.start + ref.length])
        spans[ref.uri] = [min(lo, ref.start), max(hi, ref.start + ref.length)]
    stats = ds.stats()["blocks"]
    assert stats["unplanned"] == 0 and stats["fetches"] == len(spans) == 2
    assert stats["fetched_bytes"] == sum(hi - lo for lo, hi in spans.values())
    tar_bytes = sum(p.stat().st_size for p in tree.tars.glob("*.tar"))
    assert stats["fetched_bytes"] < tar_bytes * 0.9, (stats, tar_bytes)


def test_block_mode_settings_are_checked(uploaded) -> None:
    tree, bucket, endpoint = uploaded
    with pytest.raises(ConfigError, match="shard_block_bytes needs shard_index"):
        ds_for(tree, bucket, endpoint, "object", shard_block_bytes=BLOCK)
    with pytest.raises(ConfigError, match=">= 4096"):
        ds_for(tree, bucket, endpoint, "shard", shard_block_bytes=100)
    assert ds_for(tree, bucket, endpoint, "object").locality_groups() is None


def test_replaced_tar_is_detected_in_block_mode(uploaded) -> None:
    tree, bucket, endpoint = uploaded
    from blip3o_storage import Storage

    Storage(endpoint.ceph_config()).put(f"{bucket}/shards/text_1.tar", b"x" * 100)
    ds = ds_for(tree, bucket, endpoint, "shard", shard_block_bytes=BLOCK, max_retries=0)
    i = next(i for i, e in enumerate(tree.entries) if e["image"].startswith("text_1/"))
    with pytest.raises(Exception, match="corrupt"):
        ds[i]
    assert "changed after indexing" in ds.bad_samples_log[-1].message
    assert torch.is_tensor(ds[0]["pixel_values"])  # the other tar still reads
