"""storage/list_xml.py reads a ListObjectsV2 answer as boto3 does: URL-encoded keys decoded only when
the answer says so (``unquote_plus``, botocore's rule), quotes dropped from ETags, ISO times to epoch
seconds; anything that is not a listing is an error naming what it got, never an empty page."""
from __future__ import annotations

import datetime

import pytest

from blip3o_storage.storage.list_xml import ListResponseError, parse_list_page

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def _answer(body: str, ns: str = NS) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}>{body}</ListBucketResult>'.encode()


ENTRY = ("<Contents><Key>{key}</Key><LastModified>2026-11-30T14:13:15.123Z</LastModified>"
         "<ETag>&quot;0cc175b9c0f1b6a831c399e269772661&quot;</ETag><Size>{size}</Size></Contents>")


def test_encoded_keys_are_decoded_like_botocore() -> None:
    body = ("<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
            "<NextContinuationToken>tok/+=</NextContinuationToken>"
            + ENTRY.format(key="a+b/c%2Bd%20%C3%BC%01", size=3)
            + "<CommonPrefixes><Prefix>dir%2Fx+y/</Prefix></CommonPrefixes>")
    page = parse_list_page(_answer(body))
    when = datetime.datetime(2026, 11, 30, 14, 13, 15, 123000, tzinfo=datetime.timezone.utc).timestamp()
    assert page.objects == [("a b/c+d ü\x01", 3, "0cc175b9c0f1b6a831c399e269772661", when)]
    assert page.prefixes == ["dir/x y/"]
    assert page.truncated and page.next_token == "tok/+="


def test_keys_are_kept_as_given_without_encoding_type() -> None:
    page = parse_list_page(_answer(ENTRY.format(key="a+b%20c", size=0) + "<IsTruncated>false</IsTruncated>", ns=""))
    assert [key for key, *_ in page.objects] == ["a+b%20c"]
    assert not page.truncated and page.next_token is None


def test_empty_listing() -> None:
    page = parse_list_page(_answer("<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>"))
    assert page.objects == [] and page.prefixes == [] and not page.truncated


@pytest.mark.parametrize("body, says", [
    (b"", "not XML"),
    (b"<html>proxy error</html>", "<html>"),
    (b'<?xml version="1.0"?><Error><Code>NoSuchBucket</Code></Error>', "<Error>"),
    (_answer("<Contents><Key>k</Key></Contents>"), "without Key or Size"),
    (_answer("<Contents><Key>k</Key><Size>big</Size></Contents>"), "Size 'big'"),
    (_answer("<Contents><Key>k</Key><Size>1</Size></Contents>")[:-20], "not XML"),
])
def test_what_is_not_a_listing_is_an_error(body: bytes, says: str) -> None:
    with pytest.raises(ListResponseError) as caught:
        parse_list_page(body)
    assert says in str(caught.value)


def test_entity_expansion_is_refused() -> None:
    """A 'billion laughs' answer must not be expanded (expat refuses it, or it is no listing)."""
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY %s "%s">' % (chr(98 + i).encode(), (b"&" + chr(97 + i).encode() + b";") * 10)
                       for i in range(8))
            + b']><ListBucketResult><Contents><Key>&i;</Key><Size>1</Size></Contents></ListBucketResult>')
    try:
        page = parse_list_page(bomb)
    except ListResponseError:
        return
    assert all(len(key) < 10_000 for key, *_ in page.objects)
