"""Issue #12 (trust), the transport: a stalled store fails within a bounded
deadline; the signed-HTTP fast path signs with botocore, sends keys with dot
segments as they are, returns stored bytes (no decoding), signs PUT payloads
on plain http, checks the returned ETag, and checks ranged-GET answers.

Real servers only: moto over HTTP (Ceph RGW with --ceph), a fault proxy that
alters traffic in transit, and a listener that accepts and never answers.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import socket
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import boto3
import pytest
from botocore.config import Config

from blip3o_storage import (
    AccessDeniedError,
    ConfigError,
    CorruptDataError,
    Storage,
    StorageError,
    TransientStorageError,
)
from blip3o_storage.storage.config import S3Settings, load_config
from blip3o_storage.testing.data import jpeg
from blip3o_storage.testing.endpoints import new_bucket
from blip3o_storage.testing.fault_proxy import FaultProxy, FaultRates
from blip3o_storage.training.dataset import BLIP3oDataset, SampleRetriesExhaustedError

SECRET = "trust-transport-secret-never-printed"


# -- a store that accepts connections and never answers --------------------
class SilentListener:
    """A TCP listener that accepts every connection, reads what it is sent and
    never answers: an RGW whose threads are all stuck, seen from the client."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.endpoint_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True, name="silent-listener")

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setblocking(False)  # read nothing back: the client's sends fill our buffer, then stall
            self._conns.append(conn)
            self.accepted += 1

    def __enter__(self) -> SilentListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


DEADLINE, READ_TIMEOUT = 2.0, 0.5
# Today: 10 attempts x 0.5 s on the fast path, and 10 x 10 botocore attempts x 0.5 s on boto3 calls.
STALL_SETTINGS = {"access_key": "AKIASTALLED", "secret_key": SECRET, "read_timeout": READ_TIMEOUT,
                  "connect_timeout": 0.5, "max_attempts": 10, "deadline": DEADLINE}


# Scheduling slack on 2 shared cores; the unfixed code took 14 s (fast path) to minutes (boto3) here.
SLACK = 3.0


def _warm(storage: Storage, uri: str) -> None:
    """Build this process's boto3 client and signed-HTTP pool (no request is sent) outside the
    timed window: under CI load, loading botocore's service model alone took ~4 s."""
    backend = storage.s3_backend(uri)
    assert backend.http is not None or backend.client is not None


def _timed(fn: Callable[[], Any], limit: float) -> Tuple[Optional[BaseException], float]:
    """Run ``fn`` in a thread; (its exception, seconds taken). Fails the test if it is still
    running after ``limit`` seconds (the thread is a daemon: a hung call cannot hang the run)."""
    box: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still running after {limit:.0f}s: no deadline"
    return box.get("exc"), box["seconds"]


STALL_OPS = {
    "get": lambda s, u: s.get(u),
    "get_range": lambda s, u: s.get_range(u, 10, 100),
    "stat": lambda s, u: s.stat(u),
    "put": lambda s, u: s.put(u, b"x" * 70_000),
    "put_large_body": lambda s, u: s.put(u, b"x" * 8_000_000),  # more than the socket buffers take
    "list": lambda s, u: list(s.list(u.rsplit("/", 1)[0])),
}


# stat and list are boto3 calls on either path: one case each
STALL_CASES = [(op, fast_path) for op in sorted(STALL_OPS) for fast_path in (True, False)
               if fast_path or op not in ("stat", "list")]


@pytest.mark.parametrize("op,fast_path", STALL_CASES,
                         ids=[f"{op}-{'fast_path' if fast else 'boto3'}" for op, fast in STALL_CASES])
def test_stalled_store_fails_within_the_deadline(op: str, fast_path: bool) -> None:
    """A store that accepts and never answers: every operation fails within
    deadline + read_timeout (the attempt running at the deadline ends at its
    timeout), as a TransientStorageError naming the URI and the endpoint."""
    with SilentListener() as store:
        storage = Storage(dict(STALL_SETTINGS, endpoint_url=store.endpoint_url, fast_path=fast_path))
        uri = "s3://stalled-bucket/dir/key.jpg"
        _warm(storage, uri)
        exc, seconds = _timed(lambda: STALL_OPS[op](storage, uri), limit=20)
    assert isinstance(exc, TransientStorageError), repr(exc)
    assert seconds < DEADLINE + READ_TIMEOUT + SLACK, seconds
    assert seconds >= 2 * READ_TIMEOUT, seconds  # it did retry: at least two attempts timed out
    message = str(exc)
    assert ("s3://stalled-bucket/dir" if op == "list" else uri) in message
    assert store.endpoint_url in message and "deadline" in message, message
    assert SECRET not in message and SECRET not in repr(exc)
    assert storage.retry_stats()["default"]["failures"] == 1


