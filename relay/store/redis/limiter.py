"""One rate limit per destination for every instance on one Redis: the same two rules as
relay.destinations.limiter.Budget (a GCRA schedule of one request every 1/rate seconds, and
no request before the one `rate` places earlier is a second and a margin old), kept in Redis
and applied by one Lua script, on Redis's clock, so that N instances together send at most
`rate` requests in any second. A 429's Retry-After pauses every instance alike.

As alone, a request counts from when it is written to the network: the instance tells Redis
how long after being let go it was written, and its time in the window moves that much
later."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine
from typing import Any

from relay.destinations.limiter import WINDOW, WINDOW_MARGIN, Written
from relay.store.redis.client import Redis, RedisError, describe

log = logging.getLogger("relay.delivery")

# Keys, under the store's prefix P: P rate:<dest>:tat (the schedule's next slot),
# P rate:<dest>:sent (the times of the last `rate` requests, a sorted set),
# P rate:<dest>:n (a counter naming them), P rate:<dest>:blocked (no request before).
# ARGV: key base, rate, window with its margin. Returns ["0", n] when a request may go now
# (and records it as n), else [the seconds to wait, 0] (as text: Lua numbers come back as
# integers). The window is the `rate` latest times in `sent`, whichever requests they are.
TAKE = r"""
local base, rate, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / rate
local keep = math.max(1, math.floor(rate))
local wait = tonumber(redis.call('GET', base .. ':blocked') or '0') - now
local tat = tonumber(redis.call('GET', base .. ':tat') or '0')
wait = math.max(wait, tat - interval / 2 - now)
if redis.call('ZCARD', base .. ':sent') >= keep then
  local oldest = redis.call('ZRANGE', base .. ':sent', 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + window - now)
end
if wait > 0 then return {string.format('%.6f', wait), 0} end
local idle_ms = math.ceil((window + interval) * 1000) + 60000
redis.call('SET', base .. ':tat', string.format('%.6f', math.max(tat, now) + interval),
           'PX', idle_ms)
local n = redis.call('INCR', base .. ':n')
redis.call('PEXPIRE', base .. ':n', idle_ms)
redis.call('ZADD', base .. ':sent', string.format('%.6f', now), n)
redis.call('ZREMRANGEBYRANK', base .. ':sent', 0, -(keep + 1))
redis.call('PEXPIRE', base .. ':sent', idle_ms)
return {'0', n}
"""

# ARGV: key base, rate, n, seconds from the request's TAKE to its writing. Its time in the
# window moves that much later; if it fell out of the `rate` latest already, it comes back
# with Redis's time now, which is later still.
WRITTEN = r"""
local sent = ARGV[1] .. ':sent'
if redis.call('EXISTS', sent) == 0 then return 0 end
local keep = math.max(1, math.floor(tonumber(ARGV[2])))
local at = redis.call('ZSCORE', sent, ARGV[3])
if at then
  at = tonumber(at) + tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  at = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
redis.call('ZADD', sent, 'GT', string.format('%.6f', at), ARGV[3])
redis.call('ZREMRANGEBYRANK', sent, 0, -(keep + 1))
return 0
"""

# ARGV: key base, seconds. Nothing goes out for that long, from any instance.
PAUSE = r"""
local t = redis.call('TIME')
local until_at = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
local current = tonumber(redis.call('GET', ARGV[1] .. ':blocked') or '0')
if until_at > current then
  redis.call('SET', ARGV[1] .. ':blocked', string.format('%.6f', until_at),
             'PX', math.ceil(tonumber(ARGV[2]) * 1000) + 1000)
end
return 0
"""

# While Redis does not answer, nothing is sent (the shared limit cannot be kept); asked
# again this often.
UNREACHABLE_WAIT = 1.0


class SharedLimiter:
    """A destination's limiter shared through Redis (what DestinationLimiter is alone)."""

    def __init__(self, redis: Redis, prefix: str, key: str, rate: float) -> None:
        self.rate = rate
        self.redis = redis
        self.base = f"{prefix}rate:{key}"
        self._take: Any = redis.register_script(TAKE)
        self._written: Any = redis.register_script(WRITTEN)
        self._pause: Any = redis.register_script(PAUSE)
        self._failing = False
        self._unshared = False  # the last send time could not be shared
        # A 429 seen here holds this instance at once, before Redis has it for the others.
        self.blocked_until = 0.0  # monotonic

    async def acquire(self) -> Written:
        while True:
            local = self.blocked_until - time.monotonic()
            if local > 0:
                await asyncio.sleep(local)
                continue
            # Redis's time of the request is within the call: from its start, the time to
            # its writing is never less than the real one.
            asked = time.monotonic()
            try:
                answer, number = await self._take(
                    args=[self.base, repr(self.rate), repr(WINDOW + WINDOW_MARGIN)],
                    client=self.redis,
                )
                wait = float(answer)
            except RedisError as exc:
                if not self._failing:
                    log.error(
                        "the shared rate limit in Redis cannot be read (%s): nothing is sent"
                        " until Redis answers again",
                        describe(exc),
                    )
                self._failing = True
                await asyncio.sleep(UNREACHABLE_WAIT)
                continue
            if self._failing:
                log.warning("the shared rate limit in Redis answers again")
                self._failing = False
            if wait <= 0:
                return lambda: self._went(number, time.monotonic() - asked)
            await asyncio.sleep(wait)

    def _went(self, number: int, after: float) -> None:
        """Request `number` was written `after` seconds after it was asked for."""
        _background(self._record_written(number, after))

    async def _record_written(self, number: int, after: float) -> None:
        try:
            await self._written(
                args=[self.base, repr(self.rate), str(number), f"{after:.6f}"], client=self.redis
            )
        except RedisError as exc:
            # It then counts from when it was let go, which the window's margin covers but
            # on a very busy instance. Said once until a send time is shared again.
            if not self._unshared:
                log.warning(
                    "a request's send time could not be shared in Redis (%s)", describe(exc)
                )
            self._unshared = True
        else:
            self._unshared = False

    def throttled(self, retry_after: float | None) -> None:
        """A 429: no instance sends before its Retry-After."""
        if retry_after and math.isfinite(retry_after):
            self.blocked_until = max(self.blocked_until, time.monotonic() + retry_after)
            _background(self._pause_all(retry_after))

    async def _pause_all(self, seconds: float) -> None:
        started = time.monotonic()
        try:
            await self._pause(args=[self.base, repr(seconds)], client=self.redis)
        except RedisError as exc:
            log.error(
                "a 429's pause could not be shared in Redis (%s; %.1f s ago)",
                describe(exc),
                time.monotonic() - started,
            )


_WRITING: set[asyncio.Task[None]] = set()  # writes to Redis under way (kept from the collector)


def _background(write: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(write)
    _WRITING.add(task)
    task.add_done_callback(_WRITING.discard)
