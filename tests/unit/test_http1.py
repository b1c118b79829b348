"""storage/http1.py against a scripted HTTP/1.1 server on loopback (real sockets, real fork).

The last section pins the GET fast path's shortcuts: kernel timeouts on blocking plain sockets
(mid-body stalls included), bodies that arrive in pieces or with the head, keep-alive after a body
read with MSG_WAITALL, the per-connection read buffer never shared across fork, and the
unquoted-key shortcut equal to ``quote``.

Each test's server runs a script per accepted connection: read a request, write raw bytes, so
the odd answers a store or a proxy may give (chunked bodies, 100 Continue, truncation, an idle
connection closed by the server, HTTP/1.0) are reproduced exactly.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from blip3o_storage.storage.config import S3Settings
from blip3o_storage.storage.http1 import (
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    ConnectionPool,
    ReadTimeout,
    TruncatedBody,
)
from blip3o_storage.storage.retry import retry_reason
from blip3o_storage.storage.signed_http import SignedHTTP, UnexpectedResponse
from blip3o_storage.testing.forking import in_forked_child

Script = Callable[["Conn", int], None]


class Conn:
    """The server side of one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def request(self) -> Optional[Tuple[str, Dict[str, str], bytes]]:
        """(request line, headers, body) or None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        line, *rest = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return line, headers, body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class ScriptedServer:
    """Loopback server; ``script(conn, n)`` runs for the n-th accepted connection (0-based)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: List[Tuple[int, str, Dict[str, str], bytes]] = []  # (connection, line, headers, body)
        self.errors: List[BaseException] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            n = self.connections
            self.connections += 1
            threading.Thread(target=self._run, args=(sock, n), daemon=True).start()

    def _run(self, sock: socket.socket, n: int) -> None:
        try:
            self.script(Conn(sock), n)
        except OSError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            sock.close()

    def close(self) -> None:
        self.listener.close()

    def pool(self, **kwargs: object) -> ConnectionPool:
        options: Dict[str, object] = {"connect_timeout": 2.0, "read_timeout": 2.0, "max_size": 4}
        options.update(kwargs)
        return ConnectionPool("http", "127.0.0.1", self.port, **options)  # type: ignore[arg-type]