def test_deadline_defaults_and_validation() -> None:
    settings = S3Settings()
    # A stalled store fails in ~30 s by default (deadline 30 s, each attempt at most read_timeout 10 s).
    assert settings.deadline == 30.0 and settings.read_timeout == 10.0
    assert settings.deadline + settings.read_timeout < 60
    assert load_config({"endpoint_url": "http://h", "deadline": "5"}).settings_for(None).deadline == 5.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="deadline"):
            load_config({"endpoint_url": "http://h", "deadline": bad})


def test_slow_but_progressing_read_is_not_cut(moto_endpoint) -> None:
    """The deadline stops *retrying*; a transfer that keeps receiving bytes (each gap
    shorter than read_timeout) completes even when it takes longer than the deadline."""
    storage, bucket = new_bucket(moto_endpoint)
    data = bytes(range(256)) * 400
    storage.put(f"{bucket}/slow.bin", data)
    rates = FaultRates(trickle=1.0, trickle_chunks=12, trickle_interval=0.1, methods=("GET",))
    with FaultProxy(moto_endpoint.endpoint_url, rates) as proxy:
        slow = Storage(moto_endpoint.ceph_config(endpoint_url=proxy.endpoint_url, read_timeout=0.5, deadline=0.6))
        started = time.monotonic()
        assert slow.get(f"{bucket}/slow.bin") == data
        assert time.monotonic() - started > 1.0  # longer than the deadline, and not cut
    assert proxy.counts["trickle"] == 1
    assert slow.retry_stats()["default"]["retries"] == 0


# -- the dataset: a stalled read is a counted bad sample, or the local copy --------
def _tiny_tree(root) -> None:
    raw = root / "raw"
    raw.mkdir(parents=True)
    (raw / "a.jpg").write_bytes(jpeg(96, 96, seed=1))
    (raw / "a.txt").write_text("a caption")
    (root / "data.json").write_text('[{"image": "a.jpg", "annotation": "a.txt"}]')


def test_dataset_counts_a_stalled_read_or_falls_back(tmp_path) -> None:
    _tiny_tree(tmp_path)
    common: dict[str, Any] = dict(data_path=str(tmp_path / "data.json"), ceph_folder="s3://stalled-bucket/raw",
                  tokenizer=dict(type="ByteTokenizer"), image_size=32, unconditional=0.0,
                  inline_captions=False)
    with SilentListener() as store:
        config = dict(STALL_SETTINGS, endpoint_url=store.endpoint_url, deadline=1.0)
        with_local = BLIP3oDataset(ceph_config=config, image_folder=str(tmp_path / "raw"),
                                   cap_folder=str(tmp_path / "raw"), **common)
        _warm(with_local.storage, "s3://stalled-bucket/raw/a.jpg")
        exc, seconds = _timed(lambda: with_local[0], limit=15)
        assert exc is None, repr(exc)
        assert with_local.read_counts == {"fallback_local": 2}  # image and caption; store then skipped
        assert seconds < 1.0 + READ_TIMEOUT + SLACK

        remote_only = BLIP3oDataset(ceph_config=config, max_retries=0, **common)
        _warm(remote_only.storage, "s3://stalled-bucket/raw/a.jpg")
        exc, seconds = _timed(lambda: remote_only[0], limit=15)
        assert isinstance(exc, SampleRetriesExhaustedError) and "transient" in str(exc), repr(exc)
        assert remote_only.bad_sample_counts == {"transient": 1}
        assert seconds < 1.0 + READ_TIMEOUT + SLACK
        assert store.endpoint_url in remote_only.bad_samples_log[-1].message


