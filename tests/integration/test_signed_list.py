"""LIST, HEAD-bucket and HEAD-object over the signed-HTTP path (issue #16: a no-op ``tools/upload.py`` run
spent ~0.4 s of 1.3 s importing boto3 and building a client for them; every shard-mode DataLoader worker
~0.5 s for its tars' HEADs), against boto3 on the same server:
moto, and with ``--ceph`` the real RGW. Keys with spaces, ``+``, ``%``, unicode and control
characters must list as stored, page by page as boto3 pages them; and the command-line upload
must then run without importing boto3, botocore's session, urllib3 or s3transfer at all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from blip3o_storage import AccessDeniedError, ObjectNotFoundError, Storage
from blip3o_storage.testing.data import make_dataset
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.transfer.manifest import ENV_DIR

#: Keys a listing must give back exactly (XML cannot carry \x01 unencoded: the LIST asks for
#: encoding-type=url, as boto3 does, and decodes it).
ODD_KEYS = ["a b/c+d.txt", "a b/ü日本 🙂.jpg", "pct%20x/y", "plus+plus", "tilde~/z", "dir/sub/x", "dir/y",
            "ctrl\x01char", "amp&lt;x>", "dir/sub2/"]


def _both(endpoint: S3Endpoint) -> Tuple[Storage, Storage]:
    """(signed-HTTP, boto3-only) Storage on the same server."""
    return Storage(endpoint.ceph_config()), Storage(endpoint.ceph_config(fast_path=False))


def _rows(storage: Storage, uri: str, recursive: bool) -> List[Tuple[Any, ...]]:
    return [(i.key, i.size, i.etag, i.is_dir, None if i.mtime is None else round(i.mtime, 3))
            for i in storage.list(uri, recursive=recursive)]


def test_listing_matches_boto3(s3_bucket: tuple, s3_endpoint: S3Endpoint) -> None:
    storage, bucket = s3_bucket
    for n, key in enumerate(ODD_KEYS):
        storage.put(f"{bucket}/top/{key}", b"x" * n)
    fast, boto = _both(s3_endpoint)
    assert fast.backend_for(f"{bucket}/x").http is not None  # type: ignore[attr-defined]
    assert boto.backend_for(f"{bucket}/x").http is None  # type: ignore[attr-defined]
    for uri in (f"{bucket}/top", f"{bucket}/top/a b", f"{bucket}/top/dir/", f"{bucket}/missing"):
        for recursive in (True, False):
            listed = _rows(fast, uri, recursive)
            assert listed == _rows(boto, uri, recursive), (uri, recursive)
    everything = {row[0] for row in _rows(fast, f"{bucket}/top", True)}
    assert everything == set(ODD_KEYS)
    assert fast.isdir(f"{bucket}/top/a b") and not fast.isdir(f"{bucket}/top/nothing-here")
    assert fast.exists(f"{bucket}/top/dir") and not fast.exists(f"{bucket}/top/di")


def test_pages_match_boto3(s3_bucket: tuple, s3_endpoint: S3Endpoint) -> None:
    """Continuation tokens round-trip: 2 keys a page, the same pages as boto3's. (Without the
    control character: RGW 16.2 returns a token that holds it as ``&#1;``, which no XML parser,
    boto3's included, accepts.)"""
    storage, bucket = s3_bucket
    name = bucket[len("s3://"):]
    for key in [k for k in ODD_KEYS if k.isprintable()]:
        storage.put(f"{bucket}/p/{key}", b"1")
    fast, boto = _both(s3_endpoint)
    http = fast.backend_for(f"{bucket}/x").http  # type: ignore[attr-defined]
    client = boto.backend_for(f"{bucket}/x").client  # type: ignore[attr-defined]
    ours: List[List[str]] = []
    token = None
    while True:
        page = http.list_objects_v2(name, "p/", token=token, max_keys=2)
        ours.append([key for key, *_ in page.objects])
        if not page.truncated:
            break
        token = page.next_token
    theirs: List[List[str]] = []
    kwargs: dict = {"Bucket": name, "Prefix": "p/", "MaxKeys": 2}
    while True:
        response = client.list_objects_v2(**kwargs)
        theirs.append([o["Key"] for o in response.get("Contents", [])])
        if not response.get("IsTruncated"):
            break
        kwargs["ContinuationToken"] = response["NextContinuationToken"]
    assert ours == theirs
    assert len(ours) >= 4


