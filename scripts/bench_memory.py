"""Benchmark: memory and disk taken by a backlog of queued deliveries.

relay runs in its own process with a SQLite store (which runs in a child process of its
own) and a Customer.io destination whose key is left unset, so the destination is paused
and every event stays queued. This process queues mixed identify/track/page events through
`/v1/batch`, 500 a request with several in flight, up to each of `--sizes` queued events.
At each checkpoint, after `--settle` seconds (the store records dedup ids and checkpoints its
write-ahead log about once a second), it reports the resident memory (VmRSS) of relay's
process and of its store's process(es), their sum (and the store's own memory apart from the
pages of files it maps), the disk the database files take (the
.db, -wal, -shm, .dedup and every other file whose name starts with the database's; blocks
allocated), and disk bytes per queued event; then the growth per event between checkpoints.
The baseline, measured in the same run, is the same processes' RSS just after start with
nothing queued: the ratio is RSS at each checkpoint / RSS at start.

With `--destinations N`, every event is routed alike to N paused workspaces: an event is
then N queued deliveries, and disk is still counted per event.

    python scripts/bench_memory.py [--sizes 100000,500000,1000000] [--concurrency 8]
                                   [--destinations 1] [--settle 2] [--timeout 900]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

import benchlib
from benchlib import MB, children, rss

PER_REQUEST = 500


def disk(db: Path) -> tuple[int, list[str]]:
    """Bytes allocated to the database's files, and each file's name with its MB."""
    total, names = 0, []
    for f in sorted(db.parent.iterdir()):
        if f.name.startswith(db.name):
            with contextlib.suppress(OSError):
                used = f.stat().st_blocks * 512
                total += used
                names.append(f"{f.name} {used / MB:.1f}")
    return total, names


def measure(relay: int, db: Path) -> dict[str, Any]:
    store = children(relay)
    used, names = disk(db)
    return {
        "relay_rss": rss(relay),
        "store_rss": sum(rss(p) for p in store),
        "store_anon": sum(rss(p, "RssAnon") for p in store),
        "store_file": sum(rss(p, "RssFile") for p in store),
        "store_pids": len(store),
        "disk": used,
        "files": names,
    }


class Queuer:
    """Sends `/v1/batch` requests of up to 500 events, `concurrency` in flight."""

    def __init__(self, session: aiohttp.ClientSession, url: str, concurrency: int) -> None:
        self.session = session
        self.url = url
        self.concurrency = concurrency
        self.bodies = [benchlib.make_batch(PER_REQUEST) for _ in range(16)]  # round-robin
        self.queued = 0
        self.counter = 0

    async def fill_to(self, target: int, deadline: float) -> float:
        """Queue events until `target` are acknowledged; the seconds it took."""
        started = time.monotonic()
        planned = self.queued

        async def worker() -> None:
            nonlocal planned
            while planned < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.queued:,} events queued when --timeout ran out")
                size = min(PER_REQUEST, target - planned)
                planned += size
                self.counter += 1
                body = (
                    self.bodies[self.counter % len(self.bodies)]
                    if size == PER_REQUEST
                    else benchlib.make_batch(size)
                )
                # every event new: it stays queued
                body = benchlib.fresh(body, self.counter)
                async with self.session.post(self.url, data=body, headers=benchlib.HEADERS) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"relay answered {resp.status}: {text[:300]}")
                self.queued += size

        async with asyncio.TaskGroup() as group:  # one failing request stops them all
            for _ in range(self.concurrency):
                group.create_task(worker())
        return time.monotonic() - started


async def run(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + args.timeout
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-mem-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        db = tmp / "data" / "bench.db"
        db.parent.mkdir()
        async with benchlib.serve_relay(tmp, db, destinations=args.destinations) as relay:
            pid = relay.proc.pid
            await asyncio.sleep(args.settle)
            rows.append({"queued": 0, "rate": None, **measure(pid, db)})
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                queuer = Queuer(session, f"{relay.url}/v1/batch", args.concurrency)
                for size in sizes:
                    before = queuer.queued
                    seconds = await queuer.fill_to(size, deadline)
                    await asyncio.sleep(args.settle)
                    relay.check()
                    rate = (queuer.queued - before) / seconds
                    rows.append({"queued": queuer.queued, "rate": rate})
                    rows[-1].update(measure(pid, db))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="100000,500000,1000000",
        help="queued events at each checkpoint, comma-separated; default 100000,500000,1000000",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--destinations",
        type=int,
        default=1,
        help="Customer.io workspaces every event is routed to alike; default 1",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before measuring; default 2"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="give up queueing after this long"
    )
    args = parser.parse_args()
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    if not sizes or sizes[0] <= 0:
        parser.error("--sizes needs positive numbers")

    rows = asyncio.run(run(args, sizes))

    start = rows[0]
    start_total = start["relay_rss"] + start["store_rss"]
    print(
        f"{'queued':>10}{'queue ev/s':>12}{'relay MB':>10}{'store MB':>10}{'total MB':>10}"
        f"{'x start':>9}{'disk MB':>10}{'disk B/event':>14}{'store anon/file MB':>20}"
    )
    for r in rows:
        total = r["relay_rss"] + r["store_rss"]
        rate = f"{r['rate']:>12,.0f}" if r["rate"] else f"{'-':>12}"
        per_event = f"{r['disk'] / r['queued']:>14,.0f}" if r["queued"] else f"{'-':>14}"
        print(
            f"{r['queued']:>10,}{rate}{r['relay_rss'] / MB:>10.1f}{r['store_rss'] / MB:>10.1f}"
            f"{total / MB:>10.1f}{total / start_total:>9.2f}{r['disk'] / MB:>10.1f}{per_event}"
            f"{r['store_anon'] / MB:>14.1f} / {r['store_file'] / MB:.1f}"
        )
    print()
    print(f"{'growth per event':<24}{'relay B':>10}{'store B':>10}{'total B':>10}{'disk B':>10}")
    for before, after in zip(rows, rows[1:], strict=False):
        n = after["queued"] - before["queued"]
        relay = (after["relay_rss"] - before["relay_rss"]) / n
        store = (after["store_rss"] - before["store_rss"]) / n
        print(
            f"{before['queued']:>10,} to {after['queued']:<10,}{relay:>10.1f}{store:>10.1f}"
            f"{relay + store:>10.1f}{(after['disk'] - before['disk']) / n:>10.1f}"
        )
    last = rows[-1]
    print(
        f"store processes: {last['store_pids']}; database files (MB): {', '.join(last['files'])}"
        f"\nbaseline (nothing queued): {start_total / MB:.1f} MB resident; ratio at"
        f" {last['queued']:,} queued: {(last['relay_rss'] + last['store_rss']) / start_total:.2f}"
    )


if __name__ == "__main__":
    main()
