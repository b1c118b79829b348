"""Route ``mmengine.fileio.copyfile_to_local('s3://...', dst)`` to the S3 backend.

mmengine 0.10's ``copyfile_to_local``/``copytree_to_local`` pick the backend
from ``dst`` (a local path), so the copy lands in ``LocalBackend``, whose
``shutil.copy('s3://...')`` answers FileNotFoundError for an object that exists
(reproduced in ``tests/integration/test_mmengine_backend_parity.py``). mmengine
has no hook for this but its backend registry: :func:`install` registers, for
the local prefix, a ``LocalBackend`` whose two ``*_to_local`` methods hand an
``s3://`` source to :class:`~blip3o_storage.integrations.mmengine_backend.S3FileBackend`
and leave every other call to mmengine's code unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import mmengine.fileio.io as fileio_io
from mmengine.fileio import get_file_backend, register_backend
from mmengine.fileio.backends import LocalBackend

from blip3o_storage.storage.uri import is_s3_uri


class S3AwareLocalBackend(LocalBackend):
    """mmengine's LocalBackend, except that ``copyfile_to_local``/``copytree_to_local`` of an
    ``s3://`` source hand it to the backend that serves the source (``get_file_backend('s3://...')``:
    ours, with the config of ``BLIP3O_CEPH_CONFIG`` or the boto3 chain)."""

    def copyfile_to_local(self, src: Union[str, Path], dst: Union[str, Path]) -> str:
        if is_s3_uri(src):
            return _s3_backend(src).copyfile_to_local(src, dst)  # a Path dst gives a Path, as LocalBackend
        return super().copyfile_to_local(src, dst)

    def copytree_to_local(self, src: Union[str, Path], dst: Union[str, Path]) -> str:
        if is_s3_uri(src):
            return _s3_backend(src).copytree_to_local(src, dst)  # a Path dst gives a Path, as LocalBackend
        return super().copytree_to_local(src, dst)


def _s3_backend(src: Union[str, Path]) -> Any:
    from blip3o_storage.integrations.mmengine_backend import backend_for  # it imports this module

    return backend_for(src) or get_file_backend(src)


def install() -> None:
    """Register :class:`S3AwareLocalBackend` for local paths (idempotent), and drop mmengine's cached
    plain LocalBackend (``enable_singleton`` caches one per prefix) so the next call gets ours."""
    register_backend("local", S3AwareLocalBackend, force=True, prefixes=[""])
    for key, backend in list(fileio_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del fileio_io.backend_instances[key]
