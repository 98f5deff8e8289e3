"""Permanent fault tests: relay as a real process, on loopback, under faults outside it.

Each test starts relay (`python -m relay serve`) on a config in tmp_path, sends uniquely
named events from a few concurrent senders (tests/faults.py `Load`: each sender owns its
persons and sends one request at a time, so each person's order is the order of the
acknowledgements), applies one fault, and prints one summary line, `FAULT SUMMARY {...}`
(run pytest with -s to see it; it is also appended, as JSON, to the file named by
RELAY_FAULT_REPORT):

- acknowledged: events answered 200; delivered: distinct events the destination's
  stand-in accepted with a 2xx while relay still waited for the answer (a request that
  hung, or whose connection was reset or closed, delivered nothing even if it reached the
  stand-in: Customer.io may have applied it, so its events can come again as duplicates);
  lost: acknowledged, not delivered when the test stopped waiting; duplicated: events
  accepted more than once.
- time_to_recover: seconds from the end of the fault to the first accepted request after
  it (kill -9 of the store: to the first acknowledged request; the disk scenarios: to
  writes acknowledged again for 2 s on end); drain_seconds: from the end of the fault to
  the delivery of the last acknowledged event.
- max_requests_in_any_1s_window at the destination (the rate checks allow 20 ms of jitter
  in the stand-in's clock: at most rate_limit requests within any 0.98 s);
  retry_after_violations: requests that arrived sooner than a Retry-After allowed (after a
  429, any request; after another answer, requests carrying the same events; one within
  0.1 s of the answer may have left before relay read it and is not counted);
  order_violations: per person, events that first reached the destination before the
  event acknowledged just before them.

relay's output (stdout and stderr, its store process's included) must never hold a
traceback: none of these faults is relay's own. RELAY_FAULT_SCALE (default 1) multiplies
the events and repetitions (and lengthens each fault, up to 4 times). Every wait has a
deadline; a wait that runs out ends the scenario early, and the failure still shows the
summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import (
    ROOT,
    SCALE,
    ErroringExt4,
    Extract,
    Fault,
    FaultyStandIn,
    Load,
    RelayProcess,
    accepted_events,
    cio_events,
    delivered_before,
    fault_config,
    faulty_stand_in,
    free_port,
    is_root,
    now,
    post_probe,
    readyz,
    remount,
    report,
    scaled,
    segment_events,
    small_disk_settings,
    summarize,
    tmpfs,
    tracebacks,
)

RATE = 20  # requests/s to each destination: low, so that the rate checks mean something
BATCH = 10  # ops per request
RECOVER_WITHIN = 10.0  # seconds from a fault's end to the first delivery after it
# How long each fault lasts: 4 s, longer with RELAY_FAULT_SCALE (up to 16 s).
FAULT_SECONDS = 4.0 * min(max(1.0, SCALE), 4.0)
# What /readyz (or relay's line at start-up) must say about the cause.
REASONS = {
    "full": ("full", "space"),
    "read-only": ("read-only", "readonly", "read only"),
    "any": ("",),  # a 503 is enough
}

MakeRelay = Callable[..., RelayProcess]


@pytest.fixture
async def cio() -> AsyncIterator[FaultyStandIn]:
    async with faulty_stand_in() as stand_in:
        yield stand_in


@pytest.fixture
async def seg() -> AsyncIterator[FaultyStandIn]:
    async with faulty_stand_in() as stand_in:
        yield stand_in


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[MakeRelay]:
    """Makes relay processes (not started) on configs in tmp_path; kills them afterwards."""
    made: list[RelayProcess] = []

    def make(
        cio_url: str,
        segment_url: str = "http://127.0.0.1:9",
        *,
        db: Path | None = None,
        **settings: Any,
    ) -> RelayProcess:
        port = free_port()
        settings.setdefault("rate_limit", RATE)
        settings.setdefault("batch_size", BATCH)
        text = fault_config(
            db or tmp_path / "relay.db", cio_url, segment_url, port=port, **settings
        )
        config = tmp_path / "relay.yaml"
        config.write_text(text)
        proc = RelayProcess(config, tmp_path / "relay.log", port)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.cleanup()


# ---------------------------------------------------------------------- checks


@contextlib.contextmanager
def stopping_early(problems: list[str]) -> Iterator[None]:
    """A wait that ran out ends the scenario's steps, not the test: the summary follows."""
    try:
        yield
    except AssertionError as exc:
        problems.append(f"the scenario stopped early: {exc}")


