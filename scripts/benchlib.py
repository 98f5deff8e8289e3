"""What the benchmark and soak scripts in scripts/ share, so that each fact is stated once.

Free loopback ports; Segment `/v1/batch` bodies to load relay with, and a closed-loop load of
them; relay's config for a run (Segment in, one Customer.io destination out, SQLite), relay
and a stand-in Customer.io each started in a process of its own (`python` run in this
checkout, with PYTHONPATH starting at it, so that this checkout is what is measured), waited
for and stopped; the resident memory of a process and its descendants, and the CPU that
processes and the machine's cores take, from /proc; the busiest second of a list of arrivals,
percentiles, samples from a /metrics page.

The scripts are run as `python scripts/NAME.py`, which puts scripts/ on sys.path: they
`import benchlib`. Neither relay nor its tests use it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MB = 1024 * 1024
# The Customer.io destination's default `rate_limit`: requests a second, at most.
RATE_LIMIT = 100

WRITE_KEY = "bench-write-key"
HEADERS = {
    "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
    "Content-Type": "application/json",
}
# An api_key taken from a variable that relay_env() leaves unset: the destination is paused
# and every delivery stays queued.
UNSET_KEY = "RELAY_BENCH_UNSET_API_KEY"
PAUSED = f"${{{UNSET_KEY}}}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- load

# A quarter identify, half track, a quarter page.
MIX = ("identify", "track", "track", "page")
CONTEXT = {"library": {"name": "analytics-python", "version": "2.3.0"}, "ip": "203.0.113.9"}


def make_batch(size: int, kinds: Sequence[str] = MIX, *, uniform: bool = False) -> bytes:
    """A `/v1/batch` body of `size` events, each with a userId and a messageId of its own.

    Event i is of type `kinds[i % len(kinds)]` and has that type's fields (identify: an
    email; track: an order; page: a name and a URL), or, with `uniform`, all of them (the
    order's event and properties, and an email and a plan as traits) whatever its type.
    """
    batch: list[dict[str, Any]] = []
    for i in range(size):
        user = f"user-{uuid.uuid4().hex[:8]}"
        kind = kinds[i % len(kinds)]
        event: dict[str, Any] = {
            "type": kind,
            "userId": user,
            "messageId": str(uuid.uuid4()),
            "timestamp": "2024-05-06T07:08:09.123Z",
            "context": CONTEXT,
        }
        order = {
            "event": "Order Completed",
            "properties": {
                "order_id": f"o-{i}",
                "total": 42.5,
                "currency": "EUR",
                "products": [{"sku": "a-1", "price": 10.0, "quantity": 2}],
            },
        }
        traits = {"email": f"{user}@example.com"}
        if uniform:
            event.update(order, traits={**traits, "plan": "pro"})
        elif kind == "identify":
            event["traits"] = traits
        elif kind == "track":
            event.update(order)
        elif kind == "page":
            event.update(name="Home", properties={"url": "https://shop.example/", "title": "Shop"})
        else:
            raise ValueError(f"make_batch has no fields for {kind!r} events")
        batch.append(event)
    return json.dumps({"batch": batch, "sentAt": "2024-05-06T07:08:10.000Z"}).encode()


# The number each request a load sends is made fresh with (see fresh): one count for every
# load of the process, so that loads sent at once, or one after another, to relays on one
# store never send the same ids.
_SENT = itertools.count(1)


def fresh(body: bytes, n: int) -> bytes:
    """`body` (from make_batch) with `n` put before every messageId: sent with an `n` of its
    own each time, its events are new every time, so that de-duplication short-cuts nothing
    (and a live destination gets every one)."""
    return body.replace(b'"messageId": "', f'"messageId": "{n}-'.encode())


@dataclass
class Load:
    """What a closed-loop load did: times are time.monotonic(), latencies in seconds."""

    started: float = 0.0
    ended: float = 0.0
    requests: int = 0
    ok: int = 0  # 200 answers
    latencies: list[float] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.requests - self.ok


# What closed_loop can send its requests with.
CLIENTS = ("plain", "aiohttp")


class _PlainClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends a request at a time and reads the status
    of its answer, which must give a Content-Length (aiohttp's and relay's do)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            return
        head = buffer[:end].lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            raise RuntimeError(f"an answer without a Content-Length: {buffer[:end]!r}")
        length = int(head[start + 17 :].split(b"\r\n", 1)[0])
        if len(buffer) < end + 4 + length:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 4 + length :]
        assert self.answer is not None
        self.answer.set_result(int(buffer[9:12]))


async def closed_loop(
    url: str, bodies: list[bytes], seconds: float, concurrency: int, client: str = "plain"
) -> Load:
    """POST `bodies` (round-robin, each made fresh) to `url` for `seconds`, with `concurrency`
    requests in flight, a new one as soon as one is answered.

    The load shares the machine's cores with what it measures, and relay uses two (its own
    process and its store's) where the bare baseline servers use one: every microsecond the
    load spends is taken from relay, and hardly from a baseline. So by default (`client`
    "plain") each request is written whole to a keep-alive connection, and only the status
    and length of its answer are read: about 1.6 µs of CPU an event of a request of 100,
    against 3.1 for aiohttp's client (`client` "aiohttp"), which sends the same requests."""
    if client == "aiohttp":
        return await _closed_loop_aiohttp(url, bodies, seconds, concurrency)
    if client not in CLIENTS:
        raise ValueError(f"client is one of {CLIENTS}, not {client!r}")
    parts = urlsplit(url)
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in HEADERS.items()
    )
    request = head.encode() + b"Content-Length: %d\r\n\r\n%s"
    loop = asyncio.get_running_loop()
    result = Load()
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        transport, connection = await loop.create_connection(
            _PlainClient, parts.hostname, parts.port
        )
        try:
            while time.monotonic() < deadline:
                counter = next(_SENT)
                body = fresh(bodies[counter % len(bodies)], counter)
                begin = time.perf_counter()
                connection.answer = loop.create_future()
                transport.write(request % (len(body), body))
                status = await connection.answer
                result.requests += 1
                result.ok += status == 200
                result.latencies.append(time.perf_counter() - begin)
        finally:
            transport.close()

    result.started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.ended = time.monotonic()
    return result


