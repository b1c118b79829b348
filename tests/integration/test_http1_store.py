"""The signed-HTTP transport (storage/http1.py) against real stores: keep-alive connections held
by the parent survive forked DataLoader workers (the workers open their own), and stay in use.

moto answers every request with ``Connection: close``, so against moto the requests go through a
keep-alive :class:`FaultProxy` (no faults); Ceph RGW (``--ceph``) keeps connections alive itself.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
from typing import Iterator

from torch.utils.data import DataLoader, Dataset

from blip3o_storage import Storage
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.fault_proxy import FaultProxy
from blip3o_storage.testing.forking import in_forked_child


@contextlib.contextmanager
def keep_alive(endpoint: S3Endpoint) -> Iterator[S3Endpoint]:
    if endpoint.name != "moto_server":
        yield endpoint
        return
    with FaultProxy(endpoint.endpoint_url) as proxy:
        yield S3Endpoint(endpoint.name, proxy.endpoint_url, endpoint.access_key, endpoint.secret_key)


def payload(i: int) -> bytes:
    return f"object-{i:04d}-".encode() * (40 + i % 23)


class ReadDataset(Dataset):
    def __init__(self, storage: Storage, bucket: str, n: int) -> None:
        self.storage, self.bucket, self.n = storage, bucket, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        http = self.storage.s3_backend(self.bucket + "/x").http
        assert http is not None
        return {"index": i, "data": self.storage.get(f"{self.bucket}/o/{i:04d}"), "pid": os.getpid(),
                "pool_pid": http._pool._owner_pid}


def test_parent_keep_alive_connection_survives_forked_workers(s3_endpoint) -> None:
    _, bucket = new_bucket(s3_endpoint)
    with keep_alive(s3_endpoint) as endpoint:
        storage = Storage(endpoint.ceph_config())
        n = 60
        for i in range(n):
            storage.put(f"{bucket}/o/{i:04d}", payload(i))
        backend = storage.s3_backend(bucket + "/x")
        http = backend.http
        assert http is not None
        assert storage.get(f"{bucket}/o/0000") == payload(0)
        assert http._pool._idle, "the store kept no connection alive: nothing to test"
        parent_conn = http._pool._idle[-1]

        def child() -> int:
            if storage.get(f"{bucket}/o/0001") != payload(1):
                return 1
            child_http = storage.s3_backend(bucket + "/x").http
            assert child_http is not None
            return 0 if child_http._pool._idle and parent_conn not in child_http._pool._idle else 2
        assert in_forked_child(child) == 0

        loader = DataLoader(ReadDataset(storage, bucket, n), batch_size=None, num_workers=2,
                            multiprocessing_context=multiprocessing.get_context("fork"), prefetch_factor=4)
        seen = list(loader)
        assert sorted(s["index"] for s in seen) == list(range(n))
        assert all(s["data"] == payload(s["index"]) for s in seen)
        assert all(s["pool_pid"] == s["pid"] != os.getpid() for s in seen)
        # The parent's connection was neither used nor closed by the children: it serves the next read.
        retries_before = backend.stats["retries"]
        assert storage.get(f"{bucket}/o/0002") == payload(2)
        assert http._pool._idle[-1] is parent_conn and backend.stats["retries"] == retries_before
