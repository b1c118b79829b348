"""Damaged and repeated-member tars through upload_shards and shard mode on real S3 servers
(the serverless cases are in tests/unit/test_trust_tars.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from blip3o_storage.cli import upload_shards
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.reading.sources import ShardSource
from blip3o_storage.testing.tars import ALL_CASES, DUP, GOOD, make_damaged
from blip3o_storage.testing.tars import tar_bytes as _tar_bytes
from blip3o_storage.transfer.safe_tar import extract_shard
from blip3o_storage.transfer.shard_indexing import build_shard_index, data_json_from_index

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("case", ALL_CASES)
def test_cli_upload_shards_refuses_a_damaged_tar_and_sends_nothing(tmp_path: Path, case: str, s3_bucket,
                                                                   s3_endpoint, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    storage, bucket = s3_bucket
    d = make_damaged(tmp_path / "src", case)
    good = tmp_path / "src" / "good.tar"
    good.write_bytes(_tar_bytes(GOOD))
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    with caplog.at_level(logging.ERROR):
        status = upload_shards.main(["--config", str(conf), "--bucket", bucket[len("s3://"):], "--prefix", "p",
                                     str(tmp_path / "src")])
    assert status == 2  # the tool's scheme: a hostile/corrupt tar is a bad input, like a bad option
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(d.tar) in m and f"byte {d.offset}" in m for m in errors), errors
    assert list(storage.list(f"{bucket}/p/")) == []  # no index missing members, and no tars either


def test_repeated_member_shard_mode_reads_the_same_copy_as_extraction(
        tmp_path: Path, s3_bucket, s3_endpoint, caplog: pytest.LogCaptureFixture) -> None:
    storage, bucket = s3_bucket
    tar = tmp_path / "src" / "dup.tar"
    tar.parent.mkdir()
    tar.write_bytes(_tar_bytes(DUP))
    extracted = extract_shard(tar, tmp_path / "raw")

    entry = build_shard_index(tar)
    assert entry["duplicates"] == list(extracted.duplicates) == ["k.jpg"]
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    with caplog.at_level(logging.WARNING):
        assert upload_shards.main(["--config", str(conf), "--bucket", bucket[len("s3://"):], "--prefix", "p",
                                   str(tar)]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 repeated member name(s)" in m for m in messages), messages
    assert any(str(tar) in m and "'k.jpg'" in m for m in messages), messages

    index = ShardIndex.load(storage, f"{bucket}/p/index.json")
    source = ShardSource(index)
    for rel in ("dup/k.jpg", "dup/k.txt", "dup/z.jpg"):
        got = source.read(storage, source.locate(f"{bucket}/p", rel))
        assert got == (tmp_path / "raw" / rel).read_bytes()
    assert source.read(storage, source.locate(f"{bucket}/p", "dup/k.jpg")) == DUP[-1][1]
    entries, _ = data_json_from_index(json.loads(storage.get(f"{bucket}/p/index.json")))
    assert {"image": "dup/k.jpg", "annotation": "dup/k.txt"} in entries


def test_shard_index_in_a_missing_bucket_names_the_bucket(s3_endpoint) -> None:
    from blip3o_storage import Storage
    from blip3o_storage.errors import BucketNotFoundError

    storage = Storage(s3_endpoint.ceph_config())
    with pytest.raises(BucketNotFoundError, match=r"bucket 'no-such-bucket-b7e1' does not exist.*shard_index="):
        ShardIndex.load(storage, "s3://no-such-bucket-b7e1/shards/index.json")
