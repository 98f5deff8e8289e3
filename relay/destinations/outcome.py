"""What happened to one delivery, and how an HTTP answer decides it."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

from relay.destinations.transport import Response


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Skipped(Done):
    """Done without sending anything: the message needs nothing sent (see mapping.Skip)."""

    reason: str


@dataclass(frozen=True)
class Retry:
    error: str
    after: float | None = None  # at least this many seconds (Retry-After)


@dataclass(frozen=True)
class Dead:
    reason: str


@dataclass(frozen=True)
class Pause:
    """The destination refuses our credentials: stop sending to it, keep its queue."""

    reason: str


@dataclass(frozen=True)
class Hold:
    """Not attempted: an earlier delivery for the same person is being retried."""


Outcome = Done | Retry | Dead | Pause | Hold

DONE = Done()
HOLD = Hold()
RETRYABLE = frozenset({408, 423, 429})


MAX_RETRY_AFTER = 3600.0
# X-RateLimit-Reset numbers above these are epoch milliseconds, then epoch seconds (any time
# after September 2001); smaller ones are a delay in seconds.
_EPOCH_MILLISECONDS = 1e12
_EPOCH_SECONDS = 1e9


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before the next request, from `Retry-After` and `X-RateLimit-Reset`.

    With both, the later one wins: `Retry-After: 0` beside a reset a minute away still means
    a minute. Capped at an hour, so that an absurd or infinite value cannot stall a
    destination for good; None when neither header says anything readable.
    """
    now = time.time() if now is None else now
    lower = {k.lower(): v for k, v in headers.items()}
    waits = [
        w
        for w in (
            parse_retry_after(lower.get("retry-after"), now),
            parse_rate_limit_reset(lower.get("x-ratelimit-reset"), now),
        )
        if w is not None
    ]
    return min(max(waits), MAX_RETRY_AFTER) if waits else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from `now`: a number of seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(0.0, seconds)
    return _until_http_date(value, now)


def parse_rate_limit_reset(value: str | None, now: float) -> float | None:
    """`X-RateLimit-Reset` as seconds from `now`. Services write it as epoch seconds, epoch
    milliseconds, a delay in seconds or an HTTP date; the size of a number tells which."""
    if value is None or not value.strip():
        return None
    number = _number(value)
    if number is None:
        return _until_http_date(value, now)
    if number > _EPOCH_MILLISECONDS:
        return max(0.0, number / 1000 - now)
    if number > _EPOCH_SECONDS:
        return max(0.0, number - now)
    return max(0.0, number)


def _number(value: str) -> float | None:
    """A header's number, or None when it is not one (NaN counts as not one)."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return None if math.isnan(number) else number


def _until_http_date(value: str, now: float) -> float | None:
    """Seconds from `now` until an HTTP date (RFC 7231 / RFC 5322 forms), 0 if it is past."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime and "-0000" forms carry no zone: HTTP dates are UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _excerpt(body: bytes, limit: int = 500) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


def classify(response: Response, now: float | None = None) -> Outcome:
    status = response.status
    if 200 <= status < 300:
        return DONE
    detail = f"HTTP {status}: {_excerpt(response.body)}" if response.body else f"HTTP {status}"
    if status in RETRYABLE or (500 <= status < 600 and status != 501):
        return Retry(detail, retry_after(response.headers, now))
    if status in (401, 403):
        return Pause(f"the destination refused the credentials ({detail})")
    return Dead(detail)
