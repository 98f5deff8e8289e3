"""The SQLite store run in a process of its own, behind the same `Store` interface.

Everything the store does (checking dedup ids, building rows, SQLite's own work, commits)
then runs on the other core, under a GIL of its own: in the relay's process it would compete
with the event loop for one GIL, and every statement would wait for the loop to let go of it.
The relay's process only sends each call over a socket and reads the answer back (and
hashes the dedup ids of the events it sends: it is the less busy of the two). The requests
it handles in one turn of its event loop are stored by one call (see ProcessStore.enqueue).

The child is `python -m relay.store.process`, given one end of a socket pair. Frames are a
4-byte length and a pickle, between two processes of one program on a private socket. A
call's answer comes after its commit, so a 2xx still means "on disk". When the relay's process
dies (even `kill -9`), the child reads the end of the socket, finishes what it has, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

from relay.errors import StoreCannotOpen, StoreFull, StoreInUse, StoreUnavailable
from relay.runtime import tune_garbage_collector
from relay.store.base import (
    EVERY_DEAD_LETTER,
    STORE_CALLS,
    AlikeEvents,
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EnqueueOutcome,
    EventTuple,
    Settlement,
)
from relay.store.sqlite import DEFAULT_MIN_FREE_MB, SqliteStore, leased_deliveries
from relay.store.sqlite.dedup import dedup_keys

log = logging.getLogger("relay.store")

_HEADER = struct.Struct("!I")
# Errors that cross the socket as (kind, message, retry_after) and are raised again as is.
_ERRORS: dict[str, type[StoreUnavailable]] = {
    error.__name__: error for error in (StoreUnavailable, StoreFull, StoreCannotOpen, StoreInUse)
}
# How long the child may take to open the database (a large queue is scanned at start-up).
_OPEN_TIMEOUT = 120.0
_CLOSE_TIMEOUT = 30.0
_SOCKET_BUFFER = 4 * 1024 * 1024
# What a call is answered while the child is being started again.
_STOPPED = (
    "the event store's process stopped and is being started again;"
    " nothing acknowledged was lost, retry in a few seconds"
)


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


# A request's events to store, and the future its outcomes go to.
_Gathered = tuple[Sequence[EventTuple], "asyncio.Future[list[EnqueueOutcome]]"]


class ProcessStore:
    """A `SqliteStore` in a child process; safe against `kill -9` of either process."""

    def __init__(
        self,
        path: str,
        *,
        max_pending: int = 5_000_000,
        max_size_mb: int | None = None,
        min_free_mb: float = DEFAULT_MIN_FREE_MB,
        lock_wait: float = 30.0,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self.max_size_mb = max_size_mb
        self.min_free_mb = min_free_mb
        self.lock_wait = lock_wait
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        # Requests to store, gathered in this turn of the event loop (see enqueue), and the
        # calls sending them.
        self._gathered: list[_Gathered] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._opened = False  # open() succeeded and close() was not called since
        self._ready = False  # the current child has opened the store
        self._restarting: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        await self._start()
        self._opened = True

    async def _start(self) -> None:
        # The child creates the database's folder, as SqliteStore.open does anywhere.
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            # Room for a few whole requests each way, so that a write rarely stops halfway.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
        args = [sys.executable, "-m", "relay.store.process", "--fd", str(theirs.fileno())]
        args += ["--path", self.path, "--max-pending", str(self.max_pending)]
        if self.max_size_mb:
            args += ["--max-size-mb", str(self.max_size_mb)]
        args += ["--min-free-mb", str(self.min_free_mb), "--lock-wait", str(self.lock_wait)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._reader_task = asyncio.create_task(self._read_answers(reader), name="relay-store")
        try:
            await asyncio.wait_for(self._call("open"), _OPEN_TIMEOUT + self.lock_wait)
        except BaseException:
            await self._stop()
            raise
        self._ready = True

    async def close(self) -> None:
        self._opened = False
        if self._restarting is not None:
            with contextlib.suppress(Exception):
                await self._restarting
            self._restarting = None
        await self._stop()

    def _restart_soon(self) -> None:
        """The child stopped without being asked: start a new one, so that the requests
        after those that got a 503 find the store again."""
        if self._opened and (self._restarting is None or self._restarting.done()):
            self._restarting = asyncio.create_task(self._restart(), name="relay-store-restart")

    async def _restart(self) -> None:
        await self._stop()
        while self._opened:
            try:
                await self._start()
                log.warning("the event store's process was started again")
                return
            except Exception as exc:
                log.error("the event store's process cannot start (%s); trying again", exc)
                await self._stop()
                await asyncio.sleep(1)

    async def _stop(self) -> None:
        self._ready = False
        if self._writer is not None:
            # The child finishes the calls it has and records the last dedup ids first.
            with contextlib.suppress(StoreUnavailable, ConnectionError, TimeoutError):
                await asyncio.wait_for(self._call("close"), _CLOSE_TIMEOUT)
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), _CLOSE_TIMEOUT)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
            self._proc = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None

    async def _read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, ok, value = await _read_frame(reader)
                fut = self._waiting.pop(call_id, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    kind, message, retry_after = value
                    fut.set_exception(
                        _ERRORS.get(kind, StoreUnavailable)(message, retry_after=retry_after)
                    )
        except (asyncio.IncompleteReadError, ConnectionError):
            if self._opened:
                log.error("the event store's process stopped; starting it again")
                self._restart_soon()
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(StoreUnavailable(_STOPPED))
            self._waiting.clear()

    async def _call(self, method: str, *args: Any) -> Any:
        writer = self._writer
        if (
            writer is None
            or self._reader_task is None
            or self._reader_task.done()
            or not (self._ready or method in ("open", "close"))
        ):
            raise StoreUnavailable("the event store is not open (starting); retry in a few seconds")
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = fut
        try:
            writer.write(_frame((call_id, method, args)))
            await writer.drain()
        except ConnectionError as exc:
            # The child died between the check above and this write: the reader restarts it.
            self._waiting.pop(call_id, None)
            if fut.done():
                fut.exception()  # the reader failed it already; it is answered here
            else:
                fut.cancel()
            raise StoreUnavailable(_STOPPED) from exc
        return await fut

    # ------------------------------------------------------------------ Store

    async def enqueue(self, events: Sequence[EventTuple]) -> list[EnqueueOutcome]:
        """Requests handled in one turn of the event loop are stored by one call, their events
        in the order they came: each call costs the store's process a frame, a task, a few
        statements and a block of its own whatever its size (about 50 µs in the store alone,
        timed in one process). Each request gets its own events' outcomes, or an error of
        its own that says what the call's said. A queue that is nearly full (`max_pending`)
        therefore refuses all the requests of a call where it might have taken the first."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[EnqueueOutcome]] = loop.create_future()
        if not self._gathered:
            loop.call_soon(self._send_gathered)
        self._gathered.append((events, fut))
        return await fut

    def _send_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        task = asyncio.create_task(self._enqueue_gathered(gathered), name="relay-store-enqueue")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _enqueue_gathered(self, gathered: list[_Gathered]) -> None:
        # Each request's events as they are (AlikeEvents cross as columns), and their dedup
        # keys, hashed here: the store's process is the busier of the two.
        parts = [part for part, _ in gathered]
        keys = list(itertools.chain.from_iterable(map(dedup_keys, parts)))
        sent = [p.without_ids() if isinstance(p, AlikeEvents) else p for p in parts]
        try:
            outcomes: list[EnqueueOutcome] = await self._call("enqueue", sent, keys)
        except BaseException as exc:
            for _, fut in gathered:
                if fut.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    fut.cancel()
                elif isinstance(exc, StoreUnavailable):  # each caller raises one of its own
                    fut.set_exception(type(exc)(exc.message, retry_after=exc.retry_after))
                else:
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        at = 0
        for part, fut in gathered:
            if not fut.done():
                fut.set_result(outcomes[at : at + len(part)])
            at += len(part)

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        return leased_deliveries(destination, await self._call("lease", destination, limit, now))

    async def settle(self, settlement: Settlement, now: float) -> None:
        if settlement:
            await self._call("settle", settlement, now)

    async def dead_letters(self, which: DeadLetterFilter = EVERY_DEAD_LETTER) -> list[DeadLetter]:
        found: list[DeadLetter] = await self._call("dead_letters", which)
        return found

    async def replay(self, which: DeadLetterFilter, now: float) -> int:
        count: int = await self._call("replay", which, now)
        return count

    async def discard(self, which: DeadLetterFilter) -> int:
        count: int = await self._call("discard", which)
        return count

    async def oldest(self) -> dict[str, float]:
        found: dict[str, float] = await self._call("oldest")
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = await self._call("counts")
        return found

    async def purge(self, now: float) -> None:
        await self._call("purge", now)

    async def flush_ids(self) -> int:
        count: int = await self._call("flush_ids")
        return count

    async def write_problem(self) -> str | None:
        try:
            problem: str | None = await self._call("write_problem")
        except StoreUnavailable as exc:
            return exc.message
        return problem


