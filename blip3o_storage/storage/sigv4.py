"""AWS Signature Version 4 header signing for our two S3 requests (object GET and PUT).

Why not botocore's :class:`~botocore.auth.S3SigV4Auth`: it costs ~115 µs of CPU per request
(an ``AWSRequest``, ``email.message``-based header maps built three times, four HMACs to derive
the signing key every time), which was more than half of a GET's remaining client CPU once the
transport was lean; this module does the same computation in ~8 µs (``benchmarks/get_cpu.py``'s
SigV4 row, median of 5 interleaved rounds: 8.3 µs against 116 µs) with the stdlib's
``hmac``/``hashlib`` (the cryptography stays the stdlib's), the derived signing key cached per
(secret, date, region) with an HMAC keyed by it that each signature copies, and, for a GET
without headers, the canonical header block written in its sorted order. The team rule is that signing comes from a
well-kept library unless a measurement shows a large gain and a differential test pins it to
the library: ``tests/unit/test_sigv4_differential.py`` signs thousands of randomized requests
(unicode, spaces, ``~``, ``/./``, ``%`` and ``+`` in keys; ranges; If-Match; Content-MD5;
content types; session tokens; http and https; day boundaries; every variant of the header-less
GET) with both this and botocore's ``S3SigV4Auth`` at a frozen time and requires identical
Authorization and X-Amz-* headers.

Scope, deliberately narrow: a query string already in canonical form (:func:`canonical_query`:
sorted, RFC 3986-encoded, as botocore signs the parameters of ListObjectsV2), a path already
percent-encoded the way botocore encodes S3 keys (not normalised: S3 signs ``a/./b`` as is),
header values as strings, and the payload rule of botocore's S3 signer: the body's SHA-256
unless the endpoint is https and the request carries Content-MD5 (then ``UNSIGNED-PAYLOAD``,
as boto3's PutObject), or
``sign_payload=False`` is asked for explicitly (botocore's ``payload_signing_enabled=False``).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Dict, Mapping, Optional, Tuple
from urllib.parse import quote

#: SHA-256 of the empty body.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: Headers botocore never signs (botocore.auth.SIGNED_HEADERS_BLACKLIST).
_NOT_SIGNED = frozenset({"baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
                         "proxy-authorization", "te", "traceparent", "trailer", "transfer-encoding",
                         "upgrade", "user-agent", "x-amzn-trace-id"})


def canonical_query(params: Mapping[str, str]) -> str:
    """``params`` as SigV4's canonical query string, which is also what goes on the wire: sorted
    by name (then value), names and values percent-encoded except RFC 3986's unreserved
    characters (botocore's ``SigV4Auth._canonical_query_string_params``)."""
    return "&".join(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
                    for name, value in sorted(params.items()))


class S3Signer:
    """SigV4 signer for one region (service ``s3``); thread-safe (the key cache is one tuple)."""

    def __init__(self, region: str, https: bool) -> None:
        self.region = region
        self.https = https
        self._scope_tail = f"/{region}/s3/aws4_request"
        #: (secret, yyyymmdd, signing key, an HMAC keyed with it); only the latest is kept (a new
        #: day replaces it). Each signature copies the keyed HMAC (~1.8 µs) instead of keying a
        #: new one (~2.6 µs).
        self._key: Tuple[str, str, bytes, Optional[hmac.HMAC]] = ("", "", b"", None)
        self._stamp: Tuple[int, str] = (-1, "")

    def _signing_key(self, secret: str, day: str) -> bytes:
        return self._keyed(secret, day)[0]

    def _keyed(self, secret: str, day: str) -> Tuple[bytes, hmac.HMAC]:
        """The signing key for (secret, day), and an HMAC-SHA256 keyed with it (to copy)."""
        cached_secret, cached_day, key, keyed = self._key
        if cached_secret == secret and cached_day == day and keyed is not None:
            return key, keyed
        digest = hashlib.sha256
        key = hmac.new(f"AWS4{secret}".encode(), day.encode(), digest).digest()
        for part in (self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), digest).digest()
        keyed = hmac.new(key, digestmod=digest)
        self._key = (secret, day, key, keyed)
        return key, keyed

    def _timestamp(self, now: Optional[float]) -> str:
        second = int(time.time() if now is None else now)
        cached, text = self._stamp
        if cached != second:
            text = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
            self._stamp = (second, text)
        return text

    def payload_hash(self, headers: Mapping[str, str], body: Optional[bytes], sign_payload: Optional[bool]) -> str:
        """What goes in X-Amz-Content-SHA256, by botocore's S3 rule (see the module docstring)."""
        if sign_payload is None:
            sign_payload = not (self.https and any(name.lower() == "content-md5" for name in headers))
        if not sign_payload:
            return UNSIGNED_PAYLOAD
        return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256

    def sign(self, method: str, path: str, headers: Mapping[str, str], body: Optional[bytes], *, host: str,
             access_key: str, secret_key: str, token: Optional[str] = None, sign_payload: Optional[bool] = None,
             now: Optional[float] = None, query: str = "") -> Dict[str, str]:
        """``headers`` plus ``host``, X-Amz-Date, [X-Amz-Security-Token], X-Amz-Content-SHA256 and
        Authorization, as botocore's ``S3SigV4Auth.add_auth`` sets them for the same request.

        ``path`` is the request target as sent (percent-encoded, without the query); ``query``
        the query string as sent, made by :func:`canonical_query`; ``now`` (epoch seconds) is
        for tests; otherwise the current time.
        """
        stamp = self._timestamp(now)
        day = stamp[:8]
        out = dict(headers)
        out["host"] = host
        out["X-Amz-Date"] = stamp
        if token:
            out["X-Amz-Security-Token"] = token
        out["X-Amz-Content-SHA256"] = payload = self.payload_hash(headers, body, sign_payload)
        if headers:
            canonical: Dict[str, str] = {}
            for name, value in out.items():
                lower = name.lower()
                if lower not in _NOT_SIGNED:
                    canonical[lower] = " ".join(value.split())
            names = sorted(canonical)
            signed_headers = ";".join(names)
            block = "".join(f"{n}:{canonical[n]}\n" for n in names)
        else:  # a whole-object GET, the hot request: the same canonical headers, in sorted order, without the sort
            block = f"host:{' '.join(host.split())}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n"
            signed_headers = "host;x-amz-content-sha256;x-amz-date"
            if token:
                block += f"x-amz-security-token:{' '.join(token.split())}\n"
                signed_headers += ";x-amz-security-token"
        request = f"{method}\n{path}\n{query}\n{block}\n{signed_headers}\n{payload}"
        scope = day + self._scope_tail
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
        mac = self._keyed(secret_key, day)[1].copy()
        mac.update(to_sign.encode())
        signature = mac.hexdigest()
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed_headers}, Signature={signature}")
        return out
