"""Which partitions this instance delivers: each partition is owned by one instance at a
time, through a key in Redis that expires unless its owner renews it.

Every `ttl / 3` each instance renews its own membership (a sorted set of live instances,
by when their membership expires) and its partitions, in one script: with N instances
alive, each owns at most ceil(partitions / N). An instance over its share lets go of the
partitions it has nothing in flight in (one with deliveries in flight is kept, and not
leased from, until they are settled), and one under its share takes partitions nobody
owns. An instance that stops renewing (it died, or cannot reach Redis) loses its
partitions when their keys expire, and stops leasing from them itself a little before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from relay.store.redis.client import Redis, RedisError, describe

log = logging.getLogger("relay.store")

# ARGV: prefix, this instance, ttl (ms), partitions, where to start looking for free ones,
# then the partitions with deliveries in flight. Returns {partitions to lease from,
# partitions kept only until what is in flight there is settled}.
ROUND = r"""
local P, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local parts, start = tonumber(ARGV[4]), tonumber(ARGV[5])
local busy = {}
for a = 6, #ARGV do busy[tonumber(ARGV[a])] = true end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', P .. 'members', now + ttl, me)
redis.call('ZREMRANGEBYSCORE', P .. 'members', '-inf', now)
local fair = math.ceil(parts / redis.call('ZCARD', P .. 'members'))
local owned = {}
for n = 0, parts - 1 do
  if redis.call('GET', P .. 'own:' .. n) == me then owned[#owned + 1] = n end
end
local keep, draining = {}, {}
local excess = #owned - fair
for k = #owned, 1, -1 do
  local n = owned[k]
  if excess > 0 then
    excess = excess - 1
    if busy[n] then
      draining[#draining + 1] = n
      redis.call('PEXPIRE', P .. 'own:' .. n, ttl)
    else
      redis.call('DEL', P .. 'own:' .. n)
    end
  else
    keep[#keep + 1] = n
    redis.call('PEXPIRE', P .. 'own:' .. n, ttl)
  end
end
for k = 0, parts - 1 do
  if #keep + #draining >= fair then break end
  local n = (start + k) % parts
  if redis.call('SET', P .. 'own:' .. n, me, 'NX', 'PX', ttl) then keep[#keep + 1] = n end
end
return {keep, draining}
"""

# ARGV: prefix, this instance, partitions. Lets go of everything this instance owns.
LEAVE = r"""
local P, me = ARGV[1], ARGV[2]
for n = 0, tonumber(ARGV[3]) - 1 do
  if redis.call('GET', P .. 'own:' .. n) == me then redis.call('DEL', P .. 'own:' .. n) end
end
redis.call('ZREM', P .. 'members', me)
return 0
"""

# Leasing stops this long before an unrenewed ownership expires in Redis: a margin for the
# time a renewal takes and for clocks that run at slightly different speeds.
MARGIN = 0.2


class Ownership:
    def __init__(self, prefix: str, me: str, partitions: int, ttl: float) -> None:
        self.prefix = prefix
        self.me = me
        self.partitions = partitions
        self.ttl = ttl
        self.busy: Callable[[], set[int]] = set
        self._owned: frozenset[int] = frozenset()
        self._valid_until = 0.0  # monotonic
        self._round: Any = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        # Where this instance starts looking for free partitions: instances that start
        # together spread over the partitions instead of racing for the same ones.
        self._start = zlib.crc32(me.encode()) % partitions

    @property
    def owned(self) -> frozenset[int]:
        """The partitions to lease from now (none once ownership could not be renewed)."""
        if time.monotonic() >= self._valid_until:
            return frozenset()
        return self._owned

    async def start(self, redis: Redis) -> None:
        self._round = redis.register_script(ROUND)
        await self.renew(redis)
        self._task = asyncio.create_task(self._renewing(redis), name="relay-redis-ownership")

    async def renew(self, redis: Redis) -> None:
        started = time.monotonic()
        keep, draining = await self._round(
            args=[
                self.prefix,
                self.me,
                int(self.ttl * 1000),
                self.partitions,
                self._start,
                *sorted(self.busy()),
            ],
            client=redis,
        )
        owned = frozenset(int(n) for n in keep)
        if owned != self._owned:
            log.info(
                "this instance delivers %d of %d partitions%s",
                len(owned),
                self.partitions,
                f" ({len(draining)} more once their deliveries in flight are settled)"
                if draining
                else "",
            )
        self._owned = owned
        self._valid_until = started + self.ttl * (1 - MARGIN)

    async def _renewing(self, redis: Redis) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.renew(redis)
            except RedisError as exc:
                if not self._failing:
                    log.error(
                        "cannot renew this instance's partitions in Redis (%s); it stops"
                        " delivering them in %.0f s unless Redis answers again",
                        describe(exc),
                        max(0.0, self._valid_until - time.monotonic()),
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("partitions are renewed in Redis again")
                self._failing = False

    async def stop(self, redis: Redis) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._owned = frozenset()
        await redis.eval(LEAVE, 0, self.prefix, self.me, self.partitions)
