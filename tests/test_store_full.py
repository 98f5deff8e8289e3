"""A full or unwritable store answers 503 with Retry-After and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, config_yaml, relay_of
from tests.test_segment_api import post, sent_ops, track

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
    status, _, _ = await post(f"{url}/v1/track", track("p9", "Refused", "m-9"), headers=AUTH)
    assert status == 200
    assert await relay_of(app).store.writable()


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
    assert status == 503 and headers["Retry-After"] == "5"
    assert "full" in body["message"] and "nothing acknowledged was lost" in body["message"]
    assert len(acknowledged) >= 100
    customerio.default = (200, {}, {})
    deadline = asyncio.get_running_loop().time() + 30
    wanted = set(acknowledged)
    while not wanted <= {op["name"] for op in sent_ops(customerio)}:
        assert asyncio.get_running_loop().time() < deadline, "acknowledged events were lost"
        await asyncio.sleep(0.2)
    # Delivered deliveries free the space: the store takes writes again.
    status, _, _ = await post(f"{url}/v1/track", track("after", "After", "m-after"), headers=AUTH)
    assert status == 200
