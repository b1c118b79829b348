"""A drop-in for the closed ``petrel_client.client.Client``.

OpenUni's code does ``Client(conf_path).get(url)`` and expects bytes, or
``None`` for a missing key. This class keeps those method names and return
conventions so that code runs unmodified (``from blip3o_storage.petrel_client
import Client``, or install the ``petrel_client`` shim module this package
ships, see :mod:`blip3o_storage.compat`).
"""
from __future__ import annotations

import io
import logging
import os
from typing import Any, Iterator, Optional, Union

from .errors import ObjectNotFoundError
from .storage import Storage

logger = logging.getLogger(__name__)
DEFAULT_CONF_PATH = "~/petreloss.conf"


class Client:
    """``Client(conf_path)`` with ``get``/``put``/``contains``/``isdir``/``list``/``delete``."""

    def __init__(self, conf_path: Optional[str] = None, **kwargs: Any) -> None:
        if conf_path is None:
            default = os.path.expanduser(DEFAULT_CONF_PATH)
            conf_path = default if os.path.isfile(default) else None
        # The closed client takes flags such as enable_mc / boto; they mean nothing here.
        ignored = sorted(k for k in kwargs if k not in ("enable_mc", "boto"))
        if ignored:
            logger.warning("petrel Client: ignoring unsupported options %s", ignored)
        self._storage = Storage(conf_path)

    def get(self, url: str, enable_stream: bool = False, no_cache: bool = False,
            **kwargs: Any) -> Union[bytes, io.BytesIO, None]:
        """Bytes of ``url``; None if the object does not exist (the closed
        client's convention). ``enable_stream=True`` gives a readable stream."""
        try:
            data = self._storage.get(url)
        except ObjectNotFoundError:
            return None
        return io.BytesIO(data) if enable_stream else data

    def put(self, url: str, body: Union[bytes, bytearray, memoryview, str, io.IOBase], **kwargs: Any) -> int:
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif hasattr(body, "read"):
            body = body.read()
        data = bytes(body)
        self._storage.put(url, data)
        return len(data)

    def contains(self, url: str) -> bool:
        """True if ``url`` is an existing object (not a prefix)."""
        try:
            self._storage.stat(url)
            return True
        except ObjectNotFoundError:
            return False

    def isdir(self, url: str) -> bool:
        return self._storage.isdir(url)

    def list(self, url: str, **kwargs: Any) -> Iterator[str]:
        """Names directly under ``url``; sub-folders end with ``/``."""
        for info in self._storage.list(url, recursive=False):
            yield info.key

    def delete(self, url: str) -> None:
        self._storage.delete(url)

    def size(self, url: str) -> int:
        return self._storage.stat(url).size
