"""Benchmark: Customer.io reporting webhooks accepted per second, against a bare baseline.

Two servers get the same load from this process, one after the other, each in its own
process on loopback: correctly signed webhooks (a distinct event_id each, 1,000 people),
`--concurrency` requests in flight.

- baseline: a bare aiohttp server that reads the body, checks the HMAC-SHA256 signature,
  JSON-decodes the body and answers 200. Nothing is stored.
- relay: `create_app` from a config written to a temporary directory (SQLite there, WAL,
  synchronous=FULL). Each webhook is verified, mapped, de-duplicated, routed (`from:
  customerio` to a Segment destination) and committed before its 200. The Segment
  destination points at a tiny stand-in process that reads each /v1/batch and answers 200
  (`--sink standin`, the default: delivery runs as it would in production, batched), or at a
  closed loopback port (`--sink closed`: deliveries fail and wait for retries).

Each phase runs a short warm-up, then `--seconds` of measurement, bounded by
`--max-requests`. The default run takes about 30 s.

    python scripts/bench_webhooks.py [--concurrency 16] [--seconds 10] [--sink standin]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

import benchlib
from benchlib import HOST, free_port, stop, wait_up

SIGNING_KEY = "bench-signing-key"
SOURCE = "bench"

CONFIG = """
server: {{host: {host}, port: {port}, shutdown_timeout: 5}}
storage:
  sqlite: {{path: "{db}"}}
sources:
  customerio:
    signing_keys: {{{source}: "{key}"}}
destinations:
  segment:
    main:
      write_key: bench-write-key
      base_url: "http://{host}:{segment_port}"
routes:
  - name: activity-to-segment
    from: customerio
    to: [segment.main]
"""

# A realistic email `clicked` webhook, about 500 bytes.
TEMPLATE = (
    '{{"event_id":"{event_id}","object_type":"email","metric":"clicked",'
    '"timestamp":{timestamp},"data":{{"customer_id":"{person}",'
    '"identifiers":{{"id":"{person}","email":"{person}@example.com","cio_id":"c{person}"}},'
    '"delivery_id":"RPILAgABcRhIBqSp7kiPekGBIeVh","campaign_id":23,"action_id":36,'
    '"subject":"Welcome to the spring sale","recipient":"{person}@example.com",'
    '"href":"https://shop.example.com/p/spring?utm_source=email","link_id":3}}}}'
)


# --------------------------------------------------------------------------- servers


def serve_baseline(port: int) -> None:
    """The bare server: read, verify the signature, decode, answer 200."""
    key = SIGNING_KEY.encode()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get("X-CIO-Timestamp", "")
        given = request.headers.get("X-CIO-Signature", "")
        expected = hmac.new(key, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest().encode(), given.encode()):
            return web.json_response({"success": False}, status=401)
        json.loads(raw)
        return web.json_response({"success": True})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/webhooks/customerio", handle)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def serve_standin(port: int) -> None:
    """A stand-in for Segment's /v1/batch: read the body, answer 200."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/v1/batch", handle)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


