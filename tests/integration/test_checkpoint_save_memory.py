"""Saving a checkpoint to ``s3://`` holds one copy of it in RAM, not two.

mmengine's own ``save_checkpoint`` serialises into a BytesIO and PUTs its
``getvalue()``: the tensors plus two serialised copies. Ours streams
``torch.save`` into a multipart upload. A subprocess builds a 192 MiB state
dict, resets its peak-RSS counter (``/proc/self/clear_refs``), saves through the
name mmengine's Runner calls (``mmengine.runner.runner.save_checkpoint``) and
reports the peak above the resident size before the save: streamed, it stays
under half the state; mmengine's path (``BLIP3O_STREAM_CHECKPOINT_SAVE=0``, in the
same test) takes more than the state again, so the measure can tell them apart.
The saved object loads back bit-equal.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict

import mmengine.fileio.io as fileio_io
import torch

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (installs the loader)
from blip3o_storage.integrations.mmengine_checkpoint import STREAM_SAVE_ENV, load_from_blip3o_s3

LAYERS, SHAPE = 48, (1024, 1024)  # 48 x 4 MiB = 192 MiB of float32
MiB = 1 << 20


def _state() -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(*SHAPE, generator=generator) for i in range(LAYERS)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _job(uri: str) -> None:
    import mmengine.runner.runner as mm_runner

    state = _state()
    from mmengine.fileio import get_file_backend

    mm_runner.save_checkpoint({"warm": torch.zeros(1)}, uri + ".warm")  # pools built outside the measure
    # ... and the boto3 client the multipart upload needs, which a small PUT no longer builds (nor
    # imports boto3 for): a one-time cost of the process, not of a save.
    get_file_backend(uri).storage.s3_backend(uri).connect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak RSS (VmHWM) := current RSS
    before = _status_kib("VmRSS")
    mm_runner.save_checkpoint(state, uri)
    print(json.dumps({"extra_mib": (_status_kib("VmHWM") - before) / 1024}))


def _measure(uri: str, conf: str, stream: bool) -> float:
    from blip3o_storage.testing.paths import REPO_ROOT

    env = dict(os.environ, BLIP3O_CEPH_CONFIG=conf, **{STREAM_SAVE_ENV: "1" if stream else "0"},
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, __file__, "job", uri], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return float(json.loads(done.stdout.strip().splitlines()[-1])["extra_mib"])


def test_streamed_save_holds_one_copy(s3_bucket, s3_conf, monkeypatch) -> None:
    storage, bucket = s3_bucket
    conf = s3_conf.read_text().rstrip("\n") + "\nmultipart_chunksize = 8MiB\nmax_concurrency = 4\n"
    s3_conf.write_text(conf)  # part x (concurrency + 1) = 40 MiB in flight at most
    state_mib = LAYERS * SHAPE[0] * SHAPE[1] * 4 / MiB
    streamed = _measure(f"{bucket}/ckpt/streamed.pth", str(s3_conf), stream=True)
    mmengine_way = _measure(f"{bucket}/ckpt/mmengine.pth", str(s3_conf), stream=False)
    print(f"peak RSS above the state while saving {state_mib:.0f} MiB: streamed {streamed:.0f} MiB, "
          f"mmengine's BytesIO path {mmengine_way:.0f} MiB")
    assert streamed < state_mib / 2, (streamed, mmengine_way)
    assert mmengine_way > state_mib, (streamed, mmengine_way)

    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(s3_conf))
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    want = _state()
    got = load_from_blip3o_s3(f"{bucket}/ckpt/streamed.pth", map_location="cpu")
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert storage.stat(f"{bucket}/ckpt/streamed.pth").size > state_mib * MiB


if __name__ == "__main__" and sys.argv[1:2] == ["job"]:
    _job(sys.argv[2])