def verdict(summary: dict[str, Any], problems: list[str], proc: RelayProcess) -> None:
    found = tracebacks(proc.output())
    if found:
        problems = [*problems, f"relay's output holds {len(found)} traceback(s):\n{found[0]}"]
    assert not problems, (
        "\n".join(f"- {p}" for p in problems)
        + f"\nsummary: {json.dumps(summary)}\nrelay's log ({proc.log}), last lines:\n"
        + proc.tail(15)
    )


def refusal_problems(load: Load) -> list[str]:
    """Every refused request must be a 503 with Retry-After."""
    wrong = [r for r in load.refusals if r.status != 503 or not r.retry_after]
    if not wrong:
        return []
    first = wrong[0]
    return [
        f"{len(wrong)} refusals were not 503 with Retry-After, e.g. {first.status}"
        f" (Retry-After {first.retry_after!r}): {first.body}"
    ]


def lost_problems(summary: dict[str, Any]) -> list[str]:
    if not summary["lost"]:
        return []
    return [f"{summary['lost']} acknowledged events were not delivered in time"]


def recover_problems(summary: dict[str, Any], within: float = RECOVER_WITHIN) -> list[str]:
    recover = summary["time_to_recover"]
    if recover is not None and recover <= within:
        return []
    return [f"time_to_recover {recover} s, over {within} s"]


def delivery_problems(summary: dict[str, Any], drain_bound: float | None = None) -> list[str]:
    """Nothing lost, Retry-After honoured, the rate limit kept, each person's order kept,
    quick recovery and (with `drain_bound`) a backlog drained at about the rate limit."""
    problems = lost_problems(summary) + recover_problems(summary)
    if summary["retry_after_violations"]:
        problems.append(
            f"{summary['retry_after_violations']} requests came sooner than a Retry-After allowed"
        )
    busiest = summary["max_requests_in_any_0.98s_window"]
    if busiest > RATE:
        problems.append(f"{busiest} requests within 0.98 s (rate_limit {RATE})")
    if summary["order_violations"]:
        problems.append(f"{summary['order_violations']} events overtook an earlier one")
    drain = summary["drain_seconds"]
    if drain_bound is not None and (drain is None or drain > drain_bound):
        problems.append(
            f"drain_seconds {drain}, over {drain_bound:.1f} s"
            f" ({summary.get('backlog_requests')} backlog requests at {RATE}/s, + 10 s)"
        )
    return problems


# ---------------------------------------------------------------------- helpers


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - now()))


def backlog_at(load: Load, stand_in: FaultyStandIn, extract: Extract, moment: float) -> int:
    """Acknowledged events not yet accepted at `moment` (events, not requests)."""
    done: set[str] = set()
    for rec, ans in zip(stand_in.requests, stand_in.answers, strict=False):
        if ans.accepted and (ans.finished or ans.arrived) <= moment:
            done.update(name for name, _ in extract(rec))
    return sum(1 for e in load.acked if e.name not in done)


async def wait_drained(
    load: Load, stand_in: FaultyStandIn, extract: Extract, timeout: float
) -> bool:
    """Wait until every acknowledged event was accepted; False when time ran out."""
    deadline = now() + timeout
    while now() < deadline:
        if {e.name for e in load.acked} <= accepted_events(stand_in, extract):
            return True
        await asyncio.sleep(0.2)
    return False


# ---------------------------------------------------------------------- 1, 2: kill -9


