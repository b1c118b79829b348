"""Writable file objects whose data becomes visible only when they are closed.

``Storage.open(uri, "wb")`` returns one of these. The contract is the same for
every store: nothing appears at the URI until :meth:`ObjectWriter.close`
succeeds; an exception inside ``with`` (or :meth:`ObjectWriter.abort`, or the
writer being garbage-collected unclosed) drops what was written. A checkpoint
that a crash cut in half is therefore never mistaken for a whole one.
Subclasses implement three steps: ``_write`` (take bytes), ``_commit`` (make
them the object) and ``_abort`` (drop them).
"""
from __future__ import annotations

import io
import logging
import os
from types import TracebackType
from typing import Any, Callable, Optional, Type

logger = logging.getLogger(__name__)


class ObjectWriter(io.RawIOBase):
    """Write-only, append-only stream; committed by ``close``, dropped by ``abort``.

    ``tell`` counts the bytes written; ``seek`` only to the current position (zip
    writers such as ``torch.save`` ask for it); ``flush`` sends nothing early.
    """

    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri
        self._written = 0

    # -- to implement ----------------------------------------------------
    def _write(self, view: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    # -- the file protocol -----------------------------------------------
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError(f"{self.uri}: write to a closed object writer")
        view = memoryview(data).cast("B")
        if view.nbytes:
            self._write(view)
            self._written += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = {os.SEEK_SET: offset, os.SEEK_CUR: self._written + offset}.get(whence)
        if target != self._written:
            raise io.UnsupportedOperation(f"{self.uri}: an object writer only appends (seek to {offset}, {whence})")
        return self._written

    def flush(self) -> None:
        """Nothing is sent early on flush: the object exists only after ``close``."""

    def close(self) -> None:
        """Make the written bytes the object (atomically); on failure nothing is left behind."""
        if self.closed:
            return
        try:
            self._commit()
        except BaseException:
            self._abort_quietly()
            raise
        finally:
            super().close()

    def abort(self) -> None:
        """Drop everything written; nothing appears at the URI (a no-op once closed)."""
        if self.closed:
            return
        try:
            self._abort()
        finally:
            super().close()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # io's finaliser would call close(), i.e. commit a half-written object: drop it instead.
        if not getattr(self, "closed", True):
            logger.warning("%s: object writer garbage-collected without close(); its data is dropped", self.uri)
            self._abort_quietly()
            io.RawIOBase.close(self)

    def _abort_quietly(self) -> None:
        try:
            self._abort()
        except Exception as exc:  # noqa: BLE001 - best effort; the original error matters
            logger.warning("%s: could not clean up an unfinished write (%s: %s)", self.uri, type(exc).__name__, exc)


class BufferedPutWriter(ObjectWriter):
    """The default: collect the bytes in memory, one ``put`` on close (for stores without streaming writes)."""

    def __init__(self, uri: str, put: Callable[[bytes], object]) -> None:
        super().__init__(uri)
        self._buffer = io.BytesIO()
        self._put = put

    def _write(self, view: memoryview) -> None:
        self._buffer.write(view)

    def _commit(self) -> None:
        self._put(self._buffer.getvalue())
        self._buffer = io.BytesIO()

    def _abort(self) -> None:
        self._buffer = io.BytesIO()
