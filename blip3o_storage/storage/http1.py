"""A lean HTTP/1.1 keep-alive client: send one request, read one response, on a pooled connection.

Why: through urllib3 + http.client one signed GET of a 70 KB object cost ~0.76 ms of client CPU
on the dev machine, ~0.5 ms of it in the transport (``email.parser`` header parsing alone 52 µs,
``PoolManager.connection_from_url`` and request assembly in Python objects); the same exchange
written as one ``sendall`` and read with ``recv_into`` plus a ``bytes.partition`` head split costs
a fraction of that (see ``benchmarks/get_cpu.py`` and docs/perf16-profile.md). The protocol
subset is small and fixed: our own requests (GET/PUT with a known body) to one S3 endpoint.

What it does:

* connections are kept alive in a LIFO pool of at most ``max_size`` idle connections per
  :class:`ConnectionPool`, which is :class:`~blip3o_storage.storage.process_state.ProcessLocal`:
  a forked child (a DataLoader worker) starts with an empty pool and never writes to or reads
  from its parent's sockets (they are only closed, never shut down, so the parent's stay good);
* connect and read timeouts per socket wait; TLS through the stdlib ``ssl`` module (verify with
  a CA bundle, or not at all), hostname checked as urllib3 does. Plain-http sockets on Linux are
  blocking with the read timeout set in the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``) rather than
  Python's socket timeout: Python implements its timeout with a ``poll`` before every
  ``send``/``recv``, each one more syscall and one more release of the GIL, three of the six
  syscalls of a GET, and at 16 threads every GIL release is a chance of a hand-off (futex,
  context switch); see ``_KERNEL_TIMEOUTS``. TLS sockets keep Python's timeout (the ``ssl``
  module waits with an unbounded ``poll`` when a blocking read would block);
* responses framed by Content-Length (the rest of the body after the first read in one
  ``recv(n, MSG_WAITALL)`` on a blocking socket, or straight into the caller's buffer),
  ``Transfer-Encoding: chunked``, or close-delimited; a body that ends early is
  :class:`TruncatedBody`, never short data; 1xx heads are skipped;
* a request on a *reused* connection that fails before any byte of the answer arrived (the
  server closed an idle keep-alive connection: EOF, reset, broken pipe) is sent once more on a
  fresh connection; callers send only requests that may be repeated (GET, a PUT with its whole
  body in memory). Anything else raises a :class:`TransportError` whose ``reason`` the retry
  layer reads (``storage/retry.py``), or ``ssl.SSLCertVerificationError`` (final).
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import sys
from collections import deque
from typing import Callable, Deque, Dict, List, Mapping, Optional, Tuple, Union

from blip3o_storage.storage.process_state import ProcessLocal

logger = logging.getLogger(__name__)

Buffer = Union[bytes, bytearray, memoryview]
#: First read of a response, into the connection's own buffer: the head and as much of the body
#: as has arrived (128 KiB: a whole ~70 KB image when the server was quick, then one read is the
#: whole answer, and the body is copied once, out of that buffer); the rest of a longer body comes
#: with one more ``recv`` (``MSG_WAITALL``) or straight into the caller's buffer.
_FIRST_READ = 1 << 17
#: Longest response head accepted (S3 heads are < 2 KiB).
_MAX_HEAD = 1 << 16
#: Bodies up to this size go in the same ``sendall`` as the head (one syscall, one copy).
_JOIN_BODY_BELOW = 1 << 17
#: Plain-http sockets blocking, with the timeouts in the kernel (Linux's ``SO_RCVTIMEO`` and
#: ``SO_SNDTIMEO``; a wait past them fails with EAGAIN, read as :class:`ReadTimeout`): a 70 KB GET
#: is then a send and 1-2 recvs (1.75 at 1 thread, 1.55 at 16, strace -c) instead of a send, two
#: recvs and a poll before each, and releases the GIL as often (futex calls per GET at 16 threads:
#: 37.6 before, 19 after, ThreadPoolExecutor's included; ``benchmarks/get_cpu.py``).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
_TIMEOUT_ERRORS = (socket.timeout, BlockingIOError)


class TransportError(Exception):
    """A failure of the exchange itself (not an HTTP error status); ``reason`` names it for
    the retry layer the way botocore's failures are named."""

    reason = "http-protocol"


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable, connect timeout, TLS handshake)."""

    reason = "connection"


class ReadTimeout(TransportError):
    """No byte arrived for ``read_timeout`` seconds."""

    reason = "read-timeout"


class ConnectionLost(TransportError):
    """The server closed or reset the connection before the response head was complete."""

    reason = "connection-reset"


class TruncatedBody(TransportError):
    """The body ended (EOF, reset) before its announced length."""

    reason = "truncated-body"


class BadResponse(TransportError):
    """An answer that is not HTTP/1.x as we understand it."""

    reason = "http-protocol"


class _Stale(Exception):
    """Nothing of the answer arrived on a reused connection: resend on a fresh one."""


class Connection:
    """One socket with the bytes read past the current response head.

    ``waitall``: the recv flags for a read of a known length (``MSG_WAITALL`` on a blocking
    plain socket: the kernel returns once all of it, EOF or the timeout came; 0 otherwise,
    where ``ssl`` takes no flags and a non-blocking socket returns what is there).
    """

    __slots__ = ("sock", "pending", "timeout", "waitall", "buf", "view")

    def __init__(self, sock: socket.socket, timeout: float, waitall: int = 0) -> None:
        self.sock = sock
        self.pending = b""
        self.timeout = timeout
        self.waitall = waitall
        #: Where each response's first read lands (``_FIRST_READ`` bytes, reused for every response).
        self.buf = bytearray(_FIRST_READ)
        self.view = memoryview(self.buf)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Response:
    """A response head, with the connection it came on; read or close it exactly once.

    :meth:`header` finds one header by name in the head (a string search: the framing headers
    and the ETag are all a GET needs, ~1 µs against ~5 µs to split every header of RGW's
    answer into a dict); :attr:`headers` is that dict, built on first use.
    """

    __slots__ = ("status", "_head", "_lower", "_headers", "_conn", "_pool", "_length", "_chunked", "_keep",
                 "_head_only")

    def __init__(self, status: int, head: str, conn: Connection, pool: ConnectionPool, head_only: bool) -> None:
        self.status = status
        self._head = head
        self._lower = head.lower()
        self._headers: Optional[Dict[str, str]] = None
        self._conn: Optional[Connection] = conn
        self._pool = pool
        self._head_only = head_only
        # Substring tests first: S3 answers rarely carry these two headers (~0.2 µs against ~1 µs a lookup).
        self._chunked = ("\r\ntransfer-encoding:" in self._lower
                         and "chunked" in (self.header("transfer-encoding") or "").lower())
        length = self.header("content-length")
        self._length: Optional[int] = None
        if length is not None and not self._chunked:
            try:
                self._length = int(length)
            except ValueError:
                raise BadResponse(f"Content-Length {length!r} is not a number") from None
            if self._length < 0:
                raise BadResponse(f"Content-Length {length!r} is negative")
        connection = (self.header("connection") or "").lower() if "\r\nconnection:" in self._lower else ""
        self._keep = connection != "close" and (connection == "keep-alive" or not head.startswith("HTTP/1.0"))

    def header(self, name: str) -> Optional[str]:
        """The value of the header ``name`` (lower-case), the first if repeated; None if absent."""
        key = f"\r\n{name}:"
        start = self._lower.find(key)
        if start < 0:
            return None
        start += len(key)
        end = self._lower.find("\r\n", start)
        return self._head[start:end if end >= 0 else len(self._head)].strip()

    @property
    def headers(self) -> Dict[str, str]:
        """Every header: {lower-case name: value} (repeated ones joined with ", ")."""
        if self._headers is None:
            self._headers = _parse_headers(self._head)
        return self._headers

    @property
    def length(self) -> Optional[int]:
        """The body's length from Content-Length, None when chunked or close-delimited."""
        return self._length

    def read(self) -> bytes:
        """The whole body; the connection goes back to the pool when it may be reused."""
        conn = self._take()
        try:
            if self._head_only or self.status in (204, 304):
                body = b""
            elif self._chunked:
                body = _read_chunked(conn)
            elif self._length is not None:
                body = _read_body(conn, self._length)
            else:
                body = _read_to_eof(conn)
                self._keep = False
        except BaseException:
            conn.close()
            raise
        self._done(conn)
        return body

    def read_into(self, view: memoryview) -> None:
        """Exactly ``len(view)`` bytes of body into ``view``; the body must be that long
        (Content-Length); anything else is a BadResponse, a short body TruncatedBody."""
        conn = self._take()
        try:
            if self._length != len(view):
                raise BadResponse(f"expected a body of {len(view)} bytes, Content-Length is {self._length}")
            _fill(conn, view)
        except BaseException:
            conn.close()
            raise
        self._done(conn)

    def close(self) -> None:
        """Drop the connection without reading the body (a body we do not want)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _take(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise RuntimeError("response body already read or closed")
        self._conn = None
        return conn

    def _done(self, conn: Connection) -> None:
        if self._keep and not conn.pending:
            self._pool.put_back(conn)
        else:
            conn.close()


class ConnectionPool(ProcessLocal):
    """Keep-alive connections to one ``scheme://host:port``, per process.

    ``verify``: False (no certificate check), True (``ca_bundle``, else the system's) or a CA
    bundle path. At most ``max_size`` idle connections are kept (more threads than that still
    work, as with urllib3, but discard their connection after each request and log it).
    ``on_resend`` is called when a request is sent again because its reused connection
    turned out closed (so the caller can count it as a retry).
    """

    _process_state = ("_idle", "_tls")

    def __init__(self, scheme: str, host: str, port: int, *, connect_timeout: float, read_timeout: float,
                 max_size: int, verify: Union[bool, str] = True, ca_bundle: Optional[str] = None,
                 on_resend: Optional[Callable[[], None]] = None) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r}")
        self.scheme, self.host, self.port = scheme, host, port
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.max_size = max_size
        self.verify = verify
        self.ca_bundle = ca_bundle
        self.on_resend = on_resend
        super().__init__()

    def _init_process_state(self) -> None:
        self._idle: Deque[Connection] = deque()
        self._tls: Optional[ssl.SSLContext] = None

    # -- connections -------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext:
        context = self._tls
        if context is None:
            if self.verify is False:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                cafile = self.verify if isinstance(self.verify, str) else self.ca_bundle
                context = ssl.create_default_context(cafile=cafile)
            self._tls = context
        return context

    def _connect(self) -> Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:  # refused, unreachable, DNS, connect timeout
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.scheme == "https":
                sock = self._tls_context().wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError:
            sock.close()
            raise  # final: every retry would get the same certificate
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"TLS handshake with {self.host}:{self.port} failed: {exc}") from exc
        if _KERNEL_TIMEOUTS and self.scheme == "http" and self.read_timeout > 0:
            timeval = _timeval(self.read_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
            sock.settimeout(None)  # blocking: no poll before each send/recv
            return Connection(sock, self.read_timeout, socket.MSG_WAITALL)
        sock.settimeout(self.read_timeout)
        return Connection(sock, self.read_timeout)

    def _get(self) -> Tuple[Connection, bool]:
        """An idle connection (reused: True) or a new one."""
        self._check_process()
        try:
            return self._idle.pop(), True
        except IndexError:
            return self._connect(), False

    def put_back(self, conn: Connection) -> None:
        if self._owner_pid != os.getpid():  # never hand a connection to another process's pool
            conn.close()
            return
        if len(self._idle) < self.max_size:
            self._idle.append(conn)
            return
        conn.close()
        logger.warning("Connection pool is full, discarding connection: %s (max %d idle); "
                       "raise max_pool_connections to at least the number of threads", self.host, self.max_size)

    def close(self) -> None:
        """Close every idle connection of this process."""
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return

    # -- one exchange ------------------------------------------------------
    def request(self, method: str, target: str, headers: Mapping[str, str], body: Optional[Buffer] = None) -> Response:
        """Send ``method target`` with ``headers`` (Host included) and ``body``; the response head.

        ``target`` goes on the wire exactly as given (already percent-encoded; ``.``/``..``
        segments kept). Content-Length must be in ``headers`` when there is a body.
        """
        lines = [f"{method} {target} HTTP/1.1\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if body is not None and len(body) < _JOIN_BODY_BELOW:
            head, body = head + body, None
        conn, reused = self._get()
        try:
            return self._exchange(conn, reused, method, head, body)
        except _Stale:
            conn.close()
            logger.debug("idle connection to %s:%s was closed by the server; resending on a new one",
                         self.host, self.port)
            if self.on_resend is not None:
                self.on_resend()
            return self._exchange(self._connect(), False, method, head, body)

    def _exchange(self, conn: Connection, reused: bool, method: str, head: bytes, body: Optional[Buffer]) -> Response:
        try:
            try:
                conn.sock.sendall(head)
                if body is not None:
                    conn.sock.sendall(body)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
                # The server may already have answered (e.g. an error before reading a large body):
                # read what it said; if nothing, a reused connection was stale.
                try:
                    early = self._read_head(conn, reused, method)
                    early._keep = False  # the request was not sent whole: never reuse this connection
                    return early
                except (TransportError, _Stale):
                    if reused:
                        raise _Stale() from exc
                    raise ConnectionLost(f"connection to {self.host}:{self.port} lost while sending: {exc}") from exc
            except _TIMEOUT_ERRORS as exc:
                raise ReadTimeout(f"{self.host}:{self.port}: send timed out after {self.read_timeout}s") from exc
            except OSError as exc:
                raise ConnectionLost(f"connection to {self.host}:{self.port} failed while sending: {exc}") from exc
            return self._read_head(conn, reused, method)
        except BaseException:
            conn.close()
            raise

    def _read_head(self, conn: Connection, reused: bool, method: str) -> Response:
        data = conn.pending
        conn.pending = b""
        while True:
            if data:
                end = data.find(b"\r\n\r\n")
            else:  # the usual case: one read into the connection's buffer holds the head, often the whole body
                chunk = self._recv_head(conn, reused, data)
                end = conn.buf.find(b"\r\n\r\n", 0, len(chunk))
                if end < 0:
                    data = bytes(chunk)
            if end >= 0 and not data:
                head, rest = str(chunk[:end], "latin-1"), bytes(chunk[end + 4:])
            else:
                while end < 0:
                    if len(data) > _MAX_HEAD:
                        raise BadResponse(f"response head from {self.host}:{self.port} over {_MAX_HEAD} bytes")
                    chunk = self._recv_head(conn, reused, data)
                    data += chunk
                    end = data.find(b"\r\n\r\n", max(0, len(data) - len(chunk) - 3))
                head, rest = data[:end].decode("latin-1"), data[end + 4:]
            status = _parse_status(head)
            if 100 <= status < 200 and status != 101:
                data, reused = rest, False  # an interim answer (100 Continue): the real one follows
                continue
            conn.pending = rest
            return Response(status, head, conn, self, head_only=method == "HEAD")

    def _recv_head(self, conn: Connection, reused: bool, data: bytes) -> memoryview:
        """The next bytes of a response head (``data``: what came before), as a view of the
        connection's buffer; _Stale when a reused connection turns out closed before any byte."""
        try:
            n = conn.sock.recv_into(conn.buf)
        except _TIMEOUT_ERRORS as exc:
            raise ReadTimeout(f"{self.host}:{self.port}: no answer within {self.read_timeout}s") from exc
        except (ConnectionResetError, ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
            if reused and not data:
                raise _Stale() from exc
            raise ConnectionLost(f"{self.host}:{self.port} reset the connection: {exc}") from exc
        except OSError as exc:
            raise ConnectionLost(f"{self.host}:{self.port}: {exc}") from exc
        if not n:
            if reused and not data:
                raise _Stale()
            raise ConnectionLost(f"{self.host}:{self.port} closed the connection before the response head "
                                 f"was complete ({len(data)} bytes of it)")
        return conn.view[:n]


def _parse_status(head: str) -> int:
    """The status code of a response head (its status line checked)."""
    if not head.startswith("HTTP/1.") or len(head) < 12 or head[8] != " ":
        raise BadResponse(f"not an HTTP/1.x status line: {head.partition(chr(13))[0][:80]!r}")
    try:
        return int(head[9:12])
    except ValueError:
        raise BadResponse(f"bad status line {head.partition(chr(13))[0][:80]!r}") from None


def _parse_headers(head: str) -> Dict[str, str]:
    """{lower-case name: value} of a response head without its final CRLFCRLF."""
    headers: Dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t":
            raise BadResponse(f"bad header line {line[:80]!r}")
        key = name.lower()
        if key in headers:
            headers[key] = f"{headers[key]}, {value.strip()}"
        else:
            headers[key] = value.strip()
    return headers


def _timeval(seconds: float) -> bytes:
    """``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO (at least 1 µs: zero would mean no timeout)."""
    micros = max(1, int(seconds * 1e6))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


def _recv_into(conn: Connection, view: memoryview, flags: int = 0) -> int:
    try:
        return conn.sock.recv_into(view, 0, flags)
    except _TIMEOUT_ERRORS as exc:
        raise ReadTimeout(f"no body bytes within {conn.timeout}s") from exc
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return 0
    except OSError as exc:
        raise TruncatedBody(f"body broke off: {exc}") from exc


def _recv(conn: Connection, size: int, flags: int) -> bytes:
    try:
        return conn.sock.recv(size, flags)
    except _TIMEOUT_ERRORS as exc:
        raise ReadTimeout(f"no body bytes within {conn.timeout}s") from exc
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return b""
    except OSError as exc:
        raise TruncatedBody(f"body broke off: {exc}") from exc


def _read_body(conn: Connection, length: int) -> bytes:
    """A Content-Length body as bytes: the part already read, then the rest from the socket
    (one ``recv(n, MSG_WAITALL)`` on a blocking plain socket). One user-space copy of the body
    (joining the two parts), where a preallocated ``bytearray`` costs a zero fill, the copy in,
    and the ``bytes()`` copy out; TruncatedBody on EOF."""
    pending = conn.pending
    have = len(pending)
    if have >= length:
        conn.pending = pending[length:] if have > length else b""
        return pending[:length] if have > length else pending
    conn.pending = b""
    parts = [pending] if have else []
    need = length - have
    flags = conn.waitall
    while need:
        chunk = _recv(conn, need, flags)
        if not chunk:
            raise TruncatedBody(f"body ended after {length - need} of {length} bytes")
        parts.append(chunk)
        need -= len(chunk)
    return b"".join(parts)


def _fill(conn: Connection, view: memoryview) -> None:
    """Fill ``view`` from the bytes already read, then the socket; TruncatedBody on EOF."""
    need = len(view)
    pending = conn.pending
    if len(pending) >= need:
        view[:] = pending[:need]
        conn.pending = pending[need:]
        return
    got = len(pending)
    view[:got] = pending
    conn.pending = b""
    flags = conn.waitall
    while got < need:
        n = _recv_into(conn, view[got:], flags)
        if not n:
            raise TruncatedBody(f"body ended after {got} of {need} bytes")
        got += n


def _read_line(conn: Connection) -> bytes:
    data = conn.pending
    while True:
        end = data.find(b"\r\n")
        if end >= 0:
            conn.pending = data[end + 2:]
            return data[:end]
        if len(data) > _MAX_HEAD:
            raise BadResponse("chunk-size line too long")
        n = _recv_into(conn, conn.view)
        if not n:
            raise TruncatedBody("chunked body ended before its last chunk")
        data += conn.view[:n]


def _read_chunked(conn: Connection) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (trailers read and dropped)."""
    parts: List[bytes] = []
    while True:
        line = _read_line(conn)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadResponse(f"bad chunk-size line {line[:40]!r}") from None
        if size == 0:
            while _read_line(conn):  # trailers, up to the empty line
                pass
            return b"".join(parts)
        parts.append(_read_body(conn, size))
        if _read_line(conn):
            raise BadResponse("chunk not followed by CRLF")


def _read_to_eof(conn: Connection) -> bytes:
    parts = [conn.pending]
    conn.pending = b""
    view = conn.view
    while True:
        n = _recv_into(conn, view)
        if not n:
            return b"".join(parts)
        parts.append(bytes(view[:n]))
