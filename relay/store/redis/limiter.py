"""One rate limit per destination for every instance on one Redis: the same two rules as
relay.destinations.limiter.Budget (a GCRA schedule of one request every 1/rate seconds, and
no request before the one `rate` places earlier is a second and a margin old), kept in Redis
and applied by one Lua script, on Redis's clock, so that N instances together send at most
`rate` requests in any second. A 429's Retry-After pauses every instance alike."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from relay.destinations.limiter import WINDOW, WINDOW_MARGIN
from relay.store.redis.client import Redis, RedisError, describe

log = logging.getLogger("relay.delivery")

# Keys, under the store's prefix P: P rate:<dest>:tat (the schedule's next slot),
# P rate:<dest>:sent (the times of the last `rate` requests, a sorted set),
# P rate:<dest>:n (a counter naming them), P rate:<dest>:blocked (no request before).
# ARGV: key base, rate, window with its margin. Returns "0" when a request may go now (and
# records it), else the seconds to wait (as text: Lua numbers come back as integers).
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
if wait > 0 then return string.format('%.6f', wait) end
local idle_ms = math.ceil((window + interval) * 1000) + 60000
redis.call('SET', base .. ':tat', string.format('%.6f', math.max(tat, now) + interval),
           'PX', idle_ms)
local n = redis.call('INCR', base .. ':n')
redis.call('PEXPIRE', base .. ':n', idle_ms)
redis.call('ZADD', base .. ':sent', string.format('%.6f', now), n)
redis.call('ZREMRANGEBYRANK', base .. ':sent', 0, -(keep + 1))
redis.call('PEXPIRE', base .. ':sent', idle_ms)
return '0'
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
        self._pause: Any = redis.register_script(PAUSE)
        self._failing = False
        # A 429 seen here holds this instance at once, before Redis has it for the others.
        self.blocked_until = 0.0  # monotonic

    async def acquire(self) -> None:
        while True:
            local = self.blocked_until - time.monotonic()
            if local > 0:
                await asyncio.sleep(local)
                continue
            try:
                wait = float(
                    await self._take(
                        args=[self.base, repr(self.rate), repr(WINDOW + WINDOW_MARGIN)],
                        client=self.redis,
                    )
                )
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
                return
            await asyncio.sleep(wait)

    def throttled(self, retry_after: float | None) -> None:
        """A 429: no instance sends before its Retry-After."""
        if retry_after and math.isfinite(retry_after):
            self.blocked_until = max(self.blocked_until, time.monotonic() + retry_after)
            task = asyncio.get_running_loop().create_task(self._pause_all(retry_after))
            _PAUSING.add(task)
            task.add_done_callback(_PAUSING.discard)

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


_PAUSING: set[asyncio.Task[None]] = set()  # pauses being written (kept from the collector)
