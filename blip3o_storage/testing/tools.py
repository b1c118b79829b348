"""Run the command-line tools (``tools/*.py``) the way a user does, and read what they print."""
from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from blip3o_storage.storage.facade import Storage
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.testing.paths import REPO_ROOT, TOOLS

UPLOAD = str(TOOLS / "upload.py")
UPLOAD_SHARDS = str(TOOLS / "upload_shards.py")
MAKE_DATA_JSON = str(TOOLS / "make_data_json.py")
SUMMARY_RE = re.compile(r"uploaded (\d+) files \(([\d.]+) MB\) skipped (\d+) failed (\d+) in ([\d.]+) s "
                        r"\(([\d.]+) MB/s, ([\d.]+) files/s\)")


def run_cli(*args: str, timeout: float = 120, tool: str = UPLOAD) -> subprocess.CompletedProcess:
    """``python tools/<tool> ARGS`` as a subprocess from the repository root."""
    return subprocess.run([sys.executable, tool, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def summary(proc: subprocess.CompletedProcess) -> dict:
    """The figures of an upload tool's summary line."""
    match = SUMMARY_RE.search(proc.stdout)
    assert match, f"no summary line in stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    uploaded, mb, skipped, failed = int(match[1]), float(match[2]), int(match[3]), int(match[4])
    return {"uploaded": uploaded, "mb": mb, "skipped": skipped, "failed": failed}


def remote(storage: Storage, bucket_uri: str, prefix: str = "") -> dict:
    """key (without prefix) -> ObjectInfo, listed fresh."""
    return {info.key: info for info in storage.list(f"{bucket_uri}/{prefix}")}


def tool_main(name: str) -> Callable[[list[str]], int]:
    """The ``main(argv)`` of a command-line tool, run in this process: from ``blip3o_storage.cli.<name>``
    where the tool lives in the package, else loaded from ``tools/<name>.py`` by file path."""
    try:
        module = importlib.import_module(f"blip3o_storage.cli.{name}")
    except ImportError:
        spec = importlib.util.spec_from_file_location(f"_blip3o_tool_{name}", TOOLS / f"{name}.py")
        assert spec is not None and spec.loader is not None, f"no tool {name}"
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.main


def run_upload_shards(endpoint: S3Endpoint, tmp_path: Path, *args: str) -> int:
    """``upload_shards`` in this process with a petreloss.conf for ``endpoint``; returns its exit status."""
    conf = endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    return tool_main("upload_shards")(["--config", str(conf), *args])