def ok(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nETag: \"e\"\r\n{extra}\r\n".encode() + body


def serve_forever(answer: Callable[[str, Dict[str, str], bytes], bytes], log: Optional[ScriptedServer] = None
                  ) -> Script:
    """A keep-alive script: answer every request on the connection until EOF."""
    def script(conn: Conn, n: int) -> None:
        while True:
            got = conn.request()
            if got is None:
                return
            if log is not None:
                log.requests.append((n, *got))
            conn.send(answer(*got))
    return script


@pytest.fixture
def server_factory():
    servers: List[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.close()
        assert not server.errors, server.errors


def keep_alive_server(make: Callable[[Script], ScriptedServer],
                      answer: Callable[[str, Dict[str, str], bytes], bytes]) -> ScriptedServer:
    server = make(lambda conn, n: None)
    server.script = serve_forever(answer, server)
    return server


# -- framing ---------------------------------------------------------------
def test_keep_alive_reuses_one_connection_and_sends_the_target_as_given(server_factory) -> None:
    server = keep_alive_server(server_factory, lambda line, h, body: ok(line.encode() + b"|" + body))
    pool = server.pool()
    for _ in range(5):
        response = pool.request("PUT", "/b/a/./b%20c", {"Host": "h", "Content-Length": "3"}, b"xyz")
        assert response.status == 200 and response.headers["etag"] == response.header("etag") == '"e"'
        assert response.header("x-missing") is None
        assert response.read() == b"PUT /b/a/./b%20c HTTP/1.1|xyz"
    assert server.connections == 1 and len(server.requests) == 5


def test_large_body_is_read_whole_and_into_a_buffer(server_factory) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB: many recv_into calls
    server = keep_alive_server(server_factory, lambda line, h, body: ok(payload))
    pool = server.pool()
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == payload
    view = memoryview(bytearray(len(payload)))
    pool.request("GET", "/b/k", {"Host": "h"}).read_into(view)
    assert view.tobytes() == payload
    with pytest.raises(BadResponse):  # a body of another length than asked for
        pool.request("GET", "/b/k", {"Host": "h"}).read_into(memoryview(bytearray(10)))
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == payload
    assert server.connections == 2  # the mismatched answer's connection was dropped, not reused


def test_chunked_body_with_extensions_and_trailers(server_factory) -> None:
    def answer(line: str, headers: Dict[str, str], body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = keep_alive_server(server_factory, answer)
    pool = server.pool()
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"hello world!"
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"hello world!"
    assert server.connections == 1  # the connection stays usable after a chunked body


def test_interim_100_continue_is_skipped_and_http10_closes(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    server = server_factory(script)
    pool = server.pool()
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"ok"
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"ok"
    assert server.connections == 2  # HTTP/1.0 without keep-alive: never reused


def test_close_delimited_body_and_connection_close(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"to the end")
    server = server_factory(script)
    pool = server.pool()
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"to the end"
    assert pool.request("GET", "/b/k", {"Host": "h"}).read() == b"to the end"
    assert server.connections == 2


# -- failures ----------------------------------------------------------------
def test_truncated_body_is_an_error_not_short_data(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
    server = server_factory(script)
    pool = server.pool()
    with pytest.raises(TruncatedBody) as info:
        pool.request("GET", "/b/k", {"Host": "h"}).read()
    assert retry_reason(info.value) == "truncated-body"
    with pytest.raises(TruncatedBody):
        pool.request("GET", "/b/k", {"Host": "h"}).read_into(memoryview(bytearray(100000)))


def test_truncated_chunked_body_is_an_error(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly-eight")
    server = server_factory(script)
    with pytest.raises(TruncatedBody):
        server.pool().request("GET", "/b/k", {"Host": "h"}).read()


def test_stale_keep_alive_connection_is_resent_once_on_a_fresh_one(server_factory) -> None:
    """The server answers one request per connection and then closes it without saying so
    (an idle keep-alive timeout): the next request on the pooled connection sees EOF before
    any byte and goes again, once, on a new connection."""
    def script(conn: Conn, n: int) -> None:
        got = conn.request()
        assert got is not None
        conn.send(ok(f"conn{n}:".encode() + got[2]))
    server = server_factory(script)
    resends: List[int] = []
    pool = server.pool(on_resend=lambda: resends.append(1))
    assert pool.request("PUT", "/b/k", {"Host": "h", "Content-Length": "1"}, b"a").read() == b"conn0:a"
    time.sleep(0.1)  # the server has closed its side by now
    assert pool.request("PUT", "/b/k", {"Host": "h", "Content-Length": "1"}, b"b").read() == b"conn1:b"
    assert resends == [1] and server.connections == 2


def test_no_resend_when_part_of_the_answer_arrived_or_the_connection_was_new(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Le")  # half a head, then close
    server = server_factory(script)
    resends: List[int] = []
    pool = server.pool(on_resend=lambda: resends.append(1))
    with pytest.raises(ConnectionLost) as info:
        pool.request("GET", "/b/k", {"Host": "h"})
    assert retry_reason(info.value) == "connection-reset"

    def close_at_once(conn: Conn, n: int) -> None:
        conn.request()
    fresh = server_factory(close_at_once).pool(on_resend=lambda: resends.append(1))
    with pytest.raises(ConnectionLost):
        fresh.request("GET", "/b/k", {"Host": "h"})  # a new connection closed: not "stale", the caller's retry
    assert resends == []


def test_read_timeout_and_refused_connection_are_named_for_the_retry_layer(server_factory) -> None:
    def silent(conn: Conn, n: int) -> None:
        conn.request()
        time.sleep(1.5)
    server = server_factory(silent)
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as info:
        server.pool(read_timeout=0.3).request("GET", "/b/k", {"Host": "h"})
    assert retry_reason(info.value) == "read-timeout" and time.monotonic() - started < 1.4
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ConnectFailed) as refused:
        ConnectionPool("http", "127.0.0.1", port, connect_timeout=1, read_timeout=1, max_size=1).request(
            "GET", "/", {"Host": "h"})
    assert retry_reason(refused.value) == "connection"


def test_garbage_answer_is_a_protocol_error(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(b"SSH-2.0-OpenSSH\r\n\r\n")
    server = server_factory(script)
    with pytest.raises(BadResponse) as info:
        server.pool().request("GET", "/b/k", {"Host": "h"})
    assert retry_reason(info.value) == "http-protocol"


def test_full_pool_discards_and_warns(server_factory, caplog) -> None:
    server = keep_alive_server(server_factory, lambda line, h, body: ok(b"x"))
    pool = server.pool(max_size=1)
    first = pool.request("GET", "/", {"Host": "h"})
    second = pool.request("GET", "/", {"Host": "h"})  # both in flight: two connections
    with caplog.at_level(logging.WARNING, logger="blip3o_storage.storage.http1"):
        first.read()
        second.read()
    assert any("Connection pool is full" in r.getMessage() for r in caplog.records)
    assert len(pool._idle) == 1


# -- fork safety ---------------------------------------------------------------
def test_forked_child_never_touches_the_parents_connections(server_factory) -> None:
    """A parent with an idle keep-alive connection forks; the child's requests go on a new
    connection of its own, and the parent's connection still works afterwards (same one)."""
    server = keep_alive_server(server_factory, lambda line, h, body: ok(line.encode()))
    pool = server.pool()
    assert pool.request("GET", "/parent", {"Host": "h"}).read() == b"GET /parent HTTP/1.1"
    parent_conn = pool._idle[-1]

    def child() -> int:
        if pool._idle:  # the fork hook gave the child an empty pool
            return 1
        for _ in range(3):
            if pool.request("GET", "/child", {"Host": "h"}).read() != b"GET /child HTTP/1.1":
                return 2
        return 0 if pool._idle and pool._idle[-1] is not parent_conn else 3
    assert in_forked_child(child) == 0
    assert pool.request("GET", "/parent2", {"Host": "h"}).read() == b"GET /parent2 HTTP/1.1"
    assert pool._idle[-1] is parent_conn
    by_connection = {(n, line.split()[1]) for n, line, _, _ in server.requests}
    assert by_connection == {(0, "/parent"), (1, "/child"), (0, "/parent2")}


# -- SignedHTTP over it: error mapping ----------------------------------------
def signed(server: ScriptedServer) -> SignedHTTP:
    settings = S3Settings(endpoint_url=f"http://127.0.0.1:{server.port}", access_key="AK", secret_key="SK",
                          read_timeout=2.0, connect_timeout=2.0)
    return SignedHTTP(settings, lambda: Credentials("AK", "SK"))


@pytest.mark.parametrize("status, code, retryable", [(404, "NoSuchKey", False), (403, "AccessDenied", False),
                                                     (503, "SlowDown", True), (500, "InternalError", True)])
def test_error_status_is_a_client_error_with_code_and_status(server_factory, status, code, retryable) -> None:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    server = keep_alive_server(server_factory, lambda line, h, b: (
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body))
    http = signed(server)
    for call in (lambda: http.get_object("b", "k"), lambda: http.put_object("b", "k", b"x", "md5")):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == code
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert (retry_reason(info.value) is not None) == retryable
    assert server.connections == 1  # error bodies were read: the connection stayed usable
    signed_headers = server.requests[0][2]["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert signed_headers == "host;x-amz-content-sha256;x-amz-date"


def test_ranged_get_answered_with_the_whole_object_is_unexpected(server_factory) -> None:
    server = keep_alive_server(server_factory, lambda line, h, b: ok(b"0123456789"))
    http = signed(server)
    with pytest.raises(UnexpectedResponse):
        http.get_object("b", "k", (2, 5))
    with pytest.raises(UnexpectedResponse):
        http.get_range_into("b", "k", 2, memoryview(bytearray(4)))
    assert http.get_object_below("b", "k", 5) == (10, "e")  # over the limit: size and ETag, body unread


# -- the GET fast path: kernel timeouts, first read into the connection's buffer, MSG_WAITALL ----------
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n"
_BODY = (bytes(range(256)) * 1172)[:300_000]  # 300,000 bytes: more than the first read's 128 KiB


def test_plain_socket_is_blocking_with_kernel_timeouts(server_factory) -> None:
    server = keep_alive_server(server_factory, lambda line, h, body: ok(b"x"))
    pool = server.pool(read_timeout=1.5)
    assert pool.request("GET", "/", {"Host": "h"}).read() == b"x"
    sock = pool._idle[-1].sock
    assert sock.gettimeout() is None  # no poll() before each send/recv
    seconds, micros = divmod(1_500_000, 1_000_000)
    timeval = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
    assert int.from_bytes(timeval[:8], "little") == seconds and int.from_bytes(timeval[8:], "little") == micros
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16) == timeval


@pytest.mark.parametrize("split", [0, 10, len(_HEAD), len(_HEAD) + 5, len(_HEAD) + 200_000])
def test_body_arriving_in_pieces_is_read_whole_and_the_connection_reused(server_factory, split: int) -> None:
    """Head and body cut anywhere (inside the head, at its end, past the first read's size),
    with a pause between the two writes: the whole body, then the same connection again."""
    def script(conn: Conn, n: int) -> None:
        while conn.request() is not None:
            answer = _HEAD + _BODY
            conn.send(answer[:split])
            time.sleep(0.05)
            conn.send(answer[split:])
    server = server_factory(script)
    pool = server.pool()
    for _ in range(3):
        assert pool.request("GET", "/b/k", {"Host": "h"}).read() == _BODY
    view = memoryview(bytearray(len(_BODY)))
    pool.request("GET", "/b/k", {"Host": "h"}).read_into(view)
    assert view.tobytes() == _BODY and server.connections == 1


def test_body_stalling_past_the_read_timeout_is_a_read_timeout(server_factory) -> None:
    """The kernel timeout fires inside a MSG_WAITALL read that already got part of the body."""
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(_HEAD + _BODY[:200_000])
        time.sleep(1.5)
    server = server_factory(script)
    started = time.monotonic()
    with pytest.raises(ReadTimeout) as info:
        server.pool(read_timeout=0.3).request("GET", "/b/k", {"Host": "h"}).read()
    assert retry_reason(info.value) == "read-timeout" and time.monotonic() - started < 1.4


def test_body_cut_short_after_the_first_read_is_truncated(server_factory) -> None:
    def script(conn: Conn, n: int) -> None:
        conn.request()
        conn.send(_HEAD + _BODY[:200_000])  # then close
    server = server_factory(script)
    with pytest.raises(TruncatedBody, match="200000 of 300000"):
        server.pool().request("GET", "/b/k", {"Host": "h"}).read()


def test_forked_child_gets_its_own_connections_and_buffers(server_factory) -> None:
    server = keep_alive_server(server_factory, lambda line, h, body: ok(_BODY))
    pool = server.pool()
    assert pool.request("GET", "/parent", {"Host": "h"}).read() == _BODY
    parent = pool._idle[-1]

    def child() -> int:
        if pool._idle:
            return 1
        if pool.request("GET", "/child", {"Host": "h"}).read() != _BODY:
            return 2
        mine = pool._idle[-1]
        return 0 if mine is not parent and mine.buf is not parent.buf else 3
    assert in_forked_child(child) == 0
    assert pool.request("GET", "/parent", {"Host": "h"}).read() == _BODY and pool._idle[-1] is parent


@pytest.mark.parametrize("key", ["a/b.c-d_e~f/0123456789", "", "x", "a b", "a+b", "%41", "ü/日本/🙂", "a/./b", "a?b#c",
                                 "a;b=c&d", "a\\b", "a:b@c", "~/~", "*'()!$,"])
def test_unquoted_key_shortcut_matches_quote(key: str) -> None:
    http = SignedHTTP(S3Settings(endpoint_url="http://127.0.0.1:1", access_key="AK", secret_key="SK"),
                      lambda: Credentials("AK", "SK"))
    assert http._path("my.bucket", key) == "/my.bucket/" + quote(key, safe="/~")
