"""An mmengine fileio backend for ``s3://`` (and ``cluster:s3://``) URIs.

mmengine 0.10.x maps the ``s3`` prefix to its PetrelBackend, which needs the
closed ``petrel_client``. Importing this module (or calling
:func:`register_mmengine_backend`) registers ours for the prefix with
``force=True``, so ``mmengine.fileio.get('s3://...')``, ``exists``,
``list_dir_or_file``, the copy functions and mmengine's hooks (CheckpointHook's
``max_keep_ckpts``/``save_best``, LoggerHook's upload) go through boto3. In configs::

    custom_imports = dict(imports=['blip3o_storage.integrations.mmengine_backend'])

Importing it also installs the checkpoint side (:mod:`.mmengine_checkpoint`:
``load_from``/``resume``/``load_checkpoint`` of ``s3://`` read through a streamed
reader, saves stream into a multipart upload) and the ``copyfile_to_local``
routing of :mod:`.mmengine_local`.

Semantics are mmengine's ``LocalBackend``'s, checked call by call against it in
``tests/integration/test_mmengine_backend_parity.py``. Where a store without
folders cannot match, it says so: a write never fails for a missing parent
folder, a folder exists only while an object lies under it, and
``copy_if_symlink_fails`` copies (there are no links) and returns False, as
mmengine's PetrelBackend does. Copies never read a whole object into memory:
``copyfile`` is a server-side copy, ``*_from_local``/``*_to_local`` stream
through ``put_file``/``get_file`` (multipart / parallel ranged GETs).
"""
from __future__ import annotations

import json
import os
import os.path as osp
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Dict, Generator, Iterable, Iterator, List, Optional, Tuple, Union

from mmengine.fileio import get_file_backend, register_backend
from mmengine.fileio.backends import BaseStorageBackend

from blip3o_storage.errors import (
    AlreadyExistsError,
    BucketNotFoundError,
    IsAFolderError,
    NotAFolderError,
    ObjectNotFoundError,
    SameObjectError,
)
from blip3o_storage.integrations.petrel_client import presigned_url
from blip3o_storage.storage.facade import ConfigLike, Storage
from blip3o_storage.storage.uri import is_s3_uri, parse_uri

BACKEND_NAME = "blip3o_s3"
PathType = Union[str, Path]
# Files copied/removed at once by the tree operations: each is one request (a server-side copy, a
# DELETE, a streamed transfer), so a few in flight hide the round trip without a burst of connections.
TREE_CONCURRENCY = 8


