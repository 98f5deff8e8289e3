"""Delivery workers: lease deliveries in order per person, send them, and settle each one.

One worker per destination runs `concurrency` lanes. A lane leases a batch (the store
never hands out a delivery while an earlier one for the same person is leased or waiting
for a retry), gives it to the destination's sink, then completes, retries, dead-letters or
releases each delivery. Retries back off exponentially with full jitter, never sooner than
Retry-After; a delivery is dead-lettered for failing only when it is older than `max_age`
and has failed at least three times. Refused credentials pause the destination, keeping
its queue, and it is probed again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from relay.errors import StoreUnavailable
from relay.metrics import Metrics
from relay.sinks.outcome import Dead, Done, Hold, Outcome, Pause, Retry, Skipped
from relay.store.base import Delivery, Store
from relay.store.base import Retry as StoreRetry

log = logging.getLogger("relay.delivery")

MIN_ATTEMPTS_BEFORE_GIVING_UP = 3
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
PAUSE_FIRST = 30.0
PAUSE_CAP = 300.0
# After this many leases in a row that delivered nothing and had to retry, the destination
# is taken to be down: lanes wait before leasing again instead of scanning the backlog.
OUTAGE_AFTER = 3
# A lease that came back less than full waits this long before the next one, so that
# deliveries accumulate into batches instead of one lease per accepted request.
LINGER = 0.05


class Sink(Protocol):
    async def deliver(self, deliveries: Sequence[Delivery]) -> dict[int, Outcome]: ...


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base·2^attempts)], but at least the base."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** min(attempts, 20)))
    return max(BACKOFF_BASE, float(rand()) * ceiling)


class DestinationWorker:
    def __init__(
        self,
        key: str,
        sink: Sink | None,
        store: Store,
        metrics: Metrics,
        *,
        concurrency: int,
        lease_size: int,
        max_age: float,
        unconfigured: str | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 1.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.key = key
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self.concurrency = concurrency
        self.lease_size = lease_size
        self.max_age = max_age
        self.clock = clock
        self.poll_interval = poll_interval
        self.rand = rand
        self.paused_reason: str | None = unconfigured
        self.paused_until = float("inf") if unconfigured else 0.0
        self._pause_step = PAUSE_FIRST
        self._failed_leases = 0
        self.quiet_until = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self.metrics.paused.labels(key).set(1 if unconfigured else 0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.sink is None:
            log.warning("destination %s is paused: %s", self.key, self.paused_reason)
            return
        self._lanes = [
            asyncio.create_task(self._lane(), name=f"relay-deliver-{self.key}-{i}")
            for i in range(self.concurrency)
        ]

    def notify(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Finish what is in flight within `timeout`, then release what is left."""
        self._stopping = True
        self._wake.set()
        if not self._lanes:
            return
        _done, pending = await asyncio.wait(self._lanes, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lanes = []

    @property
    def state(self) -> dict[str, object]:
        if self.paused_reason and self.paused_until > self.clock():
            return {"state": "paused", "reason": self.paused_reason}
        return {"state": "ok"}

    # ------------------------------------------------------------------ lanes

    async def _lane(self) -> None:
        while not self._stopping:
            now = self.clock()
            if self.paused_until > now:
                await self._sleep(self.paused_until - now)
                continue
            if self.quiet_until > now:
                await self._sleep(self.quiet_until - now)
                continue
            try:
                leased = await self.store.lease(self.key, self.lease_size, now)
            except Exception as exc:  # the store may be briefly unwritable; keep the lane alive
                log.error("lease failed for %s: %s", self.key, exc)
                await self._sleep(self.poll_interval)
                continue
            if not leased:
                await self._sleep(self.poll_interval)
                continue
            await self._run(leased)
            if len(leased) < self.lease_size and not self._stopping:
                await asyncio.sleep(LINGER)

    async def _run(self, leased: list[Delivery]) -> None:
        assert self.sink is not None
        try:
            outcomes = await self.sink.deliver(leased)
        except asyncio.CancelledError:
            # Shutdown ran out of time: nothing was settled, give everything back.
            await asyncio.shield(self.store.release([d.id for d in leased]))
            raise
        except Exception:
            log.exception("unexpected failure delivering to %s; will retry", self.key)
            outcomes = {d.id: Retry("internal error while sending") for d in leased}
        while True:
            try:
                await asyncio.shield(self._settle(leased, outcomes))
                return
            except StoreUnavailable as exc:
                # The outcome must be recorded, or these deliveries stay leased until the
                # next start: keep trying, unless shutting down (a start releases them).
                log.error("could not record deliveries to %s, will retry: %s", self.key, exc)
                if self._stopping:
                    return
                await asyncio.sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=min(seconds, self.poll_interval))
        self._wake.clear()

    async def _settle(self, leased: list[Delivery], outcomes: dict[int, Outcome]) -> None:
        now = self.clock()
        done: list[int] = []
        retries: list[StoreRetry] = []
        dead: list[tuple[int, str]] = []
        release: list[int] = []
        pause: str | None = None
        skipped = 0
        for d in leased:
            outcome = outcomes.get(d.id, Hold())
            if isinstance(outcome, Done):
                done.append(d.id)
                skipped += isinstance(outcome, Skipped)
            elif isinstance(outcome, Dead):
                dead.append((d.id, outcome.reason))
            elif isinstance(outcome, Retry):
                attempts = d.attempts + 1
                age = now - d.created_at
                if attempts >= MIN_ATTEMPTS_BEFORE_GIVING_UP and age >= self.max_age:
                    dead.append(
                        (
                            d.id,
                            f"gave up after {attempts} attempts over {age / 3600:.1f} h:"
                            f" {outcome.error}",
                        )
                    )
                else:
                    delay = max(outcome.after or 0.0, backoff(attempts, self.rand))
                    retries.append(StoreRetry(d.id, now + delay, outcome.error))
            elif isinstance(outcome, Pause):
                pause = outcome.reason
                release.append(d.id)
            else:
                release.append(d.id)
        if retries and not done:
            self._failed_leases += 1
            if self._failed_leases >= OUTAGE_AFTER:
                self.quiet_until = min(r.next_at for r in retries)
        elif done:
            self._failed_leases = 0
            self.quiet_until = 0.0
        await self.store.dead_letter(dead, now)
        await self.store.retry(retries)
        await self.store.complete(done)
        await self.store.release(release)
        if skipped:
            self.metrics.skipped.labels(self.key).inc(skipped)
        if done:
            self.metrics.delivered.labels(self.key).inc(len(done) - skipped)
            if self.paused_reason and pause is None:
                log.info("destination %s accepts requests again", self.key)
                self.paused_reason = None
                self._pause_step = PAUSE_FIRST
                self.metrics.paused.labels(self.key).set(0)
        if retries:
            self.metrics.retried.labels(self.key).inc(len(retries))
            log.warning(
                "destination %s: %d deliveries will be retried (%s)",
                self.key,
                len(retries),
                retries[0].error,
            )
        if dead:
            self.metrics.dead.labels(self.key).inc(len(dead))
            log.warning(
                "destination %s: %d deliveries dead-lettered (%s)", self.key, len(dead), dead[0][1]
            )
        if pause is not None:
            self.paused_reason = pause
            self.paused_until = now + self._pause_step
            self._pause_step = min(PAUSE_CAP, self._pause_step * 2)
            self.metrics.paused.labels(self.key).set(1)
            log.error(
                "destination %s paused for %.0f s, its queue is kept: %s",
                self.key,
                self.paused_until - now,
                pause,
            )
