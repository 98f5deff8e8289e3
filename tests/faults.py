"""Harness for the fault tests (tests/test_faults.py): faulty stand-ins, relay as a process,
a load generator that records each event's acknowledgement, the summary of a run, and
filesystems that fill up or turn read-only.

Everything runs on loopback. Times are `time.monotonic()` seconds, in this process.

- `FaultyStandIn` is conftest's `StandIn` with faults switched on and off in time: answer
  a status (with headers such as Retry-After), hang past the client's timeout, reset the
  connection (RST), close it without an answer (FIN), or answer slowly. Beside each
  recorded request it keeps an `Answer`: when it arrived, when it was answered and how. A
  request counts as accepted only when it was answered with a 2xx while the client was
  still there: a hung, reset or closed request was not, even if it reached the stand-in.
- `RelayProcess` runs `python -m relay serve --config …` with its stdout and stderr (and so
  those of its store process, which inherits them) appended to one log file.
- `Load` sends Segment batches (or signed Customer.io webhooks) from a few concurrent
  senders, each owning its persons and sending sequentially, so that each person's order
  is defined; an unacknowledged request is sent again, with the same ids, until it is
  acknowledged or the load stops (as Segment's libraries do).
- `summarize` computes the figures of one run and prints them as one line.
- `tmpfs` mounts a small tmpfs (a disk that fills); `ErroringExt4` an ext4 filesystem that
  the kernel turns read-only under open files, as after a disk error: Linux refuses
  `mount -o remount,ro` (EBUSY) while any file on a filesystem is open for writing, which
  SQLite's files always are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import WRITE_KEY, Recorded, StandIn, basic, config_yaml
from tests.helpers import RELAY_LOG_FILES, sign, track, webhook

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("RELAY_FAULT_SCALE") or 1)
REPORT = os.environ.get("RELAY_FAULT_REPORT")
AUTH = {"Authorization": basic(WRITE_KEY)}
# A request that arrives this soon after an answer carrying Retry-After may have been sent
# before relay read that answer (loopback, a busy event loop): it is not counted against it.
RETRY_AFTER_GRACE = 0.1
# How much the moments a stand-in records may be off (its event loop also runs the load).
WINDOW_JITTER = 0.02


def scaled(n: float, minimum: int = 1) -> int:
    """`n` multiplied by RELAY_FAULT_SCALE, at least `minimum`."""
    return max(minimum, round(n * SCALE))


def now() -> float:
    return time.monotonic()


# ---------------------------------------------------------------------- stand-ins


@dataclass(frozen=True)
class Fault:
    """What a faulty stand-in does with a request."""

    kind: str  # "status", "hang", "reset", "close" or "slow"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # hang: until the connection is dropped; slow: before the answer

    @staticmethod
    def answer(status: int, retry_after: float | None = None) -> Fault:
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return Fault("status", status, headers)

    def describe(self) -> str:
        if self.kind == "status":
            return f"{self.status}" + "".join(f" {k}: {v}" for k, v in self.headers.items())
        return f"{self.kind} {self.seconds:g}s" if self.seconds else self.kind


@dataclass
class Answer:
    arrived: float
    fault: str | None = None
    finished: float | None = None
    status: int | None = None  # None: no answer reached the client
    retry_after: float | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class FaultyStandIn(StandIn):
    """A StandIn whose faults are switched on for a while, and which records its answers."""

    answers: list[Answer] = field(default_factory=list)
    windows: list[tuple[float, float, Fault]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def fail_for(self, fault: Fault, seconds: float, start: float | None = None) -> float:
        """Apply `fault` from `start` (now) for `seconds`; returns when it ends."""
        begin = now() if start is None else start
        self.windows.append((begin, begin + seconds, fault))
        return begin + seconds

    def fault_at(self, at: float) -> Fault | None:
        for begin, end, fault in self.windows:
            if begin <= at < end:
                return fault
        return None

    @property
    def fault_ends(self) -> list[float]:
        return [end for _, end, _ in self.windows]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = now()
        fault = self.fault_at(arrived)
        answer = Answer(arrived, fault.describe() if fault else None)
        self.answers.append(answer)
        try:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            self.requests.append(
                Recorded(request.method, request.path_qs, dict(request.headers), body, arrived)
            )
            self.arrived.set()
            return await self._act(request, fault, answer)
        except asyncio.CancelledError:  # the client went away (TestServer cancels handlers)
            answer.status, answer.finished = None, now()
            raise

    async def _act(
        self, request: web.Request, fault: Fault | None, answer: Answer
    ) -> web.StreamResponse:
        transport = request.transport
        if fault is None:
            status, payload, headers = self.default
        elif fault.kind == "status":
            status, payload, headers = fault.status, {}, fault.headers
        elif fault.kind in ("reset", "close"):
            assert transport is not None
            if fault.kind == "reset":
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: the close sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
            answer.finished = now()
            return web.Response(status=500)  # never reaches the client
        elif fault.kind == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), fault.seconds)
            if transport is not None:
                transport.abort()
            answer.finished = now()
            return web.Response(status=500)
        else:  # slow
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), fault.seconds)
            status, payload, headers = self.default
        answer.finished = now()
        if transport is None or transport.is_closing():
            return web.Response(status=500)  # the client gave up: no answer reached it
        answer.status = status
        if "Retry-After" in headers:
            answer.retry_after = float(headers["Retry-After"])
        return web.json_response(payload, status=status, headers=headers)


@contextlib.asynccontextmanager
async def faulty_stand_in() -> Any:
    stand_in = FaultyStandIn()
    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stand_in.url = str(server.make_url("")).rstrip("/")
    try:
        yield stand_in
    finally:
        stand_in.closing.set()
        await server.close()


def cio_events(rec: Recorded) -> list[tuple[str, str]]:
    """(event name, person) of each op of a Customer.io v2 batch request."""
    body = rec.body if isinstance(rec.body, dict) else {}
    return [
        (str(op.get("name")), str(op.get("identifiers", {}).get("id")))
        for op in body.get("batch", [])
    ]


def segment_events(rec: Recorded) -> list[tuple[str, str]]:
    """(Customer.io event id, person) of each message of a Segment /v1/batch request."""
    body = rec.body if isinstance(rec.body, dict) else {}
    return [
        (str(m.get("messageId", "")).removeprefix("cio-"), str(m.get("userId")))
        for m in body.get("batch", [])
    ]


Extract = Callable[[Recorded], list[tuple[str, str]]]


def accepted_events(stand_in: FaultyStandIn, extract: Extract) -> set[str]:
    return {
        name
        for rec, ans in zip(stand_in.requests, stand_in.answers, strict=False)
        if ans.accepted
        for name, _ in extract(rec)
    }


# ---------------------------------------------------------------------- relay as a process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def fault_config(
    db: Path,
    cio_url: str,
    segment_url: str = "http://127.0.0.1:9",
    *,
    port: int,
    rate_limit: float = 20,
    batch_size: int = 10,
    timeout: float = 2,
    segment_rate_limit: float = 20,
    segment_batch_size: int = 10,
    sqlite: dict[str, Any] | None = None,
) -> str:
    """conftest's config, with a fixed port and the delivery settings the faults need;
    `sqlite` adds settings to storage.sqlite (see `sqlite_settings`)."""
    text = config_yaml(
        db, cio_url, segment_url, rate_limit=rate_limit, extra_cio=f"      batch_size: {batch_size}"
    ).replace("port: 0", f"port: {port}")
    cio_timeout = f"      rate_limit: {rate_limit}\n      timeout: 2\n"
    assert cio_timeout in text, text
    text = text.replace(cio_timeout, f"      rate_limit: {rate_limit}\n      timeout: {timeout}\n")
    if sqlite:
        settings = "".join(f"{key}: {json.dumps(value)}, " for key, value in sqlite.items())
        text = text.replace('sqlite: {path: "', f'sqlite: {{{settings}path: "', 1)
    segment_block = f'      base_url: "{segment_url}"\n      timeout: 2\n'
    assert segment_block in text, text
    return text.replace(
        segment_block,
        f'      base_url: "{segment_url}"\n      timeout: {timeout}\n'
        f"      rate_limit: {segment_rate_limit}\n      batch_size: {segment_batch_size}\n",
    )


def sqlite_settings() -> set[str]:
    """The storage.sqlite settings this relay knows (a test may use a newer one only where
    the relay under test has it)."""
    from relay.store.sqlite.settings import SqliteSchema

    return set(SqliteSchema().fields)


def small_disk_settings() -> dict[str, Any]:
    """storage.sqlite settings for a database on a disk of a few MB: a relay that keeps
    room free for delivering (`min_free_mb`, 100 MB by default) keeps 1 MB there."""
    return {"min_free_mb": 1} if "min_free_mb" in sqlite_settings() else {}


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def is_store_process(pid: int) -> bool:
    try:
        return b"relay.store.process" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class RelayProcess:
    """relay serve as a subprocess; its output (and its store process's) goes to `log`."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config = config
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.store_pids: set[int] = set()  # every store process seen, to clean up after
        RELAY_LOG_FILES.append(log)  # no secret may appear in it (see conftest)

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n===== relay started at {now():.3f} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def store_child(self) -> int | None:
        for pid in children_of(self.pid):
            if is_store_process(pid):
                self.store_pids.add(pid)
                return pid
        return None

    async def wait_store_child(self, other_than: int | None = None, timeout: float = 15) -> int:
        deadline = now() + timeout
        while now() < deadline:
            pid = self.store_child()
            if pid is not None and pid != other_than:
                return pid
            await asyncio.sleep(0.02)
        raise AssertionError(f"relay started no store process\n{self.tail()}")

    async def wait_ready(self, timeout: float = 20) -> float:
        """Poll /readyz until it answers 200; returns when it did."""
        deadline = now() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while now() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(f"relay exited before it was ready:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            self.store_child()
                            return now()
                await asyncio.sleep(0.05)
        raise AssertionError(f"relay was not ready within {timeout} s:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL relay's own process (its store process then finishes and exits)."""
        assert self.proc is not None
        self.store_child()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.store_child()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def cleanup(self) -> None:
        """Kill whatever is left: relay, and any store process it started."""
        if self.proc is not None and self.proc.poll() is None:
            self.store_child()
            self.proc.kill()
            self.proc.wait(10)
        deadline = now() + 10
        for pid in sorted(self.store_pids):
            while is_store_process(pid) and now() < deadline:
                time.sleep(0.05)  # it finishes what it has once relay is gone
            if is_store_process(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


async def readyz(url: str) -> tuple[int | None, str]:
    """/readyz's status and body (None and the error when there is no answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(f"{url}/readyz") as resp,
        ):
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, repr(exc)


# ---------------------------------------------------------------------- load


@dataclass
class Event:
    name: str
    person: str
    sent_at: float
    seq: int | None = None  # order of acknowledgement (a batch's events in batch order)


@dataclass
class Refusal:
    at: float
    status: int
    retry_after: str | None
    body: str


class Load:
    """Concurrent senders of uniquely named events to relay.

    Each sender owns `persons` persons and sends one request at a time (a batch of `batch`
    track events, or one signed Customer.io webhook when `kind` is "webhook"), so each
    person's events have a defined order: the order they were acknowledged in. A request
    that is not acknowledged is sent again unchanged after `retry_pause`, until it is or
    the load stops; after each acknowledged one the sender waits `pace`.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        senders: int = 4,
        persons: int = 3,
        batch: int = 10,
        pace: float = 0.1,
        retry_pause: float = 0.1,
        kind: str = "segment",
        blob: int = 0,
        limit: int | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.senders = senders
        self.persons = persons
        self.batch = batch if kind == "segment" else 1
        self.pace = pace
        self.retry_pause = retry_pause
        self.kind = kind
        self.blob = "x" * blob
        self.limit = limit  # requests per sender, at most
        self.events: dict[str, Event] = {}
        self.refusals: list[Refusal] = []
        self.errors: list[tuple[float, str]] = []
        self.acks: list[float] = []  # when each acknowledged request was answered
        self._seq = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- control

    def start(self) -> Load:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._sender(w)) for w in range(self.senders)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def wait_acked(self, count: int, timeout: float) -> None:
        deadline = now() + timeout
        while len(self.acked) < count:
            if now() > deadline:
                raise AssertionError(
                    f"only {len(self.acked)} of {count} events acknowledged in {timeout} s;"
                    f" refusals {self.refusal_counts()}, errors {len(self.errors)}"
                )
            await asyncio.sleep(0.02)

    # -- figures

    @property
    def acked(self) -> list[Event]:
        return [e for e in self.events.values() if e.seq is not None]

    def refusal_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.refusals:
            key = f"{r.status}" + ("" if r.retry_after is None else " with Retry-After")
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- sending

    def _request(self, worker: int, n: int) -> tuple[str, bytes, dict[str, str], list[Event]]:
        t = now()
        events = []
        for k in range(self.batch):
            name = f"{self.prefix}-{worker}-{n}-{k}"
            person = f"{self.prefix}-p{worker}-{(n * self.batch + k) % self.persons}"
            events.append(Event(name, person, t))
        if self.kind == "segment":
            messages = [
                track(e.person, e.name, e.name, **({"blob": self.blob} if self.blob else {}))
                for e in events
            ]
            body = json.dumps({"batch": messages}).encode()
            headers = {**AUTH, "Content-Type": "application/json"}
            return "/v1/batch", body, headers, events
        [event] = events
        raw = webhook(event.name, event.person)
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-CIO-Timestamp": ts,
            "X-CIO-Signature": sign("signing-key", ts, raw),
        }
        return "/webhooks/customerio", raw, headers, events

    async def _sender(self, worker: int) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            n = 0
            while not self._stop.is_set() and (self.limit is None or n < self.limit):
                path, body, headers, events = self._request(worker, n)
                for e in events:
                    self.events[e.name] = e
                n += 1
                while not self._stop.is_set():
                    if await self._send_once(session, path, body, headers, events):
                        break
                    await self._pause(self.retry_pause)
                await self._pause(self.pace)

    async def _send_once(
        self,
        session: aiohttp.ClientSession,
        path: str,
        body: bytes,
        headers: dict[str, str],
        events: list[Event],
    ) -> bool:
        try:
            async with session.post(self.url + path, data=body, headers=headers) as resp:
                text = await resp.text()
                if resp.status == 200:
                    t = now()
                    self.acks.append(t)
                    for e in events:
                        e.seq = self._seq
                        self._seq += 1
                    return True
                self.refusals.append(
                    Refusal(now(), resp.status, resp.headers.get("Retry-After"), text[:300])
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.errors.append((now(), f"{type(exc).__name__}: {exc}"))
        return False

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)


async def post_probe(url: str, name: str, blob: int = 0) -> tuple[int | None, str, str | None]:
    """One track event; (status or None, body, Retry-After)."""
    message = track(f"probe-{name}", name, name, **({"blob": "x" * blob} if blob else {}))
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.post(f"{url}/v1/track", json=message, headers=AUTH) as resp,
        ):
            return resp.status, await resp.text(), resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return None, repr(exc), None


# ---------------------------------------------------------------------- summary


def busiest_window(times: Sequence[float], width: float = 1.0) -> tuple[int, float | None]:
    """The most of `times` within any half-open window [t, t + width), and where it starts."""
    ordered = sorted(times)
    best, at, start = 0, None, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - width:
            start += 1
        if end - start + 1 > best:
            best, at = end - start + 1, ordered[start]
    return best, at


def retry_after_violations(stand_in: FaultyStandIn, extract: Extract) -> int:
    """Requests that arrived sooner than a Retry-After given before them allowed.

    A Retry-After on a 429 holds for the whole destination (Customer.io's and Segment's
    rate limits are per workspace; relay's README: "after a 429 the destination waits").
    On any other answer (a 503, say) it holds for what that request carried: a request
    carrying one of those events again sooner is a violation, other people's events are not.
    """
    answers = stand_in.answers
    pairs = list(zip(stand_in.requests, answers, strict=False))
    everyone: list[tuple[float, float]] = []
    by_event: dict[str, list[tuple[float, float]]] = {}
    for rec, a in pairs:
        if not a.retry_after or a.finished is None or a.status is None:
            continue
        window = (a.finished, a.finished + a.retry_after)
        if a.status == 429:
            everyone.append(window)
        else:
            for name, _ in extract(rec):
                by_event.setdefault(name, []).append(window)

    def within(at: float, windows: list[tuple[float, float]]) -> bool:
        return any(start + RETRY_AFTER_GRACE <= at < end - 0.01 for start, end in windows)

    count = 0
    for rec, a in pairs:
        windows = everyone + [w for name, _ in extract(rec) for w in by_event.get(name, [])]
        if within(a.arrived, windows):
            count += 1
    return count


def order_violations(
    events: Sequence[Event], first_arrival: dict[str, tuple[float, int, int]]
) -> int:
    """Per person, acknowledged events (in acknowledgement order) that first reached the
    destination before the acknowledged event of that person just before them."""
    by_person: dict[str, list[Event]] = {}
    for e in sorted((e for e in events if e.seq is not None), key=lambda e: e.seq or 0):
        by_person.setdefault(e.person, []).append(e)
    count = 0
    for seq in by_person.values():
        arrivals = [first_arrival[e.name] for e in seq if e.name in first_arrival]
        count += sum(1 for a, b in zip(arrivals, arrivals[1:], strict=False) if b < a)
    return count


def summarize(
    scenario: str,
    load: Load,
    stand_in: FaultyStandIn,
    extract: Extract,
    fault_ends: Sequence[float],
    *,
    recovered: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The figures of a run, printed as one line (and appended to RELAY_FAULT_REPORT).

    `fault_ends` are the moments the faults ended; time_to_recover is the longest wait from
    one of them to the first request accepted (2xx) after it, unless `recovered` gives the
    moments of recovery by another measure (such as the first acknowledged request).
    """
    first_arrival: dict[str, tuple[float, int, int]] = {}
    accepted: dict[str, list[float]] = {}
    arrivals = []
    for i, (rec, ans) in enumerate(zip(stand_in.requests, stand_in.answers, strict=False)):
        arrivals.append(ans.arrived)
        for j, (name, _person) in enumerate(extract(rec)):
            first_arrival.setdefault(name, (ans.arrived, i, j))
            if ans.accepted:
                accepted.setdefault(name, []).append(ans.finished or ans.arrived)
    acked = load.acked
    lost = [e.name for e in acked if e.name not in accepted]
    accepted_at = sorted(a.finished or a.arrived for a in stand_in.answers if a.accepted)
    if recovered is not None:
        waits = list(recovered.values())
        recover = round(max(waits), 2) if waits and not math.isinf(max(waits)) else None
    else:
        recover = None
        for end in fault_ends:
            after = [t for t in accepted_at if t >= end]
            wait = (after[0] - end) if after else math.inf
            recover = wait if recover is None else max(recover, wait)
        recover = None if recover is None or recover == math.inf else round(recover, 2)
    drain = None
    if fault_ends and not lost and acked:
        last = max(min(accepted[e.name]) for e in acked)
        drain = round(max(0.0, last - max(fault_ends)), 2)
    busiest, busiest_at = busiest_window(arrivals)
    summary = {
        "scenario": scenario,
        "acknowledged": len(acked),
        # Of the load's events (single probes a test sends besides are not counted).
        "delivered": sum(1 for name in accepted if name in load.events),
        "lost": len(lost),
        "duplicated": sum(
            1 for name, times in accepted.items() if len(times) > 1 and name in load.events
        ),
        "time_to_recover": recover,
        "drain_seconds": drain,
        "max_requests_in_any_1s_window": busiest,
        # The same in windows of 0.98 s: a sender at exactly the rate limit spaces requests
        # 1/rate apart, so a millisecond of jitter in when the stand-in sees them puts
        # rate + 1 in some 1 s window. The rate checks use this one.
        "max_requests_in_any_0.98s_window": busiest_window(arrivals, 1.0 - WINDOW_JITTER)[0],
        "retry_after_violations": retry_after_violations(stand_in, extract),
        "order_violations": order_violations(acked, first_arrival),
        "requests": len(stand_in.requests),
        "refused": load.refusal_counts(),
        "send_errors": len(load.errors),
        **extra,
    }
    if busiest_at is not None and fault_ends:
        # Where the busiest second began, from the end of the first fault (negative: before).
        summary["busiest_second_from_fault_end"] = round(busiest_at - min(fault_ends), 2)
    if lost:
        summary["lost_examples"] = lost[:5]
    report(summary)
    return summary


def report(summary: dict[str, Any]) -> None:
    line = json.dumps(summary, sort_keys=False, default=str)
    print(f"FAULT SUMMARY {line}", flush=True)
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def delivered_before(stand_in: FaultyStandIn, extract: Extract, before: float) -> int:
    """Distinct events accepted (2xx) by `before`."""
    return len(
        {
            name
            for rec, ans in zip(stand_in.requests, stand_in.answers, strict=False)
            if ans.accepted and (ans.finished or ans.arrived) <= before
            for name, _ in extract(rec)
        }
    )


def tracebacks(output: str) -> list[str]:
    """Each Python traceback in relay's output, with the lines after it."""
    lines = output.splitlines()
    found = []
    for i, line in enumerate(lines):
        if "Traceback" in line:
            found.append("\n".join(lines[max(0, i - 1) : i + 25]))
    return found


# ---------------------------------------------------------------------- filesystems


def is_root() -> bool:
    return os.geteuid() == 0


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `directory`, unmounted afterwards (lazily if busy)."""
    directory.mkdir(parents=True, exist_ok=True)
    result = run("mount", "-t", "tmpfs", "-o", f"size={size}", "relay-fault-tmpfs", str(directory))
    if result.returncode != 0:
        raise OSError(f"mount -t tmpfs failed: {result.stderr.strip() or result.stdout.strip()}")
    try:
        yield directory
    finally:
        unmount(directory)


def unmount(directory: Path) -> None:
    if run("umount", str(directory)).returncode != 0:
        run("umount", "-l", str(directory))


def remount(directory: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return run("mount", "-o", f"remount,{mode}", str(directory))


class ErroringExt4:
    """An ext4 filesystem in a file, on a loop device, mounted with `errors=remount-ro`:
    `fail()` makes the kernel record an error on it, after which every write fails with
    EROFS, files already open included, as on a disk whose filesystem was remounted
    read-only after an I/O error. Only unmounting and mounting it again undoes that, which
    `remount()` does once nothing holds its files."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int = 16) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self.device = ""

    def mount(self) -> None:
        if not self.image.exists():
            with self.image.open("wb") as fh:
                fh.truncate(self.size_mb * 1024 * 1024)
            made = run("mkfs.ext4", "-q", "-F", str(self.image))
            if made.returncode != 0:
                raise OSError(f"mkfs.ext4 failed: {made.stderr.strip() or made.stdout.strip()}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        mounted = run(
            "mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mountpoint)
        )
        if mounted.returncode != 0:
            raise OSError(f"mount -o loop failed: {mounted.stderr.strip()}")
        source = run("findmnt", "-n", "-o", "SOURCE", str(self.mountpoint)).stdout.strip()
        self.device = os.path.basename(source)
        if not self._trigger.exists():
            self.unmount()
            raise OSError(f"{self._trigger} is missing: this kernel cannot fail the filesystem")

    @property
    def _trigger(self) -> Path:
        return Path(f"/sys/fs/ext4/{self.device}/trigger_fs_error")

    def fail(self) -> None:
        self._trigger.write_text("relay fault test")

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            unmount(self.mountpoint)
