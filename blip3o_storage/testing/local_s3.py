"""Start a throwaway S3 server on loopback (moto's server, over real HTTP).

Used by the demo, the benchmarks and the tests: a real HTTP endpoint that
boto3 talks to exactly as it talks to Ceph RGW, in a child process so the
server does not compete with the client for the GIL.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

logger = logging.getLogger(__name__)

# moto accepts any credentials; these name a throwaway local server, not a secret.
LOCAL_ACCESS_KEY = "blip3o-local"
LOCAL_SECRET_KEY = "blip3o-local-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalS3Server:
    """A running moto server; ``stop()`` (or the context manager) ends it."""

    endpoint_url: str
    process: Optional[subprocess.Popen] = field(default=None, repr=False)
    access_key: str = LOCAL_ACCESS_KEY
    secret_key: str = field(default=LOCAL_SECRET_KEY, repr=False)

    def settings_dict(self) -> dict:
        """A ceph_config dict for :class:`blip3o_storage.Storage`."""
        return {"endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key}

    def write_petreloss_conf(self, path: str, cluster: str = "local") -> str:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"[DEFAULT]\ndefault_cluster = {cluster}\n\n[{cluster}]\n"
                     f"access_key = {self.access_key}\nsecret_key = {self.secret_key}\n"
                     f"host_base = {self.endpoint_url}\n")
        return path

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_moto_server(port: Optional[int] = None, timeout: float = 30.0,
                      log_path: Optional[str] = None) -> LocalS3Server:
    """Start ``moto.server`` on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path or os.devnull, "ab") as log:  # the server holds its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with code {process.returncode} on port {port}"
                               f"{f'; see {log_path}' if log_path else ''}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError(f"moto server did not answer on {endpoint} within {timeout:.0f}s")
    logger.info("moto S3 server up at %s (pid %d)", endpoint, process.pid)
    return LocalS3Server(endpoint_url=endpoint, process=process)