def serve_relay(config_path: str) -> None:
    """relay built by create_app, as `relay serve` runs it (no access log)."""
    from relay.app import create_app
    from relay.config import load_config

    logging_quiet()
    config = load_config(config_path)

    async def run() -> None:
        runner = web.AppRunner(create_app(config), handle_signals=False, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.server.host, config.server.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    name: str
    accepted: int = 0  # 200 answers inside the measured window
    other: int = 0  # non-200 answers or errors inside the window
    total_ok: int = 0  # 200 answers, warm-up included
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The `q` quantile of the latencies, in ms."""
        value = benchlib.percentile(self.latencies, q * 100)
        return float("nan") if value is None else value * 1000


def sign(timestamp: str, raw: bytes) -> str:
    message = b"v0:" + timestamp.encode() + b":" + raw
    return hmac.new(SIGNING_KEY.encode(), message, hashlib.sha256).hexdigest()


async def load(
    name: str,
    url: str,
    *,
    concurrency: int,
    warmup: float,
    seconds: float,
    max_requests: int,
    run_id: str,
) -> Result:
    result = Result(name)
    counter = 0
    started = time.perf_counter()
    measure_from = started + warmup
    deadline = measure_from + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while counter < max_requests and time.perf_counter() < deadline:
            counter += 1
            now = int(time.time())
            raw = TEMPLATE.format(
                event_id=f"{run_id}-{counter}",
                timestamp=now,
                person=f"p{counter % 1000}",
            ).encode()
            ts = str(now)
            headers = {
                "Content-Type": "application/json",
                "X-CIO-Timestamp": ts,
                "X-CIO-Signature": sign(ts, raw),
            }
            begin = time.perf_counter()
            try:
                async with session.post(url, data=raw, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            end = time.perf_counter()
            result.total_ok += ok
            if begin >= measure_from:
                result.latencies.append(end - begin)
                if ok:
                    result.accepted += 1
                else:
                    result.other += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.seconds = max(0.0, min(time.perf_counter(), deadline) - measure_from)
    return result


# --------------------------------------------------------------------------- orchestration


def spawn(*args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """This script with `args`, in a process of its own."""
    return benchlib.start([str(Path(__file__).resolve()), *args], log)


async def relay_counts(base: str) -> dict[str, float]:
    """Queued and delivered counts from relay's own /metrics."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        text = await resp.text()
    counts = {"queued": 0.0, "duplicate": 0.0, "rejected": 0.0, "delivered": 0.0}
    for labels, value in benchlib.metric_samples(text, "relay_received_events_total"):
        if labels.get("source") == SOURCE and "outcome" in labels:
            counts[labels["outcome"]] = value
    for _, value in benchlib.metric_samples(text, "relay_delivered_events_total"):
        counts["delivered"] += value
    return counts


async def bench(args: argparse.Namespace) -> int:
    common = {
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "max_requests": args.max_requests,
    }
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-", dir=args.dir) as tmp:
        port = free_port()
        baseline = spawn("--serve", "baseline", "--port", str(port))
        try:
            await wait_up(f"http://{HOST}:{port}/healthz", baseline)
            url = f"http://{HOST}:{port}/webhooks/customerio"
            results.append(await load("baseline", url, run_id="b", **common))
        finally:
            stop(baseline, timeout=10)

        segment_port = free_port()
        standin = None
        if args.sink == "standin":
            standin = spawn("--serve", "standin", "--port", str(segment_port))
        port = free_port()
        config = Path(tmp) / "relay.yaml"
        config.write_text(
            CONFIG.format(
                host=HOST,
                port=port,
                db=Path(tmp) / "relay.db",
                source=SOURCE,
                key=SIGNING_KEY,
                segment_port=segment_port,
            )
        )
        relay = spawn("--serve", "relay", "--config", str(config), log=Path(tmp) / "relay.log")
        try:
            base = f"http://{HOST}:{port}"
            await wait_up(base + "/healthz", relay, Path(tmp) / "relay.log")
            results.append(await load("relay", base + "/webhooks/customerio", run_id="r", **common))
            await asyncio.sleep(1.5)  # let delivery catch up a little before counting
            counts = await relay_counts(base)
        finally:
            stop(relay, timeout=10)
            if standin is not None:
                stop(standin, timeout=10)
        db_dir = Path(tmp).resolve()

    print(
        f"webhooks: {args.concurrency} concurrent clients, {args.warmup:.0f} s warm-up,"
        f" {args.seconds:.0f} s measured; relay store in {db_dir.parent};"
        f" Segment destination: {'stand-in answering 200' if standin else 'closed port'}"
    )
    print(
        f"{'server':<10}{'webhooks/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'accepted':>10}{'non-200':>9}"
    )
    for r in results:
        print(
            f"{r.name:<10}{r.rate:>12.0f}{r.percentile(0.5):>9.1f}{r.percentile(0.99):>9.1f}"
            f"{max(r.latencies, default=float('nan')) * 1000:>9.1f}{r.accepted:>10}{r.other:>9}"
        )
    base_rate, relay_rate = results[0].rate, results[1].rate
    if base_rate:
        print(f"ratio relay/baseline: {relay_rate / base_rate:.2f}")
    answered = results[1].total_ok
    print(
        f"relay answered 200 to {answered} webhooks (warm-up included); its metrics count"
        f" {counts['queued']:.0f} queued, {counts['duplicate']:.0f} duplicate,"
        f" {counts['rejected']:.0f} rejected, {counts['delivered']:.0f} delivered to Segment"
    )
    if counts["queued"] != answered:
        print("MISMATCH: every 200 should be one queued webhook", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="at most this many per server"
    )
    parser.add_argument("--sink", choices=["standin", "closed"], default="standin")
    parser.add_argument("--dir", default=None, help="where the temporary SQLite store goes")
    parser.add_argument("--serve", choices=["baseline", "standin", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.concurrency < 1 or args.seconds <= 0 or args.seconds > 120:
        parser.error("--concurrency must be at least 1 and --seconds in (0, 120]")
    if args.serve == "baseline":
        serve_baseline(args.port)
        return 0
    if args.serve == "standin":
        serve_standin(args.port)
        return 0
    if args.serve == "relay":
        serve_relay(args.config)
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