async def test_kill_9_of_relay_under_load_loses_nothing(
    cio: FaultyStandIn, relay: MakeRelay
) -> None:
    """relay SIGKILLed under load, several times, each time started again on the same
    database: at least once, so duplicates are reported, not refused."""
    proc = relay(cio.url)
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, "k9", pace=0.05, retry_pause=0.05).start()
    restarts: list[float] = []
    problems: list[str] = []
    try:
        with stopping_early(problems):
            for _ in range(scaled(3)):
                await load.wait_acked(len(load.acked) + scaled(300), timeout=30)
                proc.kill9()  # mid-traffic, no chance to clean up
                await asyncio.sleep(0.3)  # the senders meet a closed port meanwhile
                proc.start()
                restarts.append(await proc.wait_ready())
            await load.wait_acked(len(load.acked) + scaled(100), timeout=30)
    finally:
        await load.stop()
    drained = await wait_drained(load, cio, cio_events, 30)
    summary = summarize(
        "kill -9 relay under load",
        load,
        cio,
        cio_events,
        restarts,
        kills=len(restarts),
        drained_in_time=drained,
    )
    verdict(summary, problems + lost_problems(summary), proc)


async def test_kill_9_of_the_store_process_under_load(cio: FaultyStandIn, relay: MakeRelay) -> None:
    """relay's store process SIGKILLed under load, several times: requests may get a 503
    with Retry-After meanwhile, relay keeps serving, nothing acknowledged is lost."""
    proc = relay(cio.url)
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, "kstore", pace=0.05, retry_pause=0.05).start()
    kills: list[float] = []
    recovered: dict[str, float] = {}
    problems: list[str] = []
    try:
        with stopping_early(problems):
            for i in range(scaled(3)):
                await load.wait_acked(len(load.acked) + scaled(300), timeout=30)
                child = proc.store_child()
                assert child is not None, "no store process under relay"
                os.kill(child, signal.SIGKILL)
                kills.append(now())
                await proc.wait_store_child(other_than=child)
                # relay keeps serving: the senders are acknowledged again.
                await load.wait_acked(len(load.acked) + 50, timeout=RECOVER_WITHIN)
                recovered[f"kill {i}"] = min(t for t in load.acks if t > kills[-1]) - kills[-1]
    finally:
        await load.stop()
    status, body, _ = await post_probe(proc.url, "kstore-after")
    ready, ready_body = await readyz(proc.url)
    drained = await wait_drained(load, cio, cio_events, 30)
    summary = summarize(
        "kill -9 store process under load",
        load,
        cio,
        cio_events,
        kills,
        recovered=recovered,
        recovered_by="first acknowledged request after each kill",
        kills=len(kills),
        refused_503=sum(1 for r in load.refusals if r.status == 503),
        drained_in_time=drained,
    )
    problems += refusal_problems(load) + lost_problems(summary)
    if load.errors:
        problems.append(f"{len(load.errors)} requests got no answer, e.g. {load.errors[0][1]}")
    if status != 200:
        problems.append(f"after the kills, a new event was answered {status}: {body}")
    if ready != 200:
        problems.append(f"after the kills, /readyz answered {ready}: {ready_body}")
    verdict(summary, problems, proc)


# ---------------------------------------------------------------------- 3-5: Customer.io


async def _outage(
    scenario: str,
    prefix: str,
    cio: FaultyStandIn,
    proc: RelayProcess,
    phases: list[tuple[Fault, float]],
) -> tuple[dict[str, Any], float]:
    """Load relay (about 100 events/s), apply `phases` (fault, seconds) back to back at
    Customer.io, stop the load when they end and wait for the backlog. Returns the summary
    and the bound on draining it: its requests at the rate limit, plus 10 s."""
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, prefix, pace=0.4).start()
    try:
        await asyncio.sleep(1.5)  # healthy first
        end = now()
        for fault, seconds in phases:
            end = cio.fail_for(fault, seconds, start=end)
        await sleep_until(end)
    finally:
        await load.stop()
    backlog = backlog_at(load, cio, cio_events, end)
    backlog_requests = math.ceil(backlog / BATCH)
    drain_bound = backlog_requests / RATE + 10
    drained = await wait_drained(load, cio, cio_events, drain_bound + 5 - (now() - end))
    summary = summarize(
        scenario,
        load,
        cio,
        cio_events,
        [end],
        fault_seconds=round(sum(s for _, s in phases), 1),
        backlog_events=backlog,
        backlog_requests=backlog_requests,
        drain_bound=round(drain_bound, 1),
        drained_in_time=drained,
    )
    return summary, drain_bound


