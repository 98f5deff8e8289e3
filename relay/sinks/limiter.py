"""A destination's request budget: a smooth rate limit that backs off after 429s.

aiolimiter's bucket holds one request and drains at `rate` per second, so requests are
evenly spaced and no one-second window ever sees more than the configured rate (a larger
bucket would allow a burst above it). After a 429 the destination waits for Retry-After,
and its rate drops by 30 %; it recovers by 10 % of the configured rate per 100 successes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter


class DestinationLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.configured = rate
        self.rate = rate
        self.clock = clock
        self.blocked_until = 0.0
        self._successes = 0
        self._limiter = AsyncLimiter(1, 1.0 / rate)

    async def acquire(self) -> None:
        while (wait := self.blocked_until - self.clock()) > 0:
            await asyncio.sleep(wait)
        await self._limiter.acquire()

    def throttled(self, retry_after: float | None) -> None:
        if retry_after:
            self.blocked_until = max(self.blocked_until, self.clock() + retry_after)
        self._set_rate(max(self.configured * 0.05, self.rate * 0.7))
        self._successes = 0

    def succeeded(self) -> None:
        if self.rate >= self.configured:
            return
        self._successes += 1
        if self._successes >= 100:
            self._successes = 0
            self._set_rate(min(self.configured, self.rate + self.configured * 0.1))

    def _set_rate(self, rate: float) -> None:
        if rate != self.rate:
            self.rate = rate
            self._limiter = AsyncLimiter(1, 1.0 / rate)
