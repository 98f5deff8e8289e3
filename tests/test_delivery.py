"""Delivery to Customer.io: retries, dead letters, pauses, order per person, rate limit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from relay.delivery import DestinationWorker, backoff
from relay.destinations.outcome import DONE
from relay.metrics import Metrics
from relay.store.base import NewDelivery, NewEvent, Settlement
from relay.store.memory import MemoryStore
from tests.conftest import WRITE_KEY, RelayFactory, StandIn, basic, relay_of
from tests.helpers import post, sent_ops, track

AUTH = {"Authorization": basic(WRITE_KEY)}


async def send(url: str, *messages: dict[str, Any]) -> None:
    status, body, _ = await post(f"{url}/v1/batch", {"batch": list(messages)}, headers=AUTH)
    assert (status, body) == (200, {"success": True})


async def settle(app: Any, seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


@pytest.mark.parametrize(
    "failure",
    [
        (429, {"Retry-After": "1"}),
        (500, {}),
        (502, {}),
        (503, {}),
        (408, {}),
        (423, {}),
    ],
    ids=["429-retry-after", "500", "502", "503", "408", "423"],
)
async def test_retryable_status_is_retried_until_delivered(
    relay_factory: RelayFactory, customerio: StandIn, failure: tuple[int, dict[str, str]]
) -> None:
    status, headers = failure
    customerio.respond(status, {"meta": {"error": "try later"}}, headers)
    url, app = await relay_factory(cio_url=customerio.url)
    await send(url, track("u1", "Retried", "m-1"))
    first, second = await customerio.wait_for(2, timeout=15)
    assert first.body == second.body  # the same op, the same ULID id: Customer.io dedups
    if "Retry-After" in headers:
        assert second.at - first.at >= 1.0
    await settle(app)
    counts = await relay_of(app).store.counts()
    assert counts == {}  # delivered and cleaned up, nothing dead


async def test_connection_reset_is_retried(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.reset_connection()
    url, _ = await relay_factory(cio_url=customerio.url)
    await send(url, track("u1", "Reset", "m-1"))
    requests = await customerio.wait_for(2, timeout=15)
    assert requests[-1].body["batch"][0]["name"] == "Reset"


async def test_timeout_is_retried(relay_factory: RelayFactory, customerio: StandIn) -> None:
    customerio.hang()
    url, _ = await relay_factory(cio_url=customerio.url)
    await send(url, track("u1", "Slow", "m-1"))
    requests = await customerio.wait_for(2, timeout=20)
    assert requests[1].at - requests[0].at >= 2.0  # the 2 s timeout of the test config


async def test_400_is_dead_lettered_with_the_response_body(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.respond(400, {"meta": {"error": "invalid identifier"}})
    url, app = await relay_factory(cio_url=customerio.url)
    await send(url, track("u1", "Refused", "m-1"))
    await customerio.wait_for(1)
    await settle(app, 1.5)
    assert len(customerio.requests) == 1  # never retried
    [dead] = await relay_of(app).store.dead_letters()
    assert dead.destination == "customerio.main"
    assert dead.reason == 'HTTP 400: {"meta": {"error": "invalid identifier"}}'
    assert dead.message["event"] == "Refused"


async def test_401_pauses_the_destination_without_dead_lettering(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.respond(401, {"meta": {"error": "unauthorized"}})
    url, app = await relay_factory(cio_url=customerio.url)
    await send(url, track("u1", "A", "m-1"), track("u2", "B", "m-2"))
    await customerio.wait_for(1)
    await settle(app, 1.5)
    assert len(customerio.requests) == 1  # paused: no hammering with bad credentials
    relay = relay_of(app)
    assert await relay.store.dead_letters() == []
    counts = await relay.store.counts()
    assert counts["customerio.main"]["pending"] == 2  # the backlog is kept
    async with aiohttp.ClientSession() as session, session.get(f"{url}/readyz") as resp:
        body = await resp.json()
    state = body["destinations"]["customerio.main"]
    assert state["state"] == "paused" and "credentials" in state["reason"]
    metrics = relay.metrics.paused.labels("customerio.main")._value.get()
    assert metrics == 1


async def test_a_retry_holds_back_only_that_person(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    # v1 sends one request per call, so the stand-in can fail exactly one person's event.
    customerio.respond(500)
    url, app = await relay_factory(cio_url=customerio.url, api="v1")
    # The top of the jitter: A1 is retried 2 s after it failed, later than the first probe
    # of the destination (1 s), which therefore takes the next delivery that is due.
    relay_of(app).workers["customerio.main"].rand = lambda: 1.0
    await send(url, track("alice", "A1", "m-1"))
    await customerio.wait_for(1)
    await send(url, track("alice", "A2", "m-2"), track("bob", "B1", "m-3"))
    requests = await customerio.wait_for(4, timeout=15)
    order = [(r.path, r.body["name"]) for r in requests]
    # bob is not held back by alice's retry; alice's A2 waits for A1.
    assert order == [
        ("/api/v1/customers/alice/events", "A1"),
        ("/api/v1/customers/bob/events", "B1"),
        ("/api/v1/customers/alice/events", "A1"),
        ("/api/v1/customers/alice/events", "A2"),
    ]
    # B1 was the probe, 1 s after A1 failed; A1 went again once its 2 s were up.
    assert 0.8 <= requests[1].at - requests[0].at <= 1.6
    assert 1.8 <= requests[2].at - requests[0].at <= 3.0


async def test_order_per_person_holds_inside_and_across_batches(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, extra_cio="      batch_size: 7")
    events = [track(f"p{i % 3}", f"E{i}", f"m-{i}") for i in range(40)]
    await send(url, *events)
    await customerio.wait_for(6, timeout=15)
    await asyncio.sleep(0.5)
    assert all(len(r.body["batch"]) <= 7 for r in customerio.requests)
    ops = sent_ops(customerio)
    assert len(ops) == 40
    for person in ("p0", "p1", "p2"):
        names = [op["name"] for op in ops if op["identifiers"]["id"] == person]
        assert names == [f"E{i}" for i in range(40) if f"p{i % 3}" == person]


async def test_rate_limit_is_never_exceeded(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    url, _ = await relay_factory(cio_url=customerio.url, api="v1", rate_limit=10)
    await send(url, *[track(f"user-{i}", "E", f"m-{i}") for i in range(25)])
    requests = await customerio.wait_for(25, timeout=10)
    times = sorted(r.at for r in requests)
    span = times[-1] - times[0]
    assert span >= 2.3  # 25 requests at 10/s cannot take less than 2.4 s (minus jitter)
    # No one-second window holds more than the limit; one extra is allowed for the
    # arrival jitter of the loopback server at a window's edge.
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        assert in_window <= 11


async def test_unconfigured_destination_holds_events_without_dead_lettering(
    relay_factory: RelayFactory, customerio: StandIn, tmp_path: Any
) -> None:
    from relay.app import create_app
    from relay.config import parse_config
    from tests.conftest import config_yaml

    text = config_yaml(tmp_path / "u.db", customerio.url).replace(
        'site_id: "site-123"', 'site_id: "${CIO_SITE_ID}"'
    )
    config = parse_config(text, "relay.yaml", {})
    assert [m.name for m in config.missing] == ["CIO_SITE_ID"]
    app = create_app(config)
    from aiohttp.test_utils import TestServer

    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        await send(url, track("u1", "Held", "m-1"))
        await asyncio.sleep(1.2)
        assert customerio.requests == []
        relay = relay_of(app)
        assert (await relay.store.counts())["customerio.main"] == {"pending": 1}
        state = relay.workers["customerio.main"].state
        assert state["state"] == "paused" and "CIO_SITE_ID" in str(state["reason"])
    finally:
        await server.close()


def test_backoff_grows_with_full_jitter_and_a_floor() -> None:
    assert backoff(1, lambda: 0.0) == 1.0
    assert backoff(3, lambda: 1.0) == 8.0
    assert backoff(30, lambda: 1.0) == 300.0
    assert backoff(4, lambda: 0.5) == 8.0


async def test_gives_up_only_when_old_and_failed_three_times(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    from relay.destinations.outcome import Retry
    from relay.store.base import Delivery

    url, app = await relay_factory(cio_url=customerio.url)
    worker = relay_of(app).workers["customerio.main"]
    store = relay_of(app).store
    now = worker.clock()
    await send(url, track("u1", "Old", "m-old"))
    await customerio.wait_for(1)
    # Settle synthetic outcomes on real rows: young with many attempts → retried;
    # old with few attempts → retried; old and failed three times → dead.
    from relay.store.base import NewDelivery, NewEvent

    events = [
        NewEvent(
            "web",
            "segment",
            b'{"type":"track"}',
            now - age,
            f"k{i}",
            (NewDelivery("customerio.test"),),
        )
        for i, age in enumerate([10.0, 90_000.0, 90_000.0])
    ]
    await store.enqueue(events)
    leased = await store.lease("customerio.test", 10, now)
    attempts = [5, 1, 2]
    rows = [
        Delivery(
            d.id,
            d.destination,
            d.ordering_key,
            a,
            d.created_at,
            d.source,
            d.kind,
            d.message_json,
        )
        for d, a in zip(leased, attempts, strict=True)
    ]
    await worker._recorded(worker._record_soon(rows, {d.id: Retry("HTTP 500") for d in rows}))
    dead = [d for d in await store.dead_letters() if d.destination == "customerio.test"]
    assert len(dead) == 1 and dead[0].id == rows[2].id
    assert dead[0].reason.startswith("gave up after 3 attempts")


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "inf"}, 3600.0),
        ({"Retry-After": "1e12"}, 3600.0),
        ({"Retry-After": "nan"}, None),
        ({"X-RateLimit-Reset": "1e20"}, 3600.0),
        ({"Retry-After": "7"}, 7.0),
    ],
)
def test_retry_after_is_capped_so_a_bad_header_cannot_stall_a_destination(
    headers: dict[str, str], expected: float | None
) -> None:
    from relay.destinations.outcome import retry_after

    assert retry_after(headers, now=1_700_000_000.0) == expected


async def test_a_failing_destination_is_probed_one_request_at_a_time(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.default = (503, {}, {})
    # v1: one request per delivery, so the stand-in sees every attempt on its own.
    url, app = await relay_factory(cio_url=customerio.url, api="v1")
    worker = relay_of(app).workers["customerio.main"]
    await send(url, *[track(f"person-{i}", "E", f"m-{i}") for i in range(30)])
    await customerio.wait_for(6, timeout=20)
    state = worker.state
    assert state["state"] == "retrying" and "HTTP 503" in str(state["reason"])
    # After the requests in flight when it began (up to `concurrency`), one probe at a time,
    # 1 s, then 2, 4 and at most 5 s apart.
    times = [r.at for r in customerio.requests]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    probes = gaps[-2:]
    assert all(gap >= 0.9 for gap in probes), gaps
    assert all(gap <= 5.5 for gap in gaps), gaps


async def test_a_destination_that_recovers_is_served_at_full_rate_within_seconds(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.default = (500, {}, {})
    url, app = await relay_factory(cio_url=customerio.url, api="v1", rate_limit=20)
    worker = relay_of(app).workers["customerio.main"]
    await send(url, *[track(f"person-{i}", "E", f"m-{i}") for i in range(40)])
    await customerio.wait_for(5, timeout=20)  # failing, and probed for a while
    assert worker.failing is not None
    healthy_at = asyncio.get_running_loop().time()
    customerio.default = (200, {}, {})
    loop = asyncio.get_running_loop()

    def delivered() -> list[float]:
        return [r.at for r in customerio.requests if r.at >= healthy_at]

    deadline = loop.time() + 20
    while len({r.path for r in customerio.requests if r.at >= healthy_at}) < 40:
        assert loop.time() < deadline, f"{len(delivered())} delivered since recovery"
        await asyncio.sleep(0.05)
    times = delivered()
    # Found working again by the next probe (at most 5 s), then no waiting for backoffs:
    # the 40 go out at the rate limit (20/s), about 2 s, never faster.
    assert times[0] - healthy_at <= 5.5
    assert times[-1] - times[0] <= 2.0 + 2.5
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + 1.0) <= 21
    assert worker.state == {"state": "ok"}
    await settle(app)
    assert await relay_of(app).store.counts() == {}


async def test_a_429_storm_never_sends_before_retry_after_and_recovers_at_full_rate(
    relay_factory: RelayFactory, customerio: StandIn
) -> None:
    customerio.respond(429, {}, {"Retry-After": "2"}, times=4)
    url, app = await relay_factory(cio_url=customerio.url, api="v1", rate_limit=20)
    await send(url, *[track(f"person-{i}", "E", f"m-{i}") for i in range(20)])
    await customerio.wait_for(4 + 20, timeout=30)
    times = [r.at for r in customerio.requests]
    refused = times[:4]
    # Each request after a 429 waits out its Retry-After (2 s), the others in flight aside.
    first_after_each = [min(t for t in times if t > r) for r in refused[-1:]]
    assert all(t - r >= 1.95 for t, r in zip(first_after_each, refused[-1:], strict=True))
    after = times[4:]
    assert after[-1] - after[0] <= 1.0 + 2.0  # then all 20 at the full 20/s
    assert relay_of(app).workers["customerio.main"].state == {"state": "ok"}


class _SlowToRecord(MemoryStore):
    """A store that takes `seconds` to record outcomes, noting when each recording started
    and ended."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.recorded: list[tuple[float, float]] = []

    async def settle(self, settlement: Settlement, now: float) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(self.seconds)
        await super().settle(settlement, now)
        self.recorded.append((started, loop.time()))


