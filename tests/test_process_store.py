"""The store's own process: answers come after the commit, a child that dies is started
again, and what was acknowledged before survives it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StoreFull, StoreUnavailable
from relay.store.base import (
    AlikeEvents,
    NewDelivery,
    NewEvent,
    deliveries_to_add,
    distinct_deliveries,
)
from relay.store.process import ProcessStore
from relay.store.sqlite.dedup import dedup_keys
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, relay_of
from tests.helpers import post, sent_ops, track

AUTH = {"Authorization": basic(WRITE_KEY)}


async def test_a_killed_store_process_is_started_again_and_nothing_acknowledged_is_lost(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.default = (503, {}, {})  # keep the first event queued while the child dies
    url, app = await relay_factory(cio_url=customerio.url)
    store = relay_of(app).store
    assert isinstance(store, ProcessStore) and store._proc is not None
    status, _, _ = await post(f"{url}/v1/track", track("p1", "Before", "m-1"), headers=AUTH)
    assert status == 200
    first_child = store._proc.pid
    os.kill(first_child, signal.SIGKILL)
    # Until the new child is up, requests are refused with a 503 that says to retry.
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status, body, headers = await post(
            f"{url}/v1/track", track("p2", "After", "m-2"), headers=AUTH
        )
        if status == 200:
            break
        assert status == 503 and headers["Retry-After"] and "retry" in body["message"]
        assert asyncio.get_running_loop().time() < deadline, "the store never came back"
        await asyncio.sleep(0.2)
    assert store._proc is not None and store._proc.pid != first_child
    customerio.default = (200, {}, {})
    deadline = asyncio.get_running_loop().time() + 30
    while {op["name"] for op in sent_ops(customerio)} != {"Before", "After"}:
        assert asyncio.get_running_loop().time() < deadline, "an acknowledged event was lost"
        await asyncio.sleep(0.2)


async def test_a_store_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    (tmp_path / "relay.db").mkdir()  # a directory where the database file should be
    store = ProcessStore(str(tmp_path / "relay.db"))
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "unable to open database file" in caught.value.message
    assert store._proc is None  # the child was stopped


async def test_a_call_that_meets_the_broken_connection_is_a_503_not_a_500(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    # The child's socket breaks between the check that the store is open and the write
    # (before the reader has seen it end): the write fails with ConnectionResetError,
    # which must be the StoreUnavailable that clients get as a 503, not an error (a 500).
    url, app = await relay_factory(cio_url=customerio.url)
    store = relay_of(app).store
    assert isinstance(store, ProcessStore) and store._writer is not None
    first_child = store._proc.pid if store._proc is not None else None
    store._writer.transport.abort()
    with pytest.raises(StoreUnavailable) as caught:
        await store.counts()
    assert "started again" in caught.value.message
    # The reader saw the connection end and started a new child: the next events go in.
    deadline = asyncio.get_running_loop().time() + 30
    while (await post(f"{url}/v1/track", track("p2", "F", "m-2"), headers=AUTH))[0] != 200:
        assert asyncio.get_running_loop().time() < deadline, "the store never came back"
        await asyncio.sleep(0.2)
    assert store._proc is not None and store._proc.pid != first_child


def _event(dedup_id: str, rejected: str | None = None) -> NewEvent:
    now = time.time()
    return NewEvent(
        "web",
        "segment",
        f'{{"type":"track","userId":"u1","event":"{dedup_id}"}}'.encode(),
        now,
        "u:u1",
        (NewDelivery("customerio.main"),),
        dedup_id,
        now + 3600,
        rejected,
    )


@contextlib.asynccontextmanager
async def _opened(store: ProcessStore) -> AsyncIterator[list[tuple[str, int]]]:
    """The store, opened, with the list of enqueue calls it sends (and their events)."""
    await store.open()
    calls: list[tuple[str, int]] = []
    call = store._call

    async def counted(method: str, *args: Any) -> Any:
        if method == "enqueue":
            calls.append((method, len(args[1])))  # a key an event
        return await call(method, *args)

    store._call = counted  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        await store.close()


async def test_requests_of_one_turn_of_the_loop_are_stored_by_one_call(tmp_path: Path) -> None:
    store = ProcessStore(str(tmp_path / "relay.db"))
    async with _opened(store) as calls:
        first = [_event("a"), _event("b")]
        second = [_event("c"), _event("a")]  # "a" again: a repeat of the first request's
        third = [_event("d", rejected="not a Segment message")]
        outcomes = await asyncio.gather(
            store.enqueue(first), store.enqueue(second), store.enqueue(third)
        )
        assert outcomes == [["queued", "queued"], ["queued", "duplicate"], ["rejected"]]
        assert calls == [("enqueue", 5)]
        # A request of a later turn goes by a call of its own.
        assert await store.enqueue([_event("e"), _event("b")]) == ["queued", "duplicate"]
        assert calls == [("enqueue", 5), ("enqueue", 2)]
        counts = await store.counts()
        assert counts["customerio.main"]["pending"] == 4


def _alike(*dedup_ids: str, window: float = 3600) -> AlikeEvents:
    """A request's plain messages, as relay's process makes them: a person and a message
    each, routed alike, their ids kept for `window` seconds."""
    now = time.time()
    messages = [f'{{"type":"track","userId":"u{i}","event":"{i}"}}'.encode() for i in dedup_ids]
    people = [f"u:u{i}" for i in dedup_ids]
    deliveries = (NewDelivery("customerio.main"),)
    return AlikeEvents("web", "segment", now, deliveries, now + window, messages, people, dedup_ids)


def test_alike_events_read_as_the_events_they_stand_for() -> None:
    alike = _alike("a", "b", "c")
    events = list(alike)
    assert len(alike) == 3
    assert events[1] == (
        "web",
        "segment",
        b'{"type":"track","userId":"ub","event":"b"}',
        alike.received_at,
        "u:ub",
        (NewDelivery("customerio.main"),),
        "b",
        alike.received_at + 3600,
        None,
    )
    assert [alike[i] for i in range(3)] == events and alike[1:] == events[1:]
    assert list(pickle.loads(pickle.dumps(alike))) == events
    assert distinct_deliveries(alike) == (alike.deliveries,)
    assert deliveries_to_add(alike) == 3
    assert dedup_keys(alike) == dedup_keys(events)
    # What crosses the socket: the events without their ids, given their keys beside.
    assert [e[:6] + e[7:] for e in alike.without_ids()] == [e[:6] + e[7:] for e in events]
    assert [e[6] for e in alike.without_ids()] == [None] * 3


async def test_alike_events_are_stored_as_the_events_they_stand_for(tmp_path: Path) -> None:
    store = ProcessStore(str(tmp_path / "relay.db"))
    async with _opened(store) as calls:
        outcomes = await asyncio.gather(
            store.enqueue(_alike("a", "b")),
            store.enqueue([_event("c")]),
            store.enqueue(_alike("d", "a", "e")),  # "a" again: a repeat of the first's
        )
        assert outcomes == [["queued"] * 2, ["queued"], ["queued", "duplicate", "queued"]]
        assert calls == [("enqueue", 6)]
        # A later call of alike events only, each new, and one of their repeats.
        assert await store.enqueue(_alike("f", "g")) == ["queued"] * 2
        assert await store.enqueue(_alike("g")) == ["duplicate"]
        # Each id is kept for its own window: a repeat after it is new.
        assert await store.enqueue(_alike("h", "i", window=0.5)) == ["queued"] * 2
        await asyncio.sleep(0.6)
        assert await store.enqueue(_alike("i", "g")) == ["queued", "duplicate"]
        leased = await store.lease("customerio.main", 100, time.time())
        assert [(d.ordering_key, d.message.get("event")) for d in leased] == [
            ("u:ua", "a"),
            ("u:ub", "b"),
            ("u:u1", "c"),
            ("u:ud", "d"),
            ("u:ue", "e"),
            ("u:uf", "f"),
            ("u:ug", "g"),
            ("u:uh", "h"),
            ("u:ui", "i"),
            ("u:ui", "i"),
        ]


async def test_a_refused_call_refuses_each_of_its_requests_with_an_error_of_its_own(
    tmp_path: Path,
) -> None:
    store = ProcessStore(str(tmp_path / "relay.db"), max_pending=3)
    async with _opened(store) as calls:
        refused = await asyncio.gather(
            store.enqueue([_event("a"), _event("b")]),
            store.enqueue([_event("c"), _event("d")]),
            return_exceptions=True,
        )
        assert calls == [("enqueue", 4)]
        assert all(isinstance(error, StoreFull) for error in refused)
        assert refused[0] is not refused[1]
        assert [error.retry_after for error in refused] == [30, 30]  # type: ignore[union-attr]
        # Nothing of them was stored: each fits once sent again.
        assert await store.enqueue([_event("a"), _event("b")]) == ["queued", "queued"]


async def test_a_caller_that_stops_waiting_leaves_the_others_of_its_call_answered(
    tmp_path: Path,
) -> None:
    store = ProcessStore(str(tmp_path / "relay.db"))
    async with _opened(store) as calls:
        gone = asyncio.create_task(store.enqueue([_event("a")]))
        kept = asyncio.create_task(store.enqueue([_event("b")]))
        await asyncio.sleep(0)  # both gathered; their call goes at the end of this turn
        gone.cancel()
        assert await kept == ["queued"]
        assert gone.cancelled()
        assert calls == [("enqueue", 2)]
        # What was sent is stored: an acknowledgement may only be lost, never an event.
        assert await store.enqueue([_event("a")]) == ["duplicate"]