async def test_customerio_429_storm_then_healthy(cio: FaultyStandIn, relay: MakeRelay) -> None:
    """Every request answered 429 with Retry-After: 2 for a while, then all well: the
    backlog must then drain at about the rate limit."""
    proc = relay(cio.url)
    phases = [(Fault.answer(429, 2), FAULT_SECONDS * 1.5)]
    summary, bound = await _outage("429 storm, Retry-After 2", "s429", cio, proc, phases)
    verdict(summary, delivery_problems(summary, bound), proc)


async def test_customerio_5xx_then_healthy(cio: FaultyStandIn, relay: MakeRelay) -> None:
    """500s, then 503s with Retry-After: 1, then all well."""
    proc = relay(cio.url)
    phases = [(Fault.answer(500), FAULT_SECONDS / 2), (Fault.answer(503, 1), FAULT_SECONDS / 2)]
    summary, bound = await _outage("500 then 503", "s5xx", cio, proc, phases)
    verdict(summary, delivery_problems(summary, bound), proc)


@pytest.mark.parametrize("kind", ["hang", "reset", "close"])
async def test_customerio_without_answers_then_healthy(
    cio: FaultyStandIn, relay: MakeRelay, kind: str
) -> None:
    """Requests held past relay's timeout (1 s) and then dropped, connections reset (RST),
    or closed without an answer (FIN); then all well. Nothing lost, quick recovery;
    duplicates are reported, not refused."""
    proc = relay(cio.url, timeout=1)
    fault = Fault(kind, seconds=3.0 if kind == "hang" else 0.0)
    scenario = {"hang": "hang past timeout", "reset": "connection reset", "close": "closed"}[kind]
    summary, _ = await _outage(scenario, kind, cio, proc, [(fault, FAULT_SECONDS)])
    verdict(summary, lost_problems(summary) + recover_problems(summary), proc)


# ---------------------------------------------------------------------- 6: reverse path


async def test_segment_429_then_500_then_healthy_on_the_reverse_path(
    cio: FaultyStandIn, seg: FaultyStandIn, relay: MakeRelay
) -> None:
    """Signed Customer.io webhooks to relay, relay to Segment's stand-in, which answers
    429 (Retry-After: 2), then 500, then all well."""
    proc = relay(cio.url, seg.url)
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, "rev", kind="webhook", pace=0.05).start()  # about 60 webhooks/s
    try:
        await asyncio.sleep(1.5)
        end = seg.fail_for(Fault.answer(429, 2), FAULT_SECONDS / 2)
        end = seg.fail_for(Fault.answer(500), FAULT_SECONDS / 2, start=end)
        await sleep_until(end)
    finally:
        await load.stop()
    backlog = backlog_at(load, seg, segment_events, end)
    drained = await wait_drained(load, seg, segment_events, 30)
    summary = summarize(
        "segment 429 then 500 (webhooks)",
        load,
        seg,
        segment_events,
        [end],
        backlog_events=backlog,
        drained_in_time=drained,
    )
    problems = refusal_problems(load) + lost_problems(summary) + recover_problems(summary)
    verdict(summary, problems, proc)


# ---------------------------------------------------------------------- 7: the filesystem


