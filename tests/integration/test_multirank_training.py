"""Many ranks for real (issue #14): ``torch.distributed.run`` starts 2 ranks (gloo on CPU), each with 2
forked DataLoader workers, and mmengine's Runner (``launcher='pytorch'``) trains from the S3 store
(moto server; Ceph RGW with --ceph): per-object mode with DefaultSampler and shard mode with
LocalitySampler. Every sample is trained on exactly once per epoch across the ranks, the order changes
between epochs, rank 0 writes the checkpoints, and the ranks (and their workers) of this node map one
sample table file."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.local_s3 import free_port
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.testing.tools import run_upload_shards

SHARDS = ("dalle3", "text_1", "object_2")
PER_SHARD = 8  # 24 samples: a multiple of 2 ranks x batch 4, so no sampler pads with repeats
EPOCHS = 2


def _make_data(tmp_path: Path, endpoint: S3Endpoint) -> tuple[str, list[str]]:
    """The same samples per object under raw/ (with data.json) and as tars under shards/."""
    storage, bucket = new_bucket(endpoint)
    rng = np.random.default_rng(7)
    (tmp_path / "tars").mkdir()
    entries, names = [], []
    for shard in SHARDS:
        with tarfile.open(tmp_path / "tars" / f"{shard}.tar", "w") as tf:
            for i in range(PER_SHARD):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
                for name, data in ((f"{i:03d}.jpg", buf.getvalue()), (f"{i:03d}.txt", f"{shard} {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    storage.put(f"{bucket}/raw/{shard}/{name}", data)
                entries.append({"image": f"{shard}/{i:03d}.jpg", "annotation": f"{shard}/{i:03d}.txt"})
                names.append(f"{shard}/{i:03d}.jpg")
    storage.put(f"{bucket}/data.json", json.dumps(entries).encode())
    assert run_upload_shards(endpoint, tmp_path, "--bucket", bucket[len("s3://"):], "--prefix", "shards",
                             str(tmp_path / "tars")) == 0
    return bucket, names


def _torchrun(tmp_path: Path, config: str, env: dict[str, str], *overrides: str) -> list[dict]:
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "blip3o_storage.testing.multirank",
           config, str(out), str(EPOCHS), *overrides]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) + proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("mode", ["objects", "shards"])
def test_two_ranks_two_workers_train_every_sample_once_per_epoch(s3_endpoint: S3Endpoint, tmp_path: Path,
                                                                   mode: str) -> None:
    bucket, names = _make_data(tmp_path, s3_endpoint)
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    tables = tmp_path / "tables"
    env = {"BLIP3O_CEPH_CONFIG": str(conf), "BLIP3O_TABLE_CACHE": str(tables)}
    if mode == "objects":
        env["BLIP3O_CEPH_FOLDER"] = f"{bucket}/raw"
        reports = _torchrun(tmp_path, "blip3o60k_ceph.py", env, f"data_path={bucket}/data.json",
                            "image_folder=None", "cap_folder=None")
        sampler = "DefaultSampler"
    else:
        env["BLIP3O_SHARDS_FOLDER"] = f"{bucket}/shards"
        reports = _torchrun(tmp_path, "blip3o60k_shards.py", env, "shard_block_bytes=65536")
        sampler = "LocalitySampler"
    assert [r["rank"] for r in reports] == [0, 1] and {r["world"] for r in reports} == {2}
    assert {r["sampler"] for r in reports} == {sampler}
    for epoch in range(EPOCHS):
        per_rank = [r["epochs"][epoch] for r in reports]
        assert all(len(seen) == len(names) // 2 for seen in per_rank), per_rank
        assert sorted(per_rank[0] + per_rank[1]) == sorted(names)  # exactly once across the ranks
    for r in reports:
        assert r["epochs"][0] != r["epochs"][1]  # the sampler was given a new epoch
    # one table file for the node: both ranks map the same inode, their workers map it too
    assert len({(r["table"], r["inode"]) for r in reports}) == 1
    assert [p.name for p in tables.iterdir() if p.name.startswith("table-")] == [Path(reports[0]["table"]).name]
    assert all(r["rank_maps_table"] for r in reports)
    assert all(r["worker_maps"] and all(r["worker_maps"]) for r in reports)
    # rank 0 wrote a checkpoint per epoch (mmengine saves on the master only), and it loads
    work = tmp_path / "out" / "work"
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == [f"epoch_{e + 1}.pth" for e in range(EPOCHS)]
    ckpt = torch.load(work / f"epoch_{EPOCHS}.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["epoch"] == EPOCHS and "scale" in ckpt["state_dict"]
