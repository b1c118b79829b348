"""Reads and writes survive injected faults; retries are counted; a fault that
never clears ends in a clear error naming the URI."""
from __future__ import annotations

import hashlib
from typing import Any, Dict

import pytest

from blip3o_storage import Storage, TransientStorageError
from blip3o_storage.testing.endpoints import new_bucket
from blip3o_storage.testing.fault_proxy import FaultProxy, FaultRates


def content(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (40 + i % 50)


@pytest.fixture
def seeded_bucket(moto_endpoint):
    storage, bucket = new_bucket(moto_endpoint)
    for i in range(150):
        storage.put(f"{bucket}/k/{i:04d}", content(i))
    return bucket


def proxied_storage(endpoint, proxy: FaultProxy, **extra) -> Storage:
    return Storage(endpoint.ceph_config(endpoint_url=proxy.endpoint_url, **extra))


def test_every_read_byte_correct_under_mixed_faults(moto_endpoint, seeded_bucket):
    rates = FaultRates(reset=0.05, slowdown=0.05, stall=0.05, truncate=0.1, stall_seconds=0.05)
    with FaultProxy(moto_endpoint.endpoint_url, rates, seed=7) as proxy:
        storage = proxied_storage(moto_endpoint, proxy, max_attempts=8)
        for i in range(100):
            assert storage.get(f"{seeded_bucket}/k/{i:04d}") == content(i)
        stats: Dict[str, Any] = storage.retry_stats()["default"]
    assert proxy.counts["truncate"] > 0 and proxy.counts["reset"] > 0 and proxy.counts["slowdown"] > 0
    # Truncated bodies are ours to retry (botocore does not); 503s and resets mostly botocore's.
    assert stats["by_reason"].get("truncated-body", 0) > 0
    assert stats["retries"] + stats["botocore_retries"] >= proxy.counts["truncate"]


def test_writes_survive_lost_responses_and_slowdowns(moto_endpoint, seeded_bucket):
    rates = FaultRates(reset=0.1, slowdown=0.1, methods=("PUT",))
    with FaultProxy(moto_endpoint.endpoint_url, rates, seed=3) as proxy:
        storage = proxied_storage(moto_endpoint, proxy, max_attempts=8)
        for i in range(40):
            storage.put(f"{seeded_bucket}/w/{i:04d}", content(i))
    direct = Storage(moto_endpoint.ceph_config())
    for i in range(40):
        assert direct.get(f"{seeded_bucket}/w/{i:04d}") == content(i)
    assert proxy.counts["reset"] > 0 and proxy.counts["slowdown"] > 0


def test_persistent_truncation_gives_clear_error(moto_endpoint, seeded_bucket):
    with FaultProxy(moto_endpoint.endpoint_url, FaultRates(truncate=1.0), seed=1) as proxy:
        storage = proxied_storage(moto_endpoint, proxy, max_attempts=3)
        uri = f"{seeded_bucket}/k/0001"
        with pytest.raises(TransientStorageError) as info:
            storage.get(uri)
    assert uri in str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert moto_endpoint.secret_key not in str(info.value)
    assert storage.retry_stats()["default"]["failures"] == 1


def test_read_timeout_on_stall_is_retried(moto_endpoint, seeded_bucket):
    with FaultProxy(moto_endpoint.endpoint_url, FaultRates(stall=0.3, stall_seconds=1.5, methods=("GET",)),
                    seed=11) as proxy:
        storage = proxied_storage(moto_endpoint, proxy, read_timeout=0.5, max_attempts=6)
        for i in range(15):
            assert storage.get(f"{seeded_bucket}/k/{i:04d}") == content(i)
    assert proxy.counts["stall"] > 0


def test_unreachable_endpoint_fails_fast_with_uri(moto_endpoint):
    storage = Storage(moto_endpoint.ceph_config(endpoint_url="http://127.0.0.1:9", max_attempts=2,
                                                connect_timeout=0.5))
    with pytest.raises(TransientStorageError, match="s3://bucket/key"):
        storage.get("s3://bucket/key")


def test_tls_certificate_failure_is_final_and_clear():
    """A rejected server certificate is not retried by us and says what to set (the
    end-to-end check against a self-signed RGW is tests/test_ceph_https.py)."""
    from botocore.exceptions import SSLError

    from blip3o_storage.storage.retry import retry_reason
    from blip3o_storage.storage.s3_backend import map_error

    bad_cert = SSLError(endpoint_url="https://127.0.0.1:7443/b/k", error=Exception(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)"))
    assert retry_reason(bad_cert) is None
    err = map_error(bad_cert, "s3://b/k", "get")
    assert not isinstance(err, TransientStorageError)
    assert str(err).startswith("s3://b/k: SSL/TLS certificate verification failed during get "
                               "(certificate verify failed: self-signed certificate)")
    assert "ca_bundle" in str(err)
    handshake_eof = SSLError(endpoint_url="https://h/b/k", error=Exception("EOF occurred in violation of protocol"))
    assert retry_reason(handshake_eof) == "connection"  # other TLS errors may be transient: still retried
