"""Benchmark: requests answered once the queue is full, against the same relay accepting.

relay runs in its own process with a SQLite store and a paused Customer.io destination, so
every event stays queued, and takes `/v1/batch` requests (100 events each, 16 in flight,
unique messageIds) from this process until `storage.sqlite.max_pending` (`--max-pending`,
by default relay's own default of 5,000,000 queued deliveries) is reached and it answers 503
`store_unavailable`, as a full queue must; then `--seconds` more of the same load.

Reported, for the seconds before the queue was full (the baseline: relay accepting) and for
those after it (refusing): requests answered a second, by status, and their latency (p50,
p99, longest). The ratio is answers a second while full / answers a second while accepting:
a refusal is cheaper than storing 100 events, so above 1 where refusing costs little; near
0 where each refusal holds up the store (as it did while every group of commits with a
refused request in it counted the whole queue again, twice).

    python scripts/bench_full.py [--max-pending 5000000] [--seconds 10]
                                 [--concurrency 16] [--timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

import benchlib
from benchlib import cell


class Phase:
    """The answers of one phase: their count by status and their latencies."""

    def __init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.latencies: list[float] = []
        self.started = self.ended = 0.0

    def row(self) -> dict[str, Any]:
        seconds = max(self.ended - self.started, 1e-9)
        p50, p99 = (benchlib.percentile(self.latencies, p) for p in (50, 99))
        return {
            "seconds": seconds,
            "per_s": sum(self.statuses.values()) / seconds,
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "max_ms": max(self.latencies, default=0.0) * 1000,
            "statuses": dict(sorted(self.statuses.items())),
        }


async def run(args: argparse.Namespace) -> tuple[Phase, Phase]:
    bodies = [benchlib.make_batch(100) for _ in range(64)]
    accepting, full = Phase(), Phase()
    counter = 0
    with tempfile.TemporaryDirectory(prefix="relay-bench-full-", ignore_cleanup_errors=True) as t:
        async with benchlib.serve_relay(Path(t), sqlite={"max_pending": args.max_pending}) as relay:
            url = f"{relay.url}/v1/batch"
            accepting.started = time.monotonic()
            deadline = accepting.started + args.timeout

            async def worker(session: aiohttp.ClientSession) -> None:
                nonlocal counter
                while True:
                    now = time.monotonic()
                    if full.started and now > full.started + args.seconds:
                        return
                    if not full.started and now > deadline:
                        raise TimeoutError(f"the queue was not full within {args.timeout} s")
                    counter += 1
                    body = benchlib.fresh(bodies[counter % len(bodies)], counter)
                    begin = time.monotonic()
                    async with session.post(url, data=body, headers=benchlib.HEADERS) as resp:
                        await resp.read()
                    end = time.monotonic()
                    if resp.status == 503 and not full.started:
                        full.started = accepting.ended = end
                    phase = full if full.started and begin >= full.started else accepting
                    phase.statuses[resp.status] += 1
                    phase.latencies.append(end - begin)

            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
            full.ended = time.monotonic()
    return accepting, full


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-pending", type=int, default=5_000_000, help="storage.sqlite.max_pending"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="of load once full")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=300.0, help="to fill the queue")
    args = parser.parse_args()
    accepting, full = await run(args)
    rows = {"accepting (baseline)": accepting.row(), "full": full.row()}
    print(
        f"{'phase':<22}{'seconds':>9}{'answers/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        "  answers by status"
    )
    for name, r in rows.items():
        print(
            f"{name:<22}{cell(r['seconds'], 9, '.1f')}{cell(r['per_s'], 11, ',.0f')}"
            f"{cell(r['p50_ms'], 9, '.1f')}{cell(r['p99_ms'], 9, '.1f')}"
            f"{cell(r['max_ms'], 9, '.0f')}  {r['statuses']}"
        )
    ratio = rows["full"]["per_s"] / rows["accepting (baseline)"]["per_s"]
    print(f"ratio full/accepting, answers a second: {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