async def _closed_loop_aiohttp(
    url: str, bodies: list[bytes], seconds: float, concurrency: int
) -> Load:
    result = Load()
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            counter = next(_SENT)
            body = fresh(bodies[counter % len(bodies)], counter)
            begin = time.perf_counter()
            async with session.post(url, data=body, headers=HEADERS) as resp:
                await resp.read()
                result.requests += 1
                result.ok += resp.status == 200
            result.latencies.append(time.perf_counter() - begin)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        result.started = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        result.ended = time.monotonic()
    return result


# --------------------------------------------------------------------------- processes


def relay_config(
    db: Path,
    *,
    port: int | None = None,
    api_key: str = PAUSED,
    redis: dict[str, Any] | None = None,
    sqlite: dict[str, Any] | None = None,
    destinations: int = 1,
    **settings: Any,
) -> str:
    """relay's config for a run: Segment in through `/v1/batch` (WRITE_KEY), routed to one
    Customer.io destination, `customerio.main`, with `api_key` (by default paused) and the
    further `settings` given (base_url, rate_limit, batch_size, api); SQLite at `db`, or
    the `redis` settings given (storage.redis); `sqlite`, further storage.sqlite settings.
    The server section only with a `port`.
    With `destinations` above 1, one route sends every event to that many workspaces alike
    (`customerio.main`, `customerio.w2` …)."""
    lines = [] if port is None else [f"server: {{host: {HOST}, port: {port}}}"]
    storage = (
        {"redis": redis} if redis is not None else {"sqlite": {"path": str(db), **(sqlite or {})}}
    )
    names = ["main", *(f"w{n}" for n in range(2, destinations + 1))]
    lines += [
        f"storage: {json.dumps(storage)}",
        f"sources: {{segment: {{write_keys: {{bench: {json.dumps(WRITE_KEY)}}}}}}}",
        "destinations:",
        "  customerio:",
    ]
    for name in names:
        lines += [
            f"    {name}:",
            "      site_id: bench",
            f"      api_key: {json.dumps(api_key)}",
            *(f"      {key}: {json.dumps(value)}" for key, value in settings.items()),
        ]
    targets = ", ".join(f"customerio.{name}" for name in names)
    lines.append(f"routes: [{{from: segment, to: [{targets}]}}]")
    return "\n".join(lines) + "\n"


