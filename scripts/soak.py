"""Soak test: a steady load for minutes, Segment in and Customer.io out, watched as it goes.

Not part of the test suite: run it on demand, before a release or after a change to the
store, intake or delivery, to see that nothing creeps over time (memory, latency, backlog).

relay runs in its own process with a SQLite store (which runs in a child process of its
own) and a Customer.io destination with its default settings (`rate_limit: 100`, default
`batch_size`) whose `base_url` is a loopback stand-in, itself in a third process so that it
does not take CPU from relay: the stand-in answers 200 `{}` to every `POST /api/v2/batch`,
counts its requests and ops and records when each request arrived. This process sends a
steady `--rate` events/s for `--minutes`, as `/v1/batch` requests of `--batch` mixed
identify/track/page events with unique messageIds, on an open-loop schedule: each request
is started at its own evenly spaced time whether or not the earlier ones have been answered,
with at most `--in-flight` requests open; one due while that many are open is skipped, and
counted. A request's latency is from its scheduled time to its answer.

Every `--every` seconds it prints one row for the window just ended: events acknowledged
(200), ingest latency p50 and p99 of the requests answered in it, answers other than 200
(failed requests included), requests skipped, the resident memory (VmRSS) of relay's process
and of its store's process(es), the deliveries relay counts as pending (the gauge
`relay_queue_deliveries{destination="customerio.main",state="pending"}` of its /metrics,
which relay refreshes only every 30 s), the events delivered so far (ops at the stand-in,
exact at every row), those delivered in the window, and the busiest one-second window of
requests at the stand-in among those that arrived in the window.

After the load it waits (at most `--drain-timeout`) until every acknowledged event has
arrived, then compares the first full window with the last ones (up to 3 full windows): the
baseline for its ratios is its own first window. It reports the growth of resident memory
(MB, and last/first), ingest p99 (first, last, last/first), whether the queue stayed bounded
(the backlog, events acknowledged but not yet delivered, at the end of each of the last
windows stayed within one window's events or twice the first window's), and the busiest
second of requests overall. It exits 1 if any acknowledged event did not arrive, or if any
second had more than `rate_limit` (100) requests; 130 if interrupted.

    python scripts/soak.py [--minutes 10] [--rate 5000] [--batch 100] [--every 10]
                           [--in-flight 64] [--drain-timeout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import aiohttp

import benchlib
from benchlib import MB, RATE_LIMIT, busiest_second, cell, children, percentile, rss

DESTINATION = "customerio.main"
LAST_WINDOWS = 3


def pending_gauge(text: str) -> int | None:
    """The pending deliveries of DESTINATION from relay's /metrics page, if it is there."""
    for labels, value in benchlib.metric_samples(text, "relay_queue_deliveries"):
        if labels.get("destination") == DESTINATION and labels.get("state") == "pending":
            return int(value)
    return None


@dataclass
class Window:
    """What the requests answered between two rows did."""

    started: float
    acknowledged: int = 0
    failures: int = 0
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class Row:
    elapsed: float
    seconds: float
    acknowledged: int
    acknowledged_total: int
    latencies: list[float]
    failures: int
    skipped: int
    relay_rss: int
    store_rss: int
    pending: int | None
    delivered_total: int
    delivered: int
    busiest: int

    @property
    def backlog(self) -> int:
        """Acknowledged by the window's end but not yet delivered when the stand-in was
        asked, just after: at most slightly low, never above the truth."""
        return max(0, self.acknowledged_total - self.delivered_total)


