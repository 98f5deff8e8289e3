"""A destination's request budget: a smooth rate limit, and the wait a 429 asks for.

aiolimiter's bucket holds one request and drains at `rate` per second, so requests are
evenly spaced and no one-second window ever sees more than the configured rate (a larger
bucket would allow a burst above it). After a 429 nothing is sent before its Retry-After;
then the destination's worker probes it one request at a time, and once a request succeeds
it is served at the full rate again (relay.delivery).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter


class DestinationLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.blocked_until = 0.0
        self._limiter = AsyncLimiter(1, 1.0 / rate)

    async def acquire(self) -> None:
        while True:
            while (wait := self.blocked_until - self.clock()) > 0:
                await asyncio.sleep(wait)
            await self._limiter.acquire()
            # A 429 may have come while this waited its turn: then it waits for that too.
            if self.blocked_until <= self.clock():
                return

    def throttled(self, retry_after: float | None) -> None:
        """A 429: nothing goes out before its Retry-After."""
        if retry_after:
            self.blocked_until = max(self.blocked_until, self.clock() + retry_after)