def relay_env() -> dict[str, str]:
    """This process's environment, with PYTHONPATH starting at this checkout and UNSET_KEY
    removed."""
    env = {k: v for k, v in os.environ.items() if k != UNSET_KEY}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(args: Sequence[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """`python ARGS` in a process of its own, in this checkout with relay_env(); its output to
    `log`, or nowhere."""
    with open(log, "wb") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=relay_env(), cwd=REPO
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; relay's store child exits once relay is
    gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-2000:] if log else ""


async def wait_up(
    url: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 30.0,
) -> None:
    """Until GET `url` answers below 500; an error, with the end of `log`, if `proc` exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and (proc is None or proc.poll() is None):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.05)
    exited = "" if proc is None or proc.poll() is None else f" (exit status {proc.returncode})"
    raise RuntimeError(f"{url} did not come up{exited}:\n{tail(log)}")


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
    return found + [g for c in found for g in children(c)]


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) that `pid` has taken so far, 0 once it is
    gone; from /proc (Linux)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        # Fields 14 and 15 (utime, stime), counted after the command's closing parenthesis.
        fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def idle_ticks() -> tuple[int, int]:
    """(idle, all) clock ticks of every core since boot, from /proc/stat (Linux); waiting for
    the disk counts as idle. (0, 0) where there is no /proc/stat."""
    with contextlib.suppress(OSError), open("/proc/stat") as fh:
        ticks = [int(t) for t in fh.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks[:8])  # idle, iowait; user … steal
    return 0, 0


@dataclass
class CpuUse:
    """CPU taken over a stretch of time: by the processes measured, by this one (the load it
    sends), and the share of the machine's cores left idle (see cpu_meter)."""

    server: float | None = None  # seconds; None where /proc cannot tell
    load: float = 0.0  # seconds
    idle: float | None = None  # 0 to 1; None where /proc/stat cannot tell


@contextlib.contextmanager
def cpu_meter(pids: Sequence[int]) -> Iterator[CpuUse]:
    """What `pids` (each with the threads of its own) and this process take while the block
    runs, filled in when it ends."""
    use = CpuUse()
    server = sum(cpu_seconds(p) for p in pids)
    ours = os.times()
    idle, every = idle_ticks()
    try:
        yield use
    finally:
        if os.path.exists("/proc/self/stat"):
            use.server = sum(cpu_seconds(p) for p in pids) - server
        now = os.times()
        use.load = now.user + now.system - ours.user - ours.system
        idle_after, every_after = idle_ticks()
        if every_after > every:
            use.idle = (idle_after - idle) / (every_after - every)


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of `pid` in bytes (VmRSS; or RssAnon, the process's own, or RssFile,
    pages of files it maps, such as SQLite's memory-mapped database), 0 once it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Relay:
    """relay serving in a process of its own (see serve_relay)."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    log: Path

    def check(self) -> None:
        """An error, with the end of its log, if relay has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"relay exited:\n{tail(self.log)}")


@contextlib.asynccontextmanager
async def serve_relay(tmp: Path, db: Path | None = None, **config: Any) -> AsyncIterator[Relay]:
    """`relay serve` on a free port with relay_config(db, **config) (the database by default
    in `tmp`, as are the config and relay.log), up (its /healthz answers) for the body of the
    `async with`; stopped after it, and its store's process(es) gone."""
    port = free_port()
    path, log = tmp / "bench.yaml", tmp / "relay.log"
    path.write_text(relay_config(db or tmp / "bench.db", port=port, **config))
    proc = start(["-m", "relay", "serve", "--config", str(path), "--log-level", "ERROR"], log)
    relay = Relay(proc, f"http://{HOST}:{port}", log)
    store: list[int] = []
    try:
        await wait_up(f"{relay.url}/healthz", proc, log)
        store = children(proc.pid)
        yield relay
    finally:
        store = children(proc.pid) or store
        stop(proc)
        wait_gone(store)


# --------------------------------------------------------------------------- stand-in

# The stand-in Customer.io, in a process of its own so that it takes no CPU from relay. It
# answers 200 `{}` to every request, counts v2 batches and their ops, and every other request
# (a v1 call: one op each). `GET /stats?from=N` gives its counts and the arrivals from the
# N-th on, so that each is fetched once.
#
# Each request is stamped with the time the kernel received its first read's bytes
# (SO_TIMESTAMPNS), not when the stand-in got round to it: a stand-in starved of CPU, or
# busy parsing a large body, would otherwise stamp requests that came apart close together,
# and count more in a one-second window than were sent in one. The stamps are moved to
# time.monotonic() (the system-wide CLOCK_MONOTONIC on Linux) so that they compare with
# this process's own. A plain HTTP/1.1 server, a thread per connection: aiohttp does not
# hand out a socket's ancillary data.
STAND_IN = """
import json, socket, struct, sys, threading, time
from urllib.parse import parse_qs, urlsplit

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
WALL_TO_MONOTONIC = time.time() - time.monotonic()
lock = threading.Lock()
arrivals = []
counts = {"batches": 0, "ops": 0, "other": 0, "unstamped": 0}

def kernel_stamp(ancdata):
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds + nanoseconds / 1e9 - WALL_TO_MONOTONIC
    with lock:
        counts["unstamped"] += 1
    return time.monotonic()

def handle(method, target, body, stamp):
    url = urlsplit(target)
    if method == "GET" and url.path == "/stats":
        start = int(parse_qs(url.query).get("from", ["0"])[0])
        with lock:
            return json.dumps({**counts, "arrivals": arrivals[start:]}).encode()
    ops = len(json.loads(body)["batch"]) if url.path == "/api/v2/batch" else 0
    with lock:
        arrivals.append(stamp)
        if url.path == "/api/v2/batch":
            counts["batches"] += 1
            counts["ops"] += ops
        else:
            counts["other"] += 1
    return b"{}"

def serve(conn):
    buf, stamp = b"", 0.0
    with conn:
        while True:
            data, ancdata, _, _ = conn.recvmsg(4 << 20, socket.CMSG_SPACE(16))
            if not data:
                return
            read_at = kernel_stamp(ancdata)
            if not buf:
                stamp = read_at
            buf += data
            while (end := buf.find(b"\\r\\n\\r\\n")) >= 0:
                head = buf[:end].decode("latin-1").split("\\r\\n")
                method, target = head[0].split(" ")[:2]
                length = 0
                for line in head[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if len(buf) < end + 4 + length:
                    break
                body, buf = buf[end + 4 : end + 4 + length], buf[end + 4 + length :]
                answer = handle(method, target, body, stamp)
                stamp = read_at  # what is left of this read is the next request's start
                conn.sendall(
                    b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                    b"Content-Length: %d\\r\\n\\r\\n" % len(answer) + answer
                )

listener = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=128)
# Set on the listener, so that the kernel stamps packets well before the first connection
# (it starts doing so a moment after the first socket asks), and inherited by each of them.
listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


class StandIn:
    """The stand-in as this process last saw it: its counts, and every arrival so far."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrivals: list[float] = []
        self.batches = 0  # v2 batch requests
        self.ops = 0  # in the v2 batches
        self.other = 0  # other requests
        self.unstamped = 0  # reads the kernel did not stamp (see STAND_IN)

    async def poll(self, session: aiohttp.ClientSession) -> list[float]:
        """Fetch the counts and the new arrivals; those arrivals."""
        params = {"from": str(len(self.arrivals))}
        async with session.get(f"{self.url}/stats", params=params) as resp:
            stats: dict[str, Any] = await resp.json()
        new: list[float] = stats["arrivals"]
        self.arrivals.extend(new)
        self.batches, self.ops, self.other = stats["batches"], stats["ops"], stats["other"]
        if stats["unstamped"] > self.unstamped:
            self.unstamped = stats["unstamped"]
            print(
                f"warning: the kernel did not stamp {self.unstamped} read(s) at the stand-in,"
                " which stamped them itself: the busiest second may read high",
                file=sys.stderr,
            )
        return new


@contextlib.asynccontextmanager
async def stand_in(log: Path | None = None) -> AsyncIterator[StandIn]:
    """The stand-in Customer.io on a free port, up for the body of the `async with`."""
    port = free_port()
    proc = start(["-c", STAND_IN, str(port)], log)
    try:
        await wait_up(f"http://{HOST}:{port}/stats", proc, log)
        yield StandIn(f"http://{HOST}:{port}")
    finally:
        stop(proc)


def add_drain_timeout(parser: argparse.ArgumentParser) -> None:
    """--drain-timeout: how long to wait after a load for every event to arrive."""
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait after the load for every event to arrive; default 120",
    )


# --------------------------------------------------------------------------- figures


def busiest_second(arrivals: list[float]) -> int:
    """The most arrivals in any one-second window starting at an arrival."""
    times = sorted(arrivals)
    best, j = 0, 0
    for i, begin in enumerate(times):
        while j < len(times) and times[j] < begin + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def closest(arrivals: list[float], count: int) -> float | None:
    """The shortest time `count` consecutive arrivals spanned (None if there are fewer). With
    `count` one more than a rate limit, more than a second means no second held more than the
    limit, and what it is above a second is what was left of the limiter's margin."""
    times = sorted(arrivals)
    if len(times) < count:
        return None
    return min(b - a for a, b in zip(times, times[count - 1 :], strict=False))


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def cell(value: float | None, width: int, spec: str) -> str:
    """`value` formatted right-aligned in `width`, or `-` for None."""
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metric_samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """The labels and value of each labelled sample of metric `name` in a /metrics page."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition("}")
            yield dict(_LABEL.findall(labels)), float(value)
