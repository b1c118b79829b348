"""storage/sigv4.py is pinned to botocore's S3SigV4Auth: the same randomized requests, signed by
both at a frozen time, must carry identical Authorization and X-Amz-* headers (and Host).

Covers keys with unicode, spaces, ``~``, ``/./``, ``..``, ``%``, ``+``; ranges; If-Match;
Content-MD5; content types with parameters and odd spacing; with and without a session token;
http and https endpoints (signed vs UNSIGNED-PAYLOAD); explicit payload signing off; and
timestamps across day, month and year boundaries (the cached signing key must roll over).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import random
from typing import Dict, Optional
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from blip3o_storage.storage.sigv4 import S3Signer

_KEY_ALPHABET = list("abcXYZ019-_.~/ +%&=?#;:,@$!'()*[]{}") + ["ü", "é", "日本", "🙂", "/./", "/../", "%2F", "  "]
_CONTENT_TYPES = ["image/jpeg", "application/octet-stream", "text/plain; charset=utf-8",
                  "application/x-tar;  boundary=  x", " text/html ", "multipart/form-data; boundary=a b"]
#: Frozen times (UTC) around boundaries where the date part of the scope changes.
_TIMES = [datetime.datetime(2026, 11, 30, 23, 59, 59), datetime.datetime(2026, 12, 1, 0, 0, 0),
          datetime.datetime(2026, 12, 31, 23, 59, 59), datetime.datetime(2027, 1, 1, 0, 0, 1),
          datetime.datetime(2024, 2, 29, 12, 0, 0), datetime.datetime(2026, 11, 30, 11, 7, 3)]
_COMPARED = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token", "host")


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice(_KEY_ALPHABET) for _ in range(rng.randint(1, 12)))


def botocore_sign(method: str, url: str, host: str, headers: Dict[str, str], body: Optional[bytes],
                  credentials: Credentials, region: str, when: datetime.datetime,
                  sign_payload: Optional[bool], monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """What signed_http sent before (botocore's signer, the same context it set)."""
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: when)
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    request.headers["host"] = host
    request.context["has_streaming_input"] = True
    if sign_payload is not None:
        request.context["client_config"] = Config(s3={"payload_signing_enabled": sign_payload})
    S3SigV4Auth(credentials, "s3", region).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("seed", range(8))
def test_signatures_match_botocore(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    for scheme in ("http", "https"):
        host = rng.choice(["127.0.0.1:7480", "rgw.example", "rgw.example:7443", "[::1]:9000"])
        region = rng.choice(["us-east-1", "eu-west-3", "default"])
        signer = S3Signer(region, https=scheme == "https")
        for _ in range(60):
            bucket = rng.choice(["bkt", "my.bucket", "b-1"])
            key = random_key(rng)
            path = f"/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
            method = rng.choice(["GET", "PUT"])
            headers: Dict[str, str] = {}
            body: Optional[bytes] = None
            if method == "GET":
                if rng.random() < 0.5:
                    start = rng.randint(0, 10 ** 9)
                    headers["Range"] = f"bytes={start}-{start + rng.randint(0, 10 ** 7)}"
                if rng.random() < 0.4:
                    headers["If-Match"] = f'"{hashlib.md5(key.encode()).hexdigest()}"'
            else:
                body = rng.randbytes(rng.choice([0, 1, 100, 70_000]))
                if rng.random() < 0.9:
                    headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
                headers["Content-Length"] = str(len(body))
                if rng.random() < 0.6:
                    headers["Content-Type"] = rng.choice(_CONTENT_TYPES)
            token = rng.choice([None, "FQoGZXIvYXdzE" + "x" * rng.randint(10, 300)])
            credentials = Credentials(rng.choice(["AKIAEXAMPLE", "FEFA78D21F321C5C66B0"]),
                                      "s3cr3t/+" + str(rng.random()), token)
            when = rng.choice(_TIMES) + datetime.timedelta(microseconds=rng.randint(0, 999_999))
            sign_payload = rng.choice([None, None, False, True])
            ours = signer.sign(method, path, headers, body, host=host, access_key=credentials.access_key,
                               secret_key=credentials.secret_key, token=token, sign_payload=sign_payload,
                               now=when.replace(tzinfo=datetime.timezone.utc).timestamp())
            theirs = botocore_sign(method, f"{scheme}://{host}{path}", host, headers, body, credentials, region,
                                   when, sign_payload, monkeypatch)
            assert {k: ours.get(k) for k in _COMPARED} == {k: theirs.get(k) for k in _COMPARED}, (method, key, headers)
            assert ours == theirs  # and nothing else differs either (the caller's headers pass through)


def test_payload_rule_matches_boto3_put_object() -> None:
    """Over https with Content-MD5 the payload is unsigned (boto3's PutObject); over http, or
    without Content-MD5, its SHA-256 is signed; a GET signs the empty body's hash."""
    body = b"x" * 1000
    md5 = {"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}
    sha = hashlib.sha256(body).hexdigest()
    assert S3Signer("r", https=True).payload_hash(md5, body, None) == "UNSIGNED-PAYLOAD"
    assert S3Signer("r", https=False).payload_hash(md5, body, None) == sha
    assert S3Signer("r", https=True).payload_hash({}, body, None) == sha
    assert S3Signer("r", https=False).payload_hash({}, None, None) == hashlib.sha256(b"").hexdigest()
    assert S3Signer("r", https=False).payload_hash(md5, body, False) == "UNSIGNED-PAYLOAD"


def test_signing_key_follows_the_secret_and_the_day() -> None:
    """The cached key must not outlive a credential rotation or a day change."""
    signer = S3Signer("us-east-1", https=False)
    day1 = datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()
    def auth(on: S3Signer, secret: str, now: float) -> str:
        return on.sign("GET", "/b/k", {}, None, host="h", access_key="AK", secret_key=secret, now=now)["Authorization"]
    first, rotated, next_day = auth(signer, "one", day1), auth(signer, "two", day1), auth(signer, "two", day1 + 1)
    fresh = auth(S3Signer("us-east-1", https=False), "two", day1 + 1)
    assert len({first, rotated, next_day}) == 3 and next_day == fresh
    assert "/20261201/us-east-1/s3/aws4_request" in next_day


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_whole_object_get_shortcut_matches_botocore(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET without headers (the hot request) builds its canonical headers without a sort: every
    combination of token, host form, region, payload rule and time must still match botocore."""
    for host in ("127.0.0.1:7480", "rgw.example", "[::1]:9000"):
        for region in ("us-east-1", "eu-west-3"):
            signer = S3Signer(region, https=scheme == "https")
            for token in (None, "", "FQoGZXIvYXdzE" + "x" * 200):
                for sign_payload in (None, False, True):
                    for when in _TIMES:
                        credentials = Credentials("AKIAEXAMPLE", "s3cr3t/+key", token)
                        path = "/bkt/a/./b%20c/~d"
                        ours = signer.sign("GET", path, {}, None, host=host, access_key=credentials.access_key,
                                           secret_key=credentials.secret_key, token=token, sign_payload=sign_payload,
                                           now=when.replace(tzinfo=datetime.timezone.utc).timestamp())
                        theirs = botocore_sign("GET", f"{scheme}://{host}{path}", host, {}, None, credentials,
                                               region, when, sign_payload, monkeypatch)
                        assert ours == theirs, (host, region, token, sign_payload, when)
