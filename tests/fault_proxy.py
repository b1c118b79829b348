"""A loopback HTTP fault proxy for tests (tc netem is not available here).

Sits between boto3 and an S3 server and, at set rates, injects:

* ``reset``: the connection is reset (RST) instead of a response; for writes
  the request has already reached the server (a lost response);
* ``slowdown``: a 503 SlowDown error without forwarding;
* ``stall``: the response is held back for ``stall_seconds``;
* ``truncate``: headers promise the full Content-Length, half the body is sent,
  then the connection is reset.

The Host header is forwarded unchanged, so SigV4 signatures still verify on
servers that check them (Ceph RGW).
"""
from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Tuple
from urllib.parse import urlparse

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                 b'<Message>Please reduce your request rate.</Message></Error>')


@dataclass
class FaultRates:
    reset: float = 0.0
    slowdown: float = 0.0
    stall: float = 0.0
    truncate: float = 0.0
    stall_seconds: float = 0.5
    methods: Tuple[str, ...] = ("GET", "PUT", "HEAD", "POST", "DELETE")


@dataclass
class FaultProxy:
    upstream_url: str
    rates: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        parsed = urlparse(self.upstream_url)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: Optional[socketserver.ThreadingTCPServer] = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def choose_fault(self, method: str) -> Optional[str]:
        if method not in self.rates.methods:
            return None
        with self._lock:
            roll = self._rng.random()
        edge = 0.0
        for name in ("reset", "slowdown", "stall", "truncate"):
            edge += getattr(self.rates, name)
            if roll < edge:
                return name
        return None

    def count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve_connection(self.request)

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.allow_reuse_address = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client connection (keep-alive: many requests) ----------------
    def _serve_connection(self, sock: socket.socket) -> None:
        reader = sock.makefile("rb")
        upstream: Optional[http.client.HTTPConnection] = None
        try:
            while True:
                request = _read_request(reader, sock)
                if request is None:
                    return
                method, target, headers, body = request
                self.count("requests")
                fault = self.choose_fault(method)
                if fault == "slowdown":
                    self.count("slowdown")
                    sock.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(SLOWDOWN_BODY), SLOWDOWN_BODY))
                    continue
                if fault == "reset" and method in ("GET", "HEAD"):
                    self.count("reset")
                    _reset(sock)
                    return
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self._upstream, timeout=60)
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    upstream.putheader(name, value)
                upstream.endheaders(body if body else None)
                response = upstream.getresponse()
                payload = response.read()
                if fault == "reset":  # the write reached the server; the answer is lost
                    self.count("reset")
                    _reset(sock)
                    return
                head = _response_head(response, len(payload))
                if fault == "stall":
                    self.count("stall")
                    time.sleep(self.rates.stall_seconds)
                if fault == "truncate" and len(payload) > 1 and method == "GET":
                    self.count("truncate")
                    sock.sendall(head + payload[: len(payload) // 2])
                    _reset(sock)
                    return
                sock.sendall(head + payload)
        except (ConnectionError, OSError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            try:
                reader.close()
                sock.close()
            except OSError:
                pass


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer sees a TCP RST, not a clean FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_request(reader, sock: socket.socket) -> Optional[Tuple[str, str, list, bytes]]:
    line = reader.readline(65537)
    if not line:
        return None
    method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = []
    length = 0
    expect_continue = False
    while True:
        raw = reader.readline(65537)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
        value = value.strip()
        if name.lower() == "content-length":
            length = int(value)
        if name.lower() == "transfer-encoding":
            raise ConnectionError("chunked request bodies are not supported by the fault proxy")
        if name.lower() == "expect":
            expect_continue = value.lower() == "100-continue"
            continue  # answered here; the upstream gets the whole body at once
        headers.append((name, value))
    if expect_continue:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = reader.read(length) if length else b""
    return method, target, headers, body


def _response_head(response: http.client.HTTPResponse, length: int) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    for name, value in response.getheaders():
        if name.lower() in ("transfer-encoding", "connection", "content-length"):
            continue
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
