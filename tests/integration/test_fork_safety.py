"""Boto3 clients are per process: DataLoader workers (fork) must each build
their own, and every read must return the bytes of the key asked for."""
from __future__ import annotations

import multiprocessing
import os
import pickle

import torch
from torch.utils.data import DataLoader, Dataset

from blip3o_storage import Storage
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.testing.endpoints import new_bucket


class KeyEchoDataset(Dataset):
    """Reads object i and reports which process and client served it."""

    def __init__(self, storage: Storage, bucket: str, n: int) -> None:
        self.storage, self.bucket, self.n = storage, bucket, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        uri = f"{self.bucket}/obj/{i:04d}.bin"
        data = self.storage.get(uri)
        backend = self.storage.s3_backend(uri)
        return {"index": i, "data": data, "pid": os.getpid(), "client_pid": backend._client_pid,
                "client_id": id(backend.client)}


def payload(i: int) -> bytes:
    return f"object-{i:04d}-".encode() * (50 + i % 17)


def test_dataloader_workers_build_their_own_clients(moto_endpoint):
    storage, bucket = new_bucket(moto_endpoint)
    n = 120
    for i in range(n):
        storage.put(f"{bucket}/obj/{i:04d}.bin", payload(i))
    # The parent has used (and so created) its client before the workers fork.
    parent_backend = storage.backend_for(f"{bucket}/x")
    parent_client = parent_backend.client
    assert parent_backend._client_pid == os.getpid()

    loader = DataLoader(KeyEchoDataset(storage, bucket, n), batch_size=None, num_workers=3,
                        multiprocessing_context=multiprocessing.get_context("fork"), prefetch_factor=8)
    seen = list(loader)
    assert sorted(s["index"] for s in seen) == list(range(n))
    for sample in seen:
        assert sample["data"] == payload(sample["index"]), f"wrong bytes for object {sample['index']}"
        assert sample["pid"] != os.getpid()
        assert sample["client_pid"] == sample["pid"], "worker used a client made in another process"
    assert len({s["pid"] for s in seen}) == 3
    # The parent's client is untouched and still works.
    assert parent_backend.client is parent_client
    assert storage.get(f"{bucket}/obj/0000.bin") == payload(0)


def _child_read(backend: S3Backend, uri: str, queue) -> None:
    before = backend._client_pid
    data = backend.get(uri)
    queue.put((os.getpid(), before, data, backend._client_pid))


def test_forked_child_gets_new_client_even_if_parent_had_one(moto_endpoint):
    storage, bucket = new_bucket(moto_endpoint)
    uri = f"{bucket}/fork.txt"
    storage.put(uri, b"from-parent")
    backend = storage.backend_for(uri)
    assert backend._client_pid == os.getpid()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(backend, uri, queue))
    proc.start()
    child_pid, client_pid_before, data, client_pid_after = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert data == b"from-parent"
    # The parent's client is dropped in the child at fork (ProcessLocal's fork hook), before any use;
    # the child builds its own on first use. (The pid guard for forks that bypass the hook is in
    # test_storage_contracts.py.)
    assert client_pid_before is None
    assert client_pid_after == child_pid
    assert child_pid != os.getpid()
    assert backend._client_pid == os.getpid()  # the parent's is untouched


def test_pickled_backend_carries_no_client(moto_endpoint):
    storage, bucket = new_bucket(moto_endpoint)
    backend = storage.backend_for(f"{bucket}/x")
    assert backend.client is not None
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._client is None and clone._client_pid is None
    assert moto_endpoint.secret_key not in repr(clone)


def test_spawned_workers_work_too(moto_endpoint):
    storage, bucket = new_bucket(moto_endpoint)
    for i in range(8):
        storage.put(f"{bucket}/obj/{i:04d}.bin", payload(i))
    loader = DataLoader(KeyEchoDataset(storage, bucket, 8), batch_size=None, num_workers=2,
                        multiprocessing_context=multiprocessing.get_context("spawn"))
    got = {s["index"]: s["data"] for s in loader}
    assert got == {i: payload(i) for i in range(8)}
    assert torch.utils.data.get_worker_info() is None


def _child_get_only(backend: S3Backend, uri: str, queue) -> None:
    data = backend.get(uri)
    queue.put((data, backend._client is None, backend._client_pid == os.getpid()))


def test_forked_reader_builds_no_boto3_client_for_plain_gets(moto_endpoint):
    """A DataLoader worker that only GETs needs the signed-HTTP path and the Session's
    credentials, not a boto3 client (85-140 ms of CPU each, per worker, per epoch)."""
    storage, bucket = new_bucket(moto_endpoint)
    uri = f"{bucket}/plain.bin"
    storage.put(uri, b"plain-bytes")
    backend = storage.s3_backend(uri)
    assert backend.settings.use_fast_path
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_get_only, args=(backend, uri, queue))
    proc.start()
    data, no_client, own_session = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert data == b"plain-bytes"
    assert no_client, "a plain GET in a forked worker built a boto3 client"
    assert own_session