# -- the fast path: what goes on the wire -------------------------------------
def _boto3_client(endpoint) -> Any:
    return boto3.client("s3", endpoint_url=endpoint.endpoint_url, aws_access_key_id=endpoint.access_key,
                        aws_secret_access_key=endpoint.secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def test_fast_path_signs_the_payload_and_content_md5_on_plain_http(moto_endpoint) -> None:
    """botocore's S3 signer: over http the body's SHA-256 and the Content-MD5 header are
    signed, so a body (and checksum) changed in transit or replayed no longer verifies."""
    _, bucket = new_bucket(moto_endpoint)
    seen: List[dict] = []

    def record(method: str, target: str, headers: list, body: bytes) -> tuple:
        if method == "PUT":
            seen.append({k.lower(): v for k, v in headers} | {"body": body})
        return headers, body

    with FaultProxy(moto_endpoint.endpoint_url, rewrite_request=record) as proxy:
        storage = Storage(moto_endpoint.ceph_config(endpoint_url=proxy.endpoint_url))
        assert storage.s3_backend(bucket + "/x").http is not None
        storage.put(f"{bucket}/signed.bin", b"payload" * 1000)
    (put,) = seen
    assert put["x-amz-content-sha256"] == hashlib.sha256(put["body"]).hexdigest()
    signed = put["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "host", "x-amz-content-sha256", "x-amz-date"} <= set(signed)


def test_https_put_leaves_the_payload_unsigned_like_boto3() -> None:
    """Over https the body is protected by TLS and its Content-MD5, and boto3's PutObject sends
    UNSIGNED-PAYLOAD: so does the fast path (no ~0.05 ms SHA-256 per 70 KB). Content-MD5 is signed."""
    from botocore.credentials import Credentials

    from blip3o_storage.storage.signed_http import SignedHTTP

    http = SignedHTTP(S3Settings(endpoint_url="https://rgw.example:7443", access_key="AKIAX", secret_key=SECRET),
                      lambda: Credentials("AKIAX", SECRET))
    headers = http._sign("PUT", "/b/k", {"Content-MD5": "x" * 24}, b"body")
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert "content-md5" in headers["Authorization"] and headers["host"] == "rgw.example:7443"
    assert SECRET not in str(headers)


def test_fast_path_refreshes_expiring_credentials(moto_auth_endpoint) -> None:
    """Credentials come from the boto3 session per request: refreshable ones (STS, instance
    roles) are refreshed before they expire, here on first use, and the request is signed with
    the new keys (moto checks the signature)."""
    import datetime

    from botocore.credentials import RefreshableCredentials

    storage = Storage(moto_auth_endpoint.ceph_config())
    backend = storage.s3_backend("s3://refresh-bucket/x")
    backend.ensure_bucket("refresh-bucket")
    storage.put("s3://refresh-bucket/k", b"refreshed")
    refreshes = []

    def refresh() -> dict:
        refreshes.append(1)
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return {"access_key": moto_auth_endpoint.access_key, "secret_key": moto_auth_endpoint.secret_key,
                "token": None, "expiry_time": expiry.isoformat()}

    expired = RefreshableCredentials.create_from_metadata(
        {"access_key": "AKIAEXPIRED", "secret_key": "expired", "token": None,
         "expiry_time": datetime.datetime.now(datetime.timezone.utc).isoformat()}, refresh, "test")
    assert backend.http is not None
    backend.http._credentials = lambda: expired
    assert storage.get("s3://refresh-bucket/k") == b"refreshed"
    assert refreshes


def _tamper_put_body(method: str, target: str, headers: list, body: bytes) -> tuple:
    """A middlebox that swaps a PUT's body and fixes up Content-MD5 to match."""
    if method != "PUT" or not body:
        return headers, body
    evil = b"EVIL" + body[4:]
    md5 = base64.b64encode(hashlib.md5(evil).digest()).decode()
    return [(k, md5 if k.lower() == "content-md5" else v) for k, v in headers], evil


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "boto3"])
def test_put_body_altered_in_transit_is_an_error(s3_endpoint, fast_path: bool) -> None:
    """Today the fast path sends UNSIGNED-PAYLOAD with an unsigned Content-MD5 over http: the
    altered body is stored and reported as success. Now the server rejects the request (RGW
    checks the signed payload hash/headers) or the ETag check catches it (moto checks neither)."""
    _, bucket = new_bucket(s3_endpoint)
    uri = f"{bucket}/tampered.bin"
    with FaultProxy(s3_endpoint.endpoint_url, rewrite_request=_tamper_put_body) as proxy:
        storage = Storage(s3_endpoint.ceph_config(endpoint_url=proxy.endpoint_url, fast_path=fast_path,
                                                  max_attempts=2))
        with pytest.raises(StorageError) as info:
            storage.put(uri, b"GOOD" + b"\0" * 5000)
    assert uri in str(info.value)
    assert not isinstance(info.value, TransientStorageError)
    if isinstance(info.value, CorruptDataError):  # stored (moto checks no signature), but not reported as success
        assert "ETag" in str(info.value)
    else:  # rejected by the server: nothing stored, and the message does not only blame the keys
        assert isinstance(info.value, AccessDeniedError) and "proxy" in str(info.value), info.value
        assert not Storage(s3_endpoint.ceph_config()).exists(uri)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "boto3"])
