"""S3FileBackend against mmengine's own LocalBackend, call by call.

Each case is one sequence of calls, run on mmengine's ``LocalBackend`` over a
folder in ``tmp_path`` and on ours over a prefix of a fresh bucket (moto server;
Ceph RGW with ``--ceph``), both seeded with the same tree. What each side
returns (paths made relative to its root, listings sorted, exceptions reduced
to the built-in a caller would catch), the tree afterwards and the local
scratch folder afterwards must be equal: no expected values are written here,
LocalBackend is the specification. The few places where a store without
folders or links cannot match are separate tests below, named for the
difference.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import mmengine.fileio as fileio
import mmengine.fileio.io as fileio_io
import pytest
from mmengine.fileio.backends import LocalBackend

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (registers the backend and the routing)
from blip3o_storage.errors import StorageError
from blip3o_storage.integrations.mmengine_backend import S3FileBackend
from blip3o_storage.testing.endpoints import new_bucket

TREE = {"a.txt": b"alpha", "b.bin": b"\x00\x01\xff", ".hidden": b"h", "d1/c.jpg": b"jpeg",
        "d1/.cfg": b"cfg", "d1/d2/e.txt": b"e" * 3000, ".dot/f.txt": b"f"}
LOCAL_SRC = {"src/x.txt": b"x-bytes", "src/sub/y.txt": b"y-bytes", "src/.z": b"z"}
# Most specific first: the built-in a caller of LocalBackend would catch.
CATEGORIES = (shutil.SameFileError, FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError,
              PermissionError, TypeError, ValueError, OSError)


@dataclass
class Side:
    """One backend with its root (a local folder or an s3:// prefix) and a local scratch folder."""

    backend: Any
    root: str
    scratch: str
    snapshot_root: Callable[[], Dict[str, bytes]]

    def p(self, rel: str) -> str:
        return self.backend.join_path(self.root, rel) if rel else self.root

    def s(self, rel: str) -> str:
        return osp.join(self.scratch, rel)


def _local_snapshot(root: str) -> Dict[str, bytes]:
    files = {}
    for cur, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = osp.join(cur, name)
            with open(path, "rb") as fh:
                files[osp.relpath(path, root).replace(os.sep, "/")] = fh.read()
    return files


def _seed_local(folder: str, files: Dict[str, bytes]) -> None:
    for rel, data in files.items():
        os.makedirs(osp.dirname(osp.join(folder, rel)), exist_ok=True)
        with open(osp.join(folder, rel), "wb") as fh:
            fh.write(data)


_SHARED: Dict[str, Tuple[Any, str, S3FileBackend]] = {}


@pytest.fixture
def shared_bucket(s3_endpoint, tmp_path_factory) -> Tuple[Any, str, S3FileBackend]:
    """One bucket, Storage and backend per endpoint for this module (a boto3 client costs about a
    second to build on a busy machine); each case works under its own prefix."""
    if s3_endpoint.name not in _SHARED:
        storage, bucket = new_bucket(s3_endpoint)
        conf = s3_endpoint.write_petreloss_conf(tmp_path_factory.mktemp("conf") / "petreloss.conf")
        _SHARED[s3_endpoint.name] = (storage, bucket, S3FileBackend(ceph_config=str(conf)))
    return _SHARED[s3_endpoint.name]


@pytest.fixture
def sides(shared_bucket, tmp_path) -> Tuple[Side, Side]:
    storage, bucket, backend = shared_bucket
    local_root = str(tmp_path / "root")
    _seed_local(local_root, TREE)
    s3_root = f"{bucket}/{uuid.uuid4().hex}/root"
    for rel, data in TREE.items():
        storage.put(f"{s3_root}/{rel}", data)
    made = []
    for name in ("scratch_local", "scratch_s3"):
        scratch = str(tmp_path / name)
        _seed_local(scratch, LOCAL_SRC)
        os.makedirs(osp.join(scratch, "out"))
        made.append(scratch)

    def s3_snapshot() -> Dict[str, bytes]:
        return {info.key: storage.get(f"{s3_root}/{info.key}") for info in storage.list(s3_root, recursive=True)}

    local = Side(LocalBackend(), local_root, made[0], lambda: _local_snapshot(local_root))
    ours = Side(backend, s3_root, made[1], s3_snapshot)
    return local, ours


def _normalise(value: Any, side: Side) -> Any:
    if isinstance(value, Path):
        value = os.fspath(value)
    if isinstance(value, str):
        for base, name in ((side.root, "<root>"), (side.scratch, "<scratch>")):
            if value == base or value.startswith(base + "/"):
                return name + value[len(base):]
        return value
    if isinstance(value, (list, tuple)):
        return [_normalise(v, side) for v in value]
    return value


def _run(op: Callable[[Side], Any], side: Side) -> Tuple[Any, Dict[str, bytes], Dict[str, bytes]]:
    try:
        result = _normalise(op(side), side)
    except Exception as exc:  # noqa: BLE001 -- the category is the result being compared
        category = next(c for c in CATEGORIES if isinstance(exc, c)) if isinstance(exc, CATEGORIES) else type(exc)
        if isinstance(exc, StorageError):  # ours must also name what failed
            assert "s3://" in str(exc) or side.scratch in str(exc), exc
        result = ("raises", category.__name__)
    return result, side.snapshot_root(), _local_snapshot(side.scratch)


def _read_local_path(side: Side, rel: str) -> bytes:
    with side.backend.get_local_path(side.p(rel)) as path, open(path, "rb") as fh:
        return fh.read()


def _list(rel: str, **kw: Any) -> Callable[[Side], List[str]]:
    return lambda side: sorted(side.backend.list_dir_or_file(side.p(rel), **kw))


CASES: Dict[str, Callable[[Side], Any]] = {
    "get": lambda s: s.backend.get(s.p("d1/d2/e.txt")),
    "get_missing": lambda s: s.backend.get(s.p("nope.txt")),
    "get_folder": lambda s: s.backend.get(s.p("d1")),
    "get_text": lambda s: s.backend.get_text(s.p("a.txt")),
    "get_text_missing": lambda s: s.backend.get_text(s.p("d1/nope")),
    "put_nested": lambda s: s.backend.put(b"new", s.p("n/m/new.bin")),
    "put_replaces": lambda s: s.backend.put(b"replaced", s.p("a.txt")),
    "put_text": lambda s: s.backend.put_text("caption \u00fc", s.p("d1/t.txt")),
    "exists": lambda s: [s.backend.exists(s.p(r)) for r in ("a.txt", "d1", "d1/", "d1/d2", "nope", "d")],
    "isdir": lambda s: [s.backend.isdir(s.p(r)) for r in ("a.txt", "d1", "d1/", "d1/d2", "nope", "d")],
    "isfile": lambda s: [s.backend.isfile(s.p(r)) for r in ("a.txt", "d1", "d1/c.jpg", "nope", ".hidden")],
    "join_path": lambda s: [s.backend.join_path(s.root, "x", "y/z.txt"), s.backend.join_path(s.root + "/", "x/"),
                            s.backend.join_path(s.root, "d1", "c.jpg")],
    "get_local_path": lambda s: _read_local_path(s, "d1/c.jpg"),
    "remove": lambda s: s.backend.remove(s.p("d1/c.jpg")),
    "remove_missing": lambda s: s.backend.remove(s.p("nope")),
    "remove_folder": lambda s: s.backend.remove(s.p("d1")),
    "rmtree": lambda s: s.backend.rmtree(s.p("d1")),
    "rmtree_missing": lambda s: s.backend.rmtree(s.p("nope")),
    "rmtree_file": lambda s: s.backend.rmtree(s.p("a.txt")),
    "copyfile": lambda s: s.backend.copyfile(s.p("a.txt"), s.p("d1/a2.txt")),
    "copyfile_into_folder": lambda s: s.backend.copyfile(s.p("a.txt"), s.p("d1")),
    "copyfile_replaces": lambda s: s.backend.copyfile(s.p("b.bin"), s.p("a.txt")),
    "copyfile_same": lambda s: s.backend.copyfile(s.p("a.txt"), s.p("a.txt")),
    "copyfile_missing": lambda s: s.backend.copyfile(s.p("nope"), s.p("x")),
    "copyfile_folder": lambda s: s.backend.copyfile(s.p("d1"), s.p("x")),
    "copytree": lambda s: s.backend.copytree(s.p("d1"), s.p("d3")),
    "copytree_exists": lambda s: s.backend.copytree(s.p("d1"), s.p("d1/d2")),
    "copytree_missing": lambda s: s.backend.copytree(s.p("nope"), s.p("d4")),
    "copytree_file": lambda s: s.backend.copytree(s.p("a.txt"), s.p("d5")),
    "copyfile_from_local": lambda s: s.backend.copyfile_from_local(s.s("src/x.txt"), s.p("up.txt")),
    "copyfile_from_local_into": lambda s: s.backend.copyfile_from_local(s.s("src/x.txt"), s.p("d1")),
    "copyfile_from_local_folder": lambda s: s.backend.copyfile_from_local(s.s("src"), s.p("up")),
    "copyfile_from_local_missing": lambda s: s.backend.copyfile_from_local(s.s("nope"), s.p("up")),
    "copytree_from_local": lambda s: s.backend.copytree_from_local(s.s("src"), s.p("up")),
    "copytree_from_local_exists": lambda s: s.backend.copytree_from_local(s.s("src"), s.p("d1")),
    "copytree_from_local_missing": lambda s: s.backend.copytree_from_local(s.s("nope"), s.p("up")),
    "copytree_from_local_file": lambda s: s.backend.copytree_from_local(s.s("src/x.txt"), s.p("up")),
    "copyfile_to_local": lambda s: s.backend.copyfile_to_local(s.p("d1/c.jpg"), s.s("out/c2.jpg")),
    "copyfile_to_local_into": lambda s: s.backend.copyfile_to_local(s.p("d1/c.jpg"), s.s("out")),
    "copyfile_to_local_path": lambda s: s.backend.copyfile_to_local(s.p("a.txt"), Path(s.s("out"))),
    "copyfile_to_local_replaces": lambda s: s.backend.copyfile_to_local(s.p("a.txt"), s.s("src/x.txt")),
    "copyfile_to_local_missing": lambda s: s.backend.copyfile_to_local(s.p("nope"), s.s("out/n")),
    "copyfile_to_local_folder": lambda s: s.backend.copyfile_to_local(s.p("d1"), s.s("out/n")),
    "copyfile_to_local_no_parent": lambda s: s.backend.copyfile_to_local(s.p("a.txt"), s.s("none/a.txt")),
    "copytree_to_local": lambda s: s.backend.copytree_to_local(s.p("d1"), s.s("tree")),
    "copytree_to_local_exists": lambda s: s.backend.copytree_to_local(s.p("d1"), s.s("out")),
    "copytree_to_local_missing": lambda s: s.backend.copytree_to_local(s.p("nope"), s.s("t2")),
    "list_root": _list(""),
    "list_files": _list("", list_dir=False),
    "list_dirs": _list("", list_file=False),
    "list_recursive": _list("", recursive=True),
    "list_recursive_files": _list("", list_dir=False, recursive=True),
    "list_recursive_dirs": _list("", list_file=False, recursive=True),
    "list_suffix": _list("", list_dir=False, suffix=".txt", recursive=True),
    "list_suffix_tuple": _list("", list_dir=False, suffix=(".jpg", ".bin"), recursive=True),
    "list_sub": _list("d1", recursive=True),
    "list_sub_slash": _list("d1/"),
    "list_suffix_with_dirs": _list("", suffix=".txt"),
    "list_suffix_bad_type": _list("", list_dir=False, suffix=["txt"]),
    "list_missing": _list("nope"),
    "list_file": _list("a.txt"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_mmengine_local_backend(sides: Tuple[Side, Side], case: str) -> None:
    local, ours = sides
    expected = _run(CASES[case], local)
    assert _run(CASES[case], ours) == expected


# -- where an object store cannot be a file system: each difference stated and checked ----------------
def test_copy_if_symlink_fails_copies_and_says_so(sides: Tuple[Side, Side]) -> None:
    """No links on S3: the copy is made and False returned (LocalBackend links and returns True),
    so the tree afterwards is the same."""
    local, ours = sides
    for src, dst in (("a.txt", "link.txt"), ("d1", "linkdir")):
        assert local.backend.copy_if_symlink_fails(local.p(src), local.p(dst)) is True
        assert ours.backend.copy_if_symlink_fails(ours.p(src), ours.p(dst)) is False
    assert ours.snapshot_root() == local.snapshot_root()


def test_get_local_path_of_a_missing_object_raises_on_entry(sides: Tuple[Side, Side]) -> None:
    """LocalBackend yields any path (the reader fails later); ours cannot download what is not there."""
    _, ours = sides
    with pytest.raises(FileNotFoundError, match="nope.pth"), ours.backend.get_local_path(ours.p("nope.pth")):
        pass  # pragma: no cover


def test_get_local_path_removes_the_download(sides: Tuple[Side, Side]) -> None:
    _, ours = sides
    with ours.backend.get_local_path(ours.p("d1/c.jpg")) as path:
        assert osp.basename(path) == "c.jpg" and osp.isfile(path)
    assert not osp.exists(path) and not osp.exists(osp.dirname(path))


def test_presigned_url_fetches_the_object(sides: Tuple[Side, Side]) -> None:
    _, ours = sides
    url = ours.backend.generate_presigned_url(ours.p("a.txt"), expires_in=60)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == TREE["a.txt"]


# -- mmengine.fileio's module functions reach ours ------------------------------------------------
def test_fileio_copyfile_to_local_downloads_an_s3_object(s3_bucket, s3_conf, tmp_path, monkeypatch) -> None:
    """Reproduces the issue: mmengine picks the backend from ``dst`` (local), and LocalBackend's
    shutil.copy('s3://...') answered FileNotFoundError for an object that exists."""
    storage, bucket = s3_bucket
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(s3_conf))
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    storage.put(f"{bucket}/ckpt/epoch_1.pth", b"weights")
    storage.put(f"{bucket}/ckpt/logs/run.log", b"log")
    dst = tmp_path / "dl"
    dst.mkdir()
    assert fileio.copyfile_to_local(f"{bucket}/ckpt/epoch_1.pth", str(dst)) == str(dst / "epoch_1.pth")
    assert (dst / "epoch_1.pth").read_bytes() == b"weights"
    assert fileio.copytree_to_local(f"{bucket}/ckpt", str(tmp_path / "tree")) == str(tmp_path / "tree")
    assert _local_snapshot(str(tmp_path / "tree")) == {"epoch_1.pth": b"weights", "logs/run.log": b"log"}
    # a local source still goes to mmengine's LocalBackend unchanged
    assert fileio.copyfile_to_local(str(dst / "epoch_1.pth"), str(tmp_path / "x.pth")) == str(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fileio.copyfile_to_local(f"{bucket}/ckpt/nope.pth", str(dst))
