"""An mmengine fileio backend for ``s3://`` (and ``cluster:s3://``) URIs.

mmengine 0.10.x maps the ``s3`` prefix to its PetrelBackend, which needs the
closed ``petrel_client``. Importing this module (or calling
:func:`register_mmengine_backend`) registers ours for the prefix with
``force=True``, so ``mmengine.fileio.get('s3://...')``, ``exists``,
``list_dir_or_file`` and friends go through boto3. In configs::

    custom_imports = dict(imports=['blip3o_storage.integrations.mmengine_backend'])
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generator, Iterator, Optional, Tuple, Union

from mmengine.fileio import register_backend
from mmengine.fileio.backends import BaseStorageBackend

from blip3o_storage.storage.facade import ConfigLike, Storage
from blip3o_storage.storage.uri import parse_uri

BACKEND_NAME = "blip3o_s3"


class S3FileBackend(BaseStorageBackend):
    """mmengine's backend interface on top of :class:`Storage`.

    ``backend_args`` from mmengine (e.g. ``dict(backend='blip3o_s3',
    ceph_config='petreloss.conf')``) become our config; with none, the
    ``BLIP3O_CEPH_CONFIG`` file or the boto3 chain is used.
    """

    def __init__(self, ceph_config: ConfigLike = None, path_mapping: Optional[dict] = None, **options: Any) -> None:
        self._storage = Storage(ceph_config, **options)
        self.path_mapping = path_mapping

    def _map(self, filepath: Union[str, Path]) -> str:
        filepath = str(filepath)
        for src, dst in (self.path_mapping or {}).items():
            filepath = filepath.replace(src, dst, 1)
        return filepath

    def get(self, filepath: Union[str, Path]) -> bytes:
        return self._storage.get(self._map(filepath))

    def get_text(self, filepath: Union[str, Path], encoding: str = "utf-8") -> str:
        return self._storage.get_text(self._map(filepath), encoding)

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        self._storage.put(self._map(filepath), obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)

    def exists(self, filepath: Union[str, Path]) -> bool:
        return self._storage.exists(self._map(filepath))

    def isdir(self, filepath: Union[str, Path]) -> bool:
        return self._storage.isdir(self._map(filepath))

    def isfile(self, filepath: Union[str, Path]) -> bool:
        return self._storage.isfile(self._map(filepath))

    def join_path(self, filepath: Union[str, Path], *filepaths: Union[str, Path]) -> str:
        result = str(filepath).rstrip("/")
        for part in filepaths:
            result = f"{result}/{str(part).strip('/')}"
        return result

    @contextmanager
    def get_local_path(self, filepath: Union[str, Path]) -> Generator[Union[str, Path], None, None]:
        """Download to a temporary file that is removed on exit."""
        suffix = Path(parse_uri(self._map(filepath)).key).suffix
        fd, tmp = tempfile.mkstemp(suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.get(filepath))
            yield tmp
        finally:
            os.unlink(tmp)

    def remove(self, filepath: Union[str, Path]) -> None:
        self._storage.delete(self._map(filepath))

    def list_dir_or_file(self, dir_path: Union[str, Path], list_dir: bool = True, list_file: bool = True,
                         suffix: Optional[Union[str, Tuple[str, ...]]] = None,
                         recursive: bool = False) -> Iterator[str]:
        """Same contract as mmengine's backends: paths relative to ``dir_path``,
        directories yielded without a trailing slash."""
        if list_dir and suffix is not None:
            raise TypeError("`suffix` should be None when `list_dir` is True")
        if suffix is not None and not isinstance(suffix, (str, tuple)):
            raise TypeError("`suffix` must be a string or tuple of strings")
        seen_dirs = set()
        for info in self._storage.list(self._map(dir_path), recursive=recursive):
            key = info.key.rstrip("/") if info.is_dir else info.key
            if recursive and list_dir:
                parts = key.split("/")[:-1]
                for depth in range(1, len(parts) + 1):
                    d = "/".join(parts[:depth])
                    if d not in seen_dirs:
                        seen_dirs.add(d)
                        yield d
            if info.is_dir:
                if list_dir:
                    yield key
            elif list_file and (suffix is None or key.endswith(suffix)):
                yield key


def register_mmengine_backend() -> None:
    """Register :class:`S3FileBackend` for ``s3`` (replacing PetrelBackend)."""
    register_backend(BACKEND_NAME, S3FileBackend, force=True, prefixes=["s3"])


register_mmengine_backend()
