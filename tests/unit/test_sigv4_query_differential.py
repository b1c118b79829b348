"""The signed-HTTP LIST is pinned to botocore: its query string is the one boto3's
``list_objects_v2`` puts on the wire for the same parameters (prefixes and continuation
tokens with unicode, spaces, ``+``, ``%``, ``=``, ``/``), and storage/sigv4.py signs a
request with that query exactly as botocore's S3SigV4Auth does, at a frozen time.
"""
from __future__ import annotations

import datetime
import random
from typing import Any, Dict, List, Tuple
from urllib.parse import quote, urlsplit

import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from blip3o_storage.storage.sigv4 import S3Signer, canonical_query

_ALPHABET = list("abcXYZ019-_.~/ +%&=?#;:,@$!'()*") + ["ü", "日本", "🙂", "%2F", "=="]


class _Captured(Exception):
    """Raised from botocore's before-send hook: the request it would send, not sent."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _capture(request: AWSRequest, **_: object) -> None:
    raise _Captured(str(request.url))


@pytest.fixture(scope="module")
def client() -> Any:
    """A boto3-style client whose ListObjectsV2 raises the URL it would send (path-style)."""
    made = botocore.session.get_session().create_client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="AK",
        aws_secret_access_key="SK", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    made.meta.events.register("before-send.s3.ListObjectsV2", _capture)
    return made


def _boto3_list_url(client: Any, params: Dict[str, object]) -> str:
    """The URL ``list_objects_v2(**params)`` sends."""
    with pytest.raises(_Captured) as caught:
        client.list_objects_v2(**params)
    return caught.value.url


def _pairs(query: str) -> List[Tuple[str, str]]:
    return sorted(tuple(pair.split("=", 1)) for pair in query.split("&"))  # type: ignore[misc]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 10)))


@pytest.mark.parametrize("seed", range(4))
def test_list_query_is_what_boto3_sends(seed: int, client: Any) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        params: Dict[str, str] = {"list-type": "2", "encoding-type": "url", "prefix": _random_text(rng)}
        boto: Dict[str, object] = {"Bucket": "bkt", "Prefix": params["prefix"], "EncodingType": "url"}
        if rng.random() < 0.5:
            params["delimiter"] = boto["Delimiter"] = "/"
        if rng.random() < 0.5:
            params["continuation-token"] = token = _random_text(rng) + "+/=="
            boto["ContinuationToken"] = token
        if rng.random() < 0.3:
            params["max-keys"] = "1"
            boto["MaxKeys"] = 1
        sent = urlsplit(_boto3_list_url(client, boto))
        assert sent.path == "/bkt"
        assert _pairs(canonical_query(params)) == _pairs(sent.query), params


@pytest.mark.parametrize("seed", range(4))
def test_query_signatures_match_botocore(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    when = datetime.datetime(2026, 11, 30, 23, 59, 59) + datetime.timedelta(days=seed)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda remove_tzinfo=True: when)
    for scheme in ("http", "https"):
        host = rng.choice(["127.0.0.1:7480", "rgw.example", "[::1]:9000"])
        signer = S3Signer("us-east-1", https=scheme == "https")
        for _ in range(40):
            bucket = rng.choice(["bkt", "my.bucket"])
            params = {"list-type": "2", "encoding-type": "url", "prefix": _random_text(rng)}
            if rng.random() < 0.5:
                params["continuation-token"] = _random_text(rng)
            query = canonical_query(params)
            path = f"/{quote(bucket, safe='')}"
            token = rng.choice([None, "FQoGZXIvYXdzE" + "x" * 40])
            credentials = Credentials("AKIAEXAMPLE", "s3cr3t/+" + str(rng.random()), token)
            ours = signer.sign("GET", path, {}, None, host=host, access_key=credentials.access_key,
                               secret_key=credentials.secret_key, token=token, query=query,
                               now=when.replace(tzinfo=datetime.timezone.utc).timestamp())
            request = AWSRequest(method="GET", url=f"{scheme}://{host}{path}?{query}", headers={})
            request.headers["host"] = host
            S3SigV4Auth(credentials, "s3", "us-east-1").add_auth(request)
            assert ours == dict(request.headers.items()), params


def test_query_changes_the_signature() -> None:
    """The query is signed: the same request with another prefix must not carry the same signature."""
    signer = S3Signer("us-east-1", https=False)
    def auth(query: str) -> str:
        return signer.sign("GET", "/b", {}, None, host="h", access_key="AK", secret_key="SK", now=0.0,
                           query=query)["Authorization"]
    assert auth(canonical_query({"prefix": "a"})) != auth(canonical_query({"prefix": "b"}))