class Soak:
    def __init__(
        self, args: argparse.Namespace, relay: benchlib.Relay, cio: benchlib.StandIn
    ) -> None:
        self.args = args
        self.relay = relay
        self.cio = cio  # its ops are the events delivered
        self.url = f"{relay.url}/v1/batch"
        self.metrics_url = f"{relay.url}/metrics"
        self.bodies = [benchlib.make_batch(args.batch) for _ in range(64)]  # round-robin
        self.window = Window(time.monotonic())
        self.acknowledged = 0
        self.sent = 0
        self.rows: list[Row] = []
        self.started = 0.0
        self.until = 0.0

    async def send(self, session: aiohttp.ClientSession, n: int, due: float) -> None:
        body = benchlib.fresh(self.bodies[n % len(self.bodies)], n)  # every event delivered
        ok = False
        try:
            async with session.post(self.url, data=body, headers=benchlib.HEADERS) as resp:
                await resp.read()
                ok = resp.status == 200
        except (TimeoutError, aiohttp.ClientError):
            pass
        window = self.window  # the window in which the answer came
        if ok:
            window.acknowledged += self.args.batch
            self.acknowledged += self.args.batch
        else:
            window.failures += 1
        window.latencies.append(time.monotonic() - due)

    async def load(self, session: aiohttp.ClientSession, until: float) -> None:
        """Open loop: request n is started at started + n * interval."""
        interval = self.args.batch / self.args.rate
        open_requests: set[asyncio.Task[None]] = set()
        n = 0
        while (due := self.started + n * interval) < until:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(open_requests) >= self.args.in_flight:
                self.window.skipped += 1
            else:
                task = asyncio.create_task(self.send(session, n, due))
                open_requests.add(task)
                task.add_done_callback(open_requests.discard)
                self.sent += 1
            n += 1
        if open_requests:
            await asyncio.gather(*open_requests)

    async def pending(self, session: aiohttp.ClientSession) -> int | None:
        async with session.get(self.metrics_url) as resp:
            return pending_gauge(await resp.text())

    async def sample(self, session: aiohttp.ClientSession) -> Row:
        """Close the current window and print its row."""
        now = time.monotonic()
        window, self.window = self.window, Window(now)
        acknowledged = self.acknowledged
        self.relay.check()
        before = self.cio.ops
        new = await self.cio.poll(session)
        pending = await self.pending(session)
        row = Row(
            elapsed=now - self.started,
            seconds=now - window.started,
            acknowledged=window.acknowledged,
            acknowledged_total=acknowledged,
            latencies=window.latencies,
            failures=window.failures,
            skipped=window.skipped,
            relay_rss=rss(self.relay.proc.pid),
            store_rss=sum(rss(p) for p in children(self.relay.proc.pid)),
            pending=pending,
            delivered_total=self.cio.ops,
            delivered=self.cio.ops - before,
            busiest=busiest_second(new),
        )
        self.rows.append(row)
        print_row(row)
        return row

    async def report(self, session: aiohttp.ClientSession) -> None:
        """A row at every `--every` seconds strictly inside the load."""
        k = 1
        while (boundary := self.started + k * self.args.every) < self.until - 1e-6:
            await asyncio.sleep(max(0.0, boundary - time.monotonic()))
            await self.sample(session)
            k += 1

    async def run(self) -> float | None:
        """The load, its rows, then the drain; seconds from the load's end until every
        acknowledged event had arrived (None if they did not within --drain-timeout)."""
        connector = aiohttp.TCPConnector(limit=self.args.in_flight)
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as posts,
            aiohttp.ClientSession(timeout=timeout) as session,
        ):
            await self.cio.poll(session)
            print(
                f"at start: relay {rss(self.relay.proc.pid) / MB:.1f} MB, store"
                f" {sum(rss(p) for p in children(self.relay.proc.pid)) / MB:.1f} MB;"
                f" {self.args.rate:,g} events/s in requests of {self.args.batch}"
                f" for {self.args.minutes:g} min"
            )
            print_header()
            self.started = time.monotonic()
            self.until = self.started + self.args.minutes * 60.0
            self.window = Window(self.started)
            async with asyncio.TaskGroup() as group:  # relay exiting stops the load too
                group.create_task(self.load(posts, self.until))
                group.create_task(self.report(session))
            # the last window: to the end of the load and its last answers
            await self.sample(session)
            ended = time.monotonic()
            deadline = ended + self.args.drain_timeout
            while self.cio.ops < self.acknowledged and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                await self.cio.poll(session)
            drained = time.monotonic() - ended
            await self.cio.poll(session)
            return drained if self.cio.ops >= self.acknowledged else None


def print_header() -> None:
    print(
        f"{'elapsed s':>9}{'acked':>9}{'p50 ms':>8}{'p99 ms':>8}{'non-200':>8}{'skipped':>8}"
        f"{'relay MB':>9}{'store MB':>9}{'pending*':>9}{'delivered':>11}{'+window':>9}"
        f"{'busiest 1 s':>12}",
        flush=True,
    )


def print_row(r: Row) -> None:
    p50, p99 = percentile(r.latencies, 50), percentile(r.latencies, 99)
    print(
        f"{r.elapsed:>9.0f}{r.acknowledged:>9,}{cell(p50 and p50 * 1000, 8, '.1f')}"
        f"{cell(p99 and p99 * 1000, 8, '.1f')}{r.failures:>8}{r.skipped:>8}"
        f"{r.relay_rss / MB:>9.1f}{r.store_rss / MB:>9.1f}{cell(r.pending, 9, ',')}"
        f"{r.delivered_total:>11,}{r.delivered:>9,}{r.busiest:>12}",
        flush=True,
    )


def ratio(last: float | None, first: float | None) -> str:
    return f"x{last / first:.2f}" if last is not None and first else "x -"


