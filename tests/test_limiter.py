"""The rate limit's budget: never more than `rate` requests in any one-second window, and the
full rate when requests are always waiting, even when each goes out a little late."""

from __future__ import annotations

import asyncio
import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.destinations.limiter import WINDOW, WINDOW_MARGIN, Budget, DestinationLimiter


def busiest_window(times: list[float], length: float = WINDOW) -> int:
    """The most of `times` (sorted) in any half-open window of `length` seconds."""
    return max((bisect.bisect_left(times, t + length) - i for i, t in enumerate(times)), default=0)


def run(rate: float, demands: list[float], lateness: list[float]) -> list[float]:
    """When requests go: each wants to go at its demand time (or when the one before it
    went), then goes as soon as the budget allows, plus that request's lateness."""
    budget = Budget(rate)
    sent: list[float] = []
    now = 0.0
    for i, demand in enumerate(demands):
        now = max(now, demand)
        while (wait := budget.wait(now)) > 0:
            now += wait + lateness[i % len(lateness)]
        budget.take(now)
        sent.append(now)
    return sent


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
