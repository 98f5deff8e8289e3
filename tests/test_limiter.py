"""The rate limit's budget: never more than `rate` requests in any one-second window, and the
full rate when requests are always waiting, even when each goes out a little late, and
counted from when each is written to the network, however long after it was let go."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.destinations.limiter import WINDOW, WINDOW_MARGIN, Budget, DestinationLimiter
from relay.destinations.sender import Sender
from relay.destinations.transport import AiohttpTransport, Response
from relay.metrics import Metrics
from relay.outgoing import OutgoingRequest
from tests.conftest import StandIn


def busiest_window(times: list[float], length: float = WINDOW) -> int:
    """The most of `times` (sorted) in any half-open window of `length` seconds."""
    return max((bisect.bisect_left(times, t + length) - i for i, t in enumerate(times)), default=0)


def run(rate: float, demands: list[float], lateness: list[float]) -> list[float]:
    """When requests go: each wants to go at its demand time (or when the one before it
    went), then goes as soon as the budget allows, plus that request's lateness; each is
    written the moment it goes."""
    return run_written(rate, demands, lateness, [0.0])


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1, 7, 20, 100, 250.5]),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=400),
    lateness=st.lists(st.floats(0, 0.05), min_size=1, max_size=20),
)
def test_no_one_second_window_holds_more_than_the_rate(
    rate: float, gaps: list[float], lateness: list[float]
) -> None:
    demands = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    sent = run(rate, demands, lateness)
    assert sent == sorted(sent)
    assert busiest_window(sent) <= max(1, int(rate))


def run_written(
    rate: float, demands: list[float], lateness: list[float], delays: list[float]
) -> list[float]:
    """As `run`, but request i is written `delays[i]` after it was let go (a busy event loop
    on the way to the socket), and the budget is told at that moment. Returns the times the
    requests were written, in the order they were."""
    budget = Budget(rate)
    pending: list[tuple[float, int]] = []  # (written at, number), soonest first
    written: list[float] = []

    def write_until(now: float) -> None:
        while pending and pending[0][0] <= now:
            at, number = heapq.heappop(pending)
            budget.written(number, at)
            written.append(at)

    now = 0.0
    for i, demand in enumerate(demands):
        now = max(now, demand)
        write_until(now)
        while (wait := budget.wait(now)) > 0:
            now += wait + lateness[i % len(lateness)]
            write_until(now)
        number = budget.take(now)
        heapq.heappush(pending, (now + delays[i % len(delays)], number))
    write_until(float("inf"))
    return written


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1, 7, 20, 100, 250.5]),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=400),
    lateness=st.lists(st.floats(0, 0.05), min_size=1, max_size=20),
    delays=st.lists(st.floats(0, 0.5), min_size=1, max_size=20),
)
def test_no_one_second_window_holds_more_than_the_rate_as_written(
    rate: float, gaps: list[float], lateness: list[float], delays: list[float]
) -> None:
    # Writes that come up to half a second after the limiter let a request go, in any
    # order: counted from the limiter's let-go, 0.5 s late writes would put twice the rate
    # in a second.
    demands = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    written = run_written(rate, demands, lateness, delays)
    assert len(written) == len(demands)
    assert busiest_window(written) <= max(1, int(rate))


def test_a_write_that_comes_late_costs_the_rate_only_its_own_lateness() -> None:
    # Each request is written 15 ms after it was let go. The window counts the request
    # `rate` places earlier from its write, and this one from its let-go (its write is yet
    # to come): a backlog drains at 100 / (1.02 + 0.015), and no slower.
    written = run_written(100, [0.0] * 1000, [0.003], [0.015])
    rate = (len(written) - 1) / (written[-1] - written[0])
    assert 0.999 * 100 / (WINDOW + WINDOW_MARGIN + 0.015) <= rate <= 100 / (WINDOW + WINDOW_MARGIN)
    assert busiest_window(written) == 100


def test_a_request_written_late_holds_back_the_one_rate_places_after_it() -> None:
    budget = Budget(2)
    first = budget.take(0.0)
    budget.take(0.5)
    assert budget.wait(1.02) == pytest.approx(0.0)  # counted from when it was let go
    budget.written(first, 0.3)  # it went out 0.3 s after
    assert budget.wait(1.02) == pytest.approx(0.3)
    budget.written(first, 0.1)  # an earlier time never moves it back
    assert budget.wait(1.02) == pytest.approx(0.3)


def test_a_request_written_after_it_left_the_window_still_counts() -> None:
    budget = Budget(1)  # the window keeps one request
    first = budget.take(0.0)
    second = budget.take(1.02)  # `first` is out of `sent` now, not yet written
    budget.written(first, 1.5)
    budget.written(second, 1.1)
    assert budget.wait(2.0) == pytest.approx(0.52)  # a second and the margin after 1.5


def test_a_backlog_is_sent_at_the_full_rate_though_every_request_is_late() -> None:
    # Each request goes 3 ms after its turn (a busy event loop): a bucket of one loses those
    # 3 ms every time (77 requests/s of 100); the schedule makes them up, to the window's
    # 100 requests in 1.02 s.
    sent = run(100, [0.0] * 1000, [0.003])
    rate = (len(sent) - 1) / (sent[-1] - sent[0])
    assert 97.5 <= rate <= 100 / (WINDOW + WINDOW_MARGIN)
    assert busiest_window(sent) == 100


def test_requests_are_spread_not_sent_in_a_burst_after_a_pause() -> None:
    budget = Budget(10)
    budget.take(0.0)
    assert budget.wait(100.0) <= 0  # idle for long: one goes at once
    budget.take(100.0)
    # The next only half a slot later, not a second's worth at once.
    assert budget.wait(100.0) == pytest.approx(0.05)


async def test_a_request_waiting_its_turn_when_a_429_comes_waits_for_retry_after_too() -> None:
    limiter = DestinationLimiter(10)  # one request every 0.1 s (at most half a slot early)
    loop = asyncio.get_running_loop()
    await limiter.acquire()
    waiting = asyncio.create_task(limiter.acquire())  # its turn comes in 0.05 s
    await asyncio.sleep(0.02)
    limiter.throttled(1.0)  # meanwhile a 429 asks for 1 s
    started = loop.time()
    await waiting
    assert loop.time() - started >= 0.95


async def test_acquire_returns_what_records_the_time_a_request_is_written() -> None:
    now = [0.0]
    limiter = DestinationLimiter(2, clock=lambda: now[0])
    first = await limiter.acquire()
    now[0] = 0.5
    await limiter.acquire()
    now[0] = 0.8
    first()  # written at 0.8
    assert limiter.budget.wait(1.02) == pytest.approx(0.8)


class LateTransport(AiohttpTransport):
    """Reaches the network `late` seconds after it was asked: a busy event loop."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def send(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await asyncio.sleep(self.late)
        return await super().send(*args, **kwargs)


