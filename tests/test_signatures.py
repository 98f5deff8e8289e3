"""Tests for Customer.io and Segment webhook signature checks."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.signatures import (
    customerio_signature,
    segment_signature,
    verify_customerio,
    verify_segment_webhook,
)

VECTOR_KEY = "signing-secret"
VECTOR_TIMESTAMP = "1614265384"
VECTOR_BODY = b'{"event_id":"abc","object_type":"email","metric":"delivered"}'
VECTOR_SIGNATURE = "6f55cf23f9b73a2ff07733fe04421f64ce9ec5e409696edda6b2a80311944230"


# --- Customer.io -------------------------------------------------------------------------


def test_customerio_signature_matches_published_vector() -> None:
    assert customerio_signature(VECTOR_KEY, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_customerio_signature_is_hmac_sha256_over_v0_timestamp_body() -> None:
    body = b'{"x": 1}'
    expected = hmac.new(b"k", b"v0:42:" + body, hashlib.sha256).hexdigest()
    assert customerio_signature("k", "42", body) == expected


def test_verify_customerio_vector_plain_list_returns_index() -> None:
    result = verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY)
    assert result == "0"


def test_verify_customerio_accepts_uppercase_and_padded_signature() -> None:
    signature = f" {VECTOR_SIGNATURE.upper()} "
    assert verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, signature, VECTOR_BODY) == "0"


def test_verify_customerio_wrong_key() -> None:
    assert verify_customerio(["other"], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) is None


def test_verify_customerio_wrong_timestamp() -> None:
    assert verify_customerio([VECTOR_KEY], "1614265385", VECTOR_SIGNATURE, VECTOR_BODY) is None


def test_verify_customerio_altered_body() -> None:
    altered = VECTOR_BODY.replace(b"delivered", b"opened")
    assert verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, altered) is None


def test_verify_customerio_body_whitespace_matters() -> None:
    spaced = VECTOR_BODY + b"\n"
    assert verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, spaced) is None


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (None, VECTOR_SIGNATURE),
        (VECTOR_TIMESTAMP, None),
        (None, None),
        ("", VECTOR_SIGNATURE),
        (VECTOR_TIMESTAMP, ""),
    ],
)
def test_verify_customerio_missing_headers(timestamp: str | None, signature: str | None) -> None:
    assert verify_customerio([VECTOR_KEY], timestamp, signature, VECTOR_BODY) is None


def test_verify_customerio_key_rotation_second_key_matches() -> None:
    result = verify_customerio(
        ["old-key", VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY
    )
    assert result == "1"


def test_verify_customerio_mapping_returns_source_name() -> None:
    keys = {
        "workspace-a": ["a-1", "a-2"],
        "workspace-b": ["b-old", VECTOR_KEY],
    }
    result = verify_customerio(keys, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY)
    assert result == "workspace-b"


def test_verify_customerio_mapping_with_single_string_value() -> None:
    keys = {"only": VECTOR_KEY}
    assert verify_customerio(keys, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) == "only"


def test_verify_customerio_per_source_route_ignores_other_sources() -> None:
    keys = {"workspace-a": ["a-1"], "workspace-b": [VECTOR_KEY]}
    just_a = {"workspace-a": keys["workspace-a"]}
    assert verify_customerio(just_a, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) is None


def test_verify_customerio_lone_string_is_one_key_not_characters() -> None:
    assert verify_customerio(VECTOR_KEY, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) == "0"
    # Iterating a string would try single characters as keys.
    forged = customerio_signature("s", VECTOR_TIMESTAMP, VECTOR_BODY)
    assert verify_customerio(VECTOR_KEY, VECTOR_TIMESTAMP, forged, VECTOR_BODY) is None


def test_verify_customerio_empty_key_never_matches() -> None:
    forged = customerio_signature("", VECTOR_TIMESTAMP, VECTOR_BODY)
    assert verify_customerio([""], VECTOR_TIMESTAMP, forged, VECTOR_BODY) is None
    assert verify_customerio({"blank": [""]}, VECTOR_TIMESTAMP, forged, VECTOR_BODY) is None


def test_verify_customerio_no_keys() -> None:
    assert verify_customerio([], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) is None
    assert verify_customerio({}, VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) is None


def test_verify_customerio_tolerance_off_accepts_old_timestamp() -> None:
    result = verify_customerio(
        [VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY, now=2_000_000_000.0
    )
    assert result == "0"


@pytest.mark.parametrize(
    ("now", "tolerance", "expected"),
    [
        (1614265384.0, 300.0, "0"),
        (1614265684.0, 300.0, "0"),  # exactly at the limit
        (1614265084.0, 300.0, "0"),  # clock behind the sender, at the limit
        (1614265685.0, 300.0, None),
        (1614265083.0, 300.0, None),
        (2_000_000_000.0, 300.0, None),
        (1614265384.0, 0.0, "0"),
    ],
)
def test_verify_customerio_tolerance(now: float, tolerance: float, expected: str | None) -> None:
    result = verify_customerio(
        [VECTOR_KEY],
        VECTOR_TIMESTAMP,
        VECTOR_SIGNATURE,
        VECTOR_BODY,
        now=now,
        tolerance=tolerance,
    )
    assert result == expected


@pytest.mark.parametrize("timestamp", ["abc", "16142653.8e2", "-1614265384", "nan", "1_614"])
def test_verify_customerio_non_numeric_timestamp(timestamp: str) -> None:
    signature = customerio_signature(VECTOR_KEY, timestamp, VECTOR_BODY)
    # Genuinely signed, so it passes without a tolerance ...
    assert verify_customerio([VECTOR_KEY], timestamp, signature, VECTOR_BODY) == "0"
    # ... but a tolerance cannot be checked against something that is not a time.
    result = verify_customerio(
        [VECTOR_KEY], timestamp, signature, VECTOR_BODY, now=1614265384.0, tolerance=1e12
    )
    assert result is None


def test_verify_customerio_tolerance_needs_now() -> None:
    with pytest.raises(ValueError, match="now"):
        verify_customerio(
            [VECTOR_KEY], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY, tolerance=300.0
        )


def test_verify_customerio_non_ascii_headers_do_not_raise() -> None:
    assert verify_customerio([VECTOR_KEY], "16142653é4", VECTOR_SIGNATURE, VECTOR_BODY) is None
    assert verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, "é" * 64, VECTOR_BODY) is None


@given(
    keys=st.lists(st.text(max_size=20), max_size=3),
    timestamp=st.none() | st.text(max_size=20),
    signature=st.none() | st.text(max_size=80),
    body=st.binary(max_size=200),
    tolerance=st.none() | st.floats(allow_nan=True),
    now=st.floats(allow_nan=True, allow_infinity=True),
)
def test_verify_customerio_never_raises(
    keys: list[str],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    tolerance: float | None,
    now: float,
) -> None:
    result = verify_customerio(keys, timestamp, signature, body, now=now, tolerance=tolerance)
    assert result is None or result in {str(i) for i in range(len(keys))}


@given(key=st.text(min_size=1, max_size=20), timestamp=st.text(max_size=20), body=st.binary())
def test_verify_customerio_round_trip(key: str, timestamp: str, body: bytes) -> None:
    # Any non-ASCII header is refused, so only ASCII timestamps can round-trip.
    signature = customerio_signature(key, timestamp, body)
    expected = "0" if timestamp and timestamp.isascii() else None
    assert verify_customerio([key], timestamp, signature, body) == expected


# --- Segment -----------------------------------------------------------------------------

SECRET = "segment-shared-secret"


def test_segment_signature_is_hex_hmac_sha1() -> None:
    body = b'{"type":"track"}'
    assert segment_signature("s", body) == hmac.new(b"s", body, hashlib.sha1).hexdigest()
    assert segment_signature("key", b"The quick brown fox jumps over the lazy dog") == (
        "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
    )


def test_verify_segment_single_event() -> None:
    body = b'{"type":"track","event":"Order Completed","properties":{"total":30.0}}'
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, body))


def test_verify_segment_single_event_wrong_secret() -> None:
    body = b'{"type":"track","event":"Order Completed"}'
    assert not verify_segment_webhook(SECRET, body, segment_signature("wrong", body))


def test_verify_segment_single_event_altered_body() -> None:
    body = b'{"type":"track","event":"Order Completed"}'
    signature = segment_signature(SECRET, body)
    assert not verify_segment_webhook(SECRET, body.replace(b"Order", b"Cart"), signature)


def test_verify_segment_missing_signature_or_secret() -> None:
    body = b'{"type":"track"}'
    assert not verify_segment_webhook(SECRET, body, None)
    assert not verify_segment_webhook(SECRET, body, "")
    assert not verify_segment_webhook("", body, segment_signature("", body))


# The first element as a JavaScript client wrote it: floats that Python would print
# differently (1.0 → 1.0 but JS gives 1; 1e5 → 100000.0), spacing inside the element.
FIRST_ELEMENT = b'{"type":"track","properties":{"price":1.0,"big":1e5,"tiny":2.50E-3}}'
SECOND_ELEMENT = b'{"type":"identify","userId":"u-2"}'


def test_array_first_element_is_not_reproducible_by_reserialising() -> None:
    reserialised = json.dumps(json.loads(FIRST_ELEMENT), separators=(",", ":")).encode()
    assert reserialised != FIRST_ELEMENT


def test_verify_segment_batch_signs_raw_first_element() -> None:
    body = b"[" + FIRST_ELEMENT + b"," + SECOND_ELEMENT + b"]"
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, FIRST_ELEMENT))


def test_verify_segment_batch_with_whitespace_and_unicode() -> None:
    first = '{"name":"Zoë","n":1.0}'.encode()
    body = b" \n[ \t" + first + b" ,\r\n" + SECOND_ELEMENT + b" ]\n"
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, first))


def test_verify_segment_batch_single_element() -> None:
    body = b"[" + FIRST_ELEMENT + b"]"
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, FIRST_ELEMENT))


def test_verify_segment_batch_whole_body_signature_also_accepted() -> None:
    body = b"[" + FIRST_ELEMENT + b"," + SECOND_ELEMENT + b"]"
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, body))


def test_verify_segment_batch_reserialised_element_does_not_match() -> None:
    body = b"[" + FIRST_ELEMENT + b"]"
    reserialised = json.dumps(json.loads(FIRST_ELEMENT), separators=(",", ":")).encode()
    assert not verify_segment_webhook(SECRET, body, segment_signature(SECRET, reserialised))


def test_verify_segment_batch_second_element_signature_rejected() -> None:
    body = b"[" + FIRST_ELEMENT + b"," + SECOND_ELEMENT + b"]"
    assert not verify_segment_webhook(SECRET, body, segment_signature(SECRET, SECOND_ELEMENT))


def test_verify_segment_batch_wrong_secret() -> None:
    body = b"[" + FIRST_ELEMENT + b"]"
    assert not verify_segment_webhook(SECRET, body, segment_signature("wrong", FIRST_ELEMENT))


def test_verify_segment_batch_altered_first_element() -> None:
    body = b"[" + FIRST_ELEMENT.replace(b"1e5", b"1e6") + b"]"
    assert not verify_segment_webhook(SECRET, body, segment_signature(SECRET, FIRST_ELEMENT))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[",
        b"[]",
        b"[ ]",
        b"[{",
        b'[{"a":}]',
        b"\xff\xfe[{}]",
        b"\x00\x01\x02",
        b"[" * 100_000,
        b"not json at all",
    ],
)
def test_verify_segment_junk_bytes(body: bytes) -> None:
    assert not verify_segment_webhook(SECRET, body, segment_signature(SECRET, b"{}"))


def test_verify_segment_non_ascii_signature() -> None:
    assert not verify_segment_webhook(SECRET, b"{}", "ü" * 40)


def test_verify_segment_uppercase_signature() -> None:
    body = b'{"type":"track"}'
    assert verify_segment_webhook(SECRET, body, segment_signature(SECRET, body).upper())


@given(secret=st.text(max_size=20), body=st.binary(max_size=300), signature=st.none() | st.text())
def test_verify_segment_never_raises(secret: str, body: bytes, signature: str | None) -> None:
    assert isinstance(verify_segment_webhook(secret, body, signature), bool)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@given(elements=st.lists(json_values, min_size=1, max_size=4), secret=st.text(min_size=1))
def test_verify_segment_batch_round_trip(elements: list[object], secret: str) -> None:
    encoded = [json.dumps(element).encode() for element in elements]
    body = b"[" + b", ".join(encoded) + b"]"
    assert verify_segment_webhook(secret, body, segment_signature(secret, encoded[0]))


def test_lone_surrogates_in_keys_and_headers_do_not_raise() -> None:
    bad = "\ud800"
    assert verify_customerio([bad], VECTOR_TIMESTAMP, VECTOR_SIGNATURE, VECTOR_BODY) is None
    assert verify_customerio([VECTOR_KEY], bad, VECTOR_SIGNATURE, VECTOR_BODY) is None
    assert verify_customerio([VECTOR_KEY], VECTOR_TIMESTAMP, bad, VECTOR_BODY) is None
    assert not verify_segment_webhook(bad, b"{}", "00" * 20)
    assert not verify_segment_webhook(SECRET, b"{}", bad)
