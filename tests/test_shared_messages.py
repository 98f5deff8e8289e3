"""The messages of a request's deliveries are stored together, in blocks, in the SQLite store
(the deliveries point at them), an event routed as it came to two destinations or more once
in its block; every delivery reads its own message back, through dead letters and restarts,
and a block is deleted with the last delivery that needs it. Shared rows of one message, as
stores wrote before blocks, still serve every delivery they name."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.codec import decode, encode
from relay.store.base import (
    AlikeEvents,
    DeadLetterFilter,
    EventTuple,
    NewDelivery,
    NewEvent,
    Settlement,
)
from relay.store.sqlite import SqliteStore
from relay.store.sqlite import rows as rows_module
from relay.store.sqlite.dedup import dedup_keys
from relay.store.sqlite.packing import BLOCK, Packer
from tests.test_sqlite_store import opened

DESTINATIONS = ("customerio.a", "customerio.b", "segment.c")


def message(i: int) -> bytes:
    return encode({"type": "track", "userId": f"u{i}", "event": f"E{i}", "messageId": f"m{i}"})


def edited(i: int, destination: str) -> bytes:
    return encode({"type": "track", "userId": f"u{i}", "event": f"E{i} for {destination}"})


def routed(i: int, deliveries: tuple[NewDelivery, ...], at: float) -> NewEvent:
    return NewEvent("web", "segment", message(i), at, f"u:u{i}", deliveries, f"m{i}", at + 3600)


def rows(store: SqliteStore) -> tuple[list[tuple[int, bytes]], list[tuple[int, int]]]:
    """(id, message) of each delivery, and (id, deliveries) of each shared row."""
    with sqlite3.connect(store.path) as conn:
        queue = conn.execute("SELECT id, message FROM queue ORDER BY id").fetchall()
        shared = conn.execute("SELECT id, deliveries FROM shared ORDER BY id").fetchall()
    return queue, shared


async def leased(store: SqliteStore, destination: str) -> dict[int, object]:
    return {d.id: d.message for d in await store.lease(destination, 1000, 1e12)}


def blocks(store: SqliteStore) -> list[bytes]:
    with sqlite3.connect(store.path) as conn:
        return [row[0] for row in conn.execute("SELECT message FROM shared ORDER BY id")]


async def test_an_event_routed_as_it_came_to_three_destinations_is_stored_once(
    tmp_path: Path,
) -> None:
    async with opened(SqliteStore(str(tmp_path / "relay.db"))) as store:
        at = time.time()
        three = tuple(NewDelivery(d) for d in DESTINATIONS)
        assert await store.enqueue([routed(i, three, at) for i in range(2)]) == ["queued"] * 2
        queue, shared = rows(store)
        assert [m for _, m in queue] == [b""] * 6
        assert shared == [(1, 6)]
        # No dictionary yet: the block is stored as it is, each message in it once.
        (block,) = blocks(store)
        assert block.startswith(BLOCK)
        assert (block.count(message(0)), block.count(message(1))) == (1, 1)
        for n, destination in enumerate(DESTINATIONS):
            got = await leased(store, destination)
            assert got == {1 + n: decode(message(0)), 4 + n: decode(message(1))}
        # Delivered to two of them, dead at the third: the message stays for the dead letter.
        await store.settle(Settlement(done=[1, 2, 4, 5], dead=[(3, "400 bad"), (6, "400")]), at)
        assert rows(store)[1] == [(1, 6)]
        (first, second) = await store.dead_letters()
        assert (first.id, first.message) == (3, decode(message(0)))
        assert (second.id, second.message) == (6, decode(message(1)))
        # Replayed and delivered: the block stays for the last delivery that needs it.
        assert await store.replay(DeadLetterFilter(ids=(3,)), at) == 1
        assert await leased(store, "segment.c") == {3: decode(message(0))}
        await store.settle(Settlement(done=[3]), at)
        assert rows(store) == ([(6, b"")], [(1, 6)])
        assert await store.discard(DeadLetterFilter(ids=(6,))) == 1
        assert rows(store) == ([], [])


async def test_edited_deliveries_have_their_own_entry_beside_the_shared_one(
    tmp_path: Path,
) -> None:
    async with opened(SqliteStore(str(tmp_path / "relay.db"))) as store:
        at = time.time()
        a, b, c = DESTINATIONS
        mixed = [
            routed(0, (NewDelivery(a), NewDelivery(b, edited(0, b)), NewDelivery(c)), at),
            routed(1, (NewDelivery(a), NewDelivery(b, edited(1, b))), at),  # one as it came
            routed(2, (NewDelivery(b),), at + 1),
        ]
        assert await store.enqueue(mixed) == ["queued"] * 3
        queue, shared = rows(store)
        assert [m for _, m in queue] == [b""] * 6
        assert shared == [(1, 6)]
        assert await leased(store, a) == {1: decode(message(0)), 4: decode(message(1))}
        assert await leased(store, b) == {
            2: decode(edited(0, b)),
            5: decode(edited(1, b)),
            6: decode(message(2)),
        }
        assert await leased(store, c) == {3: decode(message(0))}


async def test_a_shared_message_outlives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.db")
    async with opened(SqliteStore(path)) as store:
        both = (NewDelivery("customerio.a"), NewDelivery("customerio.b"))
        await store.enqueue([routed(0, both, time.time())])
        assert await leased(store, "customerio.a") == {1: decode(message(0))}
    # Leased when it stopped: back in the queue.
    async with opened(SqliteStore(path)) as store:
        assert await leased(store, "customerio.a") == {1: decode(message(0))}
        assert await leased(store, "customerio.b") == {2: decode(message(0))}


async def test_a_shared_row_of_one_message_as_stores_wrote_before_blocks_serves_them_all(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "relay.db")
    async with opened(SqliteStore(path)) as store:
        await store.enqueue([routed(0, tuple(NewDelivery(d) for d in DESTINATIONS), time.time())])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE shared SET message = ?", (message(0),))
    async with opened(SqliteStore(path)) as store:
        for n, destination in enumerate(DESTINATIONS):
            assert await leased(store, destination) == {1 + n: decode(message(0))}
        await store.settle(Settlement(done=[1, 2], dead=[(3, "400")]), time.time())
        (letter,) = await store.dead_letters()
        assert (letter.id, letter.message) == (3, decode(message(0)))
        assert rows(store) == ([(3, b"")], [(1, 3)])


async def test_a_new_delivery_takes_no_id_of_a_block_still_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.db")
    one = (NewDelivery("customerio.a"),)
    async with opened(SqliteStore(path)) as store:
        await store.enqueue([routed(i, one, time.time()) for i in range(4)])
        await store.settle(Settlement(done=[3, 4]), time.time())
        assert rows(store)[1] == [(1, 4)]
    # Reopened, the store goes on past the block's last id, not past its last delivery.
    async with opened(SqliteStore(path)) as store:
        await store.enqueue([routed(i, one, time.time()) for i in range(4, 6)])
        assert rows(store)[1] == [(1, 4), (5, 2)]
        assert await leased(store, "customerio.a") == {
            1: decode(message(0)),
            2: decode(message(1)),
            5: decode(message(4)),
            6: decode(message(5)),
        }


async def test_a_large_request_is_packed_in_blocks_each_read_once_by_small_leases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rows_module, "BLOCK_DELIVERIES", 8)
    unpacked: list[int] = []
    unpack_shared = Packer.unpack_shared

    def counted(self: Packer, stored: bytes, deliveries: int) -> list[bytes]:
        unpacked.append(deliveries)
        return unpack_shared(self, stored, deliveries)

    monkeypatch.setattr(Packer, "unpack_shared", counted)
    one = (NewDelivery("customerio.a"),)
    async with opened(SqliteStore(str(tmp_path / "relay.db"))) as store:
        at = time.time()
        await store.enqueue([routed(i, one, at) for i in range(20)])
        assert rows(store)[1] == [(1, 8), (9, 8), (17, 4)]
        got: dict[int, object] = {}
        while len(got) < 20:
            # Three at a time: most leases read a block the one before read too.
            lease = await store.lease("customerio.a", 3, 1e12)
            got.update({d.id: d.message for d in lease})
            await store.settle(Settlement(done=[d.id for d in lease]), at)
        assert got == {i + 1: decode(message(i)) for i in range(20)}
        assert unpacked == [8, 8, 4]
        assert rows(store) == ([], [])


# Each event: for each destination, not routed (None), routed as it came (True), or with a
# message of its own (False). Then the deliveries are settled in the order drawn, each
# done or dead.
events_strategy = st.lists(
    st.tuples(*(st.sampled_from([None, True, False]) for _ in DESTINATIONS)).filter(
        lambda routing: any(r is not None for r in routing)
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@example(events=[(True, None, None)], order=random.Random(0), calls="alike together", block=2)
@example(events=[(True, True, None)] * 3, order=random.Random(0), calls="alike together", block=2)
@given(
    events=events_strategy,
    order=st.randoms(use_true_random=False),
    calls=st.sampled_from(["one request", "a request each", "alike together"]),
    block=st.sampled_from([2, 3, 7, rows_module.BLOCK_DELIVERIES]),
)
def test_every_delivery_reads_its_message_and_the_last_one_takes_it_along(
    events: list[tuple[bool | None, ...]], order, calls: str, block: int
) -> None:
    default = rows_module.BLOCK_DELIVERIES
    rows_module.BLOCK_DELIVERIES = block
    try:
        asyncio.run(_check(events, order, calls))
    finally:
        rows_module.BLOCK_DELIVERIES = default


def _alike_together(events: list[NewEvent]) -> list[Sequence[EventTuple]]:
    """`events` as the parts of one call: each run of events routed alike, as they came,
    as AlikeEvents (as relay's process sends a request of plain messages), each other event
    as a list of its own."""
    parts: list[Sequence[EventTuple]] = []
    for deliveries, run in itertools.groupby(events, lambda event: event.deliveries):
        alike = list(run)
        if any(message is not None for _, message in deliveries):
            parts += [[event] for event in alike]
            continue
        at, until = alike[0].received_at, alike[0].dedup_until
        messages = [event.message_json for event in alike]
        keys = [event.ordering_key for event in alike]
        ids = [event.dedup_id for event in alike]
        parts.append(AlikeEvents("web", "segment", at, deliveries, until, messages, keys, ids))
    return parts


async def _check(events: list[tuple[bool | None, ...]], order, calls: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with opened(SqliteStore(str(Path(tmp) / "relay.db"))) as store:
            at = time.time()
            new = []
            for i, routing in enumerate(events):
                deliveries = tuple(
                    NewDelivery(d, None if as_it_came else edited(i, d))
                    for d, as_it_came in zip(DESTINATIONS, routing, strict=True)
                    if as_it_came is not None
                )
                new.append(routed(i, deliveries, at))
            if calls == "one request":
                await store.enqueue(new)
            elif calls == "alike together":
                parts = _alike_together(new)
                assert await store.enqueue_keyed(parts, dedup_keys(new)) == ["queued"] * len(new)
            else:
                for event in new:
                    await store.enqueue([event])
            expected: dict[int, tuple[str, object]] = {}
            next_id = 1
            for i, routing in enumerate(events):
                for d, as_it_came in zip(DESTINATIONS, routing, strict=True):
                    if as_it_came is not None:
                        text = message(i) if as_it_came else edited(i, d)
                        expected[next_id] = (d, decode(text))
                        next_id += 1
            # Every delivery without a message of its own is in exactly one block, and
            # blocks hold nothing else.
            queue, stored = rows(store)
            sharing = dict(stored)
            covered = [i for first, count in stored for i in range(first, first + count)]
            assert sorted(covered) == [i for i, m in queue if m == b""]
            assert len(set(covered)) == len(covered)
            if len(expected) == 1:  # the one delivery of a call of one keeps its message
                assert stored == []
            got = {}
            for d in DESTINATIONS:
                got.update({i: (d, m) for i, m in (await leased(store, d)).items()})
            assert got == expected
            ids = list(expected)
            order.shuffle(ids)
            dead = set()
            # Settled in the order drawn, a few at a time (ids far apart in one settlement):
            # those whose id is a multiple of 3 given up on, the others done.
            step = 0
            while step < len(ids):
                group = ids[step : step + order.randint(1, 4)]
                step += len(group)
                gone = [did for did in group if did % 3 == 0]
                dead.update(gone)
                done = [did for did in group if did % 3]
                await store.settle(Settlement(done=done, dead=[(d, "gone") for d in gone]), at)
                queue, shared = rows(store)
                left = {i for i, _ in queue}
                # A block is kept exactly while a delivery it holds the message of is.
                assert dict(shared) == {
                    first: count
                    for first, count in sharing.items()
                    if left & set(range(first, first + count))
                }
                letters = {x.id: x.message for x in await store.dead_letters()}
                assert letters == {i: expected[i][1] for i in dead}
            assert await store.discard(DeadLetterFilter()) == len(dead)
            assert rows(store) == ([], [])
