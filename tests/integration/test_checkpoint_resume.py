"""Kill and resume on the object store, for real.

A Runner trains a small model on CPU in a subprocess, saving a checkpoint to
``s3://`` every epoch (CheckpointHook ``max_keep_ckpts=2``, LoggerHook
``out_dir`` on s3), and is SIGKILLed in the middle of epoch 3, after
``epoch_2.pth`` is on the store. A new Runner process resumes from
``load_from='s3://.../epoch_2.pth', resume=True`` and finishes; its final
weights equal (``torch.equal``) those of an uninterrupted run (in the test
process, while the job starts). Against moto server, and Ceph RGW with ``--ceph``.

The job is this file run as a script (``python test_checkpoint_resume.py job ...``).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (what a config's custom_imports does)

EPOCHS = 4
KILL_IN_EPOCH = 2  # 0-based: the third epoch, after epoch_1.pth and epoch_2.pth are saved


# -- the job ------------------------------------------------------------------------------------
class Net(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, mode: str = "loss") -> Any:
        return {"loss": ((self.body(x) - y) ** 2).mean()}


class StopHere(Hook):
    """With ``ready``: says "epoch 3 is running" through that file, then waits to be killed."""

    def __init__(self, ready: Optional[str]) -> None:
        self.ready = ready

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self.ready and runner.epoch == KILL_IN_EPOCH and batch_idx == 2:
            Path(self.ready).write_text(str(os.getpid()))
            time.sleep(600)


def train(bucket: str, work_dir: str, ready: Optional[str] = None, load_from: Optional[str] = None) -> dict:
    """Train Net for EPOCHS epochs with checkpoints and logs on ``bucket``; the final state dict."""
    data = torch.Generator().manual_seed(1)
    xs, noise = torch.randn(48, 8, generator=data), torch.randn(48, 1, generator=data)
    dataset = [dict(x=xs[i], y=xs[i, :1] * 2 - xs[i, 1:2] + 0.1 * noise[i]) for i in range(48)]
    torch.manual_seed(0)  # the same initial weights in every fresh run
    runner = Runner(
        model=Net(), work_dir=work_dir,
        train_dataloader=dict(dataset=dataset, batch_size=4, num_workers=0,
                              sampler=dict(type="DefaultSampler", shuffle=True, seed=0),
                              collate_fn=dict(type="default_collate")),
        train_cfg=dict(by_epoch=True, max_epochs=EPOCHS),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01, momentum=0.9)),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=True, out_dir=f"{bucket}/ckpts",
                            max_keep_ckpts=2),
            logger=dict(type="LoggerHook", interval=4, out_dir=f"{bucket}/logs")),
        custom_hooks=[StopHere(ready)], randomness=dict(seed=0, deterministic=True),
        load_from=load_from, resume=bool(load_from))
    runner.train()
    return {name: t.detach().clone() for name, t in runner.model.state_dict().items()}


def _job(argv: List[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready")
    parser.add_argument("--load-from")
    args = parser.parse_args(argv)
    torch.save(train(args.bucket, args.work_dir, args.ready, args.load_from), args.out)


# -- the test -----------------------------------------------------------------------------------
def _start(tmp_path: Path, conf: Path, *args: str) -> subprocess.Popen:
    from blip3o_storage.testing.paths import REPO_ROOT

    env = dict(os.environ, BLIP3O_CEPH_CONFIG=str(conf), BLIP3O_TRUSTED_CHECKPOINTS="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.log", "wb")  # noqa: SIM115 -- closed by the OS at exit
    return subprocess.Popen([sys.executable, __file__, "job", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)


def _finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 240) -> None:
    code = proc.wait(timeout=timeout)
    if code != 0:
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("job-*.log")))
        raise AssertionError(f"job exited {code}:\n{logs}")


def _names(storage: Any, uri: str) -> List[str]:
    return sorted(info.key for info in storage.list(uri, recursive=True))


def test_sigkill_mid_epoch_then_resume_from_s3_equals_an_uninterrupted_run(s3_bucket, s3_conf, tmp_path,
                                                                          monkeypatch) -> None:
    storage, bucket = s3_bucket
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(s3_conf))
    monkeypatch.setenv("BLIP3O_TRUSTED_CHECKPOINTS", "1")
    ready = tmp_path / "ready"
    killed = _start(tmp_path, s3_conf, "--bucket", bucket, "--work-dir", str(tmp_path / "run"),
                    "--out", str(tmp_path / "never.pt"), "--ready", str(ready))
    want = train(bucket, str(tmp_path / "full"))  # the uninterrupted run, here while the job starts
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert killed.poll() is None, f"the job to kill exited {killed.returncode} before epoch 3"
        assert time.monotonic() < deadline, "the job to kill never reached epoch 3"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    ckpts = f"{bucket}/ckpts/run"
    assert _names(storage, ckpts) == ["epoch_1.pth", "epoch_2.pth"]  # epoch 3 was cut off before its save
    assert not storage.exists(f"{bucket}/logs/run")  # LoggerHook uploads after the run; this one never ended

    resumed = _start(tmp_path, s3_conf, "--bucket", bucket, "--work-dir", str(tmp_path / "run"),
                     "--out", str(tmp_path / "resumed.pt"), "--load-from", f"{ckpts}/epoch_2.pth")
    _finish(resumed, tmp_path)

    got = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert sorted(got) == sorted(want) and all(torch.isfinite(t).all() for t in want.values())
    assert all(torch.equal(got[name], want[name]) for name in want)
    # the resumed run's epoch 3 checkpoint is the uninterrupted run's, and epoch 4 still changed the weights
    third = _load_checkpoint(f"{ckpts}/epoch_3.pth")["state_dict"]
    third_full = _load_checkpoint(f"{bucket}/ckpts/full/epoch_3.pth")["state_dict"]
    assert all(torch.equal(third[name], third_full[name]) for name in third_full)
    assert not torch.equal(third["body.0.weight"], want["body.0.weight"])
    # max_keep_ckpts=2 removed the older ones on the store, in both runs
    assert _names(storage, ckpts) == ["epoch_3.pth", "epoch_4.pth"]
    assert _names(storage, f"{bucket}/ckpts/full") == ["epoch_3.pth", "epoch_4.pth"]
    # the resumed run's text log is on the store and shows the resume and the last epoch
    logs = [name for name in _names(storage, f"{bucket}/logs/run") if name.endswith(".log")]
    assert len(logs) == 1, _names(storage, f"{bucket}/logs/run")
    text = storage.get_text(f"{bucket}/logs/run/{logs[0]}")
    assert f"resumed epoch: {KILL_IN_EPOCH}," in text and f"Epoch(train) [{EPOCHS}]" in text


if __name__ == "__main__" and sys.argv[1:2] == ["job"]:
    _job(sys.argv[2:])
