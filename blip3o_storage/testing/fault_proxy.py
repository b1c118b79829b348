"""A loopback HTTP fault proxy for tests (tc netem is not available here).

Sits between boto3 and an S3 server and, at set rates, injects:

* ``reset``: the connection is reset (RST) instead of a response; for writes
  the request has already reached the server (a lost response);
* ``slowdown``: a 503 SlowDown error without forwarding;
* ``stall``: the response is held back for ``stall_seconds``;
* ``truncate``: headers promise the full Content-Length, half the body is sent,
  then the connection is reset (responses with a body, i.e. GET);
* ``truncate_request``: half of a request body (PUT/POST) reaches the server,
  then both connections are reset (an upload cut off mid-body);
* ``trickle``: the response body is sent in ``trickle_chunks`` pieces,
  ``trickle_interval`` seconds apart (a slow but progressing transfer).

``rewrite_request(method, target, headers, body) -> (headers, body)`` and
``rewrite_response(method, status, headers) -> headers`` (both optional) let a
test play a middlebox that alters requests or responses in transit.

At most one fault per request, drawn from one seeded RNG (one draw per
request), so a run with the same seed and request order injects the same
faults. ``counts`` holds ``requests`` and one entry per injected fault; the
``by_method`` counter splits them by ``(fault, method)``; ``upstream_errors``
counts failures of the upstream server itself (not injected).

Robustness of the proxy itself (it must never be the source of a fault it did
not count):

* thread-safe counters and RNG; ``snapshot()`` reads them consistently;
* keep-alive on both sides; a stale upstream keep-alive connection is
  reopened and the request sent again once;
* request bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``
  (forwarded with a Content-Length), ``Expect: 100-continue`` answered here;
* upstream responses of any framing (chunked, close-delimited) re-framed with
  a Content-Length; HEAD/204/304 keep the upstream headers and have no body;
* a client that half-closes (``shutdown(SHUT_WR)``) after its request still
  gets the response before the proxy closes;
* fork-safe: sockets are closed in forked children (DataLoader workers), so a
  reset in the parent really reaches the client instead of being held open
  by a child's copy of the file descriptor;
* ``stop()`` closes every live connection.

The Host header is forwarded unchanged, so SigV4 signatures still verify on
servers that check them (Ceph RGW).
"""
from __future__ import annotations

import functools
import http.client
import os
import random
import socket
import socketserver
import struct
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import urlparse

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                 b'<Message>Please reduce your request rate.</Message></Error>')
FAULTS = ("reset", "slowdown", "stall", "truncate", "truncate_request", "trickle")
_MAX_LINE = 65537
Headers = List[Tuple[str, str]]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@dataclass
class FaultRates:
    reset: float = 0.0
    slowdown: float = 0.0
    stall: float = 0.0
    truncate: float = 0.0
    stall_seconds: float = 0.5
    methods: Tuple[str, ...] = ("GET", "PUT", "HEAD", "POST", "DELETE")
    truncate_request: float = 0.0
    trickle: float = 0.0
    trickle_chunks: int = 10
    trickle_interval: float = 0.1

    def __post_init__(self) -> None:
        total = sum(getattr(self, name) for name in FAULTS)
        if not 0.0 <= total <= 1.0 or any(getattr(self, name) < 0 for name in FAULTS):
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {total}")


class _ProtocolError(Exception):
    """The client sent something that is not HTTP/1.1 the proxy understands."""


# Every live proxy, so forked children can drop their copies of its sockets.
_LIVE_PROXIES: weakref.WeakSet[FaultProxy] = weakref.WeakSet()


def _close_in_child() -> None:
    for proxy in list(_LIVE_PROXIES):
        proxy._drop_sockets_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


