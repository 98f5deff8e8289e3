"""The Redis store itself (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from relay.codec import decode
from relay.errors import StoreCannotOpen, StoreUnavailable
from relay.store.base import (
    EVERY_DEAD_LETTER,
    Attempt,
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EnqueueOutcome,
    EventTuple,
    NewEvent,
    Settlement,
    check_queue_room,
    deliveries_to_add,
)
from relay.store.redis import scripts
from relay.store.redis.client import Redis, RedisError, connect, describe, where
from relay.store.redis.limiter import SharedLimiter
from relay.store.redis.ownership import Ownership

log = logging.getLogger("relay.store")

# Dead letters and rejected messages are read this many at a time.
_PAGE = 500


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def partition_of(ordering_key: str, partitions: int) -> int:
    """The partition a person's deliveries go through (the same in every instance)."""
    return zlib.crc32(ordering_key.encode("utf-8", "surrogatepass")) % partitions


def default_consumer() -> str:
    """A name for this instance in the streams' consumer group, its own in every process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisStore:
    """Every instance configured with the same Redis and key prefix shares one queue, one
    set of dedup ids and one set of dead letters; what `enqueue` returned for is in Redis
    (on disk as far as Redis's own persistence settings make it: see the README)."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "relay:",
        partitions: int = 16,
        max_pending: int = 5_000_000,
        reclaim_idle: float = 30.0,
        ownership_ttl: float = 10.0,
        timeout: float = 5.0,
        require_durable: bool = False,
        consumer: str | None = None,
        share_partitions: bool = True,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.partitions = partitions
        self.max_pending = max_pending
        self.reclaim_idle = reclaim_idle
        self.timeout = timeout
        self.require_durable = require_durable
        self.consumer = consumer or default_consumer()
        self.where = where(url)
        self._redis: Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._ownership = (
            Ownership(key_prefix, self.consumer, partitions, ownership_ttl)
            if share_partitions
            else None
        )
        if self._ownership is not None:
            self._ownership.busy = self._busy_partitions
        self._reclaimed: dict[tuple[str, int], float] = {}  # (destination, partition) → when
        # What this instance has leased and not settled, by delivery id: (stream, entry,
        # partition). Kept fresh in the streams' groups so that no other instance takes it
        # back, and its partitions kept until it is settled.
        self._in_flight: dict[int, tuple[str, str, int]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        redis = connect(self.url, self.timeout)
        try:
            await redis.ping()
        except RedisError as exc:
            await redis.aclose()
            raise StoreCannotOpen(f"cannot reach Redis at {self.where}: {describe(exc)}") from None
        self._redis = redis
        for name in ("ENQUEUE", "LEASE", "SETTLE", "REPLAY", "DISCARD", "RECLAIM"):
            self._scripts[name] = redis.register_script(getattr(scripts, name))
        try:
            await self._check_persistence()
            await self._check_partitions()
            await self._take_back_own()
            if self._ownership is not None:
                await self._ownership.start(redis)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, RedisError | StoreUnavailable) and not isinstance(
                exc, StoreCannotOpen
            ):
                raise StoreCannotOpen(
                    f"Redis at {self.where} failed while opening the store: {describe(exc)}"
                ) from None
            raise
        self._tasks.append(asyncio.create_task(self._keep_fresh(), name="relay-redis-leases"))

    async def _check_persistence(self) -> None:
        problem = await persistence_problem(self._client())
        if problem is None:
            return
        if self.require_durable:
            raise StoreCannotOpen(
                f"Redis at {self.where} {problem} (storage.redis.require_durable is set)"
            )
        log.warning("Redis at %s %s", self.where, problem)

    async def _check_partitions(self) -> None:
        """Every delivery stays in the partition it was queued in: the count may change only
        while nothing is queued (nor dead, since a replay goes back to its partition)."""
        key = f"{self.prefix}partitions"
        async with self._calling() as redis:
            await redis.set(key, self.partitions, nx=True)
            stored = int(await redis.get(key) or self.partitions)
            if stored == self.partitions:
                return
            pending = int(await redis.get(f"{self.prefix}pending") or 0)
            dead = int(await redis.zcard(f"{self.prefix}dead"))
            if pending == 0 and dead == 0:
                await redis.set(key, self.partitions)
                log.info(
                    "the queue is now split in %d partitions (was %d)", self.partitions, stored
                )
                return
        raise StoreCannotOpen(
            f"the queue under the key prefix {self.prefix} in Redis at {self.where} is split in"
            f" {stored} partitions and holds {pending} deliveries and {dead} dead letters, but"
            f" storage.redis.partitions is {self.partitions}: set it back to {stored}, or"
            " change it once the queue is empty (dead letters replayed or purged)"
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        redis, self._redis = self._redis, None
        if redis is None:
            return
        if self._ownership is not None:
            with contextlib.suppress(RedisError, StoreUnavailable):
                await self._ownership.stop(redis)
        await redis.aclose()

    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreUnavailable("the event store is not open; retry in a few seconds")
        return self._redis

    @contextlib.asynccontextmanager
    async def _calling(self) -> AsyncIterator[Redis]:
        """Redis, with its failures turned into StoreUnavailable (a 503 for intake)."""
        redis = self._client()
        try:
            yield redis
        except RedisError as exc:
            raise StoreUnavailable(
                f"Redis at {self.where} failed: {describe(exc)}; nothing acknowledged was lost,"
                " retry in a few seconds"
            ) from None

    async def _run(self, name: str, args: Sequence[Any]) -> Any:
        async with self._calling() as redis:
            return await self._scripts[name](args=[self.prefix, *args], client=redis)

    def shared_limiter(self, key: str, rate: float) -> SharedLimiter:
        """Destination `key`'s rate limit, shared by every instance on this Redis."""
        return SharedLimiter(self._client(), self.prefix, key, rate)

    # ------------------------------------------------------------------ operations

    async def enqueue(self, events: Sequence[EventTuple]) -> list[EnqueueOutcome]:
        new = deliveries_to_add(events)
        args: list[Any] = [self.max_pending, new, len(events)]
        for e in map(NewEvent._make, events):
            args += [
                e.kind,
                e.source,
                "" if e.dedup_id is None else e.dedup_id,
                int(e.dedup_until * 1000),
                e.rejected_reason or "",
                repr(e.received_at),
                e.ordering_key,
                partition_of(e.ordering_key, self.partitions),
                e.message_json,
                len(e.deliveries),
            ]
            for destination, routed in e.deliveries:
                args += [destination, b"" if routed is None else b"=" + routed]
        result = await self._run("ENQUEUE", args)
        if result and result[0] == b"full":
            check_queue_room(int(result[1]), new, self.max_pending, "storage.redis.max_pending")
        return [outcome.decode() for outcome in result]

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        parts = self._ownership.owned if self._ownership is not None else range(self.partitions)
        if not parts or limit <= 0:
            return []
        await self._reclaim(destination, parts)
        rows = await self._run(
            "LEASE", [destination, self.consumer, limit, repr(now), *sorted(parts)]
        )
        out = []
        for did, okey, attempts, created_at, source, kind, message, part, entry in rows:
            stream = f"{self.prefix}q:{destination}:{part.decode()}:s"
            self._in_flight[did] = (stream, entry.decode(), int(part))
            out.append(
                Delivery(
                    did,
                    destination,
                    okey.decode(),
                    int(attempts),
                    float(created_at),
                    source.decode(),
                    kind.decode(),
                    message,
                )
            )
        return out

    async def _take_back_own(self) -> None:
        """What this consumer name had leased when its last process stopped goes back to
        the queue, as SQLite's store does at start (it matters where the name is kept
        across restarts; a new name's leases are taken back after `reclaim_idle`)."""
        async with self._calling() as redis:
            dests = await self._destinations(redis)
        for dest in dests:
            for part in range(self.partitions):
                await self._run("RECLAIM", [dest, part, self.consumer, 0, "own"])

    async def _reclaim(self, destination: str, parts: Iterable[int]) -> None:
        """Take back, in the partitions this instance delivers, what was leased by an
        instance that has stopped: entries of the stream's group that no consumer touched
        for `reclaim_idle` (a live instance keeps what it has in flight fresh)."""
        now = time.monotonic()
        for part in parts:
            last = self._reclaimed.get((destination, part))
            if last is not None and now - last < self.reclaim_idle / 2:
                continue
            # Before the call: the destination's other lanes do not run it meanwhile.
            self._reclaimed[(destination, part)] = now
            back = await self._run(
                "RECLAIM",
                [destination, part, self.consumer, int(self.reclaim_idle * 1000), "idle"],
            )
            if back:
                log.warning(
                    "%d deliveries to %s leased by an instance that stopped answering are"
                    " queued again (partition %d)",
                    back,
                    destination,
                    part,
                )

    def _busy_partitions(self) -> set[int]:
        return {part for _stream, _entry, part in self._in_flight.values()}

    async def _keep_fresh(self) -> None:
        """Claim what is in flight again every little while, which tells other instances
        this one is alive and still working on it (XAUTOCLAIM takes only idle entries)."""
        while True:
            await asyncio.sleep(max(0.5, self.reclaim_idle / 4))
            by_stream: dict[str, list[Any]] = {}
            for stream, entry, _part in list(self._in_flight.values()):
                by_stream.setdefault(stream, []).append(entry)
            if not by_stream:
                continue
            try:
                async with self._calling() as redis:
                    pipe = redis.pipeline(transaction=False)
                    for stream, entries in by_stream.items():
                        pipe.xclaim(stream, scripts.GROUP, self.consumer, 0, entries, justid=True)
                    await pipe.execute()
            except StoreUnavailable as exc:
                log.debug("keeping leases fresh failed: %s", exc)

    async def settle(self, settlement: Settlement, now: float) -> None:
        if not settlement:
            return
        args: list[Any] = [repr(now)]
        for did, reason in settlement.dead:
            args += ["x", did, reason]
        for retry in settlement.retries:
            args += ["r", retry.id, repr(retry.next_at), retry.error]
        for did in settlement.done:
            args += ["d", did]
        for did in settlement.release:
            args += ["l", did]
        await self._run("SETTLE", args)
        for ids in (settlement.done, settlement.release, [did for did, _ in settlement.dead]):
            for did in ids:
                self._in_flight.pop(did, None)
        for retry in settlement.retries:
            self._in_flight.pop(retry.id, None)

    # ------------------------------------------------------------------ dead letters

    async def _dead(self, ids: Sequence[int]) -> list[DeadLetter]:
        async with self._calling() as redis:
            pipe = redis.pipeline(transaction=False)
            for did in ids:
                pipe.hgetall(f"{self.prefix}d:{did}")
                pipe.lrange(f"{self.prefix}d:{did}:h", 0, -1)
            found = await pipe.execute()
            # The message is beside the delivery (see scripts.py), but for those stored by
            # earlier versions.
            apart = [row for row in found[::2] if b"msg" not in row and b"m" in row]
            if apart:
                pipe = redis.pipeline(transaction=False)
                for row in apart:
                    pipe.get(f"{self.prefix}m:{row[b'm'].decode()}")
                for row, message in zip(apart, await pipe.execute(), strict=True):
                    row[b"msg"] = message
        out = []
        for did, row, history in zip(ids, found[::2], found[1::2], strict=True):
            if row.get(b"state") != b"dead":
                continue
            attempts: list[Attempt] = []
            for item in history:
                at, _, answer = item.partition(b"\0")
                attempts.append((float(at), answer.decode()))
            out.append(
                DeadLetter(
                    did,
                    row[b"dest"].decode(),
                    row[b"source"].decode(),
                    row[b"kind"].decode(),
                    row[b"err"].decode(),
                    int(row[b"attempts"]),
                    float(row[b"created_at"]),
                    decode(row[b"msg"]),
                    float(row[b"next_at"]),
                    tuple(attempts),
                )
            )
        return out

    async def _rejected(self, ids: Sequence[int]) -> list[DeadLetter]:
        async with self._calling() as redis:
            pipe = redis.pipeline(transaction=False)
            for rid in ids:
                pipe.hgetall(f"{self.prefix}rj:{rid}")
            found = await pipe.execute()
        return [
            DeadLetter(
                rid,
                None,
                row[b"source"].decode(),
                row[b"kind"].decode(),
                row[b"reason"].decode(),
                0,
                float(row[b"at"]),
                decode(row[b"msg"]),
                float(row[b"at"]),
            )
            for rid, row in zip(ids, found, strict=True)
            if row
        ]

    async def _ids(self, key: str, named: tuple[int, ...] | None) -> AsyncIterator[list[int]]:
        """The ids in a sorted set (or those of `named` in it), oldest first, a page at a time."""
        if named is not None:
            wanted = sorted(set(named))
            for start in range(0, len(wanted), _PAGE):
                yield wanted[start : start + _PAGE]
            return
        start = 0
        while True:
            async with self._calling() as redis:
                page = await redis.zrange(key, start, start + _PAGE - 1)
            if not page:
                return
            yield [int(i) for i in page]
            start += _PAGE

    async def dead_letters(self, which: DeadLetterFilter = EVERY_DEAD_LETTER) -> list[DeadLetter]:
        limit = which.limit
        out: list[DeadLetter] = []
        if not which.by_id or which.ids:
            async for ids in self._ids(f"{self.prefix}dead", which.ids):
                out += [d for d in await self._dead(ids) if which.matches(d)]
                if limit is not None and len(out) >= limit:
                    return out[:limit]
        if which.takes_rejected():
            async for ids in self._ids(f"{self.prefix}rej", which.rejected_ids):
                out += [d for d in await self._rejected(ids) if which.matches(d)]
                if limit is not None and len(out) >= limit:
                    return out[:limit]
        return out

    async def replay(self, which: DeadLetterFilter, now: float) -> int:
        letters = await self.dead_letters(which)
        ids = [d.id for d in letters if d.destination is not None]
        if not ids:
            return 0
        return int(await self._run("REPLAY", [repr(now), *ids]))

    async def discard(self, which: DeadLetterFilter) -> int:
        letters = await self.dead_letters(which)
        dead = [d.id for d in letters if d.destination is not None]
        rejected = [d.id for d in letters if d.destination is None]
        if not letters:
            return 0
        return int(await self._run("DISCARD", [len(dead), *dead, *rejected]))

    # ------------------------------------------------------------------ the queue

    async def counts(self) -> dict[str, dict[str, int]]:
        async with self._calling() as redis:
            found = await redis.hgetall(f"{self.prefix}counts")
        out: dict[str, dict[str, int]] = {}
        for field, value in found.items():
            if int(value):
                dest, _, state = _text(field).rpartition("\n")
                out.setdefault(dest, {})[state] = int(value)
        return out

    async def _destinations(self, redis: Redis) -> list[str]:
        found = await redis.smembers(f"{self.prefix}dests")
        return sorted(_text(d) for d in found)

    async def oldest(self) -> dict[str, float]:
        async with self._calling() as redis:
            dests = await self._destinations(redis)
            pipe = redis.pipeline(transaction=False)
            for dest in dests:
                pipe.zrange(f"{self.prefix}age:{dest}", 0, 0, withscores=True)
            found = await pipe.execute()
        return {dest: first[0][1] for dest, first in zip(dests, found, strict=True) if first}

    async def purge(self, now: float) -> None:
        """Dedup ids expire by themselves in Redis; what is left to tidy is the consumer
        names of instances that are gone and left nothing behind."""
        async with self._calling() as redis:
            dests = await self._destinations(redis)
            for dest in dests:
                for part in range(self.partitions):
                    stream = f"{self.prefix}q:{dest}:{part}:s"
                    try:
                        consumers = await redis.xinfo_consumers(stream, scripts.GROUP)
                    except RedisError:
                        continue  # no such stream yet
                    for c in consumers:
                        name = c["name"]
                        name = name.decode() if isinstance(name, bytes) else name
                        if name != self.consumer and not c["pending"] and c["idle"] > 3_600_000:
                            await redis.xgroup_delconsumer(stream, scripts.GROUP, name)

    async def write_problem(self) -> str | None:
        if self._redis is None:
            return "the event store is not open"
        try:
            await self._redis.set(f"{self.prefix}probe", b"1", px=60_000)
        except RedisError as exc:
            return f"Redis at {self.where} does not take writes: {describe(exc)}"
        return None


async def persistence_problem(redis: Redis) -> str | None:
    """What in the server's settings can lose an acknowledged event, or None when every
    write is on disk before Redis answers (appendonly yes, appendfsync always) and nothing
    is evicted to make room (maxmemory-policy noeviction, or no maxmemory)."""
    try:
        found = await redis.config_get("append*")
        found.update(await redis.config_get("maxmemory*"))
    except RedisError as exc:
        return (
            f"does not say how it persists data (CONFIG GET: {describe(exc)}); make sure it"
            " runs with appendonly yes, appendfsync always and maxmemory-policy noeviction"
        )
    values = {_text(k or ""): _text(v or "") for k, v in found.items()}
    if values.get("maxmemory", "0") != "0" and values.get("maxmemory-policy") != "noeviction":
        return (
            f"evicts keys when full (maxmemory-policy {values.get('maxmemory-policy')}): queued"
            " events can be dropped; set maxmemory-policy noeviction"
        )
    if values.get("appendonly") != "yes":
        return (
            "keeps no append-only file (appendonly is no): events acknowledged since its last"
            " snapshot are lost if Redis stops; set appendonly yes and appendfsync always"
        )
    if values.get("appendfsync") != "always":
        return (
            f"writes its append-only file to disk with appendfsync {values.get('appendfsync')}:"
            " up to a second of acknowledged events can be lost if the machine stops; set"
            " appendfsync always for none"
        )
    return None
