"""Fixtures shared by both tiers, and the ``--ceph`` option.

* ``tests/unit/``: no server of any kind (pure functions, config parsing, local files, process state).
* ``tests/integration/``: real servers (moto server over HTTP, the Ceph RGW with ``--ceph``), DataLoader
  workers, command-line tools run against a server; its ``conftest.py`` holds the server fixtures.

Helpers live in :mod:`blip3o_storage.testing` (no test module imports another).
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from blip3o_storage.testing.shards import Shards, make_shards
from blip3o_storage.testing.tiny import TinyData, make_tiny_data


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background by a non-interactive shell (``make test &``, nohup) has
    SIGINT ignored, and every tool it spawns inherits that: the Ctrl-C tests then see a child
    that never stops (exit 0). A Python handler is reset at exec, so children start with Ctrl-C on."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ceph", action="store_true", default=False,
                     help="also run against the real Ceph RGW (tools/ceph_dev.sh up; started if needed)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--ceph"):
        return
    skip = pytest.mark.skip(reason="needs --ceph (real Ceph RGW from tools/ceph_dev.sh)")
    for item in items:
        if "ceph" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shards(tmp_path: Path) -> Shards:
    """Two tar shards under tars/, the same data extracted under raw/, and data.json."""
    return make_shards(tmp_path / "blip3o")


@pytest.fixture
def tiny(tmp_path: Path) -> TinyData:
    """A tiny BLIP3o-style tree with good and bad samples (see :mod:`blip3o_storage.testing.tiny`)."""
    return make_tiny_data(tmp_path / "blip3o")


@pytest.fixture(autouse=True, scope="session")
def _upload_manifests_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory):
    """tools/upload.py's upload manifests (run in subprocesses by many tests) go to a folder of this
    session, never the user's ~/.cache/blip3o-storage (tests that look at them set their own)."""
    import os

    from blip3o_storage.transfer.manifest import ENV_DIR

    before = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(tmp_path_factory.mktemp("upload-manifests"))
    yield
    if before is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = before
