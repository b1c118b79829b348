"""How each tool of the peer benchmark (benchmarks/peers.py) is invoked: one small function per tool.

Command-line uploaders run as child processes (their wall time, and their CPU time from
RUSAGE_CHILDREN); readers run in this process, as a training job would use them, with a thread
pool of the same size for every client. The endpoint, credentials and the tools' environment come
from benchmarks/run.py (``Endpoint``, ``Uploaders``), so both benchmarks talk to the same server the
same way.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from peer_stats import NOT_INSTALLED
from proc_cpu import proc_cpu_seconds
from run import REPO, Endpoint, Uploaders, tool_version

# -- CPU accounting -----------------------------------------------------------


def self_cpu_seconds() -> float:
    """User + system CPU of this process, all threads (a reader's client cost)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu_seconds() -> float:
    """User + system CPU of waited-for children (a command-line uploader's client cost)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Cost:
    """What one timed step took: wall seconds, client CPU seconds, server CPU seconds (None: unknown)."""

    seconds: float
    client_cpu: float
    server_cpu: Optional[float]


def measure(step: Callable[[], object], server_pids: Sequence[int], children: bool) -> Cost:
    """Run ``step`` once; client CPU from this process (``children=False``) or its children."""
    cpu = children_cpu_seconds if children else self_cpu_seconds
    s0, c0, t0 = proc_cpu_seconds(server_pids), cpu(), time.monotonic()
    step()
    seconds, c1, s1 = time.monotonic() - t0, cpu(), proc_cpu_seconds(server_pids)
    server = s1 - s0 if s0 is not None and s1 is not None else None
    return Cost(seconds, c1 - c0, server)


# -- command-line uploaders ---------------------------------------------------


class CommandFailed(RuntimeError):
    """A tool exited non-zero: the row shows the error, the run goes on with the other tools."""


def project_upload(up: Uploaders, src: Path, bucket: str, prefix: str) -> list[str]:
    """``tools/upload.py`` as a user runs it (its verification LIST included)."""
    return [sys.executable, "tools/upload.py", str(src), "--bucket", bucket, "--prefix", prefix,
            "--config", str(up.ep.conf), "--workers", str(up.concurrency)]


def aws_sync(up: Uploaders, src: Path, bucket: str, prefix: str) -> list[str]:
    """``aws s3 sync`` (max_concurrent_requests from the config run.Uploaders writes)."""
    return [str(up.aws), "s3", "sync", f"{src}/", f"s3://{bucket}/{prefix}", "--endpoint-url", up.ep.url,
            "--only-show-errors", "--no-progress"]


def s5cmd_cp(up: Uploaders, src: Path, bucket: str, prefix: str) -> list[str]:
    """``s5cmd cp`` of the whole tree: the fastest first upload in the issue's table."""
    return [str(up.s5cmd), "--endpoint-url", up.ep.url, "--numworkers", str(up.concurrency), "cp",
            f"{src}/*", f"s3://{bucket}/{prefix}"]


def s5cmd_sync(up: Uploaders, src: Path, bucket: str, prefix: str) -> list[str]:
    """``s5cmd sync`` (size + mtime comparison): the fastest no-op re-upload in the issue's table."""
    return [str(up.s5cmd), "--endpoint-url", up.ep.url, "--numworkers", str(up.concurrency), "sync",
            f"{src}/", f"s3://{bucket}/{prefix}"]


def rclone_copy(up: Uploaders, src: Path, bucket: str, prefix: str) -> list[str]:
    """``rclone copy --checksum`` (MD5 vs ETag, as our upload compares content, not mtimes)."""
    return [str(up.rclone), "copy", str(src), f"bench:{bucket}/{prefix.rstrip('/')}", "--transfers",
            str(up.concurrency), "--checkers", str(up.concurrency), "--checksum", "--s3-no-check-bucket", "-q"]


UploadCommand = Callable[[Uploaders, Path, str, str], list[str]]

# tool label -> (binary attribute of run.Uploaders, or None for ours; command)
FIRST_UPLOAD: dict[str, tuple[Optional[str], UploadCommand]] = {
    "aws s3 sync": ("aws", aws_sync),
    "s5cmd cp": ("s5cmd", s5cmd_cp),
    "rclone copy": ("rclone", rclone_copy),
}
NOOP_UPLOAD: dict[str, tuple[Optional[str], UploadCommand]] = {
    "aws s3 sync": ("aws", aws_sync),
    "s5cmd sync": ("s5cmd", s5cmd_sync),
    "rclone copy": ("rclone", rclone_copy),
}


def installed(up: Uploaders, binary: Optional[str]) -> bool:
    return binary is None or getattr(up, binary) is not None


def tool_env(up: Uploaders, tool: str, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
    """The environment run.Uploaders prepared, with its rclone CA-bundle workaround (rclone 1.60)."""
    env = dict(up.env)
    if tool.startswith("rclone") and "AWS_CA_BUNDLE" in env:
        bundle = env.pop("AWS_CA_BUNDLE")
        if up.ep.url.startswith("https://"):
            cmd = cmd + ["--ca-cert", bundle]
    if tool == "project":
        env = {k: v for k, v in env.items() if not k.startswith("RCLONE_")}
    return cmd, env


def run_command(up: Uploaders, tool: str, cmd: list[str]) -> None:
    """Run one uploader to completion; CommandFailed with its output tail when it exits non-zero."""
    cmd, env = tool_env(up, tool, cmd)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CommandFailed(f"{tool} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")


def versions(up: Uploaders) -> dict[str, str]:
    """Each tool's version line, for the table header."""
    out = {}
    for name, binary, args in (("awscli", up.aws, ["--version"]), ("s5cmd", up.s5cmd, ["version"]),
                               ("rclone", up.rclone, ["version"])):
        out[name] = (tool_version([binary, *args]) or "unknown") if binary else NOT_INSTALLED
    out.update(python_versions())
    return out


def python_versions() -> dict[str, str]:
    """The in-process readers' versions (or 'not installed')."""
    import boto3
    import botocore

    import blip3o_storage

    out = {"blip3o_storage": blip3o_storage.__version__, "boto3": boto3.__version__, "botocore": botocore.__version__}
    for module in ("obstore", "s3torchconnector"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = NOT_INSTALLED
    return out


# -- in-process readers -------------------------------------------------------

Getter = Callable[[str], bytes]


def project_getter(ep: Endpoint, bucket: str, threads: int) -> Getter:
    """``Storage.get`` (the signed_http fast path), one Storage shared by the threads as a dataset shares it."""
    storage = ep.storage()
    return lambda key: storage.get(f"s3://{bucket}/{key}")


def boto3_getter(ep: Endpoint, bucket: str, threads: int) -> Getter:
    """Plain boto3 ``get_object`` with a pool as large as the thread count (what most code would write)."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=ep.url, aws_access_key_id=ep.access, aws_secret_access_key=ep.secret,
        region_name="us-east-1", config=Config(max_pool_connections=threads, s3={"addressing_style": "path"}))
    return lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read()


def obstore_getter(ep: Endpoint, bucket: str, threads: int) -> Getter:
    """obstore (Rust object_store): the lowest client CPU per GET in the issue's table; not fork-safe."""
    import obstore
    from obstore.store import S3Store

    options: Any = {"allow_http": True, "pool_max_idle_per_host": str(threads)}
    store = S3Store(bucket, endpoint=ep.url, access_key_id=ep.access, secret_access_key=ep.secret,
                    region="us-east-1", virtual_hosted_style_request=False, client_options=options)
    return lambda key: bytes(obstore.get(store, key).bytes())


def s3torch_getter(ep: Endpoint, bucket: str, threads: int) -> Getter:
    """s3torchconnector's S3Client (AWS CRT) and its S3Reader, credentials from the environment it reads."""
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ep.access, ep.secret
    client = S3Client("us-east-1", endpoint=ep.url, s3client_config=S3ClientConfig(force_path_style=True))
    return lambda key: client.get_object(bucket, key).read()


# reader label -> (module that must import, factory)
READERS: dict[str, tuple[Optional[str], Callable[[Endpoint, str, int], Getter]]] = {
    "boto3": (None, boto3_getter),
    "obstore": ("obstore", obstore_getter),
    "s3torchconnector": ("s3torchconnector", s3torch_getter),
}


def importable(module: Optional[str]) -> bool:
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def get_all(getter: Getter, keys: Sequence[str], threads: int) -> int:
    """GET every key with ``threads`` threads; the byte count (checked by the caller)."""
    with ThreadPoolExecutor(threads) as pool:
        return sum(len(b) for b in pool.map(getter, keys))


def delete_prefix(storage: Any, bucket: str, prefix: str, threads: int = 8) -> int:
    """Delete every object under ``prefix``, 1,000 keys per DeleteObjects, ``threads`` batches in flight.

    Untimed cleanup, but on the dev RGW one batch takes seconds: serial deletion of a full round's 40k
    objects doubled the run's length.
    """
    client = storage.s3_backend(f"s3://{bucket}/{prefix}").client
    keys = [f"{prefix}{o.key}" for o in storage.list(f"s3://{bucket}/{prefix}") if not o.is_dir]

    def delete(batch: list[str]) -> None:
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(delete, [keys[i:i + 1000] for i in range(0, len(keys), 1000)]))
    return len(keys)


# -- DataLoader readers (forked workers) -----------------------------------------


class ProjectBytes:
    """Map-style dataset: the bytes of one object per sample through ``Storage.get`` (per-object mode).

    The Storage is created in each worker on first use (it is per-process state by design), so
    the DataLoader's fork carries only the config path.
    """

    def __init__(self, conf: str, uris: list[str]) -> None:
        self.conf, self.uris = conf, uris
        self._storage: Any = None

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, idx: int) -> int:
        if self._storage is None:
            from blip3o_storage import Storage
            self._storage = Storage(self.conf)
        return len(self._storage.get(self.uris[idx]))


def _nbytes(obj: Any) -> int:
    """s3torchconnector's transform (module level: it is pickled into the workers)."""
    return len(obj.read())


def s3torch_dataset(ep: Endpoint, uris: list[str]) -> Any:
    """s3torchconnector's own map-style dataset over the same objects (its S3Reader per sample)."""
    from s3torchconnector import S3ClientConfig, S3MapDataset

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ep.access, ep.secret
    return S3MapDataset.from_objects(uris, region="us-east-1", endpoint=ep.url, transform=_nbytes,
                                     s3client_config=S3ClientConfig(force_path_style=True))


def read_with_dataloader(dataset: Any, workers: int, batch_size: int) -> int:
    """Every sample once through a torch DataLoader with forked workers; the byte count."""
    from torch.utils.data import DataLoader

    loader: Any = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=sum,
                             prefetch_factor=4 if workers else None)
    return sum(loader)
