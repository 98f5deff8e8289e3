"""A destination's request budget: `rate` requests per second, never more in any second,
and the wait a 429 asks for.

Two rules decide when a request may go (`Budget`, pure):
- a schedule of one request every 1/rate seconds (GCRA: each request takes the next slot of
  a virtual schedule, and may go up to half a slot early). A request that goes out late,
  because the event loop was busy when its turn came, does not push the schedule back, so
  the lateness is made up instead of lost (aiolimiter's bucket of one lost it: 90 requests/s
  of 100 under load). Idle time is not saved up, so requests stay evenly spread rather than
  bursting after a pause;
- a window: the request `rate` places earlier went out at least a second (and a small
  margin, for the jitter between sending and arriving) before. This is what guarantees that
  no one-second window, anywhere, holds more than `rate` requests.

A request goes out when it is written to the network, which on a busy event loop can be
milliseconds after the limiter let it go (on Python 3.11 aiohttp writes a request with a
body in a task of its own, which waits behind whatever else is ready). `acquire` therefore
returns a function the transport calls as it writes the request, and the window counts the
request from then: lateness between the two can never add up to more than `rate` requests
in a second at the other end.

After a 429 nothing is sent before its Retry-After; then the destination's worker probes it
one request at a time, and once a request succeeds it is served at the full rate again
(relay.delivery).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

WINDOW = 1.0
# Sends that are a full window apart at relay may arrive closer together at the other end
# (a loopback stand-in on a busy 2-core machine saw 101 in a second with 5 ms): the rate a
# backlog drains at is `rate` / 1.02, 98 requests/s of 100.
WINDOW_MARGIN = 0.02

# What `acquire` returns: called (with no arguments) as the request is written to the network.
Written: TypeAlias = Callable[[], None]


class Budget:
    """When the next request may go, given the times the earlier ones went (pure)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        # How early a request may go, and so how late one may be without slowing the rate:
        # half a slot, which covers a busy event loop's lateness at Customer.io's rates.
        self.tolerance = self.interval / 2
        self.next_slot = -math.inf
        # The times the last `rate` requests (at least one) went out, in the order they were
        # let go: when they were let go, or written, once they were.
        self.sent: deque[float] = deque(maxlen=max(1, math.floor(rate)))
        self.taken = 0  # requests let go so far; the last one's number is taken - 1
        # The latest time of any request that fell out of `sent`: requests are written in
        # about the order they are let go, but not exactly.
        self.before = -math.inf

    def wait(self, now: float) -> float:
        """Seconds until a request may go; 0 or less when it may go now."""
        wait = self.next_slot - self.tolerance - now
        if len(self.sent) == self.sent.maxlen:
            # The request `rate` places earlier, and every one before it, went out at least
            # a window and its margin ago.
            oldest = max(self.sent[0], self.before)
            wait = max(wait, oldest + WINDOW + WINDOW_MARGIN - now)
        return wait

    def take(self, now: float) -> int:
        """A request goes now (after `wait(now)` said it may). Returns its number, for
        `written`."""
        self.next_slot = max(self.next_slot, now) + self.interval
        if len(self.sent) == self.sent.maxlen:
            self.before = max(self.before, self.sent[0])
        self.sent.append(now)
        self.taken += 1
        return self.taken - 1

    def written(self, number: int, at: float) -> None:
        """Request `number` was written to the network at `at`: it counts from then."""
        index = number - (self.taken - len(self.sent))
        if index < 0:
            self.before = max(self.before, at)
        elif at > self.sent[index]:
            self.sent[index] = at


class Limiter(Protocol):
    """What a destination's sender asks: one instance's DestinationLimiter, or a limiter
    shared by every instance (relay.store.redis.limiter)."""

    rate: float

    async def acquire(self) -> Written:
        """Wait until a request may go; the function returned is called as it is written."""
        ...

    def throttled(self, retry_after: float | None) -> None: ...


@runtime_checkable
class SharesRateLimits(Protocol):
    """A store shared by several instances, which keeps their rate limits too."""

    def shared_limiter(self, key: str, rate: float) -> Limiter: ...


class DestinationLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.blocked_until = 0.0
        self.budget = Budget(rate)

    async def acquire(self) -> Written:
        while True:
            now = self.clock()
            # A 429 may have come while this waited its turn: then it waits for that too.
            wait = max(self.blocked_until - now, self.budget.wait(now))
            if wait <= 0:
                number = self.budget.take(now)
                return lambda: self.budget.written(number, self.clock())
            await asyncio.sleep(wait)

    def throttled(self, retry_after: float | None) -> None:
        """A 429: nothing goes out before its Retry-After."""
        if retry_after:
            self.blocked_until = max(self.blocked_until, self.clock() + retry_after)
