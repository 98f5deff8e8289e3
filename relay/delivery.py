"""Delivery workers: lease deliveries in order per person, send them, and settle each one.

One worker per destination runs `concurrency` lanes. A lane leases a batch (the store
never hands out a delivery while an earlier one for the same person is leased or waiting
for a retry), gives it to the destination's sink, then completes, retries, dead-letters or
releases each delivery. A delivery is dead-lettered for failing only when it is older than
`max_age` and has failed at least three times.

When a request fails as a whole (no answer, 408, 429, 5xx), the destination is *retrying*:
one lane probes it with one delivery, one request at a time, waiting 1 s, then 2, 4 and at
most 5 s between probes, and never sooner than Retry-After; the other lanes wait. The first
probe that succeeds ends it, and every lane delivers at the full rate again, including the
deliveries that failed meanwhile (one that failed in a probe backs off 5 s at most: the
destination failed, not it). A delivery that fails while the destination otherwise works
backs off on its own, exponentially with full jitter. Refused credentials pause the
destination, keeping its queue, and it is tried again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from relay.destinations.outcome import Dead, Done, Hold, Outcome, Pause, Retry, Skipped
from relay.errors import StoreUnavailable
from relay.logs import about_deliveries
from relay.metrics import Metrics
from relay.store.base import Delivery, Settlement, Store
from relay.store.base import Retry as StoreRetry

log = logging.getLogger("relay.delivery")

MIN_ATTEMPTS_BEFORE_GIVING_UP = 3
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
PAUSE_FIRST = 30.0
PAUSE_CAP = 300.0
# Between probes of a destination that is retrying: short, so that it is found working
# again within seconds; one request each, so that it costs a failing destination little.
PROBE_FIRST = 1.0
PROBE_CAP = 5.0
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
        note_error: Callable[[str, str], None] | None = None,
    ) -> None:
        self.key = key
        # Told (destination, error) of each settled request that failed: the status page.
        self.note_error = note_error
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
        # While the destination fails: the last error, when it began, the next probe.
        self.failing: str | None = None
        self.failing_since = 0.0
        self.probe_at = 0.0
        self._probe_step = PROBE_FIRST
        self._probing = False  # a lane is sending the probe
        self._lease_failing = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        # Settlements being recorded in the store (see _record_soon).
        self._recording: set[asyncio.Task[None]] = set()
        self.metrics.paused.labels(key).set(1 if unconfigured else 0)
        self.metrics.retrying.labels(key).set(0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.sink is None:
            log.warning(
                "destination %s is paused: %s",
                self.key,
                self.paused_reason,
                extra=about_deliveries(self.key),
            )
            return
        # In a context of their own: lanes started while a request is handled (a reload
        # asked for over HTTP) must not carry that request's id on every line they write.
        self._lanes = [
            asyncio.create_task(
                self._lane(), name=f"relay-deliver-{self.key}-{i}", context=contextvars.Context()
            )
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
        # What a cancelled lane left being recorded: it ends by itself once recorded (or,
        # the store being unavailable, at its next try now that relay stops).
        if self._recording:
            await asyncio.wait(set(self._recording))

    @property
    def state(self) -> dict[str, object]:
        now = self.clock()
        if self.paused_reason and self.paused_until > now:
            return {"state": "paused", "reason": self.paused_reason}
        if self.failing is not None:
            return {
                "state": "retrying",
                "reason": self.failing,
                "since_seconds": round(now - self.failing_since, 1),
                "next_probe_in_seconds": round(max(0.0, self.probe_at - now), 1),
            }
        return {"state": "ok"}

    # ------------------------------------------------------------------ lanes

    async def _lane(self) -> None:
        # The store records one lease's outcomes while the lane leases, maps and sends the
        # next: at most one recording is in flight per lane, and the next lease cannot take
        # anything from a lease not yet recorded (it is still leased, its people still held).
        recording: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                now = self.clock()
                if self.paused_until > now:
                    await self._sleep(self.paused_until - now)
                    continue
                if self.failing is None:
                    leased = await self._lease(self.lease_size, now)
                    if leased:
                        outcomes = await self._send(leased)
                        await self._recorded(recording)
                        recording = self._record_soon(leased, outcomes)
                        if len(leased) < self.lease_size and not self._stopping:
                            await asyncio.sleep(LINGER)
                    continue
                # Probing: one request at a time, each recorded before the next.
                await self._recorded(recording)
                recording = None
                if self._probing or self.probe_at > now:
                    # Another lane probes, or the next probe is not due: wait for either.
                    await self._sleep(self.probe_at - now if self.probe_at > now else PROBE_CAP)
                    continue
                self._probing = True
                try:
                    leased = await self._lease(1, now)
                    if leased:
                        outcomes = await self._send(leased, probe=True)
                        await self._recorded(self._record_soon(leased, outcomes, probe=True))
                finally:
                    self._probing = False
        finally:
            await self._recorded(recording)

    def _record_soon(
        self, leased: list[Delivery], outcomes: dict[int, Outcome], *, probe: bool = False
    ) -> asyncio.Task[None]:
        """Settle `leased` now (what it means for the destination's state takes effect at
        once) and record the settlement in the store in a task of its own, which neither a
        stop nor a cancelled lane interrupts."""
        settlement, now = self._settle(leased, outcomes, probe=probe)
        task = asyncio.create_task(self._record(settlement, now), name=f"relay-record-{self.key}")
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return task

    @staticmethod
    async def _recorded(recording: asyncio.Task[None] | None) -> None:
        """Wait for a recording to be done; a cancelled lane leaves it running."""
        if recording is not None:
            await asyncio.shield(recording)

    async def _lease(self, size: int, now: float) -> list[Delivery]:
        """Up to `size` due deliveries; none when there are none, after waiting a poll, or
        until an outcome being recorded is (its person may hold back what is due)."""
        try:
            leased = await self.store.lease(self.key, size, now)
        except Exception as exc:  # the store may be briefly unwritable; keep the lane alive
            if not self._lease_failing:
                log.error(
                    "lease failed for %s: %s", self.key, exc, extra=about_deliveries(self.key)
                )
            self._lease_failing = True
            await self._sleep(self.poll_interval)
            return []
        if self._lease_failing:
            log.warning("leasing for %s works again", self.key, extra=about_deliveries(self.key))
            self._lease_failing = False
        if not leased:
            if self._recording and not self._stopping:
                # What is due may wait behind deliveries whose outcomes are being recorded
                # (their people are held until then): lease again as soon as one is.
                await asyncio.wait(
                    set(self._recording),
                    timeout=self.poll_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            else:
                await self._sleep(self.poll_interval)
        return leased

    async def _send(self, leased: list[Delivery], *, probe: bool = False) -> dict[int, Outcome]:
        """Each leased delivery's outcome from the sink."""
        assert self.sink is not None
        try:
            return await self.sink.deliver(leased)
        except asyncio.CancelledError:
            # Shutdown ran out of time: nothing was settled, give everything back.
            await asyncio.shield(
                self.store.settle(Settlement(release=[d.id for d in leased]), self.clock())
            )
            raise
        except Exception:
            log.exception(
                "unexpected failure delivering to %s; will retry",
                self.key,
                extra=about_deliveries(self.key, [d.id for d in leased]),
            )
            return {d.id: Retry("internal error while sending") for d in leased}

    async def _record(self, settlement: Settlement, now: float) -> None:
        """Record `settlement` in the store, trying again until it is (or relay stops)."""
        while True:
            try:
                await self.store.settle(settlement, now)
                return
            except StoreUnavailable as exc:
                # The outcome must be recorded, or these deliveries stay leased until the
                # next start: keep trying, unless shutting down (a start releases them).
                ids = [*settlement.done, *(r.id for r in settlement.retries)]
                ids += [i for i, _ in settlement.dead] + list(settlement.release)
                log.error(
                    "could not record deliveries to %s, will retry: %s",
                    self.key,
                    exc,
                    extra=about_deliveries(self.key, ids),
                )
                if self._stopping:
                    return
                await asyncio.sleep(1.0)

    def _failed(
        self, now: float, error: str, retry_after: float, probe: bool, ids: Sequence[int]
    ) -> None:
        """A request failed as a whole (carrying `ids`): probe the destination until one
        succeeds."""
        if self.failing is None:
            self.failing_since = now
            self._probe_step = PROBE_FIRST
            self.metrics.retrying.labels(self.key).set(1)
            log.warning(
                "destination %s is failing (%s); probing it with one request at a time",
                self.key,
                error,
                extra=about_deliveries(self.key, ids),
            )
        self.failing = error
        if probe or self.probe_at <= now:
            self.probe_at = now + max(retry_after, self._probe_step)
            self._probe_step = min(PROBE_CAP, self._probe_step * 2)
        else:  # a request sent before the failing began: it may only push the probe later
            self.probe_at = max(self.probe_at, now + retry_after)

    def _recovered(self, now: float) -> None:
        log.info(
            "destination %s accepts requests again, after %.1f s of failures",
            self.key,
            now - self.failing_since,
            extra=about_deliveries(self.key),
        )
        self.failing = None
        self.probe_at = 0.0
        self._probe_step = PROBE_FIRST
        self.metrics.retrying.labels(self.key).set(0)
        self._wake.set()  # every lane delivers again

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=min(seconds, self.poll_interval))
        self._wake.clear()

    def _settle(
        self, leased: list[Delivery], outcomes: dict[int, Outcome], *, probe: bool = False
    ) -> tuple[Settlement, float]:
        """What each outcome means for its delivery (and for the destination's state, at
        once), with the time it was settled: for the store to record."""
        now = self.clock()
        retry_after = 0.0
        done: list[int] = []
        retries: list[StoreRetry] = []
        dead: list[tuple[int, str]] = []
        release: list[int] = []
        pause: str | None = None
        paused_ids: list[int] = []
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
                    wait = backoff(attempts, self.rand)
                    if probe:  # the destination failed, not this delivery: no long wait
                        wait = min(wait, PROBE_CAP)
                    retry_after = max(retry_after, outcome.after or 0.0)
                    delay = max(outcome.after or 0.0, wait)
                    retries.append(StoreRetry(d.id, now + delay, outcome.error))
            elif isinstance(outcome, Pause):
                pause = outcome.reason
                paused_ids.append(d.id)
                release.append(d.id)
            else:
                release.append(d.id)
        if retries and not done:  # the request failed as a whole: the destination fails
            self._failed(now, retries[0].error, retry_after, probe, [r.id for r in retries])
        elif done and self.failing is not None:
            self._recovered(now)
        if self.note_error is not None:
            for error in (*(r.error for r in retries[:1]), *(reason for _, reason in dead[:1])):
                self.note_error(self.key, error)
        if skipped:
            self.metrics.skipped.labels(self.key).inc(skipped)
        if done:
            self.metrics.delivered.labels(self.key).inc(len(done) - skipped)
            if self.paused_reason and pause is None:
                log.info(
                    "destination %s accepts requests again",
                    self.key,
                    extra=about_deliveries(self.key),
                )
                self.paused_reason = None
                self._pause_step = PAUSE_FIRST
                self.metrics.paused.labels(self.key).set(0)
        if retries:
            self.metrics.retried.labels(self.key).inc(len(retries))
            # While it is retrying, its state says so once (see _failed), not every probe.
            log.log(
                logging.DEBUG if probe else logging.WARNING,
                "destination %s: %d deliveries will be retried (%s)",
                self.key,
                len(retries),
                retries[0].error,
                extra=about_deliveries(self.key, [r.id for r in retries]),
            )
        if dead:
            self.metrics.dead.labels(self.key).inc(len(dead))
            log.warning(
                "destination %s: %d deliveries dead-lettered (%s)",
                self.key,
                len(dead),
                dead[0][1],
                extra=about_deliveries(self.key, [i for i, _ in dead]),
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
                extra=about_deliveries(self.key, paused_ids),
            )
        return Settlement(done, retries, dead, release), now
