"""Benchmark: sustained end to end, Segment in and Customer.io out at the same time.

relay runs in its own process with a SQLite store and a Customer.io destination whose
`base_url` is a loopback stand-in, itself in a third process so that it does not take CPU
from relay: the stand-in answers 200 `{}` to every `POST /api/v2/batch` and counts its
requests and ops. The destination keeps its defaults (`rate_limit: 100`, `batch_size: 1000`)
unless `--batch-size` is given. This process sends `--seconds` of `/v1/batch` requests
(100 mixed identify/track/page events each, unique messageIds, 16 in flight, with the
plain client of benchlib.closed_loop unless `--client aiohttp`) while relay
delivers, then waits (at most `--drain-timeout`) until every acknowledged event has arrived
at the stand-in.

Reported: events acknowledged, ingest events/s during the load, end-to-end events/s
(acknowledged events / time from the first request until the last one arrived at the
stand-in), requests/s at the stand-in, the busiest one-second window of requests (never
above `rate_limit`), the shortest time `rate_limit` + 1 consecutive requests arrived in
(never a second or less), and ops per request. The baseline, measured in the same run, is relay
with the destination paused (its api_key from an unset variable): ingestion alone for the
same seconds. The ratio is end-to-end events/s / ingest-alone events/s.

    python scripts/bench_e2e.py [--seconds 10] [--concurrency 16] [--batch 100]
                                [--batch-size N] [--drain-timeout 120]
                                [--client plain|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

import benchlib
from benchlib import RATE_LIMIT, cell


async def run(args: argparse.Namespace, paused: bool) -> dict[str, Any]:
    settings = {"batch_size": args.batch_size} if args.batch_size else {}
    bodies = [benchlib.make_batch(args.batch) for _ in range(64)]
    with tempfile.TemporaryDirectory(prefix="relay-bench-e2e-", ignore_cleanup_errors=True) as t:
        tmp = Path(t)
        async with (
            benchlib.stand_in(tmp / "stand-in.log") as cio,
            benchlib.serve_relay(
                tmp,
                api_key=benchlib.PAUSED if paused else "k" * 20,
                base_url=cio.url,
                **settings,
            ) as relay,
        ):
            load = await benchlib.closed_loop(
                f"{relay.url}/v1/batch", bodies, args.seconds, args.concurrency, args.client
            )
            acknowledged = load.ok * args.batch
            async with aiohttp.ClientSession() as session:
                deadline = load.ended + (0.0 if paused else args.drain_timeout)
                await cio.poll(session)
                while cio.ops < acknowledged and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    await cio.poll(session)

    arrivals = cio.arrivals
    result: dict[str, Any] = {
        "acknowledged": acknowledged,
        "failures": load.failures,
        "ingest_per_s": acknowledged / (load.ended - load.started),
        "arrived": cio.ops,
        "other_requests": cio.other,
        "complete": cio.ops >= acknowledged,
        "e2e_per_s": None,
        "requests_per_s": None,
        "busiest": benchlib.busiest_second(arrivals),
        "closest": benchlib.closest(arrivals, RATE_LIMIT + 1),
        "ops_per_request": cio.ops / cio.batches if cio.batches else None,
    }
    if arrivals:
        span = arrivals[-1] - load.started
        result["seconds"] = span
        if result["complete"]:
            result["e2e_per_s"] = acknowledged / span
        if len(arrivals) > 1:
            result["requests_per_s"] = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of load; default 10")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="events a request")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="the destination's batch_size (default: relay's own, 1000)",
    )
    benchlib.add_drain_timeout(parser)
    parser.add_argument(
        "--client", choices=benchlib.CLIENTS, default="plain", help="the HTTP client of the load"
    )
    args = parser.parse_args()

    alone = asyncio.run(run(args, paused=True))
    e2e = asyncio.run(run(args, paused=False))

    print(
        f"{'':24}{'acknowledged':>13}{'ingest ev/s':>13}{'arrived':>9}{'e2e ev/s':>10}"
        f"{'seconds':>9}{'requests/s':>12}{'busiest 1 s':>13}{'ops/request':>13}{'non-200':>9}"
    )
    for name, r in (("ingest alone (paused)", alone), ("end to end", e2e)):
        print(
            f"{name:24}{r['acknowledged']:>13,}{r['ingest_per_s']:>13,.0f}{r['arrived']:>9,}"
            f"{cell(r['e2e_per_s'], 10, ',.0f')}{cell(r.get('seconds'), 9, '.1f')}"
            f"{cell(r['requests_per_s'], 12, '.1f')}{r['busiest']:>13}"
            f"{cell(r['ops_per_request'], 13, '.1f')}{r['failures']:>9}"
        )
    if alone["arrived"] or alone["other_requests"]:
        print("warning: the paused destination sent requests; the baseline is not ingest alone")
    if e2e["other_requests"]:
        print(f"warning: {e2e['other_requests']} requests to the stand-in were not v2 batches")
    if not e2e["complete"]:
        print(
            f"incomplete: {e2e['arrived']:,} of {e2e['acknowledged']:,} acknowledged events"
            f" arrived within --drain-timeout {args.drain_timeout:g} s"
        )
        sys.exit(1)
    verdict = "within" if e2e["busiest"] <= RATE_LIMIT else "ABOVE"
    print(f"busiest second {e2e['busiest']} requests: {verdict} rate_limit {RATE_LIMIT}")
    if e2e["closest"] is not None:
        print(
            f"closest {RATE_LIMIT + 1} consecutive requests: {e2e['closest'] * 1000:,.1f} ms apart"
            " (relay spaces them 1,020 ms as it writes them)"
        )
    print(f"ratio end-to-end/ingest alone: {e2e['e2e_per_s'] / alone['ingest_per_s']:.2f}")


if __name__ == "__main__":
    main()
