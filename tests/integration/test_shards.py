"""Shard mode (tar + index, ranged reads), prefetch and the local disk cache."""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from mmengine.dataset import DefaultSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from blip3o_storage import Storage
from blip3o_storage.cli import upload_shards
from blip3o_storage.reading.prefetch import worker_stream
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.reading.sources import CachedSource, ObjectSource, ShardSource
from blip3o_storage.testing.shards import SIZE, TEMPLATE, Shards, assert_same, ds_for
from blip3o_storage.testing.shards import hostile_tar as _hostile
from blip3o_storage.training.dataset import BLIP3oDataset

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(endpoint, tmp_path: Path, *args: str) -> int:
    conf = endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    return upload_shards.main(["--config", str(conf), *args])


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
        info = get_worker_info()
        assert info is not None  # only ever read in a DataLoader worker
        return idx, info.id


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
        assert self._prefetcher is not None
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


    # the process ends here with one fetch running and nine queued


