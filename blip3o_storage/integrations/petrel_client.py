"""A drop-in for the closed ``petrel_client.client.Client``.

OpenUni's code does ``Client(conf_path).get(url)`` and expects bytes, or
``None`` for a missing key; mmengine's ``PetrelBackend`` calls ``Get``, ``put``,
``contains``, ``isdir``, ``list``, ``delete`` and ``generate_presigned_url``.
This class keeps those names, signatures and return conventions, so both run
unmodified: installing this project makes ``from petrel_client.client import
Client`` resolve here when no real petrel_client is installed (see
``blip3o_petrel_hook``), or call :func:`blip3o_storage.integrations.compat.install_petrel_client_shim`.

One deliberate difference: the closed client also returns None (after a
warning) for a missing bucket or refused credentials, so a mistyped bucket
reads as thousands of missing images. Here only a missing *object* is None;
a missing bucket raises :class:`~blip3o_storage.errors.BucketNotFoundError`,
refused credentials :class:`~blip3o_storage.errors.AccessDeniedError`, an
unreachable store :class:`~blip3o_storage.errors.TransientStorageError`.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

from blip3o_storage.errors import BucketNotFoundError, InvalidPathError, ObjectNotFoundError
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.storage.uri import parse_uri

logger = logging.getLogger(__name__)
DEFAULT_CONF_PATH = "~/petreloss.conf"
# Keyword arguments of the closed client's constructor that configure its memcached layer or
# transport; they mean nothing over boto3.
_CLOSED_CLIENT_KWARGS = frozenset({"enable_mc", "boto", "mc_key_cb", "enable_multipart"})
# Object-level boto3 methods a presigned URL may stand for (bucket-level ones would ignore the key).
_PRESIGN_METHODS = frozenset({"get_object", "put_object", "head_object", "delete_object"})

Body = Union[bytes, bytearray, memoryview, str, io.IOBase]


def presigned_url(storage: Storage, url: str, client_method: str = "get_object", expires_in: int = 3600) -> str:
    """A URL that grants ``client_method`` on the object ``url`` for ``expires_in`` seconds, signed by
    botocore; shared by :class:`Client` and the mmengine backend (both expose ``generate_presigned_url``)."""
    if client_method not in _PRESIGN_METHODS:
        raise ValueError(f"client_method must be one of {sorted(_PRESIGN_METHODS)}, not {client_method!r}")
    parsed = Client._object_uri(url)
    return storage.s3_backend(url).client.generate_presigned_url(
        client_method, Params={"Bucket": parsed.bucket, "Key": parsed.key}, ExpiresIn=int(expires_in))


class Client:
    """``Client(conf_path)`` with the closed client's methods (``get``/``Get``, ``put``,
    ``contains``, ``isdir``, ``list``, ``delete``, ``size``, ``generate_presigned_url``, ...)."""

    def __init__(self, conf_path: Optional[str] = None, *args: Any, **kwargs: Any) -> None:
        if conf_path is None:
            default = os.path.expanduser(DEFAULT_CONF_PATH)
            conf_path = default if os.path.isfile(default) else None
        unsupported = sorted(k for k in kwargs if k not in _CLOSED_CLIENT_KWARGS)
        if args or unsupported:
            logger.warning("petrel Client: ignoring unsupported arguments %s", unsupported or list(args))
        self._storage = Storage(conf_path)
        # Buckets seen to exist, so that "no such object" needs no second request to tell
        # a missing object from a missing bucket (HEAD of a missing bucket is a bare 404).
        self._buckets_seen: Set[Tuple[str, str]] = set()

    # -- reads ----------------------------------------------------------------
    def get_with_info(self, url: str, enable_stream: bool = False, enable_md5: bool = False,
                      **kwargs: Any) -> Tuple[Union[bytes, io.BytesIO, None], Dict[str, Any]]:
        """``(data, info)``; ``(None, {})`` only when the object does not exist.

        ``no_cache``/``update_cache`` (the closed client's memcached flags) are accepted
        and have no effect; ``enable_md5`` puts the hex MD5 in ``info['md5']``."""
        try:
            data = self._storage.get(url)
        except BucketNotFoundError:
            raise
        except ObjectNotFoundError as exc:
            logger.debug("petrel Client: %s", exc)
            return None, {}
        info: Dict[str, Any] = {}
        if enable_md5:
            info["md5"] = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return (io.BytesIO(data) if enable_stream else data), info

    def get(self, url: str, **kwargs: Any) -> Union[bytes, io.BytesIO, None]:
        """Bytes of ``url``; None if the object does not exist (the closed client's
        convention). ``enable_stream=True`` gives a readable stream."""
        return self.get_with_info(url, **kwargs)[0]

    Get = get  # the closed client's alias, what mmengine's PetrelBackend calls
    GetAndUpdate = get_and_update = get  # memcached refresh: no cache here

    def contains(self, url: str) -> bool:
        """True if ``url`` is an existing object (not a prefix); a missing bucket raises."""
        try:
            self._storage.stat(url)
            return True
        except BucketNotFoundError:
            raise
        except ObjectNotFoundError:
            self._check_bucket(url)
            return False

    def isdir(self, url: str) -> bool:
        """True if any object lies under ``url/``; a missing bucket raises."""
        if self._storage.isdir(url):
            return True
        self._check_bucket(url)
        return False

    def list(self, url: str, **kwargs: Any) -> Iterator[str]:
        """Names directly under ``url``: files as ``name``, sub-folders as ``name/``
        (what PetrelBackend.list_dir_or_file walks)."""
        for info in self._storage.list(url, recursive=False):
            yield info.key

    def size(self, url: str) -> int:
        return self._storage.stat(url).size

    # -- writes ---------------------------------------------------------------
    def put_with_info(self, url: str, body: Body, enable_md5: bool = False,
                      **kwargs: Any) -> Tuple[int, Dict[str, Any]]:
        raw: Any = body  # duck-typed as the closed client does: anything with read() is a file
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        elif hasattr(raw, "read"):
            raw = raw.read()
        data = bytes(raw)
        self._storage.put(url, data)
        info = {"md5": hashlib.md5(data, usedforsecurity=False).hexdigest()} if enable_md5 else {}
        return len(data), info

    def put(self, url: str, body: Body, **kwargs: Any) -> int:
        """Write ``body`` (bytes, str as UTF-8, or a readable file); returns the size written."""
        return self.put_with_info(url, body, **kwargs)[0]

    def delete(self, url: str) -> None:
        self._storage.delete(url)

    def create_bucket(self, url: str) -> None:
        """Create the bucket of ``s3://bucket`` (no key), as the closed client does."""
        parsed = parse_uri(url)
        if not parsed.is_s3 or parsed.key:
            raise InvalidPathError(f"{url!r}: create_bucket takes s3://bucket without a key")
        self._s3(url).ensure_bucket(parsed.bucket)

    # -- presigned URLs -------------------------------------------------------
    def generate_presigned_url(self, url: str, client_method: str = "get_object", expires_in: int = 3600) -> str:
        """A URL that grants ``client_method`` on the object for ``expires_in`` seconds,
        signed by botocore (what PetrelBackend hands to video readers)."""
        return presigned_url(self._storage, url, client_method, expires_in)

    def generate_presigned_post(self, url: str, fields: Optional[Dict[str, Any]] = None,
                                conditions: Optional[List[Any]] = None,
                                expires_in: int = 3600) -> Dict[str, Any]:
        parsed = self._object_uri(url)
        return self._s3(url).client.generate_presigned_post(parsed.bucket, parsed.key, Fields=fields,
                                                            Conditions=conditions, ExpiresIn=int(expires_in))

    def set_count_disp(self, count_disp: int) -> None:
        """The closed client's I/O statistics interval; statistics here are per backend (retry_stats)."""

    # -- helpers --------------------------------------------------------------
    def _s3(self, url: str) -> S3Backend:
        return self._storage.s3_backend(url)  # InvalidPathError for a local path

    @staticmethod
    def _object_uri(url: str) -> Any:
        parsed = parse_uri(url)
        if not parsed.is_s3 or not parsed.key:
            raise InvalidPathError(f"{url!r} names no object; expected [cluster:]s3://bucket/key")
        return parsed

    def _check_bucket(self, url: str) -> None:
        """Raise BucketNotFoundError if the bucket of ``url`` does not exist (one LIST of
        the empty prefix ``url/``, once per bucket)."""
        parsed = parse_uri(url)
        if not parsed.is_s3:
            return
        seen = (parsed.cluster or "", parsed.bucket)
        if seen in self._buckets_seen:
            return
        next(iter(self._storage.list(url, recursive=False)), None)
        self._buckets_seen.add(seen)
