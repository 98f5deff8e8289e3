"""The Store contract: what every backend must do, written once and run against each of them
(in memory, SQLite, SQLite behind its own process, Redis). A new backend joins by adding
itself to BACKENDS; it is ready when this suite passes."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StoreFull
from relay.store.base import (
    EVERY_DEAD_LETTER,
    STORE_CALLS,
    DeadLetterFilter,
    NewDelivery,
    NewEvent,
    Retry,
    Settlement,
    Store,
)
from relay.store.memory import MemoryStore
from relay.store.process import ProcessStore
from relay.store.redis.store import RedisStore
from relay.store.sqlite import SqliteStore
from tests.redis_server import URL, delete_prefix, need_redis, new_prefix

DEST = "customerio.main"
OTHER = "segment.main"
NOW = 1_000.0  # lease and retry times are the caller's clock; dedup windows are wall-clock

Make = Callable[..., Awaitable[Store]]


def _memory(_path: Path, **options: Any) -> Store:
    return MemoryStore(**options)


def _sqlite(path: Path, **options: Any) -> Store:
    return SqliteStore(str(path / "relay.db"), dedup_flush_interval=0.2, **options)


def _process(path: Path, **options: Any) -> Store:
    return ProcessStore(str(path / "relay.db"), **options)


def _redis(path: Path, **options: Any) -> Store:
    # One key prefix per test (kept in the test's folder, so that a reopened store finds
    # its data), and one consumer name: a restart under the same name, as with SQLite.
    prefix_file = path / "redis-prefix"
    if not prefix_file.exists():
        prefix_file.write_text(new_prefix())
    return RedisStore(URL, key_prefix=prefix_file.read_text(), consumer="contract", **options)


BACKENDS = {"memory": _memory, "sqlite": _sqlite, "process": _process, "redis": _redis}


@pytest.fixture(params=sorted(BACKENDS))
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """Opens a store of the backend under test; `reopen` closes one and opens it again on
    the same data (a restart; the memory store keeps its data in the object)."""
    if request.param == "redis":
        need_redis()
    build = BACKENDS[request.param]
    opened: list[Store] = []

    async def make_store(*, reopen: Store | None = None, **options: Any) -> Store:
        if reopen is not None:
            await reopen.close()
            opened.remove(reopen)
            store = reopen if isinstance(reopen, MemoryStore) else build(tmp_path, **options)
        else:
            store = build(tmp_path, **options)
        await store.open()
        opened.append(store)
        return store

    yield make_store
    for store in opened:
        await store.close()
    if (tmp_path / "redis-prefix").exists():
        delete_prefix((tmp_path / "redis-prefix").read_text())


def event(
    person: str,
    name: str,
    *,
    to: tuple[str, ...] = (DEST,),
    dedup_id: str | None = None,
    dedup_until: float | None = None,
    source: str = "web",
    routed: dict[str, Any] | None = None,
    rejected: str | None = None,
    at: float = NOW,
) -> NewEvent:
    message = {"type": "track", "userId": person, "event": name}
    return NewEvent(
        source=source,
        kind="segment",
        message_json=json.dumps(message).encode(),
        received_at=at,
        ordering_key=f"u:{person}",
        deliveries=tuple(
            NewDelivery(d, None if routed is None else json.dumps(routed).encode()) for d in to
        ),
        dedup_id=dedup_id,
        dedup_until=time.time() + 3600 if dedup_until is None else dedup_until,
        rejected_reason=rejected,
    )


async def names(store: Store, destination: str = DEST, *, now: float = NOW) -> list[str]:
    return [d.message["event"] for d in await store.lease(destination, 100, now)]


async def lease_ids(store: Store, destination: str = DEST, *, now: float = NOW) -> dict[str, int]:
    return {d.message["event"]: d.id for d in await store.lease(destination, 100, now)}


# --------------------------------------------------------------------------- the calls


def test_every_backend_has_every_call() -> None:
    protocol = {
        name
        for name, member in vars(Store).items()
        if inspect.iscoroutinefunction(member) and name not in ("open", "close")
    }
    assert protocol == set(STORE_CALLS)
    for backend in (MemoryStore, SqliteStore, ProcessStore, RedisStore):
        for name in (*STORE_CALLS, "open", "close"):
            assert inspect.iscoroutinefunction(getattr(backend, name)), (backend, name)


# --------------------------------------------------------------------------- queue


async def test_enqueued_events_are_leased_oldest_first_with_their_messages(make: Make) -> None:
    store = await make()
    assert await store.enqueue([event("a", "A1"), event("b", "B1"), event("c", "C1")]) == [
        "queued",
        "queued",
        "queued",
    ]
    leased = await store.lease(DEST, 2, NOW)
    assert [d.message for d in leased] == [
        {"type": "track", "userId": "a", "event": "A1"},
        {"type": "track", "userId": "b", "event": "B1"},
    ]
    # Handed out as the JSON stored, byte for byte: a sink decodes it where it maps it.
    assert [d.message_json for d in leased] == [
        event("a", "A1").message_json,
        event("b", "B1").message_json,
    ]
    assert [(d.destination, d.ordering_key, d.attempts, d.source, d.kind) for d in leased] == [
        (DEST, "u:a", 0, "web", "segment"),
        (DEST, "u:b", 0, "web", "segment"),
    ]
    assert leased[0].created_at == NOW and leased[0].id < leased[1].id
    assert await names(store) == ["C1"]  # the leased ones are not handed out again
    assert await store.counts() == {DEST: {"leased": 3}}


async def test_one_delivery_per_destination_each_with_its_routed_message(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1", to=(DEST, OTHER))])
    await store.enqueue([event("a", "A2", to=(OTHER,), routed={"event": "Renamed"})])
    assert await names(store, DEST) == ["A1"]
    assert await names(store, OTHER) == ["A1", "Renamed"]
    assert await store.counts() == {DEST: {"leased": 1}, OTHER: {"leased": 2}}


async def test_an_event_for_several_destinations_reads_whole_for_each_to_the_last(
    make: Make,
) -> None:
    # Stored once where the backend can share it: each delivery still reads the whole
    # message, whatever becomes of the others (done, dead, replayed, discarded).
    store = await make()
    await store.enqueue([event("a", "A1", to=(DEST, OTHER)), event("b", "B1", to=(DEST, OTHER))])
    first = {d.message["userId"]: d for d in await store.lease(DEST, 10, NOW)}
    await store.settle(Settlement(done=[first["a"].id], dead=[(first["b"].id, "400")]), NOW)
    other = {d.message["userId"]: d for d in await store.lease(OTHER, 10, NOW)}
    assert [d.message["event"] for d in other.values()] == ["A1", "B1"]
    await store.settle(Settlement(dead=[(other["a"].id, "400"), (other["b"].id, "400")]), NOW)
    assert refs(await store.dead_letters()) == ["A1", "B1", "B1"]
    assert await store.replay(DeadLetterFilter(ids=(other["a"].id,)), NOW) == 1
    assert await names(store, OTHER) == ["A1"]
    assert await store.discard(DeadLetterFilter(ids=(first["b"].id,))) == 1
    assert [(x.id, x.message["event"]) for x in await store.dead_letters()] == [
        (other["b"].id, "B1")
    ]
    assert await store.discard(EVERY_DEAD_LETTER) == 1
    assert await store.dead_letters() == []


async def test_a_person_is_held_while_their_earlier_delivery_is_leased(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("a", "A2"), event("b", "B1")])
    [first] = await store.lease(DEST, 1, NOW)
    assert await names(store) == ["B1"]  # A2 waits behind A1
    await store.settle(Settlement(done=[first.id]), NOW)
    assert await names(store) == ["A2"]


async def test_one_lease_carries_a_persons_deliveries_in_order(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("b", "B1"), event("a", "A2")])
    assert await names(store) == ["A1", "B1", "A2"]
    await store.enqueue([event("a", "A3")])
    assert await names(store) == []  # behind the leased ones


async def test_holds_are_per_destination(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1", to=(DEST, OTHER)), event("a", "A2", to=(DEST, OTHER))])
    assert [d.message["event"] for d in await store.lease(DEST, 1, NOW)] == ["A1"]
    assert await names(store, OTHER) == ["A1", "A2"]  # not held by the other's lease
    assert await names(store, DEST) == []


async def test_lease_respects_its_limit_and_the_due_time(make: Make) -> None:
    store = await make()
    await store.enqueue([event(f"p{i}", f"E{i}") for i in range(5)])
    assert [d.message["event"] for d in await store.lease(DEST, 3, NOW)] == ["E0", "E1", "E2"]
    assert await names(store, now=NOW - 10) == []  # received later than this clock
    assert await names(store) == ["E3", "E4"]


# --------------------------------------------------------------------------- settling


async def test_done_deliveries_are_forgotten(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("b", "B1")])
    ids = await lease_ids(store)
    await store.settle(Settlement(done=list(ids.values())), NOW)
    assert await store.counts() == {}
    assert await names(store) == []


async def test_a_retry_holds_its_person_until_it_is_due(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("a", "A2"), event("b", "B1")])
    [a1] = await store.lease(DEST, 1, NOW)
    [b1] = await store.lease(DEST, 100, NOW)
    await store.settle(Settlement(done=[b1.id], retries=[Retry(a1.id, NOW + 30, "HTTP 500")]), NOW)
    assert await names(store, now=NOW + 29) == []  # A1 not due; A2 behind it
    retried = await store.lease(DEST, 100, NOW + 30)
    assert [(d.message["event"], d.attempts) for d in retried] == [("A1", 1)]
    await store.settle(Settlement(done=[retried[0].id]), NOW + 30)
    assert await names(store, now=NOW + 30) == ["A2"]


async def test_released_deliveries_are_pending_again_and_hold_nobody(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("a", "A2")])
    ids = await lease_ids(store)
    await store.settle(Settlement(release=list(ids.values())), NOW)
    assert await store.counts() == {DEST: {"pending": 2}}
    again = await store.lease(DEST, 100, NOW)
    assert [(d.message["event"], d.attempts) for d in again] == [("A1", 0), ("A2", 0)]


async def test_a_dead_letter_keeps_its_reason_and_stops_holding(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("a", "A2")])
    ids = {d.message["event"]: d.id for d in await store.lease(DEST, 1, NOW)}
    assert await names(store) == []
    await store.settle(Settlement(dead=[(ids["A1"], "HTTP 400: bad email")]), NOW + 5)
    assert await names(store) == ["A2"]
    [dead] = await store.dead_letters()
    assert (dead.id, dead.destination, dead.reason, dead.attempts) == (
        ids["A1"],
        DEST,
        "HTTP 400: bad email",
        1,
    )
    assert dead.message == {"type": "track", "userId": "a", "event": "A1"}
    assert await store.dead_letters(DeadLetterFilter(destination=OTHER)) == []
    assert await store.counts() == {DEST: {"dead": 1, "leased": 1}}


async def test_settling_leaves_a_dead_delivery_dead(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1")])
    ids = await lease_ids(store)
    await store.settle(Settlement(dead=[(ids["A1"], "first")]), NOW)
    await store.settle(
        Settlement(
            done=[ids["A1"]],
            retries=[Retry(ids["A1"], NOW, "again")],
            dead=[(ids["A1"], "second")],
            release=[ids["A1"]],
        ),
        NOW,
    )
    [dead] = await store.dead_letters()
    assert (dead.reason, dead.attempts) == ("first", 1)


async def test_one_settlement_records_every_kind_of_outcome(make: Make) -> None:
    store = await make()
    await store.enqueue([event(p, p.upper()) for p in ("a", "b", "c", "d")])
    ids = await lease_ids(store)
    await store.settle(
        Settlement(
            done=[ids["A"]],
            retries=[Retry(ids["B"], NOW + 60, "timeout")],
            dead=[(ids["C"], "HTTP 400")],
            release=[ids["D"]],
        ),
        NOW,
    )
    assert await store.counts() == {DEST: {"pending": 2, "dead": 1}}
    assert await names(store) == ["D"]
    assert await names(store, now=NOW + 60) == ["B"]


# --------------------------------------------------------------------------- replay


async def test_replay_puts_dead_letters_back_as_new(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("b", "B1"), event("c", "C1")])
    ids = await lease_ids(store)
    await store.settle(Settlement(dead=[(i, "HTTP 400") for i in ids.values()]), NOW)
    assert await store.replay(DeadLetterFilter(ids=(ids["B1"],)), NOW + 100) == 1
    [replayed] = await store.lease(DEST, 100, NOW + 100)
    assert (replayed.message["event"], replayed.attempts, replayed.created_at) == (
        "B1",
        0,
        NOW + 100,
    )
    assert (
        await store.replay(DeadLetterFilter(ids=(ids["B1"],)), NOW + 100) == 0
    )  # not dead any more
    assert await store.replay(EVERY_DEAD_LETTER, NOW + 200) == 2
    assert await names(store, now=NOW + 200) == ["A1", "C1"]
    assert await store.dead_letters() == []


async def dead_three(store: Store) -> dict[str, int]:
    """A1 dead at NOW with a 400 after a retry, B1 at NOW + 10 with a 422, C1 (to OTHER)
    at NOW + 20 with a 400; and one rejected message."""
    await store.enqueue(
        [
            event("a", "A1"),
            event("b", "B1"),
            event("c", "C1", to=(OTHER,)),
            event("d", "bad", rejected="batch[3]: field 'event' is missing"),
        ]
    )
    ids = await lease_ids(store)
    ids.update(await lease_ids(store, OTHER))
    await store.settle(Settlement(retries=[Retry(ids["A1"], NOW - 5, "HTTP 503: busy")]), NOW - 10)
    [again] = await store.lease(DEST, 1, NOW - 5)
    assert again.id == ids["A1"]
    await store.settle(Settlement(dead=[(ids["A1"], "HTTP 400: bad email")]), NOW)
    await store.settle(Settlement(dead=[(ids["B1"], "HTTP 422: Attribute Too Long")]), NOW + 10)
    await store.settle(Settlement(dead=[(ids["C1"], "HTTP 400: Bad Request")]), NOW + 20)
    return ids


def refs(letters: list[Any]) -> list[str]:
    return [(d.message.get("event") or "?") for d in letters]


async def test_dead_letters_are_chosen_by_destination_reason_time_ids_and_limit(
    make: Make,
) -> None:
    store = await make()
    ids = await dead_three(store)
    every = await store.dead_letters()
    assert refs(every) == ["A1", "B1", "C1", "bad"]
    assert [d.ref for d in every][:3] == [str(ids[n]) for n in ("A1", "B1", "C1")]
    assert every[3].ref.startswith("r")
    assert [d.dead_at for d in every[:3]] == [NOW, NOW + 10, NOW + 20]

    def chosen(**conditions: Any) -> Awaitable[list[Any]]:
        return store.dead_letters(DeadLetterFilter(**conditions))

    assert refs(await chosen(destination=DEST)) == ["A1", "B1"]
    assert refs(await chosen(reason="bad ")) == ["A1", "C1"]  # any letter case
    assert refs(await chosen(reason="MISSING")) == ["bad"]
    assert refs(await chosen(since=NOW + 10)) == ["B1", "C1"]  # rejected: received before
    assert refs(await chosen(until=NOW + 10)) == ["A1", "bad"]
    assert refs(await chosen(since=NOW, until=NOW + 20, destination=DEST)) == ["A1", "B1"]
    assert refs(await chosen(limit=2)) == ["A1", "B1"]
    assert refs(await chosen(limit=4)) == ["A1", "B1", "C1", "bad"]
    assert refs(await chosen(ids=(ids["C1"], ids["A1"]))) == ["A1", "C1"]
    assert refs(await chosen(ids=(ids["C1"],), reason="nothing like it")) == []
    assert refs(await chosen(rejected_ids=(every[3].id,))) == ["bad"]
    assert refs(await chosen(ids=())) == []


async def test_a_dead_letter_keeps_every_attempt_with_its_answer(make: Make) -> None:
    store = await make()
    ids = await dead_three(store)
    [a1] = await store.dead_letters(DeadLetterFilter(ids=(ids["A1"],)))
    assert a1.history == ((NOW - 10, "HTTP 503: busy"), (NOW, "HTTP 400: bad email"))
    assert (a1.attempts, a1.reason) == (2, "HTTP 400: bad email")
    await store.replay(DeadLetterFilter(ids=(ids["A1"],)), NOW + 100)
    [again] = await store.lease(DEST, 10, NOW + 100)
    await store.settle(Settlement(dead=[(again.id, "HTTP 400: still bad")]), NOW + 101)
    [a1] = await store.dead_letters(DeadLetterFilter(ids=(ids["A1"],)))
    assert (a1.history, a1.attempts) == (((NOW + 101, "HTTP 400: still bad"),), 1)


async def test_replay_by_filter_takes_only_what_matches(make: Make) -> None:
    store = await make()
    await dead_three(store)
    assert await store.replay(DeadLetterFilter(reason="http 400"), NOW + 100) == 2
    assert await names(store, now=NOW + 100) == ["A1"]
    assert [d.message["event"] for d in await store.lease(OTHER, 10, NOW + 100)] == ["C1"]
    assert refs(await store.dead_letters()) == ["B1", "bad"]  # rejected ones stay
    assert await store.replay(DeadLetterFilter(limit=5), NOW + 100) == 1
    assert refs(await store.dead_letters()) == ["bad"]


async def test_discarded_dead_letters_are_gone_and_the_queue_is_not_touched(make: Make) -> None:
    store = await make()
    ids = await dead_three(store)
    await store.enqueue([event("e", "E1")])
    assert await store.discard(DeadLetterFilter(ids=(ids["B1"],))) == 1
    assert refs(await store.dead_letters()) == ["A1", "C1", "bad"]
    assert await store.discard(DeadLetterFilter(destination=OTHER)) == 1
    assert await store.discard(DeadLetterFilter(reason="missing")) == 1
    assert refs(await store.dead_letters()) == ["A1"]
    assert await store.discard(EVERY_DEAD_LETTER) == 1
    assert await store.dead_letters() == []
    assert await store.counts() == {DEST: {"pending": 1}}
    assert await names(store, now=NOW + 100) == ["E1"]


async def test_the_oldest_waiting_delivery_is_known_per_destination(make: Make) -> None:
    store = await make()
    assert await store.oldest() == {}
    old = NOW - 100
    await store.enqueue([event("a", "A1", at=old), event("b", "B1", at=NOW, to=(DEST, OTHER))])
    assert await store.oldest() == {DEST: old, OTHER: NOW}
    ids = await lease_ids(store)
    assert await store.oldest() == {DEST: old, OTHER: NOW}  # leased is still waiting
    await store.settle(Settlement(done=[ids["A1"]], dead=[(ids["B1"], "HTTP 400")]), NOW)
    assert await store.oldest() == {OTHER: NOW}


# --------------------------------------------------------------------------- dedup


async def test_a_repeated_id_within_its_window_is_a_duplicate(make: Make) -> None:
    store = await make()
    assert await store.enqueue([event("a", "A1", dedup_id="m-1")]) == ["queued"]
    assert await store.enqueue(
        [event("a", "again", dedup_id="m-1"), event("a", "A2", dedup_id="m-2")]
    ) == ["duplicate", "queued"]
    # Within one call too, and an id is per source: another source's m-1 is its own.
    assert await store.enqueue(
        [
            event("b", "B1", dedup_id="m-3"),
            event("b", "B2", dedup_id="m-3"),
            event("a", "other", dedup_id="m-1", source="backend"),
        ]
    ) == ["queued", "duplicate", "queued"]
    assert sorted(await names(store)) == ["A1", "A2", "B1", "other"]


async def test_an_id_whose_window_is_over_is_new_again(make: Make) -> None:
    store = await make()
    past = time.time() - 1
    assert await store.enqueue([event("a", "A1", dedup_id="m-1", dedup_until=past)]) == ["queued"]
    assert await store.enqueue([event("a", "A2", dedup_id="m-1")]) == ["queued"]
    await store.purge(time.time())
    assert await store.enqueue([event("a", "A3", dedup_id="m-1")]) == ["duplicate"]


async def test_ids_survive_a_restart(make: Make) -> None:
    store = await make()
    await store.enqueue([event("a", "A1", dedup_id="m-1")])
    await asyncio.sleep(0.5)  # a backend may record ids in the background
    store = await make(reopen=store)
    assert await store.enqueue([event("a", "A1", dedup_id="m-1")]) == ["duplicate"]


# --------------------------------------------------------------------------- rejected


async def test_rejected_messages_are_kept_for_people_to_look_at(make: Make) -> None:
    store = await make()
    outcomes = await store.enqueue(
        [
            event("a", "bad", rejected="batch[0]: field 'userId' must be a string", dedup_id="r"),
            event("a", "bad", rejected="batch[0]: field 'userId' must be a string", dedup_id="r"),
            event("a", "A1"),
        ]
    )
    assert outcomes == ["rejected", "duplicate", "queued"]
    [rejected] = await store.dead_letters()
    assert (rejected.destination, rejected.source, rejected.kind, rejected.attempts) == (
        None,
        "web",
        "segment",
        0,
    )
    assert rejected.reason == "batch[0]: field 'userId' must be a string"
    assert rejected.message["event"] == "bad"
    assert await store.dead_letters(DeadLetterFilter(destination=DEST)) == []
    assert await names(store) == ["A1"]


# --------------------------------------------------------------------------- limits


async def test_a_full_queue_refuses_new_events_and_keeps_what_it_has(make: Make) -> None:
    store = await make(max_pending=2)
    await store.enqueue([event("a", "A1"), event("b", "B1")])
    with pytest.raises(StoreFull) as refused:
        await store.enqueue([event("c", "C1")])
    assert "max_pending" in refused.value.message and refused.value.retry_after
    ids = await lease_ids(store)
    assert list(ids) == ["A1", "B1"]
    await store.settle(Settlement(done=[ids["A1"]]), NOW)
    assert await store.enqueue([event("c", "C1")]) == ["queued"]  # room again
    # Rejected messages hold no delivery and are taken even when full.
    assert await store.enqueue([event("d", "bad", rejected="no")]) == ["rejected"]


async def test_dead_letters_do_not_count_against_the_queue_limit(make: Make) -> None:
    store = await make(max_pending=1)
    await store.enqueue([event("a", "A1")])
    ids = await lease_ids(store)
    await store.settle(Settlement(dead=[(ids["A1"], "HTTP 400")]), NOW)
    assert await store.enqueue([event("b", "B1")]) == ["queued"]


# --------------------------------------------------------------------------- restarts


async def test_a_restart_takes_back_what_was_leased_and_keeps_retries_holding(
    make: Make,
) -> None:
    store = await make()
    await store.enqueue([event("a", "A1"), event("a", "A2"), event("b", "B1"), event("b", "B2")])
    [a1] = await store.lease(DEST, 1, NOW)
    await store.settle(Settlement(retries=[Retry(a1.id, NOW + 30, "HTTP 503")]), NOW)
    assert await names(store) == ["B1", "B2"]
    store = await make(reopen=store)
    assert await names(store) == ["B1", "B2"]  # leased when the last process stopped: again
    assert await names(store, now=NOW + 30) == ["A1"]  # A2 still behind A1's retry
    assert await store.counts() == {DEST: {"leased": 3, "pending": 1}}


async def test_a_store_that_takes_writes_has_no_write_problem(make: Make) -> None:
    store = await make()
    assert await store.write_problem() is None