def test_put_etag_not_matching_the_md5_sent_is_an_error(moto_endpoint, fast_path: bool) -> None:
    _, bucket = new_bucket(moto_endpoint)

    def wrong_etag(method: str, status: int, headers: list) -> list:
        if method != "PUT":
            return headers
        return [(k, '"0123456789abcdef0123456789abcdef"' if k.lower() == "etag" else v) for k, v in headers]

    with FaultProxy(moto_endpoint.endpoint_url, rewrite_response=wrong_etag) as proxy:
        storage = Storage(moto_endpoint.ceph_config(endpoint_url=proxy.endpoint_url, fast_path=fast_path))
        uri = f"{bucket}/etag.bin"
        with pytest.raises(CorruptDataError, match="ETag") as info:
            storage.put(uri, b"data" * 100)
    assert uri in str(info.value) and "0123456789abcdef0123456789abcdef" in str(info.value)


DOT_KEYS = ["a/./b", "a/../b", "./x", "x/..", "a/.", "../up", "dots/.../three"]


def test_keys_with_dot_segments_round_trip_like_boto3(s3_endpoint) -> None:
    """urllib3 removes ``.``/``..`` segments from a URL after we signed it (403
    SignatureDoesNotMatch on RGW); the fast path must send the path as signed."""
    storage, bucket = new_bucket(s3_endpoint)
    name = bucket[len("s3://"):]
    assert storage.backend_for(bucket + "/x").http is not None
    client = _boto3_client(s3_endpoint)
    for i, key in enumerate(DOT_KEYS):
        ours, theirs = f"ours-{i}".encode(), f"boto3-{i}".encode()
        storage.put(f"{bucket}/{key}", ours)
        assert client.get_object(Bucket=name, Key=key)["Body"].read() == ours, key
        client.put_object(Bucket=name, Key=key, Body=theirs)
        assert storage.get(f"{bucket}/{key}") == theirs, key
        assert storage.get_range(f"{bucket}/{key}", 1, 3) == theirs[1:4], key
    listed = {info.key for info in storage.list(bucket)}
    assert set(DOT_KEYS) <= listed, listed


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "boto3"])
def test_content_encoding_gzip_returns_the_stored_bytes(s3_endpoint, fast_path: bool) -> None:
    storage, bucket = new_bucket(s3_endpoint)
    stored = gzip.compress(b"\0" * 10_000_000)  # ~10 KB that would inflate to 10 MB
    _boto3_client(s3_endpoint).put_object(Bucket=bucket[len("s3://"):], Key="z.gz", Body=stored,
                                          ContentEncoding="gzip")
    reader = Storage(s3_endpoint.ceph_config(fast_path=fast_path))
    assert reader.get(f"{bucket}/z.gz") == stored
    assert reader.get_range(f"{bucket}/z.gz", 0, 100) == stored[:100]


# -- ranged GETs: the answer must be the range asked for ------------------------
def _drop_range(method: str, target: str, headers: list, body: bytes) -> tuple:
    return [(k, v) for k, v in headers if k.lower() != "range"], body


def _shift_range(method: str, target: str, headers: list, body: bytes) -> tuple:
    def shifted(value: str) -> str:
        start, end = (int(x) for x in value.split("=", 1)[1].split("-"))
        return f"bytes={start + 7}-{end + 7}"
    return [(k, shifted(v) if k.lower() == "range" else v) for k, v in headers], body


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "boto3"])
@pytest.mark.parametrize("rewrite", [_drop_range, _shift_range], ids=["200_whole_object", "wrong_content_range"])
def test_ranged_get_with_the_wrong_answer_is_an_error(moto_endpoint, fast_path: bool, rewrite) -> None:
    storage, bucket = new_bucket(moto_endpoint)
    data = bytes(range(256)) * 4
    uri = f"{bucket}/ranged.bin"
    storage.put(uri, data)
    with FaultProxy(moto_endpoint.endpoint_url, rewrite_request=rewrite) as proxy:
        reader = Storage(moto_endpoint.ceph_config(endpoint_url=proxy.endpoint_url, fast_path=fast_path))
        with pytest.raises(CorruptDataError, match="range") as info:
            reader.get_range(uri, 100, 50)
    assert uri in str(info.value)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "boto3"])
def test_ranged_get_past_the_end_and_whole_object_still_work(s3_endpoint, fast_path: bool) -> None:
    storage, bucket = new_bucket(s3_endpoint)
    data = bytes(range(256)) * 4
    storage.put(f"{bucket}/r.bin", data)
    reader = Storage(s3_endpoint.ceph_config(fast_path=fast_path))
    assert reader.get_range(f"{bucket}/r.bin", 1000, 100) == data[1000:]  # 206 bytes 1000-1023/1024
    assert reader.get_range(f"{bucket}/r.bin", 0, len(data)) == data
    assert reader.get_range(f"{bucket}/r.bin", 0, 5000) == data