def _cannot_mount(reason: str) -> None:
    """Skip, saying why; with RELAY_REQUIRE_MOUNTS=1 (as CI sets it), fail instead."""
    if os.environ.get("RELAY_REQUIRE_MOUNTS") == "1":
        pytest.fail(f"{reason} (RELAY_REQUIRE_MOUNTS=1)", pytrace=False)
    pytest.skip(reason)


def _need_root() -> None:
    if not is_root():
        _cannot_mount("needs root: mounts a tmpfs or an ext4 image for the database")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    _need_root()
    try:
        with tmpfs(tmp_path / "small", "4m") as mounted:
            yield mounted
    except OSError as exc:
        _cannot_mount(f"cannot mount a tmpfs here: {exc}")


@pytest.fixture
def erroring_fs(tmp_path: Path) -> Iterator[ErroringExt4]:
    _need_root()
    fs = ErroringExt4(tmp_path / "ext4.img", tmp_path / "ext4")
    try:
        fs.mount()
    except OSError as exc:
        _cannot_mount(f"cannot mount an ext4 image here: {exc}")
    try:
        yield fs
    finally:
        fs.unmount()


async def _watch_refusals(
    url: str, seconds: float, name: str, blob: int, reasons: tuple[str, ...]
) -> dict[str, Any]:
    """Every 0.25 s, try a write, ask /readyz, and try a write again, back to back: when
    both writes are refused, /readyz between them must have answered 503 with a reason.
    (Bracketed, so that room freed by a delivery in between cannot make it look wrong.)
    Deliveries free room while the disk is full, so refusals come and go: past `seconds`,
    the watch goes on (up to three times as long) until one bracket has been checked."""
    start = now()
    deadline = start + seconds
    last_chance = start + 3 * seconds
    counts = {"refused": 0, "accepted": 0, "bracketed": 0}
    bad_refusals: list[str] = []
    bad_ready: list[str] = []

    async def probe() -> bool:
        n = counts["refused"] + counts["accepted"]
        status, body, retry_after = await post_probe(url, f"{name}-{n}", blob)
        if status == 200:
            counts["accepted"] += 1
            return True
        counts["refused"] += 1
        if status != 503 or not retry_after:
            bad_refusals.append(f"{status} (Retry-After {retry_after!r}): {body[:200]}")
        return False

    while now() < deadline or (not counts["bracketed"] and now() < last_chance):
        before = await probe()
        ready, ready_body = await readyz(url)
        after = await probe()
        if not before and not after:
            counts["bracketed"] += 1
            if ready != 503 or not any(r in ready_body.lower() for r in reasons):
                bad_ready.append(f"{ready}: {ready_body[:200]}")
        await asyncio.sleep(0.25)
    return {
        "seconds": round(now() - start, 1),
        "probes_refused": counts["refused"],
        "probes_accepted": counts["accepted"],
        "readyz_while_refused": counts["bracketed"],
        "bad_refusals": bad_refusals,
        "bad_readyz": bad_ready,
    }


def watch_problems(watch: dict[str, Any], with_reason: bool) -> list[str]:
    problems = [
        f"a refused write was not a 503 with Retry-After: {b}" for b in watch["bad_refusals"][:3]
    ]
    if not watch["readyz_while_refused"]:
        problems.append("writes were never refused twice in a row: /readyz went unchecked")
    if watch["bad_readyz"]:
        problems.append(
            f"/readyz answered {len(watch['bad_readyz'])} times without a 503"
            + (" and a reason" if with_reason else "")
            + f" while writes were refused, e.g. {watch['bad_readyz'][0]}"
        )
    return problems


def watch_figures(watch: dict[str, Any]) -> dict[str, Any]:
    figures = {k: v for k, v in watch.items() if not k.startswith("bad")}
    return {**figures, "bad_readyz": len(watch["bad_readyz"])}


