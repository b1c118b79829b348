"""A checkpoint save cut off in the middle of its multipart upload.

A subprocess saves a 64 MiB checkpoint through mmengine's ``save_checkpoint``
(streamed into a multipart upload of 5 MiB parts) via a loopback proxy that
holds back part 3 onwards, so the process is caught with parts on the server
and the upload unfinished. Then:

* SIGINT (Ctrl-C): the writer aborts the upload on the way out; no object, no
  unfinished upload left.
* SIGKILL: nothing can abort; no object is visible (loading it is a
  FileNotFoundError naming the URI), and ``abort_incomplete_uploads`` removes
  the parts left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List, Tuple

import mmengine.fileio.io as fileio_io
import pytest
import torch

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (installs the loader)
from blip3o_storage.errors import ObjectNotFoundError
from blip3o_storage.integrations.mmengine_checkpoint import load_from_blip3o_s3
from blip3o_storage.testing.fault_proxy import FaultProxy

HELD_FROM_PART = 3


def _job(uri: str) -> None:
    from mmengine.runner import save_checkpoint

    state = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(16)}  # 64 MiB
    save_checkpoint({"state_dict": state}, uri)


class PartGate:
    """Holds back every UploadPart from number HELD_FROM_PART on until :meth:`release`."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self._open = threading.Event()

    def __call__(self, method: str, target: str, headers: List[Tuple[str, str]], body: bytes) -> Any:
        if method == "PUT" and "partNumber=" in target:
            number = int(target.split("partNumber=")[1].split("&")[0])
            if number >= HELD_FROM_PART:
                self.held.set()
                self._open.wait(120)
        return headers, body

    def release(self) -> None:
        self._open.set()


@pytest.fixture
def gated(s3_bucket, s3_endpoint, tmp_path, monkeypatch) -> Iterator[tuple]:
    """(storage, bucket, gate, petreloss.conf through the proxy); BLIP3O_CEPH_CONFIG names the direct one."""
    storage, bucket = s3_bucket
    gate = PartGate()
    with FaultProxy(s3_endpoint.endpoint_url, rewrite_request=gate) as proxy:
        through = tmp_path / "proxied.conf"
        through.write_text(f"[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = {s3_endpoint.access_key}\n"
                           f"secret_key = {s3_endpoint.secret_key}\nhost_base = {proxy.endpoint_url}\n"
                           "multipart_threshold = 5MiB\nmultipart_chunksize = 5MiB\nmax_concurrency = 2\n"
                           "fast_path = false\n")
        monkeypatch.setenv("BLIP3O_CEPH_CONFIG",
                           str(s3_endpoint.write_petreloss_conf(tmp_path / "direct.conf")))
        monkeypatch.setattr(fileio_io, "backend_instances", {})
        try:
            yield storage, bucket, gate, through
        finally:
            gate.release()


def _start_and_hold(gate: PartGate, conf: Any, uri: str) -> subprocess.Popen:
    from blip3o_storage.testing.paths import REPO_ROOT

    env = dict(os.environ, BLIP3O_CEPH_CONFIG=str(conf),
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, __file__, "job", uri], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not gate.held.wait(0.2):
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the save never reached part 3"
    return proc


def _uploads(storage: Any, prefix: str) -> list:
    return storage.s3_backend(prefix).list_multipart_uploads(prefix)


def test_ctrl_c_mid_upload_aborts_it(gated) -> None:
    storage, bucket, gate, conf = gated
    uri = f"{bucket}/ckpts/epoch_1.pth"
    proc = _start_and_hold(gate, conf, uri)
    assert [u.uri for u in _uploads(storage, f"{bucket}/ckpts")] == [uri]  # caught mid-upload
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    gate.release()  # the held parts reach the server (and are refused: the upload is gone)
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode != 0 and "KeyboardInterrupt" in output, output[-3000:]
    assert not storage.exists(uri)
    assert _uploads(storage, f"{bucket}/ckpts") == []


def test_sigkill_mid_upload_leaves_no_object(gated) -> None:
    storage, bucket, gate, conf = gated
    uri = f"{bucket}/ckpts/epoch_1.pth"
    proc = _start_and_hold(gate, conf, uri)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    gate.release()
    assert not storage.exists(uri)
    with pytest.raises(ObjectNotFoundError, match=uri):
        load_from_blip3o_s3(uri)
    left = _uploads(storage, f"{bucket}/ckpts")
    assert [u.uri for u in left] == [uri]
    assert storage.s3_backend(uri).list_parts(uri, left[0].upload_id)  # parts are stored (and billed) ...
    assert storage.s3_backend(uri).abort_incomplete_uploads(f"{bucket}/ckpts", older_than_s=0) == 1
    assert _uploads(storage, f"{bucket}/ckpts") == []  # ... until aborted


if __name__ == "__main__" and sys.argv[1:2] == ["job"]:
    _job(sys.argv[2])
