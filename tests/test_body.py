"""Request bodies: Content-Encoding decoded by relay itself, with the size cap applied to what
a body decompresses to."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import BadRequest, ClientError, PayloadTooLarge, UnsupportedEncoding
from relay.sources.body import content_encodings, decode_body

LIMIT = 1024
BODY = b'{"type":"track","userId":"u1","event":"Signed Up"}'


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("header", "encoded"),
    [
        (None, BODY),
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("GZIP", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),  # zlib-wrapped, as RFC 9110 says
        ("deflate", raw_deflate(BODY)),  # raw deflate, as some clients send
        ("gzip, identity", gzip.compress(BODY)),
        ("deflate, gzip", gzip.compress(zlib.compress(BODY))),  # undone last-applied first
    ],
)
def test_every_supported_encoding_is_decoded(header: str | None, encoded: bytes) -> None:
    assert decode_body(encoded, header, LIMIT, "a message") == BODY


def test_gzip_members_one_after_the_other_are_joined() -> None:
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", LIMIT, "x") == b"abcd"


@pytest.mark.parametrize(
    ("header", "encoded", "fragment"),
    [
        ("gzip", b"not gzip at all", "not valid gzip data"),
        ("deflate", b"{}", "cut short or is not deflate data"),
        ("deflate", b"\x78junk", "not valid deflate data"),
        ("gzip", gzip.compress(BODY)[:-12], "cut short"),
        ("deflate", zlib.compress(BODY) + b"junk", "data after its end"),
    ],
)
def test_corrupt_bodies_are_400_saying_why(header: str, encoded: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_body(encoded, header, LIMIT, "a message")
    assert fragment in caught.value.message


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "bogus", "gzip, br"])
def test_unsupported_encodings_are_415_naming_what_works(header: str) -> None:
    with pytest.raises(UnsupportedEncoding) as caught:
        decode_body(b"{}", header, LIMIT, "a message")
    assert caught.value.status == 415
    assert "gzip, deflate, identity" in caught.value.message


def test_a_small_body_that_inflates_past_the_limit_is_413_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"0" * 50_000_000)  # 50 MB of zeros in about 50 KB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge) as caught:
        decode_body(bomb, "gzip", 32 * 1024, "a single message")
    assert caught.value.message == "a single message must be at most 32 KB"


def test_a_body_exactly_at_the_limit_passes() -> None:
    assert decode_body(gzip.compress(b"x" * LIMIT), "gzip", LIMIT, "x") == b"x" * LIMIT
    with pytest.raises(PayloadTooLarge):
        decode_body(gzip.compress(b"x" * (LIMIT + 1)), "gzip", LIMIT, "x")


def test_content_encodings_lists_codings_in_the_order_applied() -> None:
    assert content_encodings(" Deflate , identity,gzip ") == ["deflate", "gzip"]
    assert content_encodings(None) == []


@given(
    raw=st.binary(max_size=200) | st.binary(max_size=200).map(gzip.compress),
    header=st.sampled_from([None, "gzip", "deflate", "identity", "br", "gzip, deflate", ","]),
)
def test_any_body_is_decoded_within_the_limit_or_refused_with_a_client_error(
    raw: bytes, header: str | None
) -> None:
    try:
        decoded = decode_body(raw, header, 100, "x")
    except ClientError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        assert len(decoded) <= 100