def summarize(soak: Soak, drained: float | None, args: argparse.Namespace) -> bool:
    """Print the summary; whether the run passed."""
    rows = soak.rows
    full = [r for r in rows if r.seconds >= args.every * 0.95]
    acked, arrived = soak.acknowledged, soak.cio.ops
    skipped = sum(r.skipped for r in rows)
    failures = sum(r.failures for r in rows)
    print(
        f"* pending: relay's relay_queue_deliveries gauge ({DESTINATION}, pending), refreshed"
        " every 30 s; delivered: ops at the stand-in"
    )
    print()
    print(
        f"requests: {soak.sent:,} sent, {skipped:,} skipped (--in-flight {args.in_flight}),"
        f" {failures:,} not 200; events: {acked:,} acknowledged, {arrived:,} arrived"
    )
    if len(full) >= 2:
        first, last = full[0], full[-min(LAST_WINDOWS, len(full) - 1) :]
        span = f"{last[0].elapsed - last[0].seconds:.0f}-{last[-1].elapsed:.0f} s"
        print(
            f"first window (0-{first.elapsed:.0f} s) against the last {len(last)} ({span});"
            " the baseline is the first window"
        )
        end = last[-1]
        for name, a, b in (
            ("relay RSS", first.relay_rss, end.relay_rss),
            ("store RSS", first.store_rss, end.store_rss),
            ("total RSS", first.relay_rss + first.store_rss, end.relay_rss + end.store_rss),
        ):
            print(
                f"  {name:10}{a / MB:>8.1f} -> {b / MB:>7.1f} MB"
                f"  ({(b - a) / MB:+.1f} MB, {ratio(b, a)})"
            )
        p99_first = percentile(first.latencies, 99)
        p99_last = percentile([x for r in last for x in r.latencies], 99)
        print(
            f"  {'p99':10}{cell(p99_first and p99_first * 1000, 8, '.1f')} ->"
            f" {cell(p99_last and p99_last * 1000, 7, '.1f')} ms  ({ratio(p99_last, p99_first)})"
        )
        allowed = max(2 * first.backlog, args.rate * args.every)
        worst = max(r.backlog for r in last)
        last_acked = sum(r.acknowledged for r in last)
        kept_up = sum(r.delivered for r in last) / last_acked if last_acked else None
        print(
            f"  queue {'bounded' if worst <= allowed else 'NOT bounded'}: backlog (acknowledged,"
            f" not delivered) at most {worst:,} events ({worst / args.rate:.1f} s of load) at the"
            f" ends of the last windows,\n    {first.backlog:,} after the first;"
            " delivered/acknowledged in the last windows"
            f" {'-' if kept_up is None else f'{kept_up:.2f}'}"
        )
    else:
        print("fewer than 2 full windows: no comparison (a longer --minutes or shorter --every)")
    busiest = busiest_second(soak.cio.arrivals)
    verdict = "within" if busiest <= RATE_LIMIT else "ABOVE"
    print(f"busiest second overall: {busiest} requests, {verdict} rate_limit {RATE_LIMIT}")
    if soak.cio.other:
        print(f"warning: {soak.cio.other} requests to the stand-in were not v2 batches")
    if drained is None:
        print(
            f"INCOMPLETE: {arrived:,} of {acked:,} acknowledged events arrived within"
            f" --drain-timeout {args.drain_timeout:g} s"
        )
    else:
        print(f"complete: every acknowledged event arrived, {drained:.1f} s after the load ended")
    return drained is not None and busiest <= RATE_LIMIT


async def run(args: argparse.Namespace) -> tuple[Soak, float | None]:
    with tempfile.TemporaryDirectory(prefix="relay-soak-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        async with (
            benchlib.stand_in(tmp / "stand-in.log") as cio,
            benchlib.serve_relay(tmp, api_key="k" * 20, base_url=cio.url) as relay,
        ):
            soak = Soak(args, relay, cio)
            drained = await soak.run()
    return soak, drained


def terminated(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # cleaned up like Ctrl-C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of load; default 10")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s; default 5000")
    parser.add_argument("--batch", type=int, default=100, help="events a request; default 100")
    parser.add_argument("--every", type=float, default=10.0, help="seconds a row; default 10")
    parser.add_argument(
        "--in-flight", type=int, default=64, help="requests open at most; default 64"
    )
    benchlib.add_drain_timeout(parser)
    args = parser.parse_args()
    if min(args.minutes, args.rate, args.batch, args.every, args.in_flight) <= 0:
        parser.error("--minutes, --rate, --batch, --every and --in-flight must be positive")

    signal.signal(signal.SIGTERM, terminated)
    try:
        soak, drained = asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted; relay and the stand-in are stopped", file=sys.stderr)
        sys.exit(130)
    if not summarize(soak, drained, args):
        sys.exit(1)


if __name__ == "__main__":
    main()
