"""A full or unwritable store answers 503 with Retry-After and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.helpers import post, sent_ops, track

AUTH = {"Authorization": basic(WRITE_KEY)}


async def test_queue_limit_answers_503_with_retry_after_and_keeps_what_it_has(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    customerio.default = (503, {}, {})  # Customer.io is down: the queue fills up
    text = config_yaml(tmp_path / "full.db", customerio.url).replace(
        'sqlite: {path: "', 'sqlite: {max_pending: 3, path: "'
    )
    url, app = await relay_factory(text)
    for i in range(3):
        status, _, _ = await post(
            f"{url}/v1/track", track(f"p{i}", f"Kept {i}", f"m-{i}"), headers=AUTH
        )
        assert status == 200
    status, body, headers = await post(
        f"{url}/v1/track", track("p9", "Refused", "m-9"), headers=AUTH
    )
    assert status == 503
    assert headers["Retry-After"] == "30"
    assert body["code"] == "store_unavailable"
    assert "storage.sqlite.max_pending" in body["message"]
    # The refused message was not recorded as seen: its retry is accepted once there is room.
    customerio.default = (200, {}, {})
    deadline = asyncio.get_running_loop().time() + 20
    while len({op["name"] for op in sent_ops(customerio)}) < 3:
        assert asyncio.get_running_loop().time() < deadline, "acknowledged events were lost"
        await asyncio.sleep(0.2)
    assert {op["name"] for op in sent_ops(customerio)} == {"Kept 0", "Kept 1", "Kept 2"}
    while await relay_of(app).store.counts():  # settled, not only sent: room in the queue
        assert asyncio.get_running_loop().time() < deadline, "deliveries were never settled"
        await asyncio.sleep(0.05)
    status, _, _ = await post(f"{url}/v1/track", track("p9", "Refused", "m-9"), headers=AUTH)
    assert status == 200
    assert await relay_of(app).store.write_problem() is None


async def test_a_full_disk_answers_503_and_what_was_acknowledged_is_delivered(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    customerio.default = (503, {}, {})
    text = config_yaml(tmp_path / "disk.db", customerio.url).replace(
        'sqlite: {path: "', 'sqlite: {max_size_mb: 1, path: "'
    )
    url, app = await relay_factory(text)
    acknowledged: list[str] = []
    refused = None
    for n in range(200):  # 1 MB holds a few hundred of these; then SQLite reports it full
        batch = [track(f"p{n}", f"E{n}-{k}", f"m-{n}-{k}", blob="x" * 800) for k in range(10)]
        status, body, headers = await post(f"{url}/v1/batch", {"batch": batch}, headers=AUTH)
        if status == 200:
            acknowledged.extend(m["event"] for m in batch)
            continue
        refused = (status, body, headers)
        break
    assert refused is not None, "the store never filled up"
    status, body, headers = refused
    assert status == 503 and headers["Retry-After"] == "30"
    assert body["message"].startswith("the event store is full: ")
    assert "storage.sqlite.max_size_mb (1 MB)" in body["message"]
    assert "nothing acknowledged was lost" in body["message"]
    assert len(acknowledged) >= 100
    # Not ready while it refuses new events, and it says why.
    ready, answer = await readiness(url)
    assert ready == 503 and answer["reason"].startswith("the event store is full: ")
    customerio.default = (200, {}, {})
    deadline = asyncio.get_running_loop().time() + 30
    wanted = set(acknowledged)
    while not wanted <= {op["name"] for op in sent_ops(customerio)}:
        assert asyncio.get_running_loop().time() < deadline, "acknowledged events were lost"
        await asyncio.sleep(0.2)
    # Delivered deliveries free the space: the store takes writes again.
    status, _, _ = await post(f"{url}/v1/track", track("after", "After", "m-after"), headers=AUTH)
    assert status == 200
    assert (await readiness(url))[0] == 200


async def readiness(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_low_disk_refuses_new_events_keeps_delivering_and_recovers_at_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # The disk is played by a number: room below min_free_mb refuses new events, while what
    # is queued is still leased and settled; space freed inside the database (finished
    # deliveries) or on the disk lets events in again with the next request.
    from relay.errors import StoreFull
    from relay.store.base import NewDelivery, NewEvent, Settlement
    from relay.store.sqlite import SqliteStore

    disk = {"free": 50 * 1024 * 1024}
    store = SqliteStore(str(tmp_path / "low.db"), min_free_mb=10, dedup_flush_interval=3600)
    monkeypatch.setattr(store, "_disk_free", lambda: disk["free"])
    deliveries = (NewDelivery("customerio.main"),)

    def events(n: int, tag: str) -> list[NewEvent]:
        now = asyncio.get_running_loop().time()
        return [
            NewEvent(
                "web",
                "segment",
                # Each its own object: a block holds a message object once however many
                # of its deliveries it serves.
                b'{"p":"%s"}' % (b"x" * 2000),
                now,
                f"u:{i}",
                deliveries,
                f"{tag}-{i}",
                now + 3600,
            )
            for i in range(n)
        ]

    await store.open()
    try:
        assert await store.enqueue(events(500, "a")) == ["queued"] * 500
        assert await store.write_problem() is None
        disk["free"] = int(9.5 * 1024 * 1024)  # below the 10 MB kept
        try:
            await store.enqueue(events(1, "b"))
        except StoreFull as exc:
            refused = exc
        else:
            raise AssertionError("a nearly full disk took new events")
        assert refused.retry_after == 30
        assert "is nearly full" in refused.message and "min_free_mb" in refused.message
        problem = await store.write_problem()
        assert problem is not None and problem.startswith("the disk holding ")
        # Delivery goes on: leases and settlements are not refused.
        leased = await store.lease("customerio.main", 500, 10**10)
        assert len(leased) == 500
        await store.settle(Settlement(done=[d.id for d in leased]), 0)
        # 500 finished deliveries (1 MB) freed pages inside the database: room again.
        assert await store.write_problem() is None
        assert await store.enqueue(events(1, "c")) == ["queued"]
        disk["free"] = 0
        assert await store.write_problem() is not None
        disk["free"] = 50 * 1024 * 1024  # the operator freed space
        assert await store.write_problem() is None
        assert await store.enqueue(events(1, "d")) == ["queued"]
    finally:
        await store.close()
