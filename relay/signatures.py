"""Signatures on incoming webhooks: Customer.io reporting webhooks (HMAC-SHA256) and
Segment's Webhooks destination (HMAC-SHA1, single-event and batching forms)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "customerio_signature",
    "segment_signature",
    "verify_customerio",
    "verify_segment_webhook",
]

# Customer.io sends whole unix seconds; a fraction is tolerated, anything else is not a time.
_TIMESTAMP = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
_JSON_WHITESPACE = " \t\n\r"


def customerio_signature(key: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256(key, "v0:" + timestamp + ":" + body), as Customer.io signs."""
    message = b"v0:" + _utf8(timestamp) + b":" + body
    return hmac.new(_utf8(key), message, hashlib.sha256).hexdigest()


def verify_customerio(
    keys: Mapping[str, str | Iterable[str]] | Iterable[str],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float | None = None,
) -> str | None:
    """Check `X-CIO-Signature` over the raw body; return which key matched, or None.

    `keys` is either a mapping of source name to its key (or keys, several during a
    rotation) — the matching source's name is returned, which suits `/webhooks/customerio`
    trying every source and `/webhooks/customerio/{source}` passing just `{source: keys}` —
    or a plain iterable of keys, in which case the position of the matching key is returned
    as a decimal string ("0", "1", ...). A lone string is one key, not a sequence of them.

    Missing or empty headers give None. Empty keys are skipped: anyone can compute an HMAC
    with an empty key. With `tolerance` (seconds) set, `now` is required and the timestamp
    must be numeric and within `tolerance` of it; with `tolerance=None` the age is not checked.
    Never raises on any header or body content.
    """
    if tolerance is not None and now is None:
        raise ValueError("verify_customerio: `now` is required when `tolerance` is set")
    if not timestamp or not signature:
        return None
    # The header is ASCII hex; anything else cannot match, and compare_digest refuses
    # non-ASCII str, so reject it here instead of raising.
    if not timestamp.isascii() or not signature.isascii():
        return None
    if tolerance is not None and now is not None and not _fresh(timestamp, now, tolerance):
        return None
    given = signature.strip().lower().encode("ascii")
    message = b"v0:" + timestamp.encode("ascii") + b":" + bytes(body)

    for name, key in _candidate_keys(keys):
        if not key:
            continue
        expected = hmac.new(_utf8(key), message, hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode("ascii"), given):
            return name
    return None


def segment_signature(secret: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA1(secret, body): the `X-Signature` Segment's Webhooks sends."""
    return hmac.new(_utf8(secret), body, hashlib.sha1).hexdigest()


def verify_segment_webhook(secret: str, body: bytes, signature: str | None) -> bool:
    """Check Segment's `X-Signature` for the single-event or the batching form.

    The single-event form signs the whole raw body. The batching form posts a JSON array and
    signs only `JSON.stringify(body[0])`, so for an array body the exact bytes of its first
    element, as sent, are tried too (re-serialising would change floats such as `1.0` or
    `1e5`). Only that first element is covered by the signature: the rest of a batch is not
    authenticated by it. An empty secret or a missing signature is never valid; never raises.
    """
    if not secret or not signature or not signature.isascii():
        return False
    given = signature.strip().lower().encode("ascii")
    raw = bytes(body)
    if _segment_matches(secret, raw, given):
        return True
    first = _first_array_element(raw)
    return first is not None and _segment_matches(secret, first, given)


def _segment_matches(secret: str, signed: bytes, given: bytes) -> bool:
    expected = segment_signature(secret, signed).encode("ascii")
    return hmac.compare_digest(expected, given)


def _first_array_element(body: bytes) -> bytes | None:
    """The raw bytes of the first element of a JSON array body, or None if it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = _skip_whitespace(text, 0)
    if start >= len(text) or text[start] != "[":
        return None
    begin = _skip_whitespace(text, start + 1)
    try:
        _, end = json.JSONDecoder().raw_decode(text, begin)
    except (ValueError, RecursionError):
        # RecursionError: absurdly deep nesting must fail verification, not the request.
        return None
    # UTF-8 decode/encode round-trips exactly, so these are the bytes that were sent.
    return text[begin:end].encode("utf-8")


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (possible in a str, never in real config) must not raise.
    return text.encode("utf-8", "surrogatepass")


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in _JSON_WHITESPACE:
        index += 1
    return index


def _candidate_keys(
    keys: Mapping[str, str | Iterable[str]] | Iterable[str],
) -> Iterable[tuple[str, str]]:
    if isinstance(keys, str):
        yield "0", keys
        return
    if isinstance(keys, Mapping):
        for name, value in keys.items():
            for key in (value,) if isinstance(value, str) else value:
                yield name, key
        return
    for index, key in enumerate(keys):
        yield str(index), key


def _fresh(timestamp: str, now: float, tolerance: float) -> bool:
    text = timestamp.strip()
    if not _TIMESTAMP.fullmatch(text):
        return False
    sent = float(text)
    return math.isfinite(now) and abs(now - sent) <= tolerance
