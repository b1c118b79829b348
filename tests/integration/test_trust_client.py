"""Issue #12 "Trust": the petrel ``Client`` drop-in and config validation.

* a petreloss.conf written for the closed client loads (its own keys ignored,
  a typo of ours still an error with a suggestion);
* ``Client.get`` returns None only for a missing object;
* mmengine's own ``PetrelBackend`` runs over our ``Client``;
* ``from petrel_client.client import Client`` resolves after a plain install
  (the ``.pth`` import hook), and a real petrel_client wins;
* timeouts are validated when the config loads (tools exit 2);
* a ``ceph_config`` dict warns once, without the secret.
"""
from __future__ import annotations

import http.server
import logging
import os
import shutil
import site
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import mmengine.fileio as fileio
import mmengine.fileio.io as fileio_io
import pytest
from mmengine.fileio.backends import PetrelBackend

from blip3o_storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    Storage,
    TransientStorageError,
    load_config,
    load_petreloss_conf,
)
from blip3o_storage.integrations.compat import install_petrel_client_shim
from blip3o_storage.integrations.petrel_client import Client
from blip3o_storage.storage import config as config_module
from blip3o_storage.testing.endpoints import new_bucket
from blip3o_storage.testing.paths import REPO_ROOT

SECRET = "s3cr3t-TRUST-DO-NOT-LEAK"


# -- 1. a closed-client petreloss.conf loads ----------------------------------------
CLOSED_CLIENT_CONF = f"""
# The closed client's sample petreloss.conf, with every key of its own set.
[DEFAULT]
default_cluster = cluster1
enable_mc = False
debug_mc = True
boto = True
console_log_level = WARNING
file_log_level = DEBUG
log_file_path = /tmp/petrel_logs
file_log_max_bytes = 1073741824
file_log_backup_count = 1
mc_server_list_path = /mnt/lustre/share/memcached_client/server_list.conf
mc_client_config_path = /mnt/lustre/share/memcached_client/client.conf
count_disp = 5000
enable_mem_trace = False
fake = False
get_retry_max = 10
s3_cpp_log_level = off
enable_cache = False
cache_type = mc
max_attempts = 3

[mc]
mc_key_cb = sha256
debug_mc = False

[dfs]
enable_mc = True

[cache]
enable_mc = False

[cluster1]
enable_mc = True
access_key = AKIAEXAMPLE
secret_key = {SECRET}
host_base = 10.0.0.1:7480

[cluster2]
boto = cpp
access_key = other
secret_key = {SECRET}
host_base = http://10.0.0.2:80
"""