@dataclass(eq=False)
class FaultProxy:
    upstream_url: str
    rates: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    by_method: Counter = field(default_factory=Counter)
    rewrite_request: Optional[Callable[[str, str, Headers, bytes], Tuple[Headers, bytes]]] = None
    rewrite_response: Optional[Callable[[str, int, Headers], Headers]] = None

    def __post_init__(self) -> None:
        parsed = urlparse(self.upstream_url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: Optional[socketserver.ThreadingTCPServer] = None
        self._sockets: Set[socket.socket] = set()
        self._pid = os.getpid()

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def choose_fault(self, method: str) -> Optional[str]:
        """One RNG draw per request (even for methods not faulted), so the
        sequence only depends on the seed and the request order."""
        with self._lock:
            roll = self._rng.random()
        if method not in self.rates.methods:
            return None
        edge = 0.0
        for name in FAULTS:
            edge += getattr(self.rates, name)
            if roll < edge:
                return name
        return None

    def count(self, name: str, method: str = "") -> None:
        with self._lock:
            self.counts[name] += 1
            if method:
                self.by_method[(name, method)] += 1

    def snapshot(self) -> Dict[str, int]:
        """A consistent copy of ``counts`` (every fault name present, 0 if none)."""
        with self._lock:
            out = {name: 0 for name in ("requests",) + FAULTS}
            out.update(self.counts)
            return out

    def injected(self) -> int:
        """How many faults were injected in total."""
        snap = self.snapshot()
        return sum(snap[name] for name in FAULTS)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128  # many DataLoader workers x threads connect at once

        server = Server(("127.0.0.1", 0), Handler)
        self._server = server
        _LIVE_PROXIES.add(self)
        threading.Thread(target=server.serve_forever, daemon=True, name="fault-proxy").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            live = list(self._sockets)
        for sock in live:
            _shutdown_quietly(sock)
        _LIVE_PROXIES.discard(self)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fork safety -------------------------------------------------------
    def _drop_sockets_after_fork(self) -> None:
        """In a forked child: close our fds (never shutdown: that would act on the parent's socket)."""
        if os.getpid() == self._pid:
            return
        self._lock = threading.Lock()  # may have been held by a parent thread at fork time
        socks = list(self._sockets)
        if self._server is not None:
            socks.append(self._server.socket)
        for sock in socks:
            try:
                fd = sock.detach()  # our copy of the fd only: no shutdown, no RST on the shared socket
                if fd >= 0:
                    os.close(fd)
            except OSError:
                pass
        self._sockets = set()
        self._server = None

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    # -- upstream ----------------------------------------------------------
    def _new_upstream(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self._upstream, timeout=60)

    def _forward(self, upstream: Optional[http.client.HTTPConnection], method: str, target: str,
                 headers: List[Tuple[str, str]], body: bytes
                 ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse, bytes]:
        """Send one request upstream; a reused keep-alive connection that the
        server already closed is reopened and the request sent again once."""
        fresh = upstream is None
        conn = upstream or self._new_upstream()
        for attempt in (1, 2):
            try:
                _send_request(conn, method, target, headers, body)
                response = conn.getresponse()
                payload = response.read()
                return conn, response, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                conn.close()
                if fresh or attempt == 2:
                    raise
                conn, fresh = self._new_upstream(), True
        raise AssertionError("unreachable")

    def _forward_truncated(self, method: str, target: str, headers: List[Tuple[str, str]], body: bytes) -> None:
        """Send the headers and half the body on a new upstream connection, then reset it."""
        conn = socket.create_connection(self._upstream, timeout=10)
        try:
            head = [f"{method} {target} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers]
            head.append(f"Content-Length: {len(body)}")
            conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body[: len(body) // 2])
            time.sleep(0.01)  # let the server start reading the partial body
        finally:
            _reset(conn)

    # -- one client connection (keep-alive: many requests) ----------------
    def _serve_connection(self, sock: socket.socket) -> None:
        self._track(sock, True)
        reader = sock.makefile("rb")
        upstream: Optional[http.client.HTTPConnection] = None
        clean_close = True
        try:
            while True:
                try:
                    request = _read_request(reader, sock)
                except _ProtocolError:
                    self.count("client_protocol_errors")
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                if request is None:
                    return  # the client closed (or half-closed) its side
                method, target, headers, body = request
                self.count("requests")
                if self.rewrite_request is not None:
                    headers, body = self.rewrite_request(method, target, headers, body)
                fault = self.choose_fault(method)
                if fault == "slowdown":
                    self.count("slowdown", method)
                    sock.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(SLOWDOWN_BODY), SLOWDOWN_BODY))
                    continue
                if fault == "reset" and method in ("GET", "HEAD"):
                    self.count("reset", method)
                    clean_close = False
                    _reset(sock)
                    return
                if fault == "truncate_request" and len(body) > 1:
                    self.count("truncate_request", method)
                    self._forward_truncated(method, target, headers, body)
                    clean_close = False
                    _reset(sock)
                    return
                try:
                    upstream, response, payload = self._forward(upstream, method, target, headers, body)
                except (OSError, http.client.HTTPException):
                    self.count("upstream_errors", method)
                    upstream = None
                    return  # FIN: the client sees a dropped connection, counted as not injected
                if response.will_close:
                    upstream.close()
                    upstream = None
                if fault == "reset":  # the write reached the server; the answer is lost
                    self.count("reset", method)
                    clean_close = False
                    _reset(sock)
                    return
                has_body = method != "HEAD" and response.status not in (204, 304) and response.status >= 200
                rewrite = self.rewrite_response
                head = _response_head(response, len(payload) if has_body else None,
                                      None if rewrite is None
                                      else functools.partial(rewrite, method, response.status))
                if fault == "stall":
                    self.count("stall", method)
                    time.sleep(self.rates.stall_seconds)
                if fault == "truncate" and has_body and len(payload) > 1:
                    self.count("truncate", method)
                    sock.sendall(head + payload[: len(payload) // 2])
                    clean_close = False
                    _reset(sock)
                    return
                if fault == "trickle" and has_body and len(payload) > 1:
                    self.count("trickle", method)
                    sock.sendall(head)
                    step = -(-len(payload) // max(1, self.rates.trickle_chunks))
                    for offset in range(0, len(payload), step):
                        time.sleep(self.rates.trickle_interval)
                        sock.sendall(payload[offset:offset + step])
                    continue
                sock.sendall(head + (payload if has_body else b""))
        except (ConnectionError, OSError):
            clean_close = False
            return
        finally:
            self._track(sock, False)
            if upstream is not None:
                upstream.close()
            try:
                reader.close()
            except OSError:
                pass
            if clean_close:
                _shutdown_quietly(sock)
            try:
                sock.close()
            except OSError:
                pass


def _send_request(conn: http.client.HTTPConnection, method: str, target: str,
                  headers: List[Tuple[str, str]], body: bytes) -> None:
    conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers:
        conn.putheader(name, value)
    if body or method in ("PUT", "POST"):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body if body else None)


def _shutdown_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer sees a TCP RST, not a clean FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _readline(reader: BinaryIO) -> bytes:
    line = reader.readline(_MAX_LINE)
    if len(line) >= _MAX_LINE:
        raise _ProtocolError("line too long")
    return line


def _read_chunked(reader: BinaryIO) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (trailers are dropped)."""
    parts: List[bytes] = []
    while True:
        size_line = _readline(reader)
        if not size_line:
            raise ConnectionError("client closed inside a chunked body")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            while _readline(reader) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        data = reader.read(size)
        if len(data) != size:
            raise ConnectionError("client closed inside a chunk")
        parts.append(data)
        reader.read(2)  # CRLF after the chunk


def _read_request(reader: BinaryIO, sock: socket.socket) -> Optional[Tuple[str, str, list, bytes]]:
    line = _readline(reader)
    while line in (b"\r\n", b"\n"):  # tolerated between requests (RFC 9112 2.2)
        line = _readline(reader)
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError:
        raise _ProtocolError(f"bad request line {line[:60]!r}") from None
    headers = []
    length = 0
    chunked = False
    expect_continue = False
    while True:
        raw = _readline(reader)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
        value = value.strip()
        low = name.lower()
        if low == "content-length":
            try:
                length = int(value)
            except ValueError:
                raise _ProtocolError(f"bad Content-Length {value!r}") from None
            continue  # re-sent by _send_request from the body actually read
        if low == "transfer-encoding":
            chunked = "chunked" in value.lower()
            continue
        if low == "expect":
            expect_continue = value.lower() == "100-continue"
            continue  # answered here; the upstream gets the whole body at once
        if low in _HOP_BY_HOP:
            continue
        headers.append((name, value))
    if expect_continue:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if chunked:
        body = _read_chunked(reader)
    else:
        body = reader.read(length) if length else b""
        if len(body) != length:
            raise ConnectionError("client closed inside the request body")
    return method, target, headers, body


def _response_head(response: http.client.HTTPResponse, length: Optional[int],
                   rewrite: Optional[Callable[[Headers], Headers]] = None) -> bytes:
    """Status line and headers; ``length`` None keeps the upstream Content-Length (HEAD);
    ``rewrite`` may alter the headers (not Content-Length, which follows the body)."""
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    headers = [(name, value) for name, value in response.getheaders()
               if name.lower() not in _HOP_BY_HOP and not (name.lower() == "content-length" and length is not None)]
    for name, value in (rewrite(headers) if rewrite is not None else headers):
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