async def _recover(url: str, name: str, timeout: float, hold: float = 2.0) -> float | None:
    """Seconds until writes are acknowledged again and stay so: the first of a run of
    acknowledged writes (one every 0.1 s) that lasts `hold` seconds. None if there was no
    such run within `timeout` (+ `hold`)."""
    start = now()
    streak: float | None = None
    n = 0
    while now() - start < timeout + hold:
        n += 1
        status, _, _ = await post_probe(url, f"{name}-{n}")
        if status != 200:
            streak = None
        elif streak is None:
            streak = now()
        if streak is not None and now() - streak >= hold:
            return round(streak - start, 2)
        await asyncio.sleep(0.1)
    return None


async def test_a_full_disk_refuses_with_503_keeps_delivering_and_recovers(
    cio: FaultyStandIn, relay: MakeRelay, small_fs: Path
) -> None:
    """The database on a 4 MB tmpfs, loaded until writes are refused, with Customer.io up
    all along: every refusal a 503 with Retry-After, /readyz 503 with the reason, delivery
    going on meanwhile. Then the load stops and a filler file made beforehand is deleted:
    writes must be taken again (and stay so) within 5 s, and everything be delivered."""
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (1536 * 1024))
    proc = relay(cio.url, db=small_fs / "relay.db", sqlite=small_disk_settings())
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, "full", pace=0.0, retry_pause=0.2, blob=1000).start()
    problems: list[str] = []
    watch: dict[str, Any] = {}
    backlog = delivered_full = 0
    recover: float | None = None
    freed_at = now()
    try:
        with stopping_early(problems):
            deadline = now() + 40
            while not load.refusals:
                assert now() < deadline, f"the disk never filled ({len(load.acked)} acknowledged)"
                assert proc.proc is not None and proc.proc.poll() is None, "relay exited"
                await asyncio.sleep(0.05)
            full_at = now()
            delivered_then = delivered_before(cio, cio_events, full_at)
            backlog = backlog_at(load, cio, cio_events, full_at)
            watch = await _watch_refusals(
                proc.url, FAULT_SECONDS, "fullprobe", 1000, REASONS["full"]
            )
            delivered_full = delivered_before(cio, cio_events, now()) - delivered_then
            await load.stop()  # or it fills the room again at once
            filler.unlink()
            freed_at = now()
            recover = await _recover(proc.url, "full-after", 6)
            problems += watch_problems(watch, with_reason=True)
            # Customer.io is up: delivery goes on while ingestion is refused (at a quarter
            # of the rate limit at least, or a quarter of what was waiting).
            expected = min(backlog, RATE * BATCH * watch["seconds"]) / 4
            if delivered_full < expected:
                problems.append(
                    f"only {delivered_full} events were delivered in the {watch['seconds']} s"
                    f" the disk was full ({backlog} were waiting; {expected:.0f} expected)"
                )
            if recover is None or recover > 5:
                problems.append(
                    f"writes were not steadily acknowledged within 5 s of freeing ({recover})"
                )
    finally:
        await load.stop()
    drained = await wait_drained(load, cio, cio_events, 20)
    summary = summarize(
        "disk full (tmpfs 4 MB)",
        load,
        cio,
        cio_events,
        [freed_at],
        recovered={"freed": math.inf if recover is None else recover},
        recovered_by="acknowledged writes (for 2 s on end) after the filler file was deleted",
        backlog_events_when_full=backlog,
        delivered_while_full=delivered_full,
        drained_in_time=drained,
        **(watch_figures(watch) if watch else {}),
    )
    verdict(summary, problems + refusal_problems(load) + lost_problems(summary), proc)