class S3FileBackend(BaseStorageBackend):
    """mmengine's backend interface on top of :class:`Storage`.

    ``backend_args`` from mmengine (e.g. ``dict(backend='blip3o_s3',
    ceph_config='petreloss.conf')``) become our config; with none, the
    ``BLIP3O_CEPH_CONFIG`` file or the boto3 chain is used.
    """

    def __init__(self, ceph_config: ConfigLike = None, path_mapping: Optional[dict] = None, **options: Any) -> None:
        self._storage = Storage(ceph_config, **options)
        self.path_mapping = path_mapping

    @property
    def storage(self) -> Storage:
        """The facade behind this backend (its config and per-process clients)."""
        return self._storage

    def _map(self, filepath: PathType) -> str:
        """``path_mapping`` applied and Windows separators made '/', as PetrelBackend does."""
        mapped = str(filepath)
        for src, dst in (self.path_mapping or {}).items():
            mapped = mapped.replace(src, dst, 1)
        return re.sub(r"\\+", "/", mapped)

    # -- bytes and text ---------------------------------------------------
    def get(self, filepath: PathType) -> bytes:
        uri = self._map(filepath)
        with self._folder_is_not_a_file(uri):
            return self._storage.get(uri)

    def get_text(self, filepath: PathType, encoding: str = "utf-8") -> str:
        uri = self._map(filepath)
        with self._folder_is_not_a_file(uri):
            return self._storage.get_text(uri, encoding)

    def put(self, obj: bytes, filepath: PathType) -> None:
        self._storage.put(self._map(filepath), obj)

    def put_text(self, obj: str, filepath: PathType, encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)

    def open(self, filepath: PathType, mode: str = "rb") -> IO[bytes]:
        """A streamed file on the object: ``'rb'`` seekable with ranged reads, ``'wb'`` a
        multipart upload that becomes visible on close (for torch.load/torch.save).

        A missing object in a missing bucket is a BucketNotFoundError (a HEAD's bare 404 cannot
        tell them apart; one more request, only on that error path)."""
        uri = self._map(filepath)
        try:
            return self._storage.open(uri, mode)
        except BucketNotFoundError:
            raise
        except ObjectNotFoundError:
            parsed = parse_uri(uri)
            if parsed.is_s3 and not self._storage.s3_backend(uri).bucket_exists(parsed.bucket):
                raise BucketNotFoundError(f"{uri}: the bucket {parsed.bucket!r} does not exist; check the URI "
                                          f"and the endpoint of the config") from None
            raise

    # -- tests ------------------------------------------------------------
    def exists(self, filepath: PathType) -> bool:
        return self._storage.exists(self._map(filepath))

    def isdir(self, filepath: PathType) -> bool:
        return self._storage.isdir(self._map(filepath))

    def isfile(self, filepath: PathType) -> bool:
        return self._storage.isfile(self._map(filepath))

    def join_path(self, filepath: PathType, *filepaths: PathType) -> str:
        """``filepath`` and the parts joined by one '/' each (a trailing '/' of the last part kept,
        as ``os.path.join``); a part's leading '/' does not restart the path (keys are never absolute)."""
        result = self._map(filepath)
        for part in filepaths:
            result = f"{result.rstrip('/')}/{self._map(part).lstrip('/')}"
        return result

    @contextmanager
    def get_local_path(self, filepath: PathType) -> Generator[Union[str, Path], None, None]:
        """Download to a temporary folder (streamed, atomic), yield the file's path, remove it on exit.

        The file keeps the object's name, so readers that look at the suffix work. A missing
        object raises here (LocalBackend yields any path and lets the reader fail)."""
        uri = self._map(filepath)
        with tempfile.TemporaryDirectory(prefix="blip3o-") as tmp:
            local = osp.join(tmp, osp.basename(parse_uri(uri).key.rstrip("/")) or "object")
            with self._folder_is_not_a_file(uri):
                self._storage.get_file(uri, local)
            yield local

    # -- removal ----------------------------------------------------------
    def remove(self, filepath: PathType) -> None:
        """Delete one object; FileNotFoundError if it does not exist, IsADirectoryError for a folder."""
        uri = self._map(filepath)
        if self._storage.isfile(uri):
            self._storage.delete(uri)
            return
        if self._storage.isdir(uri):
            raise IsAFolderError(f"{uri}: is a folder; use rmtree to remove it")
        raise ObjectNotFoundError(f"{uri}: no such object to remove")

    def rmtree(self, dir_path: PathType) -> None:
        """Delete every object under the folder ``dir_path``."""
        uri = self._map(dir_path)
        keys = self._tree(uri)
        self._each(lambda rel: self._storage.delete(self.join_path(uri, rel)), keys)

    # -- copies -----------------------------------------------------------
    def copyfile(self, src: PathType, dst: PathType) -> str:
        """Server-side copy of the object ``src`` to ``dst`` (into it, by src's name, if ``dst`` is a
        folder); the destination. Either side may be local (then streamed)."""
        src_uri, dst_uri = self._map(src), self._map(dst)
        if self._storage.isdir(dst_uri):
            dst_uri = self.join_path(dst_uri, _basename(src_uri))
        if src_uri == dst_uri:
            raise SameObjectError(f"{src_uri}: source and destination of the copy are the same object")
        with self._folder_is_not_a_file(src_uri):
            self._storage.copy(src_uri, dst_uri)
        return dst_uri

    def copytree(self, src: PathType, dst: PathType) -> str:
        """Copy every object under the folder ``src`` to the same relative key under ``dst``
        (server-side); ``dst`` must not exist. The destination."""
        src_uri, dst_uri = self._map(src), self._map(dst)
        self._require_new(dst_uri)
        keys = self._tree(src_uri)
        self._each(lambda rel: self._storage.copy(self.join_path(src_uri, rel), self.join_path(dst_uri, rel)), keys)
        return dst_uri

    def copyfile_from_local(self, src: PathType, dst: PathType) -> str:
        """Upload the local file ``src`` (streamed; multipart above the threshold) to ``dst`` (into it,
        by src's name, if ``dst`` is a folder); the destination."""
        dst_uri = self._map(dst)
        if osp.isdir(src):
            raise IsAFolderError(f"{src}: is a folder; use copytree_from_local")
        if self._storage.isdir(dst_uri):
            dst_uri = self.join_path(dst_uri, osp.basename(src))
        self._storage.put_file(dst_uri, os.fspath(src))
        return dst_uri

    def copytree_from_local(self, src: PathType, dst: PathType) -> str:
        """Upload every file under the local folder ``src`` to ``dst`` (must not exist); the destination."""
        dst_uri, root = self._map(dst), os.fspath(src)
        self._require_new(dst_uri)
        if not osp.isdir(root):
            if osp.exists(root):
                raise NotAFolderError(f"{root}: is a file; use copyfile_from_local")
            raise ObjectNotFoundError(f"{root}: no such folder to copy")
        rels = [osp.relpath(osp.join(cur, name), root).replace(os.sep, "/")
                for cur, _, names in os.walk(root) for name in names]
        self._each(lambda rel: self._storage.put_file(self.join_path(dst_uri, rel), osp.join(root, rel)), sorted(rels))
        return dst_uri

    def copyfile_to_local(self, src: PathType, dst: PathType) -> Union[str, Path]:
        """Download ``src`` (streamed, parallel ranged GETs; atomic) to the local ``dst`` (into it, by
        src's name, if ``dst`` is a folder); the destination, a Path if ``dst`` was one."""
        src_uri = self._map(src)
        target: Union[str, Path] = dst
        if osp.isdir(dst):
            target = Path(dst) / _basename(src_uri) if isinstance(dst, Path) else osp.join(dst, _basename(src_uri))
        _require_local_parent(target)
        with self._folder_is_not_a_file(src_uri):
            self._storage.get_file(src_uri, os.fspath(target))
        return target

    def copytree_to_local(self, src: PathType, dst: PathType) -> Union[str, Path]:
        """Download every object under ``src`` into the new local folder ``dst``; the destination."""
        src_uri, root = self._map(src), os.fspath(dst)
        if osp.exists(root):
            raise AlreadyExistsError(f"{root}: already exists; copytree_to_local needs a new folder")
        keys = self._tree(src_uri)

        def fetch(rel: str) -> None:
            local = osp.join(root, *rel.split("/"))
            os.makedirs(osp.dirname(local), exist_ok=True)
            self._storage.get_file(self.join_path(src_uri, rel), local)

        os.makedirs(root)
        self._each(fetch, keys)
        return dst

    def copy_if_symlink_fails(self, src: PathType, dst: PathType) -> bool:
        """Copy ``src`` (a file or a folder) to ``dst``; False, since an object store has no links."""
        if self.isfile(src):
            self.copyfile(src, dst)
        else:
            self.copytree(src, dst)
        return False

    # -- listing ----------------------------------------------------------
    def list_dir_or_file(self, dir_path: PathType, list_dir: bool = True, list_file: bool = True,
                         suffix: Optional[Union[str, Tuple[str, ...]]] = None,
                         recursive: bool = False) -> Iterator[str]:
        """Same contract as LocalBackend's: paths relative to ``dir_path``, folders without a
        trailing '/', files whose name starts with '.' left out; FileNotFoundError for a folder
        with nothing under it, NotADirectoryError for a file."""
        if list_dir and suffix is not None:
            raise TypeError("`suffix` should be None when `list_dir` is True")
        if suffix is not None and not isinstance(suffix, (str, tuple)):
            raise TypeError("`suffix` must be a string or tuple of strings")
        return self._list(self._map(dir_path), list_dir, list_file, suffix, recursive)

    def _list(self, uri: str, list_dir: bool, list_file: bool, suffix: Optional[Union[str, Tuple[str, ...]]],
              recursive: bool) -> Iterator[str]:
        seen_dirs = set()
        found = False
        for info in self._storage.list(uri, recursive=recursive):
            found = True
            key = info.key.rstrip("/")
            is_folder = info.is_dir or info.key.endswith("/")  # a sub-folder, or a zero-byte "folder marker"
            if list_dir:  # each folder once: named by a listing entry, or (recursive) above a key
                parts = key.split("/") if is_folder else key.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    folder = "/".join(parts[:depth])
                    if folder and folder not in seen_dirs:
                        seen_dirs.add(folder)
                        yield folder
            if not is_folder and list_file and not _basename(key).startswith(".") and \
                    (suffix is None or key.endswith(suffix)):
                yield key
        if not found:
            self._raise_not_a_folder(uri)

    def generate_presigned_url(self, url: str, client_method: str = "get_object", expires_in: int = 3600) -> str:
        """A botocore-signed URL granting ``client_method`` on the object (as PetrelBackend's)."""
        return presigned_url(self._storage, self._map(url), client_method, expires_in)

    # -- helpers ----------------------------------------------------------
    @contextmanager
    def _folder_is_not_a_file(self, uri: str) -> Iterator[None]:
        """Turn "no such object" for a folder into IsADirectoryError, as open() on a folder does."""
        try:
            yield
        except BucketNotFoundError:
            raise
        except ObjectNotFoundError:
            if parse_uri(uri).is_s3 and self._storage.isdir(uri):
                raise IsAFolderError(f"{uri}: is a folder, not an object") from None
            raise

    def _raise_not_a_folder(self, uri: str) -> None:
        if self._storage.isfile(uri):
            raise NotAFolderError(f"{uri}: is an object, not a folder")
        raise ObjectNotFoundError(f"{uri}: no such folder (no object under it)")

    def _tree(self, uri: str) -> List[str]:
        """Keys of every object under the folder ``uri`` (relative); errors as for listing it."""
        keys = [info.key for info in self._storage.list(uri, recursive=True)]
        if not keys:
            self._raise_not_a_folder(uri)
        return keys

    def _require_new(self, uri: str) -> None:
        if self._storage.exists(uri):
            raise AlreadyExistsError(f"{uri}: already exists; copytree needs a destination that does not")

    @staticmethod
    def _each(fn: Callable[[str], Any], items: Iterable[str]) -> None:
        """``fn`` on every item, a few at a time; the first error raised (after the rest finish)."""
        with ThreadPoolExecutor(TREE_CONCURRENCY, thread_name_prefix="blip3o-tree") as pool:
            for future in [pool.submit(fn, item) for item in items]:
                future.result()


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _require_local_parent(path: Union[str, Path]) -> None:
    """FileNotFoundError naming the folder, as shutil.copy gives, if ``path``'s folder does not exist."""
    parent = osp.dirname(os.fspath(path)) or "."
    if not osp.isdir(parent):
        raise ObjectNotFoundError(f"{path}: the local folder {parent} does not exist")


