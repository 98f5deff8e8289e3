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
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp

REPO = Path(__file__).resolve().parent.parent
RATE_LIMIT = 100
DESTINATION = "customerio.main"
LAST_WINDOWS = 3
MB = 1024 * 1024

# The stand-in Customer.io. `GET /stats?from=N` gives its counts and the arrival times
# (time.monotonic()) of its v2 batch requests from the N-th on, so that they are fetched once.
STAND_IN = """
import json, sys, time
from aiohttp import web
arrivals = []
counts = {"requests": 0, "ops": 0, "other": 0}
async def batch(request):
    body = json.loads(await request.read())
    arrivals.append(time.monotonic())
    counts["requests"] += 1
    counts["ops"] += len(body["batch"])
    return web.json_response({})
async def other(request):
    await request.read()
    counts["other"] += 1
    return web.json_response({})
async def stats(request):
    start = int(request.query.get("from", "0"))
    return web.json_response({**counts, "arrivals": arrivals[start:]})
app = web.Application(client_max_size=16 * 1024 * 1024)
app.router.add_post("/api/v2/batch", batch)
app.router.add_get("/stats", stats)
app.router.add_route("*", "/{tail:.*}", other)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

CONFIG = """
server: {{host: 127.0.0.1, port: {port}}}
storage:
  sqlite: {{path: "{db}"}}
sources:
  segment:
    write_keys: {{soak: "soak-write-key"}}
destinations:
  customerio:
    main:
      site_id: soak
      api_key: "{api_key}"
      base_url: "http://127.0.0.1:{cio_port}"
routes:
  - {{from: segment, to: [customerio.main]}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_batch(size: int) -> bytes:
    """`size` events, a quarter identify, half track, a quarter page."""
    batch: list[dict[str, Any]] = []
    for i in range(size):
        user = f"user-{uuid.uuid4().hex[:8]}"
        common = {
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": "2024-05-06T07:08:09.123Z",
            "context": {
                "library": {"name": "analytics-python", "version": "2.3.0"},
                "ip": "203.0.113.9",
            },
        }
        if i % 4 == 0:
            batch.append({**common, "type": "identify", "traits": {"email": f"{user}@example.com"}})
        elif i % 4 == 3:
            batch.append(
                {
                    **common,
                    "type": "page",
                    "name": "Home",
                    "properties": {"url": "https://shop.example/", "title": "Shop"},
                }
            )
        else:
            batch.append(
                {
                    **common,
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": f"o-{i}",
                        "total": 42.5,
                        "currency": "EUR",
                        "products": [{"sku": "a-1", "price": 10.0, "quantity": 2}],
                    },
                }
            )
    return json.dumps({"batch": batch, "sentAt": "2024-05-06T07:08:10.000Z"}).encode()


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any one-second window starting at an arrival."""
    times = sorted(arrivals)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    return found + [g for c in found for g in children(c)]


def rss(pid: int) -> int:
    """Resident memory (VmRSS) of `pid` in bytes, 0 once it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 60 s; relay's store child exits once relay is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


async def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30.0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{url} did not come up:\n{tail}")


LABEL = re.compile(r'(\w+)="([^"]*)"')


