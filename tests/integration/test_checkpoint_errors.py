"""Bad checkpoints and bad places on ``s3://``: each a clear error naming the URI.

Missing object, missing bucket, an object cut short, something that is not a
checkpoint, Runner state refused by ``weights_only`` unless the store is
trusted, a write the bucket policy forbids; and a save that fails half way
leaves no object and no unfinished upload.
"""
from __future__ import annotations

import json
import uuid

import mmengine.fileio.io as fileio_io
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import load_checkpoint, save_checkpoint

from blip3o_storage.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptDataError,
    ObjectNotFoundError,
    UntrustedDataError,
)
from blip3o_storage.integrations.mmengine_checkpoint import TRUST_ENV
from blip3o_storage.testing.endpoints import new_bucket


@pytest.fixture
def env(s3_bucket, s3_conf, monkeypatch):
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(s3_conf))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    return s3_bucket


def test_missing_checkpoint(env) -> None:
    _, bucket = env
    uri = f"{bucket}/ckpts/epoch_9.pth"
    with pytest.raises(ObjectNotFoundError, match=uri):
        load_checkpoint(torch.nn.Linear(2, 2), uri)


def test_missing_bucket(env) -> None:
    _, bucket = env
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/ckpts/epoch_1.pth"
    with pytest.raises(BucketNotFoundError, match=uri.split("/")[2]):
        load_checkpoint(torch.nn.Linear(2, 2), uri)
    with pytest.raises(BucketNotFoundError, match=uri.split("/")[2]):
        save_checkpoint({"state_dict": torch.nn.Linear(2, 2).state_dict()}, uri)


def test_truncated_and_foreign_objects(env) -> None:
    storage, bucket = env
    whole = f"{bucket}/ckpts/whole.pth"
    save_checkpoint({"state_dict": torch.nn.Linear(64, 64).state_dict()}, whole)
    data = storage.get(whole)
    for name, body in (("cut.pth", data[: len(data) // 2]), ("text.pth", b"not a checkpoint\n" * 10),
                       ("empty.pth", b"")):
        uri = f"{bucket}/ckpts/{name}"
        storage.put(uri, body)
        with pytest.raises(CorruptDataError, match=rf"{uri}: not a readable torch checkpoint \({len(body):,} bytes"):
            load_checkpoint(torch.nn.Linear(64, 64), uri)


def test_runner_state_needs_a_trusted_store(env, monkeypatch) -> None:
    """torch's weights_only refuses mmengine's HistoryBuffer; the error says which variable trusts the store."""
    _, bucket = env
    uri = f"{bucket}/ckpts/runner.pth"
    buffer = HistoryBuffer()
    buffer.update(1.5)
    save_checkpoint({"state_dict": torch.nn.Linear(2, 2).state_dict(), "message_hub": {"loss": buffer}}, uri)
    with pytest.raises(UntrustedDataError, match=rf"{uri}: .*HistoryBuffer.*{TRUST_ENV}=1"):
        load_checkpoint(torch.nn.Linear(2, 2), uri)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_checkpoint(torch.nn.Linear(2, 2), uri)["message_hub"]["loss"].current() == 1.5


def test_exception_mid_save_leaves_nothing(env) -> None:
    """A checkpoint that cannot be serialised: the upload is aborted, nothing appears, no upload left over."""
    storage, bucket = env

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("cannot pickle this")

    uri = f"{bucket}/ckpts/broken.pth"
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_checkpoint({"state_dict": torch.nn.Linear(256, 256).state_dict(), "bad": Unpicklable()}, uri)
    assert not storage.exists(uri)
    assert storage.s3_backend(uri).list_multipart_uploads(f"{bucket}/ckpts") == []


# -- a bucket policy that forbids writes ----------------------------------------------------------
@pytest.fixture(params=["moto_auth", pytest.param("ceph_rgw", marks=pytest.mark.ceph)])
def policed(request, tmp_path, monkeypatch):
    """A bucket whose policy denies s3:PutObject to everyone, on a server that enforces it;
    (storage, bucket URI) with BLIP3O_CEPH_CONFIG set for it."""
    endpoint = request.getfixturevalue("moto_auth_endpoint" if request.param == "moto_auth" else "ceph_endpoint")
    storage, bucket = new_bucket(endpoint)
    name = bucket[len("s3://"):]
    storage.put(f"{bucket}/ckpts/readable.pth", b"written before the policy")
    storage.s3_backend(bucket).client.put_bucket_policy(Bucket=name, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                                                "Resource": f"arn:aws:s3:::{name}/*"}]}))
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")))
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    yield storage, bucket
    storage.s3_backend(bucket).client.delete_bucket_policy(Bucket=name)


def test_no_write_permission(policed) -> None:
    storage, bucket = policed
    uri = f"{bucket}/ckpts/epoch_1.pth"
    with pytest.raises(AccessDeniedError, match=uri):
        save_checkpoint({"state_dict": torch.nn.Linear(2, 2).state_dict()}, uri)
    assert not storage.exists(uri)
    assert storage.get(f"{bucket}/ckpts/readable.pth") == b"written before the policy"  # reads still allowed
