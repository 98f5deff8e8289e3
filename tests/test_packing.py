"""Messages are packed on disk with a dictionary the store trains on its own messages, a
request's together as a block: every message reads back exactly as it was queued, before,
during and after a dictionary, across restarts, in leases and in dead letters."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.store.base import EVERY_DEAD_LETTER, NewDelivery, NewEvent, Settlement
from relay.store.sqlite import SqliteStore, packing
from relay.store.sqlite.packing import BLOCK, SAMPLES, ZSTD_MAGIC, Packer, train, unused

DEST = "customerio.main"


def message(i: int) -> bytes:
    return json.dumps(
        {
            "type": "track",
            "userId": f"user-{i:06d}",
            "messageId": f"4b1f0c9e-{i:08d}-4d6b-9f52-0c2a7d1e5b3a",
            "timestamp": "2024-05-06T07:08:09.123Z",
            "context": {"library": {"name": "analytics-python", "version": "2.3.0"}},
            "event": ("Order Completed", "Product Viewed", "Signed Up")[i % 3],
            "properties": {"order_id": f"o-{i}", "total": i % 97 + 0.5, "currency": "EUR"},
        }
    ).encode()


def trained_packer() -> Packer:
    data = train([message(i) for i in range(SAMPLES)])
    assert data is not None
    return Packer([data])


def test_without_a_dictionary_messages_are_stored_as_they_are_and_sampled() -> None:
    packer = Packer()
    stored = [packer.pack(message(i)) for i in range(SAMPLES)]
    assert stored == [message(i) for i in range(SAMPLES)]
    assert packer.wants_training
    samples = packer.take_samples()
    assert samples == stored
    assert not packer.wants_training and packer.take_samples() == []


def test_with_a_dictionary_a_message_takes_a_fraction_of_its_size() -> None:
    packer = trained_packer()
    raw = message(10**6)  # not among the samples
    packed = packer.pack(raw)
    assert packed.startswith(ZSTD_MAGIC)
    assert len(packed) * 3 < len(raw), (len(packed), len(raw))
    assert packer.unpack(packed) == raw
    assert packer.unpack(raw) == raw  # stored before the dictionary


def test_a_message_that_would_not_shrink_is_stored_as_it_is() -> None:
    packer = trained_packer()
    assert packer.pack(b"{}") == b"{}"


def test_a_packed_message_reads_back_with_the_dictionary_it_was_packed_with() -> None:
    first = train([message(i) for i in range(SAMPLES)])
    second = train([message(i).replace(b"track", b"page") for i in range(SAMPLES)])
    assert first is not None and second is not None
    old = Packer([first]).pack(message(1))
    packer = Packer([first, second])  # the second is the current one
    new = packer.pack(message(1))
    assert new != old
    assert packer.unpack(old) == packer.unpack(new) == message(1)
    with pytest.raises(ValueError, match="names dictionary .* not stored"):
        Packer([second]).unpack(old)


def test_after_enough_messages_with_one_dictionary_the_next_one_is_sampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packing, "RETRAIN_AFTER", 10)
    packer = trained_packer()
    for i in range(10):
        assert packer.pack(message(i)).startswith(ZSTD_MAGIC)
    assert packer.take_samples() == []
    later = [packer.pack(message(i)) for i in range(10, 20)]
    assert all(p.startswith(ZSTD_MAGIC) for p in later)  # still packed meanwhile
    assert packer.take_samples() == [message(i) for i in range(10, 20)]


def test_too_few_samples_make_no_dictionary() -> None:
    assert train([b"{}"] * 3) is None


_PACKER = trained_packer()


def test_a_block_gives_back_every_entry_and_holds_a_message_once_however_often_it_is_in() -> None:
    one, two, three = message(10**6), message(10**6 + 1), message(10**6 + 2)
    entries = [one, two, one, one, three]
    packed = _PACKER.pack_block(entries)
    assert packed.startswith(BLOCK + ZSTD_MAGIC)
    assert _PACKER.unpack_shared(packed, len(entries)) == entries
    # Without a dictionary a block is stored as it is: each message is in it once.
    unpacked = Packer().pack_block(entries)
    assert unpacked.startswith(BLOCK) and unpacked[1:5] != ZSTD_MAGIC
    assert [unpacked.count(m) for m in (one, two, three)] == [1, 1, 1]
    assert Packer().unpack_shared(unpacked, len(entries)) == entries
    assert Packer().pack_block(entries, repeats=False).count(one) == 3


def test_a_block_takes_less_than_half_the_room_of_its_messages_packed_one_by_one() -> None:
    request = [message(10**6 + i) for i in range(64)]
    alone = sum(len(_PACKER.pack(m)) for m in request)
    together = len(_PACKER.pack_block(request))
    assert together * 2 < alone, (together, alone)


def test_a_shared_row_of_one_message_serves_every_delivery_it_names() -> None:
    # As stores wrote before blocks, for an event routed as it came to three destinations.
    for stored in (message(1), _PACKER.pack(message(1))):
        assert _PACKER.unpack_shared(stored, 3) == [message(1)] * 3


def test_without_a_dictionary_blocks_are_sampled_message_by_message() -> None:
    packer = Packer()
    first = [message(i) for i in range(SAMPLES - 2)]
    packer.pack_block(first)
    assert not packer.wants_training
    repeated = message(SAMPLES - 2)  # one object: an event routed as it came to two
    packer.pack_block([repeated, repeated, message(SAMPLES - 1), message(0)])
    assert packer.wants_training
    assert packer.take_samples() == [*first, message(SAMPLES - 2), message(SAMPLES - 1)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=600).map(lambda rest: b"{" + rest), min_size=1, max_size=20),
    st.lists(st.integers(min_value=0, max_value=19), min_size=2, max_size=70),
)
def test_any_block_reads_back_exactly(messages: list[bytes], picks: list[int]) -> None:
    # Entries that are the same object, as an event routed as it came to several
    # destinations gives, and equal ones that are not.
    entries = [messages[i % len(messages)] for i in picks] + [bytes(messages[0])]
    for packer, repeats in itertools.product((_PACKER, Packer()), (True, False)):
        # Told that no object repeats, a block holds each entry's message on its own.
        packed = packer.pack_block(entries, repeats)
        assert packer.unpack_shared(packed, len(entries)) == entries


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_any_message_reads_back_exactly(rest: bytes) -> None:
    raw = b"{" + rest  # a message is a JSON object
    assert _PACKER.unpack(_PACKER.pack(raw)) == raw


def new_event(i: int, now: float) -> NewEvent:
    return NewEvent(
        source="web",
        kind="segment",
        message_json=message(i),
        received_at=now,
        ordering_key=f"u:{i}",
        deliveries=(NewDelivery(DEST),),
        dedup_id=f"m-{i}",
        dedup_until=now + 3600,
    )


def stored_messages(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT message FROM queue ORDER BY id")]


def stored_blocks(path: Path) -> list[tuple[int, int, bytes]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, deliveries, message FROM shared ORDER BY id").fetchall()


async def test_the_store_trains_a_dictionary_and_every_message_reads_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(str(path), dedup_flush_interval=3600)
    await store.open()
    now = time.time()
    await store.enqueue([new_event(i, now) for i in range(SAMPLES)])
    assert await store.train_dictionary()
    await store.enqueue([new_event(i, now) for i in range(SAMPLES, SAMPLES + 100)])
    assert set(stored_messages(path)) == {b""}  # each in its request's block
    blocks = stored_blocks(path)
    before = [packed for first, _, packed in blocks if first <= SAMPLES]
    assert all(p.startswith(BLOCK) and p[1:5] != ZSTD_MAGIC for p in before)
    after = [(deliveries, packed) for first, deliveries, packed in blocks if first > SAMPLES]
    assert [deliveries for deliveries, _ in after] == [100]
    assert all(p.startswith(BLOCK + ZSTD_MAGIC) for _, p in after)
    packed_size = sum(len(p) for _, p in after)
    assert packed_size * 3 < sum(len(message(i)) for i in range(SAMPLES, SAMPLES + 100))
    leased = await store.lease(DEST, 2 * SAMPLES, now + 1)
    await store.settle(Settlement(dead=[(leased[-1].id, "refused")]), now + 1)
    await store.close()

    store = SqliteStore(str(path), dedup_flush_interval=3600)  # a restart
    await store.open()
    try:
        everything = await store.lease(DEST, 2 * SAMPLES, now + 2)
        assert [json.dumps(d.message).encode() for d in everything] == [
            message(i) for i in range(SAMPLES + 100) if i != SAMPLES + 99
        ]
        (dead,) = await store.dead_letters()
        assert dead.message == json.loads(message(SAMPLES + 99))
        await store.enqueue([new_event(10**6, now)])  # packed with the stored dictionary
        assert stored_messages(path)[-1].startswith(ZSTD_MAGIC)
    finally:
        await store.close()


async def test_the_store_samples_and_trains_by_itself(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=0.05)
    await store.open()
    try:
        now = time.time()
        await store.enqueue([new_event(i, now) for i in range(SAMPLES)])
        deadline = time.monotonic() + 30
        more = itertools.count(SAMPLES)
        while not stored_messages(tmp_path / "relay.db")[-1].startswith(ZSTD_MAGIC):
            assert time.monotonic() < deadline, "no dictionary was made"
            await store.enqueue([new_event(next(more), now)])
            await asyncio.sleep(0.05)
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            assert conn.execute("SELECT count(*) FROM dictionaries").fetchone()[0] == 1
    finally:
        await store.close()


def test_a_dictionary_is_unused_once_nothing_queued_is_older_than_the_next_ones_first_id() -> None:
    three = [(11, 1), (22, 100), (33, 250)]
    assert unused(three, None) == [11, 22]  # nothing queued: all but the current one
    assert unused(three, 1) == []
    assert unused(three, 99) == []
    assert unused(three, 100) == [11]
    assert unused(three, 249) == [11]
    assert unused(three, 250) == [11, 22]
    assert unused([(11, 1)], None) == []  # the current one is always kept
    assert unused([(11, 1), (22, None), (33, 250)], None) == []  # not known: kept


async def test_a_dictionary_no_queued_delivery_can_name_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relay.db"
    store = SqliteStore(str(path), dedup_flush_interval=3600)
    await store.open()
    now = time.time()
    try:
        await store.enqueue([new_event(i, now) for i in range(SAMPLES)])
        await made(path, 1)  # trained in the background once the samples are in
        await store.enqueue([new_event(i, now) for i in range(SAMPLES, SAMPLES + 10)])
        # The next dictionary, as after RETRAIN_AFTER messages: trained on later ones.
        monkeypatch.setattr(packing, "RETRAIN_AFTER", 0)
        await store.enqueue([new_event(i, now) for i in range(SAMPLES + 10, 2 * SAMPLES + 10)])
        await made(path, 2)
        await store.enqueue([new_event(i, now) for i in range(3 * SAMPLES, 3 * SAMPLES + 10)])
        with sqlite3.connect(path) as conn:
            (first_of_second,) = conn.execute(
                "SELECT first_id FROM dictionaries ORDER BY made_at DESC LIMIT 1"
            ).fetchone()
        leased = await store.lease(DEST, 3 * SAMPLES, now + 1)
        older = [d.id for d in leased if d.id < first_of_second]
        await store.settle(Settlement(done=older[:-1], dead=[(older[-1], "refused")]), now + 1)
        await store.purge(now + 1)
        assert dictionaries(path) == 2  # a dead letter still names the first
        await store.discard(EVERY_DEAD_LETTER)
        await store.purge(now + 1)
        assert dictionaries(path) == 1
        later = await store.dead_letters()
        assert later == []
    finally:
        await store.close()
    store = SqliteStore(str(path), dedup_flush_interval=3600)
    await store.open()
    try:
        back = await store.lease(DEST, 100, now + 2)  # released at the restart
        assert [json.dumps(d.message).encode() for d in back] == [
            message(i) for i in range(3 * SAMPLES, 3 * SAMPLES + 10)
        ]
    finally:
        await store.close()


async def made(path: Path, count: int) -> None:
    """Until `count` dictionaries are in use (recorded, and adopted from a first id on)."""
    deadline = time.monotonic() + 30
    while dictionaries(path, "first_id IS NOT NULL") < count:
        assert time.monotonic() < deadline, f"no dictionary number {count} was made"
        await asyncio.sleep(0.05)


def dictionaries(path: Path, where: str = "1") -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM dictionaries WHERE {where}").fetchone()[0]
    return count
