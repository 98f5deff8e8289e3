"""relay serving on the Redis store, in this process: events taken over HTTP and delivered to
a loopback Customer.io stand-in in per-person order through the shared rate limit; Redis
going away (503 with Retry-After, /readyz says why) and coming back (delivery resumes by
itself, nothing acknowledged lost). Against a real Redis; skipped, with the reason, where
none answers."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.store.redis.limiter import SharedLimiter
from tests.conftest import (
    WRITE_KEY,
    RelayFactory,
    StandIn,
    basic,
    config_yaml,
    free_port,
    relay_of,
)
from tests.helpers import post, run_relay, track
from tests.redis_server import URL, PrivateRedis, delete_prefix, need_redis, new_prefix

AUTH = {"Authorization": basic(WRITE_KEY)}


def on_redis(text: str, url: str, prefix: str, **settings: Any) -> str:
    """A test config (tests.conftest.config_yaml) with its queue in Redis instead."""
    extra = "".join(f", {key}: {value}" for key, value in settings.items())
    return re.sub(
        r"  sqlite: \{path: [^}]*\}",
        f'  redis: {{url: "{url}", key_prefix: "{prefix}"{extra}}}',
        text,
        count=1,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    need_redis()
    chosen = new_prefix()
    yield chosen
    delete_prefix(chosen)


async def send(url: str, *messages: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    return await post(f"{url}/v1/batch", {"batch": list(messages)}, headers=AUTH)


async def test_relay_on_redis_delivers_in_order_through_the_shared_limit(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path, prefix: str
) -> None:
    text = config_yaml(tmp_path / "relay.db", customerio.url, api="v1", rate_limit=10)
    url, app = await relay_factory(on_redis(text, URL, prefix))
    relay = relay_of(app)
    assert isinstance(relay.limiters["customerio.main"], SharedLimiter)
    events = [track(f"p{i % 3}", f"E{i}", f"m-{i}") for i in range(15)]
    assert (await send(url, *events))[:2] == (200, {"success": True})
    assert (await send(url, events[0]))[:2] == (200, {"success": True})  # a duplicate
    requests = await customerio.wait_for(15, timeout=10)
    await asyncio.sleep(0.3)
    assert len(customerio.requests) == 15
    for person in ("p0", "p1", "p2"):
        names = [r.body["name"] for r in requests if r.path == f"/api/v1/customers/{person}/events"]
        assert names == [f"E{i}" for i in range(15) if i % 3 == int(person[1])]
    times = sorted(r.at for r in requests)
    assert all(sum(1 for t in times[i:] if t < s + 1.0) <= 11 for i, s in enumerate(times))
    assert times[-1] - times[0] >= 1.3  # 15 at 10/s
    assert await relay.store.counts() == {}


async def readyz(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_without_redis_intake_answers_503_and_delivery_resumes_when_it_is_back(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Path
) -> None:
    server = PrivateRedis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        customerio.hold(1)  # the first delivery waits: it is in flight when Redis goes
        text = config_yaml(tmp_path / "relay.db", customerio.url, api="v1")
        # A lease that Redis ran as it stopped, but whose answer never came, is taken back
        # after reclaim_idle (30 s by default): shortened, so that the test does not wait.
        url, app = await relay_factory(
            on_redis(text, server.url, "relay:", ownership_ttl=2, timeout=1, reclaim_idle=2)
        )
        assert (await send(url, track("alice", "A1", "m-1")))[0] == 200
        await customerio.wait_for(1)
        assert (await send(url, track("alice", "A2", "m-2"), track("bob", "B1", "m-3")))[0] == 200
        server.stop()
        status, body, headers = await send(url, track("carol", "C1", "m-4"))
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert f"Redis at 127.0.0.1:{server.port}/0 failed" in body["message"]
        status, ready = await readyz(url)
        assert status == 503 and f"Redis at 127.0.0.1:{server.port}/0" in ready["reason"]
        customerio.released.set()  # A1's answer comes while Redis is away
        await asyncio.sleep(1.0)
        server.start()
        deadline = time.monotonic() + 10
        while (await readyz(url))[0] != 200:
            assert time.monotonic() < deadline, "not ready again within 10 s"
            await asyncio.sleep(0.1)
        assert (await send(url, track("carol", "C1", "m-4")))[0] == 200
        requests = await customerio.wait_for(4, timeout=15)
        await asyncio.sleep(0.5)
        sent = [(r.path.split("/")[4], r.body["name"]) for r in requests]
        assert sorted(set(sent)) == [
            ("alice", "A1"),
            ("alice", "A2"),
            ("bob", "B1"),
            ("carol", "C1"),
        ]
        alice = [name for who, name in sent if who == "alice"]
        assert alice[-1] == "A2" and alice.index("A2") > alice.index("A1")
        assert await relay_of(app).store.counts() == {}
    finally:
        server.stop()


def test_serve_refuses_a_redis_that_can_lose_a_200_when_told_to(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "everysec")
    server.start()
    try:
        text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9")
        config = tmp_path / "relay.yaml"
        config.write_text(on_redis(text, server.url, "relay:", require_durable="true"))
        result = run_relay(["serve", "--config", str(config)], tmp_path, {})
        assert result.returncode == 1
        assert (
            f"not starting: Redis at 127.0.0.1:{server.port}/0 writes its append-only file to disk"
            " with appendfsync everysec: up to a second of acknowledged events can be lost if"
            " the machine stops; set appendfsync always for none"
            " (storage.redis.require_durable is set)"
        ) in result.stderr
    finally:
        server.stop()


def test_serve_says_which_redis_does_not_answer(tmp_path: Path) -> None:
    need_redis()  # redis-py is needed for the config to be taken
    port = free_port()
    text = config_yaml(tmp_path / "relay.db", "http://127.0.0.1:9")
    config = tmp_path / "relay.yaml"
    config.write_text(on_redis(text, f"redis://:hunter2secret@127.0.0.1:{port}/3", "relay:"))
    result = run_relay(["serve", "--config", str(config)], tmp_path, {})
    assert result.returncode == 1
    assert f"not starting: cannot reach Redis at 127.0.0.1:{port}/3:" in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout
