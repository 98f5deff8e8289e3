"""What happened to one delivery, and how an HTTP answer decides it (PROTOCOLS §2.3, §4)."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from relay.sinks.transport import Response


@dataclass(frozen=True)
class Done:
    pass


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


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After (seconds or HTTP date) or X-RateLimit-Reset,
    capped at an hour: an absurd or infinite value must not stall a destination for good."""
    wait = _retry_after(headers, now)
    if wait is None or not math.isfinite(wait):
        return None if wait is None or math.isnan(wait) else MAX_RETRY_AFTER
    return min(wait, MAX_RETRY_AFTER)


def _retry_after(headers: Mapping[str, str], now: float | None) -> float | None:
    now = time.time() if now is None else now
    lower = {k.lower(): v for k, v in headers.items()}
    value = lower.get("retry-after")
    if value:
        value = value.strip()
        try:
            seconds = float(value)
            return None if math.isnan(seconds) else max(0.0, seconds)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - now)
    reset = lower.get("x-ratelimit-reset")
    if reset:
        try:
            number = float(reset.strip())
        except ValueError:
            return None
        if number > 1e12:  # epoch milliseconds
            return max(0.0, number / 1000 - now)
        if number > 1e9:  # epoch seconds
            return max(0.0, number - now)
        return max(0.0, number)
    return None


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
