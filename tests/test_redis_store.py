"""What the Redis store does beyond the store contract (tests/contract/test_store.py):
several instances on one Redis, partitions that move between them, leases of an instance
that died taken back, Redis's persistence settings, and Redis going away and coming back.
Against a real Redis; skipped, with the reason, where none answers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StoreCannotOpen, StoreUnavailable
from relay.store.base import DeadLetterFilter, NewDelivery, Settlement
from relay.store.redis.store import RedisStore, partition_of, persistence_problem
from tests.contract.test_store import DEST, NOW, event
from tests.redis_server import URL, PrivateRedis, delete_prefix, need_redis, new_prefix

Open = Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def open_store() -> AsyncIterator[Open]:
    """Opens stores on one key prefix (instances of one deployment), closed afterwards."""
    need_redis()
    prefix = new_prefix()
    opened: list[RedisStore] = []

    async def make(**options: Any) -> RedisStore:
        options.setdefault("url", URL)
        store = RedisStore(options.pop("url"), key_prefix=prefix, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()
    delete_prefix(prefix)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


def people_in(partitions: frozenset[int], count: int, of: int) -> list[str]:
    """The first `count` person names whose deliveries go through `partitions`."""
    found = []
    i = 0
    while len(found) < count:
        if partition_of(f"u:p{i}", of) in partitions:
            found.append(f"p{i}")
        i += 1
    return found


def owned(store: RedisStore) -> frozenset[int]:
    assert store._ownership is not None
    return store._ownership.owned


async def test_instances_share_the_partitions_and_take_over_those_of_one_that_leaves(
    open_store: Open,
) -> None:
    a = await open_store(partitions=8, ownership_ttl=1.5)
    assert owned(a) == frozenset(range(8))  # alone: every partition
    b = await open_store(partitions=8, ownership_ttl=1.5)
    await wait_for(lambda: len(owned(a)) == 4 and len(owned(b)) == 4, 5, "4 partitions each")
    assert owned(a) | owned(b) == frozenset(range(8))
    c = await open_store(partitions=8, ownership_ttl=1.5)
    await wait_for(
        lambda: sorted(len(owned(s)) for s in (a, b, c)) == [2, 3, 3], 5, "3, 3 and 2 partitions"
    )
    assert not (owned(a) & owned(b) or owned(a) & owned(c) or owned(b) & owned(c))
    await c.close()  # leaves: its partitions are free at once
    await wait_for(lambda: len(owned(a)) == 4 and len(owned(b)) == 4, 5, "4 each again")
    assert owned(a) | owned(b) == frozenset(range(8))


async def test_each_instance_leases_only_from_its_own_partitions(open_store: Open) -> None:
    a = await open_store(partitions=4, ownership_ttl=1.5)
    b = await open_store(partitions=4, ownership_ttl=1.5)
    await wait_for(lambda: len(owned(a)) == 2 and len(owned(b)) == 2, 5, "2 partitions each")
    mine = people_in(owned(a), 3, 4)
    theirs = people_in(owned(b), 3, 4)
    await a.enqueue([event(p, f"E-{p}") for p in mine + theirs])
    assert sorted(d.message["event"] for d in await a.lease(DEST, 100, NOW)) == sorted(
        f"E-{p}" for p in mine
    )
    assert sorted(d.message["event"] for d in await b.lease(DEST, 100, NOW)) == sorted(
        f"E-{p}" for p in theirs
    )


async def test_a_partition_with_deliveries_in_flight_moves_only_once_they_are_settled(
    open_store: Open,
) -> None:
    a = await open_store(partitions=2, ownership_ttl=1.5)
    [person] = people_in(frozenset({1}), 1, 2)
    await a.enqueue([event(person, "A1"), event(person, "A2")])
    [first] = await a.lease(DEST, 1, NOW)
    b = await open_store(partitions=2, ownership_ttl=1.5)
    # a gives up its highest partition, 1, but keeps it (unleased) while A1 is in flight.
    await wait_for(lambda: owned(a) == {0}, 5, "a to stop leasing from partition 1")
    await asyncio.sleep(1.2)  # renewals go on meanwhile
    assert owned(a) == {0} and owned(b) == frozenset()
    assert await b.lease(DEST, 100, NOW) == []
    await a.settle(Settlement(done=[first.id]), NOW)
    await wait_for(lambda: owned(b) == {1}, 5, "b to take the partition a gave up")
    assert [d.message["event"] for d in await b.lease(DEST, 100, NOW)] == ["A2"]


async def test_what_a_dead_instance_leased_is_delivered_by_another_in_order(
    open_store: Open,
) -> None:
    a = await open_store(partitions=2, ownership_ttl=1.0, reclaim_idle=1.0)
    await a.enqueue([event("a", "A1"), event("a", "A2"), event("b", "B1")])
    assert sorted(d.message["event"] for d in await a.lease(DEST, 1, NOW)) == ["A1"]
    # a dies: nothing renews its partitions or its leases any more.
    for task in a._tasks:
        task.cancel()
    assert a._ownership is not None and a._ownership._task is not None
    a._ownership._task.cancel()
    b = await open_store(partitions=2, ownership_ttl=1.0, reclaim_idle=1.0)
    await wait_for(lambda: len(owned(b)) == 2, 5, "b to own both partitions")
    leased: list[str] = []
    deadline = time.monotonic() + 5
    while "A1" not in leased and time.monotonic() < deadline:
        got = await b.lease(DEST, 100, NOW)
        leased += [d.message["event"] for d in got]
        await b.settle(Settlement(done=[d.id for d in got]), NOW)
        await asyncio.sleep(0.2)
    assert sorted(leased) == ["A1", "A2", "B1"]
    assert leased.index("A1") < leased.index("A2")  # A2 waited behind A1
    assert await b.counts() == {}


async def test_a_live_instance_keeps_what_it_leased(open_store: Open) -> None:
    a = await open_store(partitions=1, ownership_ttl=1.0, reclaim_idle=1.0)
    await a.enqueue([event("a", "A1")])
    [leased] = await a.lease(DEST, 1, NOW)
    await asyncio.sleep(2.5)  # longer than reclaim_idle: a keeps its leases fresh
    assert await a.lease(DEST, 100, NOW) == []
    assert await a.counts() == {DEST: {"leased": 1}}
    await a.settle(Settlement(done=[leased.id]), NOW)


async def test_persistence_settings_that_can_lose_events_are_named(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", "--appendonly", "no")
    server.start()
    try:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(server.url)
        problem = await persistence_problem(client)
        assert problem is not None and "appendonly is no" in problem
        await client.config_set("appendonly", "yes")
        await client.config_set("appendfsync", "everysec")
        problem = await persistence_problem(client)
        assert problem is not None and "appendfsync everysec" in problem
        await client.config_set("appendfsync", "always")
        assert await persistence_problem(client) is None
        await client.config_set("maxmemory", "100mb")
        await client.config_set("maxmemory-policy", "allkeys-lru")
        problem = await persistence_problem(client)
        assert problem is not None and "maxmemory-policy allkeys-lru" in problem
        await client.config_set("maxmemory-policy", "noeviction")
        assert await persistence_problem(client) is None
        await client.config_set("appendonly", "no")
        await client.aclose()
        with pytest.raises(StoreCannotOpen) as refused:
            await RedisStore(server.url, require_durable=True).open()
        assert "appendonly yes and appendfsync always" in refused.value.message
        assert "require_durable" in refused.value.message
    finally:
        server.stop()


async def test_the_warning_does_not_stop_a_store_on_a_redis_that_keeps_nothing(
    open_store: Open, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "relay.store")
    store = await open_store()
    assert await store.write_problem() is None
    problem = await persistence_problem(store._client())
    if problem is not None:
        assert problem in caplog.text


async def test_without_redis_intake_is_refused_and_everything_acknowledged_comes_back(
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    store = RedisStore(server.url, timeout=1.0)
    try:
        await store.open()
        assert await store.enqueue([event("a", "A1", dedup_id="m-1")]) == ["queued"]
        server.stop()
        with pytest.raises(StoreUnavailable) as refused:
            await store.enqueue([event("a", "A2")])
        assert f"Redis at 127.0.0.1:{server.port}/0 failed" in refused.value.message
        assert refused.value.retry_after
        problem = await store.write_problem()
        assert problem is not None and f"127.0.0.1:{server.port}/0" in problem
        with pytest.raises(StoreUnavailable):
            await store.lease(DEST, 10, NOW)
        server.start()  # the same append-only file: what was acknowledged is there
        await wait_for_async(store.write_problem, 10)
        assert await store.enqueue([event("a", "A1", dedup_id="m-1")]) == ["duplicate"]
        assert await store.enqueue([event("a", "A2")]) == ["queued"]
        assert [d.message["event"] for d in await store.lease(DEST, 10, NOW)] == ["A1", "A2"]
    finally:
        await store.close()
        server.stop()


async def wait_for_async(problem: Callable[[], Awaitable[str | None]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (found := await problem()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still not writable after {timeout} s: {found}")
        await asyncio.sleep(0.1)


async def test_the_partition_count_changes_only_while_the_queue_is_empty(
    open_store: Open,
) -> None:
    first = await open_store(partitions=4)
    await first.enqueue([event("a", "A1")])
    with pytest.raises(StoreCannotOpen) as refused:
        await open_store(partitions=8)
    assert "is split in 4 partitions and holds 1 deliveries and 0 dead letters" in (
        refused.value.message
    )
    assert "storage.redis.partitions is 8: set it back to 4" in refused.value.message
    [leased] = await first.lease(DEST, 10, NOW)
    await first.settle(Settlement(done=[leased.id]), NOW)
    await first.close()
    second = await open_store(partitions=8)  # empty: it may change
    await second.enqueue([event("a", "A2")])
    assert [d.message["event"] for d in await second.lease(DEST, 10, NOW)] == ["A2"]


async def test_a_message_is_kept_beside_its_deliveries_once_for_those_that_share_it(
    open_store: Open,
) -> None:
    store = await open_store()
    other, edited = "segment.main", "customerio.edited"
    routed = event("a", "A1", to=(DEST, other))
    routed = routed._replace(
        deliveries=(*routed.deliveries, NewDelivery(edited, b'{"event":"Renamed"}'))
    )
    await store.enqueue([routed, event("c", "C1")])
    redis = store._redis
    p = store.prefix

    async def messages() -> dict[bytes, bytes]:
        keys = sorted([k async for k in redis.scan_iter(match=f"{p}m:*")])
        return {k[len(p) :]: await redis.get(k) for k in keys}

    rows = [await redis.hgetall(f"{p}d:{i}") for i in (1, 2, 3, 4)]
    assert [(r.get(b"m"), b"msg" in r) for r in rows] == [
        (b"1", False),
        (b"1", False),
        (b"3", False),
        (b"4", False),
    ]
    # A delivery's hash holds small fields only, which Redis keeps compact.
    assert {await redis.object("encoding", f"{p}d:{i}") for i in (1, 2, 3, 4)} == {b"listpack"}
    assert await messages() == {
        b"m:1": routed.message_json,
        b"m:1:n": b"1",  # one more delivery than this one
        b"m:3": b'{"event":"Renamed"}',
        b"m:4": event("c", "C1").message_json,
    }
    (first, _) = await store.lease(DEST, 10, NOW)
    await store.settle(Settlement(done=[first.id]), NOW)
    assert await redis.get(f"{p}m:1:n") == b"0"
    (second,) = await store.lease(other, 10, NOW)
    assert second.message == first.message == {"type": "track", "userId": "a", "event": "A1"}
    (third,) = await store.lease(edited, 10, NOW)
    await store.settle(Settlement(done=[second.id, third.id]), NOW)
    assert await messages() == {b"m:4": event("c", "C1").message_json}
    # Given up on at both and discarded: the last one discarded takes the message along.
    await store.enqueue([event("b", "B1", to=(DEST, other))])
    dead = [d.id for dest in (DEST, other) for d in await store.lease(dest, 10, NOW)]
    await store.settle(Settlement(dead=[(i, "400") for i in dead]), NOW)
    assert [x.message["event"] for x in await store.dead_letters()] == ["B1", "B1"]
    assert await store.discard(DeadLetterFilter(ids=(dead[1],))) == 1
    assert await redis.exists(f"{p}m:{dead[0]}") == 1
    assert await store.discard(DeadLetterFilter(ids=(dead[0],))) == 1
    assert await messages() == {b"m:4": event("c", "C1").message_json}  # C1 is still leased


async def test_deliveries_stored_with_their_message_inside_are_read_as_they_are(
    open_store: Open,
) -> None:
    # As versions before messages moved beside their deliveries stored them.
    store = await open_store()
    await store.enqueue([event("a", "A1"), event("b", "B1")])
    redis, p = store._redis, store.prefix
    for i in (1, 2):
        message = await redis.get(f"{p}m:{i}")
        await redis.hset(f"{p}d:{i}", "msg", message)
        await redis.hdel(f"{p}d:{i}", "m")
        await redis.delete(f"{p}m:{i}")
    leased = await store.lease(DEST, 10, NOW)
    assert [d.message["event"] for d in leased] == ["A1", "B1"]
    await store.settle(Settlement(done=[leased[0].id], dead=[(leased[1].id, "400")]), NOW)
    assert [x.message["event"] for x in await store.dead_letters()] == ["B1"]
    assert await store.discard(DeadLetterFilter()) == 1
    assert await redis.exists(f"{p}d:1", f"{p}d:2") == 0