def pending_gauge(text: str) -> int | None:
    """The pending deliveries of DESTINATION from relay's /metrics page, if it is there."""
    for line in text.splitlines():
        if not line.startswith("relay_queue_deliveries{"):
            continue
        labels, _, value = line.rpartition("}")
        found = dict(LABEL.findall(labels))
        if found.get("destination") == DESTINATION and found.get("state") == "pending":
            return int(float(value))
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
    def __init__(self, args: argparse.Namespace, port: int, cio_port: int) -> None:
        self.args = args
        self.url = f"http://127.0.0.1:{port}/v1/batch"
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.stats_url = f"http://127.0.0.1:{cio_port}/stats"
        self.bodies = [make_batch(args.batch) for _ in range(64)]  # reused round-robin
        self.headers = {
            "Authorization": "Basic " + base64.b64encode(b"soak-write-key:").decode(),
            "Content-Type": "application/json",
        }
        self.window = Window(time.monotonic())
        self.acknowledged = 0
        self.sent = 0
        self.arrivals: list[float] = []
        self.delivered = 0
        self.other = 0
        self.rows: list[Row] = []
        self.started = 0.0
        self.until = 0.0

    async def send(self, session: aiohttp.ClientSession, n: int, due: float) -> None:
        # a fresh messageId prefix per request: every event is new, and is delivered
        body = self.bodies[n % len(self.bodies)].replace(
            b'"messageId": "', f'"messageId": "{n}-'.encode()
        )
        ok = False
        try:
            async with session.post(self.url, data=body, headers=self.headers) as resp:
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

    async def stand_in(self, session: aiohttp.ClientSession) -> list[float]:
        """Fetch the stand-in's counts and its new arrivals; those arrivals."""
        params = {"from": str(len(self.arrivals))}
        async with session.get(self.stats_url, params=params) as resp:
            stats: dict[str, Any] = await resp.json()
        new: list[float] = stats["arrivals"]
        self.arrivals.extend(new)
        self.delivered = stats["ops"]
        self.other = stats["other"]
        return new

    async def pending(self, session: aiohttp.ClientSession) -> int | None:
        async with session.get(self.metrics_url) as resp:
            return pending_gauge(await resp.text())

    async def sample(
        self, session: aiohttp.ClientSession, relay: subprocess.Popen[bytes], log: Path
    ) -> Row:
        """Close the current window and print its row."""
        now = time.monotonic()
        window, self.window = self.window, Window(now)
        acknowledged = self.acknowledged
        if relay.poll() is not None:
            raise RuntimeError(f"relay exited:\n{log.read_text(errors='replace')[-2000:]}")
        before = self.delivered
        new = await self.stand_in(session)
        pending = await self.pending(session)
        row = Row(
            elapsed=now - self.started,
            seconds=now - window.started,
            acknowledged=window.acknowledged,
            acknowledged_total=acknowledged,
            latencies=window.latencies,
            failures=window.failures,
            skipped=window.skipped,
            relay_rss=rss(relay.pid),
            store_rss=sum(rss(p) for p in children(relay.pid)),
            pending=pending,
            delivered_total=self.delivered,
            delivered=self.delivered - before,
            busiest=busiest_second(new),
        )
        self.rows.append(row)
        print_row(row)
        return row

    async def report(
        self, session: aiohttp.ClientSession, relay: subprocess.Popen[bytes], log: Path
    ) -> None:
        """A row at every `--every` seconds strictly inside the load."""
        k = 1
        while (boundary := self.started + k * self.args.every) < self.until - 1e-6:
            await asyncio.sleep(max(0.0, boundary - time.monotonic()))
            await self.sample(session, relay, log)
            k += 1

    async def run(self, relay: subprocess.Popen[bytes], log: Path) -> float | None:
        """The load, its rows, then the drain; seconds from the load's end until every
        acknowledged event had arrived (None if they did not within --drain-timeout)."""
        connector = aiohttp.TCPConnector(limit=self.args.in_flight)
        timeout = aiohttp.ClientTimeout(total=60)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as posts,
            aiohttp.ClientSession(timeout=timeout) as session,
        ):
            await self.stand_in(session)
            print(
                f"at start: relay {rss(relay.pid) / MB:.1f} MB, store"
                f" {sum(rss(p) for p in children(relay.pid)) / MB:.1f} MB;"
                f" {self.args.rate:,g} events/s in requests of {self.args.batch}"
                f" for {self.args.minutes:g} min"
            )
            print_header()
            self.started = time.monotonic()
            self.until = self.started + self.args.minutes * 60.0
            self.window = Window(self.started)
            async with asyncio.TaskGroup() as group:  # relay exiting stops the load too
                group.create_task(self.load(posts, self.until))
                group.create_task(self.report(session, relay, log))
            # the last window: to the end of the load and its last answers
            await self.sample(session, relay, log)
            ended = time.monotonic()
            deadline = ended + self.args.drain_timeout
            while self.delivered < self.acknowledged and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                await self.stand_in(session)
            drained = time.monotonic() - ended
            await self.stand_in(session)
            return drained if self.delivered >= self.acknowledged else None


def cell(value: float | None, width: int, spec: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


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
    acked, arrived = soak.acknowledged, soak.delivered
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
    busiest = busiest_second(soak.arrivals)
    verdict = "within" if busiest <= RATE_LIMIT else "ABOVE"
    print(f"busiest second overall: {busiest} requests, {verdict} rate_limit {RATE_LIMIT}")
    if soak.other:
        print(f"warning: {soak.other} requests to the stand-in were not v2 batches")
    if drained is None:
        print(
            f"INCOMPLETE: {arrived:,} of {acked:,} acknowledged events arrived within"
            f" --drain-timeout {args.drain_timeout:g} s"
        )
    else:
        print(f"complete: every acknowledged event arrived, {drained:.1f} s after the load ended")
    return drained is not None and busiest <= RATE_LIMIT


async def run(args: argparse.Namespace) -> tuple[Soak, float | None]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="relay-soak-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        cio_port, port = free_port(), free_port()
        config = tmp / "soak.yaml"
        config.write_text(
            CONFIG.format(port=port, db=tmp / "soak.db", api_key="k" * 20, cio_port=cio_port)
        )
        cio = start(["-c", STAND_IN, str(cio_port)], tmp / "stand-in.log", env)
        relay = None
        store: list[int] = []
        try:
            await wait_up(f"http://127.0.0.1:{cio_port}/stats", cio, tmp / "stand-in.log")
            log = tmp / "relay.log"
            relay = start(
                ["-m", "relay", "serve", "--config", str(config), "--log-level", "ERROR"],
                log,
                env,
            )
            await wait_up(f"http://127.0.0.1:{port}/healthz", relay, log)
            store = children(relay.pid)
            soak = Soak(args, port, cio_port)
            drained = await soak.run(relay, log)
        finally:
            if relay is not None:
                store = children(relay.pid) or store
                stop(relay)
                wait_gone(store)
            stop(cio)
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
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait after the load for every event to arrive; default 120",
    )
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