# Backends by (backend_args, the environment the config comes from), for the calls where mmengine builds
# a new backend each time (every save_checkpoint and checkpoint load, fileio.copyfile_to_local): a new
# boto3 client costs 0.5-2 s of CPU (dev box: 2.1 s for the first tiny save, 0.05 s with the client
# reused). Clients are per process anyway (ProcessLocal), so a cached backend is fork-safe.
_BACKENDS: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], S3FileBackend] = {}


def backend_for(uri: Any, backend_args: Optional[dict] = None) -> Optional[S3FileBackend]:
    """The S3FileBackend mmengine's ``get_file_backend(uri, backend_args=...)`` gives, reused across calls;
    None if ``uri`` is not ``[cluster:]s3://`` or mmengine serves it with another backend."""
    if not isinstance(uri, str) or not is_s3_uri(uri):
        return None
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("BLIP3O_", "AWS_"))))
    key = (json.dumps(backend_args or {}, sort_keys=True, default=str), env)
    backend = _BACKENDS.get(key)
    if backend is None:
        built = get_file_backend(uri, backend_args=backend_args)
        if not isinstance(built, S3FileBackend):
            return None
        backend = _BACKENDS[key] = built
    return backend


def register_mmengine_backend() -> None:
    """Register :class:`S3FileBackend` for ``s3`` (replacing PetrelBackend)."""
    register_backend(BACKEND_NAME, S3FileBackend, force=True, prefixes=["s3"])


register_mmengine_backend()

# The rest of the integration, installed by the same import (configs name only this module).
from blip3o_storage.integrations import mmengine_checkpoint, mmengine_local  # noqa: E402

mmengine_local.install()
mmengine_checkpoint.install()