# ---------------------------------------------------------------------- the child


class _Server:
    """Runs calls from the relay's process on a `SqliteStore`, many at once, so that the
    store's writer still commits concurrent requests together."""

    def __init__(self, store: SqliteStore, writer: asyncio.StreamWriter) -> None:
        self.store = store
        self.writer = writer
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, method, args = await _read_frame(reader)
                if method == "close":
                    await self._finish()
                    self._answer(call_id, True, None)
                    await self.writer.drain()
                    return
                task = asyncio.create_task(self._handle(call_id, method, args))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The relay's process is gone: finish what was asked, then stop.
            await self._finish()

    async def _finish(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.store.close()

    async def _handle(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self._dispatch(method, args)
        except StoreUnavailable as exc:
            self._answer(call_id, False, (type(exc).__name__, exc.message, exc.retry_after))
        except Exception as exc:  # a bug must not leave the relay waiting forever
            log.exception("store call %s failed", method)
            self._answer(
                call_id,
                False,
                ("StoreUnavailable", f"the event store failed: {type(exc).__name__}: {exc}", 5),
            )
        else:
            self._answer(call_id, True, value)

    async def _dispatch(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "open":
            await self.store.open()
            return None
        served = _SERVED.get(method)
        if served is None:
            raise ValueError(f"unknown store call {method!r}")
        return await getattr(self.store, served)(*args)

    def _answer(self, call_id: int, ok: bool, value: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame((call_id, ok, value)))


# The calls the child serves: the Store's own, and `flush_ids` (for tests), each by the
# SqliteStore method that takes and gives what crosses the socket (dedup keys, rows).
_WIRE_FORMS = {"enqueue": "enqueue_keyed", "lease": "lease_rows"}
_SERVED = {name: _WIRE_FORMS.get(name, name) for name in (*STORE_CALLS, "flush_ids")}


async def _serve(fd: int, store: SqliteStore) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    await _Server(store, writer).run(reader)
    with contextlib.suppress(ConnectionError):
        writer.close()
        await writer.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="relay's event store process (internal)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--max-pending", type=int, required=True)
    parser.add_argument("--max-size-mb", type=int, default=None)
    parser.add_argument("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB)
    parser.add_argument("--lock-wait", type=float, default=30.0)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the relay's process decides when this one
    # stops (by closing the socket), after its deliveries in flight are settled.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    store = SqliteStore(
        args.path,
        max_pending=args.max_pending,
        max_size_mb=args.max_size_mb,
        min_free_mb=args.min_free_mb,
        lock_wait=args.lock_wait,
    )
    tune_garbage_collector()
    # asyncio's own loop, not uvloop's as in relay's process (relay.runtime.run): this one
    # only reads and answers one socket, and uvloop would add 3.4 MB to its memory.
    asyncio.run(_serve(args.fd, store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