async def test_a_filesystem_turning_read_only_refuses_with_503_and_loses_nothing(
    cio: FaultyStandIn, relay: MakeRelay, erroring_fs: ErroringExt4
) -> None:
    """The database's filesystem turns read-only under relay, as the kernel does after a
    disk error (ext4 with errors=remount-ro): every write is refused with a 503, /readyz
    says why, relay still stops when asked, and once the filesystem is mounted again the
    relay started on it delivers everything that was acknowledged."""
    proc = relay(cio.url, db=erroring_fs.mountpoint / "relay.db", sqlite=small_disk_settings())
    proc.start()
    await proc.wait_ready()
    load = Load(proc.url, "ro", pace=0.1, retry_pause=0.2).start()
    problems: list[str] = []
    watch: dict[str, Any] = {}
    recover: float | None = None
    ro_at = writable_at = now()
    stopped: int | None = None
    try:
        with stopping_early(problems):
            await load.wait_acked(200, timeout=20)
            erroring_fs.fail()
            ro_at = now()
            watch = await _watch_refusals(
                proc.url, FAULT_SECONDS, "roprobe", 0, REASONS["read-only"]
            )
            problems += watch_problems(watch, with_reason=True)
            acked = watch["probes_accepted"] + sum(1 for t in load.acks if t > ro_at + 0.5)
            if acked:
                problems.append(f"{acked} requests were acknowledged on a read-only filesystem")
    finally:
        await load.stop()
    # Stopping: what is in flight cannot be settled, and is delivered again after the start.
    stopped = proc.stop()
    proc.cleanup()
    if stopped != 0:
        problems.append(f"relay exited {stopped} when stopped on a read-only filesystem")
    erroring_fs.remount()
    writable_at = now()
    proc.start()
    with stopping_early(problems):
        await proc.wait_ready()
        recover = await _recover(proc.url, "ro-after", 6)
    drained = await wait_drained(load, cio, cio_events, 20)
    summary = summarize(
        "filesystem turned read-only by a disk error (ext4), mounted again, relay restarted",
        load,
        cio,
        cio_events,
        [writable_at],
        recovered={"writable": math.inf if recover is None else recover},
        recovered_by="acknowledged writes (for 2 s on end) after the filesystem was mounted"
        " again and relay started on it",
        exit_code_when_stopped=stopped,
        drained_in_time=drained,
        **(watch_figures(watch) if watch else {}),
    )
    verdict(summary, problems + refusal_problems(load) + lost_problems(summary), proc)


@pytest.mark.parametrize("database", ["new", "existing"])
async def test_starting_on_a_read_only_filesystem_exits_with_one_line(
    cio: FaultyStandIn, relay: MakeRelay, small_fs: Path, database: str
) -> None:
    """relay started with its database on a read-only filesystem (no database yet, or
    one from an earlier run) exits non-zero within 5 s, printing one line that names the
    path and says it is read-only, and no traceback."""
    db = small_fs / "relay.db"
    proc = relay(cio.url, db=db, sqlite=small_disk_settings())
    if database == "existing":
        proc.start()
        await proc.wait_ready()
        assert proc.stop() == 0, proc.tail()
        proc.cleanup()  # its store process too: a file open for writing blocks the remount
    result = remount(small_fs, "ro")
    assert result.returncode == 0, f"mount -o remount,ro failed: {result.stderr}"
    try:
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "relay", "serve", "--config", str(proc.config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        took = time.monotonic() - started
    finally:
        remount(small_fs, "rw")
    output = run.stdout + run.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    report(
        {
            "scenario": f"start on a read-only filesystem ({database} database)",
            "exit_code": run.returncode,
            "seconds": round(took, 2),
            "lines": len(lines),
            "traceback": "Traceback" in output,
            "first_line": lines[0][:300] if lines else None,
        }
    )
    problems = []
    if run.returncode == 0:
        problems.append("relay exited 0")
    if took > 5:
        problems.append(f"relay took {took:.1f} s to exit")
    if "Traceback" in output:
        problems.append("its output holds a Python traceback")
    if len(lines) != 1:
        problems.append(f"it printed {len(lines)} lines, not one")
    naming = [line for line in lines if str(db) in line or str(db.parent) in line]
    if not naming:
        problems.append(f"no line names the path {db}")
    elif not any(r in naming[0].lower() for r in REASONS["read-only"]):
        problems.append(f"the line does not say the filesystem is read-only: {naming[0]}")
    assert not problems, "\n".join(f"- {p}" for p in problems) + "\noutput:\n" + output[-3000:]