def test_bucket_checks_over_signed_http(s3_bucket: tuple, s3_endpoint: S3Endpoint) -> None:
    _, bucket = s3_bucket
    fast, _ = _both(s3_endpoint)
    backend: Any = fast.backend_for(f"{bucket}/x")
    assert backend.bucket_exists(bucket[len("s3://"):])
    assert not backend.bucket_exists("no-such-bucket-blip3o-x1")
    assert backend._client is None  # neither check built a boto3 client
    if s3_endpoint.name.startswith("moto"):
        return  # moto does not check signatures
    wrong = Storage(s3_endpoint.ceph_config(secret_key="not-the-secret"))
    with pytest.raises(AccessDeniedError) as denied:
        list(wrong.list(f"{bucket}/top"))
    assert "not-the-secret" not in str(denied.value)


def test_stat_matches_boto3(s3_bucket: tuple, s3_endpoint: S3Endpoint) -> None:
    """Size, ETag and mtime as boto3's HeadObject gives them, odd keys and empty objects included;
    a missing object or bucket is the same error either way; no boto3 client is built."""
    storage, bucket = s3_bucket
    keys = [k for k in ODD_KEYS if not k.endswith("/")]
    for n, key in enumerate(keys):
        storage.put(f"{bucket}/st/{key}", b"y" * (n * 1000))
    fast, boto = _both(s3_endpoint)
    for key in keys:
        uri = f"{bucket}/st/{key}"
        ours, theirs = fast.stat(uri), boto.stat(uri)
        assert (ours.key, ours.size, ours.etag, ours.mtime) == (theirs.key, theirs.size, theirs.etag, theirs.mtime)
        assert ours.size == keys.index(key) * 1000 and ours.etag and ours.mtime
    for missing in (f"{bucket}/st/nope", "s3://no-such-bucket-blip3o-x2/k"):
        errors = []
        for store in (fast, boto):
            with pytest.raises(ObjectNotFoundError) as caught:
                store.stat(missing)
            errors.append(type(caught.value))
        assert errors[0] is errors[1], (missing, errors)
    assert fast.exists(f"{bucket}/st/plus+plus") and not fast.exists(f"{bucket}/st/nope")
    assert fast.backend_for(f"{bucket}/x")._client is None  # type: ignore[attr-defined]


_PROBE = """
import json, sys
from blip3o_storage.cli.upload import main
status = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'urllib3', 's3transfer')
               or m in ('botocore.session', 'botocore.client', 'tqdm'))
print('PROBE ' + json.dumps({'status': status, 'heavy': heavy}))
"""


def _probe_upload(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, proc.stdout + proc.stderr
    return dict(json.loads(line[-1][len("PROBE "):]), stdout=proc.stdout)


def test_upload_cli_loads_no_boto3(tmp_path: Path, target: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload of small files and its no-op re-run (LIST, PUT, verify) never import boto3:
    its import and client cost a third of a no-op run."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "manifests"))
    _, _, _, base = target
    src = make_dataset(tmp_path, n=4)
    first = _probe_upload(*base, "--prefix", "nb", str(src))
    assert first["status"] == 0, first["stdout"]
    assert first["heavy"] == [], first["heavy"]
    again = _probe_upload(*base, "--prefix", "nb", str(src))
    assert again["status"] == 0 and "uploaded 0 files" in again["stdout"]
    assert again["heavy"] == [], again["heavy"]