async def test_a_request_counts_in_the_window_from_when_aiohttp_writes_it(
    customerio: StandIn,
) -> None:
    limiter = DestinationLimiter(2)
    transport = LateTransport(0.3)
    sender = Sender("customerio.main", customerio.url, {}, 5.0, transport, limiter, Metrics())
    try:
        asked = time.monotonic()
        outcome, response = await sender.send(OutgoingRequest("POST", "/api/v2/batch", {"a": 1}))
    finally:
        await transport.close()
    assert response is not None and response.status == 200
    (counted,) = limiter.budget.sent
    (arrived,) = customerio.requests
    assert asked + 0.3 <= counted <= arrived.at


@pytest.mark.parametrize(("method", "body"), [("POST", b'{"a":1}'), ("GET", None)])
async def test_aiohttp_tells_once_as_it_writes_a_request(
    customerio: StandIn, method: str, body: bytes | None
) -> None:
    told: list[float] = []
    transport = AiohttpTransport()
    try:
        asked = time.monotonic()
        response = await transport.send(
            method,
            customerio.url + "/x",
            headers={},
            body=body,
            timeout=5.0,
            on_written=lambda: told.append(time.monotonic()),
        )
        # Without someone to tell, the request goes just the same.
        again = await transport.send(
            method, customerio.url + "/x", headers={}, body=body, timeout=5.0
        )
    finally:
        await transport.close()
    assert response == Response(200, response.headers, b"{}")
    assert again.status == 200
    assert len(told) == 1
    assert asked <= told[0] <= customerio.requests[0].at