def write(tmp_path: Path, text: str, name: str = "petreloss.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_closed_client_conf_loads_and_ignores_its_keys(tmp_path, caplog):
    path = write(tmp_path, CLOSED_CLIENT_CONF)
    with caplog.at_level(logging.DEBUG, logger="blip3o_storage.storage.config"):
        config = load_petreloss_conf(path)
    # [mc], [dfs], [cache] are the closed client's own sections, not clusters
    assert sorted(config.clusters) == ["cluster1", "cluster2"]
    assert config.default_cluster == "cluster1"
    one = config.settings_for(None)
    assert one.endpoint_url == "http://10.0.0.1:7480" and one.max_attempts == 3
    assert config.settings_for("cluster2").max_attempts == 3  # [DEFAULT] keys of ours still apply
    ignored = [r for r in caplog.records if "ignor" in r.getMessage()]
    assert len(ignored) == 1, [r.getMessage() for r in caplog.records]
    message = ignored[0].getMessage()
    for key in ("enable_mc", "console_log_level", "log_file_path", "file_log_backup_count", "mc_key_cb", "[mc]"):
        assert key in message
    assert SECRET not in message


@pytest.mark.parametrize("where", ["cluster", "DEFAULT"])
def test_typo_key_is_an_error_with_a_suggestion(tmp_path, where):
    typo = "acess_key = AKIAEXAMPLE\n"
    if where == "DEFAULT":
        text = f"[DEFAULT]\ndefault_cluster = c\n{typo}[c]\nhost_base = http://h\n[d]\nhost_base = http://h\n"
    else:
        text = f"[DEFAULT]\ndefault_cluster = c\n[c]\nhost_base = http://h\n{typo}"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_petreloss_conf(path)
    message = str(info.value)
    assert "acess_key" in message and "did you mean 'access_key'" in message and path in message
    assert f"[{'DEFAULT' if where == 'DEFAULT' else 'c'}]" in message


def test_typo_in_a_dict_config_suggests_too():
    with pytest.raises(ConfigError, match="did you mean 'read_timeout'"):
        load_config({"endpoint_url": "http://h", "read_timout": 5})


def test_closed_client_keys_in_a_dict_are_ignored():
    settings = load_config({"endpoint_url": "http://h", "enable_mc": True, "mc_key_cb": "sha256"}).settings_for(None)
    assert settings.endpoint_url == "http://h"


# -- 5. timeouts validated when the config loads ------------------------------------
@pytest.mark.parametrize("option, value", [
    ("connect_timeout", "-1"), ("read_timeout", "0"), ("read_timeout", "nan"), ("connect_timeout", "inf"),
])
def test_bad_timeouts_fail_at_load_naming_the_option(tmp_path, option, value):
    path = write(tmp_path, f"[c]\nhost_base = http://h\n{option} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_petreloss_conf(path)
    assert option in str(info.value) and path in str(info.value)


def test_bad_timeout_in_dict_and_overrides():
    with pytest.raises(ConfigError, match="connect_timeout"):
        load_config({"endpoint_url": "http://h", "connect_timeout": -1})
    with pytest.raises(ConfigError, match="read_timeout"):
        load_config({"endpoint_url": "http://h"}, read_timeout=0)


def test_upload_tool_exits_2_on_bad_timeout(tmp_path):
    conf = write(tmp_path, "[c]\nhost_base = http://127.0.0.1:9\naccess_key = a\nsecret_key = b\n"
                           "connect_timeout = -1\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "BLIP3O_CEPH_CONFIG"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "upload.py"), "--bucket", "b",
                             "--config", conf, str(src)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "connect_timeout" in result.stderr
    assert "Traceback" not in result.stderr


# -- 6. a dict ceph_config warns once, without the secret ---------------------------
def test_dict_config_with_secret_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(config_module, "_DICT_SECRET_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="blip3o_storage.storage.config"):
        for _ in range(3):
            load_config({"endpoint_url": "http://h", "access_key": "AKIA", "secret_key": SECRET})
        assert Storage({"c1": {"endpoint_url": "http://h", "access_key": "AKIA", "secret_key": SECRET}}).config
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "secret_key" in warnings[0] and "BLIP3O_CEPH_CONFIG" in warnings[0]
    assert SECRET not in warnings[0] and "AKIA" not in warnings[0]


def test_dict_config_without_secret_does_not_warn(monkeypatch, caplog):
    monkeypatch.setattr(config_module, "_DICT_SECRET_WARNED", False)
    with caplog.at_level(logging.WARNING, logger="blip3o_storage.storage.config"):
        load_config({"endpoint_url": "http://h"})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- 2. Client.get: None only for a missing object ----------------------------------
@pytest.fixture
def conf_bucket(s3_endpoint, tmp_path, monkeypatch):
    storage, bucket = new_bucket(s3_endpoint)
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf", cluster="cluster1")
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    return storage, bucket, str(conf)


def test_client_get_none_only_for_a_missing_object(conf_bucket):
    _, bucket, conf = conf_bucket
    client = Client(conf)
    assert client.get(f"{bucket}/no/such.jpg") is None
    assert client.Get(f"{bucket}/no/such.jpg") is None
    missing_bucket = bucket + "-typo"
    with pytest.raises(BucketNotFoundError):
        client.get(f"{missing_bucket}/images/0001.jpg")
    with pytest.raises(BucketNotFoundError):
        client.contains(f"{missing_bucket}/images/0001.jpg")
    with pytest.raises(BucketNotFoundError):
        client.isdir(f"{missing_bucket}/images")
    assert not client.contains(f"{bucket}/no/such.jpg") and not client.isdir(f"{bucket}/no")


class _DenyAll(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that refuses every request as S3 does for bad keys."""

    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b'<Message>Access Denied</Message></Error>')

    def _deny(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body) if self.command != "HEAD" else 0))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _deny

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def deny_all_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_get_raises_access_denied(deny_all_endpoint, tmp_path):
    conf = write(tmp_path, f"[c]\nhost_base = {deny_all_endpoint}\naccess_key = a\nsecret_key = {SECRET}\n"
                           f"max_attempts = 1\n")
    client = Client(conf)
    with pytest.raises(AccessDeniedError) as info:
        client.get("s3://bucket/images/0001.jpg")
    assert SECRET not in str(info.value)
    with pytest.raises(AccessDeniedError):
        client.contains("s3://bucket/images/0001.jpg")


def test_client_get_raises_when_store_unreachable(tmp_path):
    from blip3o_storage.testing.local_s3 import free_port
    conf = write(tmp_path, f"[c]\nhost_base = http://127.0.0.1:{free_port()}\naccess_key = a\nsecret_key = b\n"
                           f"max_attempts = 1\nconnect_timeout = 1\nread_timeout = 1\n")
    with pytest.raises(TransientStorageError):
        Client(conf).get("s3://bucket/images/0001.jpg")


# -- 3. mmengine's own PetrelBackend over our Client --------------------------------
@pytest.fixture
def petrel_shim(monkeypatch):
    """Our drop-in as ``petrel_client`` for this test only."""
    for name in [n for n in sys.modules if n == "petrel_client" or n.startswith("petrel_client.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))  # force=True puts our finder first
    assert install_petrel_client_shim(force=True)
    yield
    for name in [n for n in sys.modules if n == "petrel_client" or n.startswith("petrel_client.")]:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_mmengine_petrel_backend_over_our_client(conf_bucket, petrel_shim):
    storage, bucket, conf = conf_bucket
    backend = PetrelBackend(conf_path=conf)
    assert type(backend._client).__module__ == "blip3o_storage.integrations.petrel_client"
    root = f"cluster1:{bucket}/root"
    backend.put(b"\x00jpeg\xff", f"{root}/a.jpg")
    backend.put_text("caption ü", f"{root}/d1/b.txt")
    backend.put(b"x", f"{root}/d1/d2/c.jpg")
    assert backend.get(f"{root}/a.jpg") == b"\x00jpeg\xff"
    assert backend.get_text(f"{root}/d1/b.txt") == "caption ü"
    assert backend.get(f"{root}/none.jpg") is None  # the closed client's Get: None for a missing object
    assert backend.exists(f"{root}/a.jpg") and backend.exists(f"{root}/d1") and not backend.exists(f"{root}/zz")
    assert backend.isdir(f"{root}/d1") and not backend.isdir(f"{root}/a.jpg")
    assert backend.isfile(f"{root}/a.jpg") and not backend.isfile(f"{root}/d1")
    assert backend.join_path(f"{root}/", "d1", "b.txt") == f"{root}/d1/b.txt"
    assert sorted(backend.list_dir_or_file(root)) == ["a.jpg", "d1"]
    assert sorted(backend.list_dir_or_file(root, list_dir=False, recursive=True)) == \
        ["a.jpg", "d1/b.txt", "d1/d2/c.jpg"]
    assert sorted(backend.list_dir_or_file(root, recursive=True)) == \
        ["a.jpg", "d1", "d1/b.txt", "d1/d2", "d1/d2/c.jpg"]
    assert sorted(backend.list_dir_or_file(root, list_dir=False, suffix=".jpg", recursive=True)) == \
        ["a.jpg", "d1/d2/c.jpg"]
    with backend.get_local_path(f"{root}/a.jpg") as local:
        assert Path(local).read_bytes() == b"\x00jpeg\xff"
    assert backend.copyfile(f"{root}/a.jpg", f"{root}/copy.jpg") == f"{root}/copy.jpg"
    assert storage.get(f"{bucket}/root/copy.jpg") == b"\x00jpeg\xff"
    url = backend.generate_presigned_url(f"{root}/a.jpg", "get_object", 60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x00jpeg\xff"
    backend.remove(f"{root}/copy.jpg")
    assert not backend.exists(f"{root}/copy.jpg")
    with pytest.raises(IsADirectoryError):
        backend.remove(f"{root}/d1")


def test_mmengine_fileio_with_backend_petrel(conf_bucket, petrel_shim):
    storage, bucket, conf = conf_bucket
    args = {"backend": "petrel", "conf_path": conf}
    fileio.put(b"bytes", f"{bucket}/p/a.bin", backend_args=args)
    assert isinstance(fileio.get_file_backend(f"{bucket}/p/a.bin", backend_args=args), PetrelBackend)
    assert fileio.get(f"{bucket}/p/a.bin", backend_args=args) == b"bytes"
    assert fileio.exists(f"{bucket}/p/a.bin", backend_args=args)
    assert list(fileio.list_dir_or_file(f"{bucket}/p", backend_args=args)) == ["a.bin"]


def test_client_covers_what_petrel_backend_calls():
    """Every ``self._client.<name>`` in mmengine's PetrelBackend exists on our Client."""
    import inspect
    import re

    import mmengine.fileio.backends.petrel_backend as module
    called = set(re.findall(r"self\._client\.(\w+)\(", inspect.getsource(module)))
    assert called >= {"Get", "put", "contains", "isdir", "list", "delete", "generate_presigned_url"}
    assert all(callable(getattr(Client, name, None)) for name in called), called


def test_client_put_and_presigned_put(conf_bucket):
    storage, bucket, conf = conf_bucket
    client = Client(conf)
    url = client.generate_presigned_url(f"{bucket}/up/x.bin", client_method="put_object", expires_in=60)
    request = urllib.request.Request(url, data=b"uploaded", method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    assert client.get(f"{bucket}/up/x.bin") == b"uploaded"
    data, info = client.get_with_info(f"{bucket}/up/x.bin")
    assert data == b"uploaded" and isinstance(info, dict)
    with pytest.raises(ValueError, match="client_method"):
        client.generate_presigned_url(f"{bucket}/up/x.bin", client_method="delete_bucket")


# -- 4. `from petrel_client.client import Client` after installing the project --------
PROJECT_FILES = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "blip3o_petrel_hook.py",
                 "blip3o_petrel.pth", "blip3o_storage"]


def _copy_project(dest: Path) -> Path:
    dest.mkdir()
    for name in PROJECT_FILES:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _pip_install(project: Path, target: Path, *, editable: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-compile", "--target", str(target)]
    cmd += ["-e", str(project)] if editable else [str(project)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _python(code: str, *sitedirs: Path, env_extra: Optional[dict] = None) -> subprocess.CompletedProcess:
    """A fresh interpreter without PYTHONPATH (so the repo is not on the path) whose site
    directories are ``sitedirs`` (their .pth files run, as in site-packages), then this venv's
    (for boto3, mmengine). ``-S`` defers the venv's own site-packages: its editable install of the
    main checkout has the same finder module name as an editable install under ``sitedirs``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BLIP3O_PETREL_CLIENT")}
    env.update(env_extra or {})
    dirs = [str(d) for d in sitedirs] + site.getsitepackages()
    prelude = "import site\n" + "".join(f"site.addsitedir({d!r})\n" for d in dirs)
    return subprocess.run([sys.executable, "-S", "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env, cwd="/")


def _fake_real_petrel(root: Path) -> Path:
    package = root / "petrel_client"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "client.py").write_text("class Client:\n    REAL = True\n")
    return root


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_installed_project_provides_petrel_client(tmp_path, editable):
    project = _copy_project(tmp_path / "project")
    target = tmp_path / "site"
    _pip_install(project, target, editable=editable)
    assert (target / "blip3o_petrel.pth").is_file()
    probe = """
        import sys
        from petrel_client.client import Client
        print(Client.__module__)
        from petrel_client import client  # as mmengine's PetrelBackend imports it
        print(client.Client is Client)
        import blip3o_storage
        print(blip3o_storage.__file__)
    """
    result = _python(probe, target)
    assert result.returncode == 0, result.stderr
    module, same, package_file = result.stdout.split()
    assert (module, same) == ("blip3o_storage.integrations.petrel_client", "True")
    assert Path(package_file).is_relative_to(project if editable else target)  # the installed copy
    # an OpenUni-style lazy-import config (mmengine ignores custom_imports there) needs nothing else
    lazy = tmp_path / "lazy_cfg.py"
    lazy.write_text("from petrel_client.client import Client\n\nstore = dict(type=Client, conf_path=None)\n")
    result = _python(f"""
        from mmengine.config import Config
        cfg = Config.fromfile({str(lazy)!r}, lazy_import=True)
        print(cfg.store['type'].__module__)
    """, target)
    assert result.stdout.split() == ["blip3o_storage.integrations.petrel_client"], result.stderr
    # a real petrel_client installed elsewhere on the path wins over ours ...
    real = _fake_real_petrel(tmp_path / "real")
    result = _python("from petrel_client.client import Client; print(Client.__module__, Client.REAL)",
                     target, real)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["petrel_client.client", "True"]
    # ... unless BLIP3O_PETREL_CLIENT=ours asks for ours
    result = _python("from petrel_client.client import Client; print(Client.__module__)", target, real,
                     env_extra={"BLIP3O_PETREL_CLIENT": "ours"})
    assert result.stdout.split() == ["blip3o_storage.integrations.petrel_client"], result.stderr
    # the hook at start-up imports nothing heavy
    result = _python("import sys; print(sorted(m for m in ('boto3', 'botocore', 'torch', 'blip3o_storage')"
                     " if m in sys.modules))", target)
    assert result.stdout.strip() == "[]", result.stderr


def test_hook_finder_falls_back_and_respects_real(tmp_path, monkeypatch):
    """In-process: the finder serves ours only when nothing else provides petrel_client."""
    import importlib

    import blip3o_petrel_hook as hook
    for name in [n for n in sys.modules if n == "petrel_client" or n.startswith("petrel_client.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f is not hook.PetrelClientFinder])
    assert hook.install("auto") and sys.meta_path[-1] is hook.PetrelClientFinder
    assert importlib.import_module("petrel_client.client").Client is Client
    for name in ["petrel_client", "petrel_client.client"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(_fake_real_petrel(tmp_path / "real")))
    importlib.invalidate_caches()
    assert importlib.import_module("petrel_client.client").Client.REAL
    assert not install_petrel_client_shim()  # a real one is importable: left alone
    assert not hook.install("off")
    for name in ["petrel_client", "petrel_client.client"]:
        monkeypatch.delitem(sys.modules, name)


def test_a_cluster_named_like_a_closed_client_section_is_still_a_cluster(tmp_path: Path) -> None:
    """Found by the hypothesis round-trip test: a cluster called ``DFS`` (with a host_base) was
    skipped as the closed client's ``[dfs]`` section; only sections without keys of ours are."""
    conf = tmp_path / "petreloss.conf"
    conf.write_text("[DEFAULT]\ndefault_cluster = DFS\n\n[DFS]\nhost_base = http://127.0.0.1:9\n"
                    "access_key = AK\nsecret_key = SK\n\n[mc]\ndebug_mc = True\nmc_key_cb = blake2b\n")
    config = load_petreloss_conf(conf)
    assert sorted(config.clusters) == ["DFS"]
    assert config.settings_for(None).endpoint_url == "http://127.0.0.1:9"
    from_dict = load_config({"default_cluster": "cache", "cache": {"endpoint_url": "http://127.0.0.1:9"},
                             "mc": {"debug_mc": True}})
    assert sorted(from_dict.clusters) == ["cache"]
