"""Benchmark: how long a request waits for the SQLite store to commit its events, alone and
with other processes keeping every core busy, measured in the same run.

The store runs in this process, as it runs in a process of its own beside relay's; four
callers enqueue batches of 100 events (each with a dedup id of its own, routed to one
destination) as fast as the store commits them. The second run does the same with `--busy`
processes spinning beside it (one per core by default), as relay's HTTP process and the
load do on a small machine. Then the store's background writer (dedup ids, checkpoints)
shares the cores with them, and whatever it makes the commits wait for shows in the tail.

The Bloom filters in front of the dedup ids are each sized for at least a million ids, which
a run of seconds does not fill; `--filter-min-ids 50000` makes them fill within a run, as
they do in hours of traffic, so that what the store does then shows too.

    python scripts/bench_store.py [--seconds 10] [--busy N] [--callers 4]
                                  [--filter-min-ids N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

# Measure this checkout, whether or not relay is installed in the environment.
sys.path.insert(0, str(benchlib.REPO))

from relay.runtime import tune_garbage_collector  # noqa: E402
from relay.store.base import NewDelivery, NewEvent  # noqa: E402
from relay.store.sqlite import SqliteStore  # noqa: E402
from relay.store.sqlite import dedup as sqlite_dedup  # noqa: E402
from relay.store.sqlite import store as sqlite_store  # noqa: E402

BATCH = 100
DELIVERIES = (NewDelivery("customerio.main"),)


def messages() -> list[bytes]:
    batch = json.loads(benchlib.make_batch(BATCH, ("identify", "track", "track", "track")))
    return [json.dumps(m, separators=(",", ":")).encode() for m in batch["batch"]]


async def load(seconds: float, callers: int) -> dict[str, float]:
    stored = messages()
    latencies: list[float] = []
    sent = 0
    with tempfile.TemporaryDirectory(prefix="relay-bench-store-") as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"))
        await store.open()
        deadline = time.monotonic() + seconds

        async def caller() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                now = time.time()
                first, sent = sent, sent + BATCH
                events = [
                    NewEvent(
                        "bench",
                        "segment",
                        message,
                        now,
                        f"u:{first + i}",
                        DELIVERIES,
                        f"id-{first + i}",
                        now + 86400,
                    )
                    for i, message in enumerate(stored)
                ]
                begin = time.perf_counter()
                await store.enqueue(events)
                latencies.append(time.perf_counter() - begin)

        started = time.monotonic()
        try:
            await asyncio.gather(*(caller() for _ in range(callers)))
        finally:
            ended = time.monotonic()
            await store.close()

    def ms(p: float) -> float:
        return 1000 * (benchlib.percentile(latencies, p) or 0.0)

    return {
        "events_per_s": len(latencies) * BATCH / (ended - started),
        "p50": ms(50),
        "p99": ms(99),
        "p999": ms(99.9),
        "max": 1000 * max(latencies),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument(
        "--filter-min-ids", type=int, help="the least ids a dedup filter is sized for"
    )
    args = parser.parse_args()
    if args.filter_min_ids:
        for module in (sqlite_store, sqlite_dedup):
            module.FILTER_MIN_IDS = args.filter_min_ids  # type: ignore[attr-defined]
    # As in the store's own process.
    tune_garbage_collector()

    results = {"alone": await load(args.seconds, args.callers)}
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)
    ]
    try:
        results[f"{args.busy} busy"] = await load(args.seconds, args.callers)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()

    print(f"{'run':<10}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}")
    for name, r in results.items():
        print(
            f"{name:<10}{r['events_per_s']:>10.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}"
            f"{r['p999']:>10.1f}{r['max']:>9.1f}"
        )
    alone, busy = results.values()
    print(f"ratio busy/alone: p99.9 {busy['p999'] / alone['p999']:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