async def _deliver_with_slow_recording(
    people: list[str],
) -> tuple[list[tuple[int, float]], _SlowToRecord]:
    """One lane leasing one delivery at a time, a person each of `people` in order, against a
    store that takes 0.5 s to record outcomes and a poll interval of 30 s: each delivery's id
    and when it was sent (the event loop's clock), and the store, once the worker stopped."""
    loop = asyncio.get_running_loop()
    sent: list[tuple[int, float]] = []

    class Sink:
        async def deliver(self, deliveries: Any) -> dict[int, Any]:
            sent.extend((d.id, loop.time()) for d in deliveries)
            return {d.id: DONE for d in deliveries}

    store = _SlowToRecord(0.5)
    await store.open()
    await store.enqueue(
        [
            NewEvent("web", "segment", b'{"n":%d}' % n, 0.0, person, (NewDelivery("cio.main"),))
            for n, person in enumerate(people)
        ]
    )
    worker = DestinationWorker(
        "cio.main",
        Sink(),
        store,
        Metrics(),
        concurrency=1,
        lease_size=1,
        max_age=86400.0,
        poll_interval=30.0,
    )
    started = loop.time()
    worker.start()
    try:
        while len(sent) < len(people) and loop.time() - started < 10:
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(5.0)
    return sent, store


async def test_a_lane_sends_the_next_lease_while_the_last_ones_outcomes_are_recorded() -> None:
    sent, store = await _deliver_with_slow_recording(["u1", "u2", "u3"])
    assert [i for i, _ in sent] == [1, 2, 3]
    # The second went out before the first's outcome was recorded (which takes 0.5 s).
    assert sent[1][1] < store.recorded[0][1]
    # Stopping waited for every outcome to be recorded.
    assert len(store.recorded) == 3
    assert await store.counts() == {}


async def test_a_lease_held_back_by_outcomes_being_recorded_is_tried_again_once_they_are() -> None:
    """A person's next delivery waits behind the one whose outcome is being recorded, and
    must go as soon as it is recorded, not at the next poll."""
    sent, store = await _deliver_with_slow_recording(["u1", "u1", "u1"])
    assert [i for i, _ in sent] == [1, 2, 3]  # in order, each after the one before it
    assert sent[-1][1] - sent[0][1] < 5.0  # not held back until the next poll (30 s)
    assert await store.counts() == {}  # every outcome recorded
