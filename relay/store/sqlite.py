"""The embedded durable store: SQLite in WAL mode, one writer thread doing group commits.

Every operation is a function run on the one connection, in the one writer thread. The
writer takes all the operations that are waiting, runs them in one transaction and commits
them together with a single `synchronous=FULL` sync; when one of them fails, the group runs
again with each operation in its own savepoint, so one failing request cannot undo another's
work. Concurrent requests therefore share the cost of a sync instead of
paying one each, and a request is answered only after the commit that holds it returned.

Dedup ids are checked by the same operation that stores the deliveries, so two requests
carrying one id cannot both get through. Ids are digests inserted at random places in an
index, the costliest write of ingestion, so they are not written with each commit: an id
accepted in a commit is kept in memory, and a second writer moves the ids to their own
database file (`<path>.dedup`) about once a second, where each index page is then written
once for many ids. A crash can lose the last second of ids, which can only let a repeat
through (at least once), never lose an event.

A Bloom filter of the ids in the dedup database stands in front of it: an id the filter has
never seen is new without a lookup, so only about one new id in a hundred is looked up at
all (a lookup at a random place of a large index is the costliest read of ingestion). The
filter is built from the database when the store opens, and built again, in the background,
when it holds more ids than it was sized for (the expired ones are left out then).

The same second writer also checkpoints the main database's write-ahead log, so that copying
it into the database file does not hold up the commits that requests wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import itertools
import logging
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import rbloom

from relay.codec import decode
from relay.errors import StoreCannotOpen, StoreFull, StoreInUse, StoreUnavailable
from relay.store.base import (
    DeadLetter,
    Delivery,
    EnqueueOutcome,
    EventTuple,
    NewEvent,
    Settlement,
    event_tuples,
)

log = logging.getLogger("relay.store")

T = TypeVar("T")

# One row per (message, destination): the message travels with its delivery, so the hot
# path writes two rows per event (delivery and dedup id) and leasing needs no join.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id           INTEGER PRIMARY KEY,
    destination  TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    state        TEXT NOT NULL,            -- pending | leased | dead
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    created_at   REAL NOT NULL,
    source       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message      BLOB NOT NULL,            -- JSON, as routed to this destination
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (destination, state, id);
-- Deliveries that are leased or waiting for a retry. Later deliveries of the same person
-- wait behind them. A small table instead of an index on every delivery's person keeps
-- random-key index writes off the ingestion path.
CREATE TABLE IF NOT EXISTS holds (
    destination  TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    delivery_id  INTEGER NOT NULL,
    PRIMARY KEY (destination, ordering_key, delivery_id)
) WITHOUT ROWID;
-- Small facts about the store itself; `probe` is written to find out whether writes work.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    received_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    message     BLOB NOT NULL
);
"""

# A delivery may be leased when it is due and no earlier delivery of the same person is
# held (leased, or waiting for a retry): a retry holds back that person only.
_LEASE = """
SELECT id, ordering_key, attempts, created_at, source, kind, message FROM deliveries AS d
WHERE d.destination = :dest AND d.state = 'pending' AND d.next_at <= :now
  AND NOT EXISTS (
      SELECT 1 FROM holds AS h
      WHERE h.destination = :dest AND h.ordering_key = d.ordering_key AND h.delivery_id < d.id
  )
ORDER BY d.id
LIMIT :limit
"""

# `key` is a digest of (kind, source, dedup id). No index on `expires_at`: a second index
# would double the cost of recording ids; expired ids are forgotten a slice of the key space
# at a time instead (digests spread evenly over it), and a lookup ignores them meanwhile.
_DEDUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    key        BLOB PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
DROP INDEX IF EXISTS dedup_expiry;
"""
# The filter in front of the dedup database: sized for at least this many ids, or twice the
# live ids when it is built (10 bits for each id it is sized for, at this rate of false
# positives).
_FILTER_MIN_IDS = 1_000_000
_FILTER_FALSE_POSITIVES = 0.01
# How much nicer than the rest the second writer's thread is (see SqliteStore._open_dedup).
_BACKGROUND_NICE = 10
# New events are refused while less than this is left on the disk (counting space inside
# the database that finished deliveries freed), so that what is queued can still be
# delivered: leasing and settling write too, and a checkpoint copies the log into the file.
DEFAULT_MIN_FREE_MB = 100.0
# The write-ahead log's file is cut back to this once a checkpoint lets it start over.
_WAL_KEPT_BYTES = 16 * 1024 * 1024
_WAL_FRAME_HEADER = 24
# Pages of log after which a commit checkpoints it: the background writer's fallback, and
# what it is close to full (see SqliteStore._set_tight).
_AUTOCHECKPOINT = 20_000
_TIGHT_AUTOCHECKPOINT = 64
# Each purge reads this many of the 256 slices (by first byte): at one purge every 30 s, all
# of the dedup ids are looked over every 16 minutes.
_PURGE_SLICES = 8


def dedup_key(kind: str, source: str, dedup_id: str) -> bytes:
    """16 bytes of BLAKE2b: a collision between two ids is as likely as guessing a UUID."""
    return hashlib.blake2b(
        f"{kind}\x1f{source}\x1f{dedup_id}".encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


# id, ordering key, attempts, created at, source, kind, message JSON
LeasedRow = tuple[int, str, int, float, str, str, bytes]

_CHUNK = 500  # stays well under SQLite's bound-parameter limit


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# SQLite's primary result codes for trouble with the files themselves (not with a statement).
_STORAGE_TROUBLE = {
    3: "permission denied",  # SQLITE_PERM
    5: "another process holds the database",  # SQLITE_BUSY
    8: "it cannot be written (a read-only file or filesystem)",  # SQLITE_READONLY
    10: "an I/O error (the disk may be failing, or was remounted read-only)",  # SQLITE_IOERR
    11: "the database file is damaged",  # SQLITE_CORRUPT
    13: "the disk is full",  # SQLITE_FULL
    14: "a file of the database cannot be opened",  # SQLITE_CANTOPEN
    26: "the file is not a database",  # SQLITE_NOTADB
}


def storage_trouble(exc: BaseException) -> str | None:
    """In plain words, what is wrong with the store's files, for an error that says so;
    None for any other error (a statement's own mistake is a bug, not the disk)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    words = _STORAGE_TROUBLE.get(code & 0xFF) if isinstance(code, int) else None
    if words is None and type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        words = "it cannot be used"
    return None if words is None else f"{words} ({exc})"


def describe_os_error(exc: OSError) -> str:
    """`[Errno 30] Read-only file system: 'x'` as `Read-only file system`."""
    return exc.strerror or str(exc)


def _lock_holder(lock_path: str) -> str:
    try:
        with open(lock_path, encoding="ascii", errors="replace") as fh:
            pid = fh.read().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


def take_lock(path: str, wait: float) -> int:
    """Hold `<path>.lock` for as long as the returned file stays open: one relay process at
    a time may write the store, and recover what the last one left leased. Waits up to
    `wait` seconds for another holder (a relay killed a moment ago may still be finishing)."""
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreCannotOpen(
            f"cannot write {lock_path}: {describe_os_error(exc)}", retry_after=5
        ) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _lock_holder(lock_path)
                os.close(fd)
                raise StoreInUse(
                    f"another relay process{holder} is using the event store {path}",
                    retry_after=5,
                ) from None
            time.sleep(0.1)
        except OSError as exc:
            os.close(fd)
            raise StoreCannotOpen(
                f"cannot lock {lock_path}: {describe_os_error(exc)}", retry_after=5
            ) from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    return fd


class _IdFilter:
    """The dedup ids that the dedup database may hold; "no" is certain, "yes" is probably."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        # Asked directly (`key in f.bloom`) on the hot path: a method call costs more.
        self.bloom = rbloom.Bloom(capacity, _FILTER_FALSE_POSITIVES)

    def add(self, keys: Iterable[bytes], count: int) -> None:
        self.bloom.update(keys)
        self.count += count

    @property
    def full(self) -> bool:
        return self.count > self.capacity


def _filter_of(conn: sqlite3.Connection, now: float) -> _IdFilter:
    """A filter of the ids in the dedup database that have not expired."""
    (live,) = conn.execute("SELECT count(*) FROM dedup WHERE expires_at > ?", (now,)).fetchone()
    found = _IdFilter(max(_FILTER_MIN_IDS, 2 * live))
    rows = conn.execute("SELECT key FROM dedup WHERE expires_at > ?", (now,))
    found.add((row[0] for row in rows), live)
    return found


class _Writer:
    """One connection, one thread, and a queue of operations committed in groups.

    `inline` runs the groups on the event loop's own thread instead: for a process whose
    loop does nothing but feed the store (relay.store.process), where a second thread would
    only add hand-overs of the GIL. Requests that arrive meanwhile wait in the socket and
    make the next group larger.
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        on_rollback: Callable[[sqlite3.Connection], None],
        max_group: int,
        on_commit: Callable[[], None] = lambda: None,
        on_abort: Callable[[], None] = lambda: None,
        inline: bool = False,
    ) -> None:
        self.name = name
        self.inline = inline
        self._connect = connect
        self._on_rollback = on_rollback
        # Told when a transaction committed, or when all its work was thrown away.
        self._on_commit = on_commit
        self._on_abort = on_abort
        self.max_group = max_group
        self.conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None
        ] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        # Why the last write failed, in plain words, until a write succeeds again.
        self.problem: str | None = None

    def _set_problem(self, problem: str | None) -> None:
        # Logged when it starts and when it ends, not at every refused request.
        if problem is not None and self.problem is None:
            log.error("the event store cannot take writes: %s", problem)
        elif problem is None and self.problem is not None:
            log.warning("the event store takes writes again")
        self.problem = problem

    async def open(self) -> None:
        if self.inline:
            self.conn = self._connect()
        else:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"relay-{self.name}")
            loop = asyncio.get_running_loop()
            self.conn = await loop.run_in_executor(self._executor, self._connect)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name=f"relay-{self.name}-writer")

    async def close(self) -> None:
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        if self._executor is not None:
            if self.conn is not None:
                conn, self.conn = self.conn, None
                await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
            self._executor.shutdown(wait=True)
            self._executor = None
        elif self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._task is None:
            raise StoreUnavailable("the store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, fut))
        return fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is None:
                break
            group = [item]
            while len(group) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            fns = [fn for fn, _ in group]
            if self.inline:
                results = self._run_group(fns)
            else:
                results = await loop.run_in_executor(self._executor, self._run_group, fns)
            for (_, fut), (ok, value) in zip(group, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        at_once = self._try_at_once(fns)
        if at_once is not None:
            return at_once
        results: list[tuple[bool, Any] | None] = [None] * len(fns)
        todo = list(range(len(fns)))
        while todo:
            lost = self._try_group(fns, todo, results)
            if lost is None:
                break
            # SQLite rolled the whole transaction back (a full disk does that): the one
            # that failed keeps its error, the others run again in a new transaction.
            assert self.conn is not None
            self._on_rollback(self.conn)
            todo = [i for i in todo if i != lost]
        return [
            r if r is not None else (False, _unavailable(RuntimeError("not run"))) for r in results
        ]

    def _try_at_once(
        self, fns: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]] | None:
        """Run the whole group (of one or more) in one transaction without savepoints, the
        common case where nothing fails. Each statement hands the GIL over and back, so two
        statements fewer per operation matter. On any failure it rolls back and returns None:
        the group then runs again with a savepoint per operation, so that one failing
        operation fails alone."""
        conn = self.conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            return None
        changes = conn.total_changes
        try:
            values = [fn(conn) for fn in fns]
            conn.execute("COMMIT")
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # Counters were advanced by operations that were rolled back.
            self._on_abort()
            self._on_rollback(conn)
            return None
        self.commits += 1
        if conn.total_changes != changes:  # a commit that wrote: the store takes writes
            self._set_problem(None)
        self._on_commit()
        return [(True, value) for value in values]

    def _try_group(
        self,
        fns: list[Callable[[sqlite3.Connection], Any]],
        todo: list[int],
        out: list[tuple[bool, Any] | None],
    ) -> int | None:
        """Run `fns[i]` for i in `todo` in one transaction, each in its own savepoint, and
        store their results in `out`. Returns the index of an operation whose failure made
        SQLite abandon the transaction, so that the group must be run again without it."""
        conn = self.conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._set_problem(storage_trouble(exc) or self.problem)
            for i in todo:
                out[i] = (False, _unavailable(exc))
            return None
        self._on_abort()  # whatever an earlier try of this group left behind
        changes = conn.total_changes
        trouble: str | None = None  # an operation failed because of the files themselves
        for i in todo:
            conn.execute("SAVEPOINT op")
            try:
                value = fns[i](conn)
            except Exception as exc:  # each operation fails alone
                error = _unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
                trouble = storage_trouble(exc) or trouble
                if not conn.in_transaction:
                    self._set_problem(trouble or self.problem)
                    out[i] = (False, error)
                    self._on_abort()
                    return i
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                results.append((False, error))
            else:
                conn.execute("RELEASE op")
                results.append((True, value))
        try:
            conn.execute("COMMIT")
            self.commits += 1
            if trouble is not None:
                self._set_problem(trouble)
            elif conn.total_changes != changes:
                self._set_problem(None)
        except sqlite3.Error as exc:
            self._set_problem(storage_trouble(exc) or self.problem)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._on_abort()
            self._on_rollback(conn)
            for i in todo:
                out[i] = (False, _unavailable(exc))
            return None
        self._on_commit()
        for i, result in zip(todo, results, strict=True):
            out[i] = result
        if any(not ok for ok, _ in results):
            # Counters were advanced by operations that were rolled back.
            self._on_rollback(conn)
        return None


def _connect(path: str, synchronous: str, schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    # A page cache large enough for a busy day's dedup index, and memory-mapped reads:
    # lookups and inserts at random keys then cost no system call.
    conn.execute("PRAGMA cache_size=-131072")
    conn.execute("PRAGMA mmap_size=1073741824")
    conn.executescript(schema)
    return conn


class SqliteStore:
    """The default store. Safe against `kill -9`: what `enqueue` returned for is on disk."""

    def __init__(
        self,
        path: str,
        *,
        max_pending: int = 5_000_000,
        max_size_mb: int | None = None,
        min_free_mb: float = DEFAULT_MIN_FREE_MB,
        max_group: int = 256,
        dedup_flush_interval: float = 1.0,
        lock_wait: float = 30.0,
    ) -> None:
        self.path = path
        self.dedup_path = f"{path}.dedup"
        self.max_pending = max_pending
        self.max_size_mb = max_size_mb
        self.min_free = int(min_free_mb * 1024 * 1024)
        self.dedup_flush_interval = dedup_flush_interval
        self.lock_wait = lock_wait
        self._directory = os.path.dirname(os.path.abspath(path))
        self._wal_path = f"{path}-wal"
        self._cap = max_size_mb * 1024 * 1024 if max_size_mb else 0
        self._tight = False
        self._lock: int | None = None
        self._page_size = 4096
        self._main = _Writer(
            "sqlite",
            self._open_main,
            self._resync,
            max_group,
            on_commit=self._commit_ids,
            on_abort=lambda: self._staged.clear(),
            # The store runs in a process of its own (relay.store.process), whose event loop
            # does nothing else: the main writer runs there, the dedup writer in a thread.
            inline=True,
        )
        self._dedup = _Writer(
            "sqlite-dedup",
            self._open_dedup,
            lambda _conn: None,
            max_group,
        )
        # Dedup ids not yet in the dedup database, by expiry time. Only the main writer's
        # thread changes `_staged` (this transaction's ids) and `_recent` (committed ids);
        # `_flushing` holds the ids being written to the dedup database meanwhile.
        self._staged: dict[bytes, float] = {}
        self._recent: dict[bytes, float] = {}
        self._flushing: dict[bytes, float] = {}
        self._dedup_reader: sqlite3.Connection | None = None
        # Every id in the dedup database is in `_filter` (main writer's thread only). While a
        # new filter is built, the ids committed meanwhile are also kept in `_rebuild_log`.
        self._filter = _IdFilter(_FILTER_MIN_IDS)
        self._rebuild_log: list[bytes] | None = None
        self._checkpointer: sqlite3.Connection | None = None
        # `counts` reads on a connection and a thread of its own (WAL lets it read while
        # the writer writes).
        self._counter: sqlite3.Connection | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._purge_from = 0
        self._flusher: asyncio.Task[None] | None = None
        self._ids_failing = False
        self._checkpoint_failing = False
        self._next_delivery_id = 1
        self._pending = 0

    @property
    def commits(self) -> int:
        return self._main.commits

    @property
    def problem(self) -> str | None:
        """Why the last write failed, until one succeeds again."""
        return self._main.problem

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open (creating it if need be) and take the store's lock; StoreCannotOpen says in
        one line which file could not be written and why."""
        try:
            await self._open()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await self.close()
            if isinstance(exc, StoreUnavailable):
                raise
            if isinstance(exc, OSError | sqlite3.Error):
                raise _cannot_open(self.path, exc) from None
            raise

    async def _open(self) -> None:
        directory = self._directory
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreCannotOpen(
                f"cannot create the folder {directory}: {describe_os_error(exc)}"
            ) from None
        self._lock = await asyncio.to_thread(take_lock, self.path, self.lock_wait)
        await self._dedup.open()  # creates the dedup database before the reader opens it
        now = time.time()
        self._filter = await self._dedup.submit(lambda conn: _filter_of(conn, now))
        await self._main.open()
        self._read_executor = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-read")
        self._flusher = asyncio.create_task(self._background_work(), name="relay-store-background")

    def _open_dedup(self) -> sqlite3.Connection:
        # Runs in the second writer's own thread. Its work (recording ids, checkpoints) can
        # wait: at a lower priority it takes the cores when the threads that requests wait
        # for leave them idle, instead of taking turns with them. On Linux a thread's own id
        # names it alone here (elsewhere it could name a process: left as it is).
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                me = threading.get_native_id()
                nice = os.getpriority(os.PRIO_PROCESS, me) + _BACKGROUND_NICE
                os.setpriority(os.PRIO_PROCESS, me, min(19, nice))
        return _connect(self.dedup_path, "NORMAL", _DEDUP_SCHEMA)

    def _open_main(self) -> sqlite3.Connection:
        conn = _connect(self.path, "FULL", _SCHEMA)
        # The background writer checkpoints every second; this is the fallback if it falls
        # behind (20,000 pages, 80 MB of log, instead of SQLite's default of 1,000).
        conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT}")
        # Once a checkpoint lets the log start over, its file is cut back to this size, so
        # that a burst does not keep its disk space for good.
        conn.execute(f"PRAGMA journal_size_limit={_WAL_KEPT_BYTES}")
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        # Read in the main writer's thread, by the operation that checks ids.
        self._dedup_reader = _connect(self.dedup_path, "NORMAL", "")
        if self.max_size_mb:
            conn.execute(
                f"PRAGMA max_page_count={int(self.max_size_mb * 1024 * 1024 // self._page_size)}"
            )
        # Whatever was leased when the last process died goes back to the queue; only the
        # deliveries waiting for a retry keep holding back their person.
        conn.execute("UPDATE deliveries SET state = 'pending' WHERE state = 'leased'")
        conn.execute("DELETE FROM holds")
        conn.execute(
            "INSERT INTO holds SELECT destination, ordering_key, id FROM deliveries"
            " WHERE state = 'pending' AND attempts > 0"
        )
        self._resync(conn)
        return conn

    def _resync(self, conn: sqlite3.Connection) -> None:
        self._next_delivery_id = (
            conn.execute("SELECT max(id) FROM deliveries").fetchone()[0] or 0
        ) + 1
        self._pending = conn.execute(
            "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'leased')"
        ).fetchone()[0]

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with contextlib.suppress(StoreUnavailable):
            await self.flush_ids()
        reader, self._dedup_reader = self._dedup_reader, None
        if reader is not None:
            await self._main.submit(lambda _conn: reader.close())
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await self._dedup.submit(lambda _conn: checkpointer.close())
        executor, self._read_executor = self._read_executor, None
        if executor is not None:
            # In the reading thread, after any count still running there.
            await asyncio.get_running_loop().run_in_executor(executor, self._close_counter)
            executor.shutdown(wait=True)
        await self._main.close()
        await self._dedup.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # last: nobody else may open the store before it is closed

    # ------------------------------------------------------------------ dedup ids

    def _commit_ids(self) -> None:
        staged = self._staged
        if staged:
            self._recent.update(staged)
            self._filter.add(staged, len(staged))
            if self._rebuild_log is not None:
                self._rebuild_log.extend(staged)
            staged.clear()

    async def rebuild_filter(self) -> None:
        """Build the id filter again from the dedup database, leaving out expired ids."""

        def start(_conn: sqlite3.Connection) -> set[bytes]:
            # From here on, committed ids are also logged; those committed before are in
            # the database, or on their way there (recent, flushing), by the time the scan
            # below runs, since flushes and the scan take turns on the dedup writer.
            self._rebuild_log = []
            return set(self._recent) | set(self._flushing)

        def finish(_conn: sqlite3.Connection, built: _IdFilter, pending: set[bytes]) -> None:
            assert self._rebuild_log is not None
            built.add(pending, len(pending))
            built.add(self._rebuild_log, len(self._rebuild_log))
            self._filter, self._rebuild_log = built, None

        pending = await self._main.submit(start)
        now = time.time()
        try:
            built = await self._dedup.submit(lambda conn: _filter_of(conn, now))
        except BaseException:
            await self._main.submit(lambda _conn: setattr(self, "_rebuild_log", None))
            raise
        await self._main.submit(lambda conn: finish(conn, built, pending))

    def _take_recent(self) -> dict[bytes, float]:
        # Runs in the main writer's thread, between two operations.
        taken, self._recent = self._recent, {}
        self._flushing = taken
        return taken

    async def flush_ids(self) -> int:
        """Move the ids accepted since the last flush to the dedup database."""
        taken = await self._main.submit(lambda _conn: self._take_recent())
        if not taken:
            return 0
        try:
            await self._dedup.submit(lambda conn: _record(conn, taken))
        except Exception as exc:
            if not self._ids_failing:  # once, not every second while the trouble lasts
                log.error(
                    "dedup ids could not be recorded (%s); they are kept in memory and"
                    " recorded once the dedup database takes writes",
                    exc,
                )
            self._ids_failing = True
            # Back with the ids to record, before they leave `_flushing`: an id in neither
            # would be looked for on disk only, where it is not.
            with contextlib.suppress(StoreUnavailable):
                await self._main.submit(lambda _conn: self._keep_unrecorded(taken))
            return 0
        finally:
            self._flushing = {}
        if self._ids_failing:
            log.warning("dedup ids are recorded again")
            self._ids_failing = False
        return len(taken)

    def _keep_unrecorded(self, ids: dict[bytes, float]) -> None:
        # In the main writer's thread: ids committed since keep their own (later) expiry.
        for key, expires in ids.items():
            self._recent.setdefault(key, expires)

    async def _background_work(self) -> None:
        while True:
            await asyncio.sleep(self.dedup_flush_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.flush_ids()
            if self._filter.full:
                try:
                    await self.rebuild_filter()
                except Exception as exc:  # the full filter still answers, less often "no"
                    log.warning("the dedup id filter could not be built again: %s", exc)
            # While writes fail (a full disk), the whole log is copied and its file emptied,
            # which gives back its space as soon as the database file can take it.
            mode = "TRUNCATE" if self._main.problem is not None else "PASSIVE"
            try:
                await self._dedup.submit(functools.partial(self._checkpoint, mode=mode))
            except Exception as exc:  # the writer checkpoints by itself as a fallback
                if not self._checkpoint_failing:
                    log.warning("checkpointing the store's write-ahead log failed: %s", exc)
                self._checkpoint_failing = True
            else:
                self._checkpoint_failing = False

    def _checkpoint(self, _conn: sqlite3.Connection, mode: str) -> None:
        # Runs in the second writer's thread, on a connection of its own. PASSIVE copies what
        # it can without waiting for, or blocking, the main writer.
        if self._checkpointer is None:
            self._checkpointer = _connect(self.path, "FULL", "")
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    def _known_ids(self, keys: list[bytes | None], now: float) -> set[bytes]:
        """The ids among `keys` seen within their window: in memory, or in the database."""
        seen: set[bytes] = set()
        unknown: list[bytes] = []
        staged, recent, flushing = self._staged, self._recent, self._flushing
        # Every committed id is in the filter (recent and flushing ones too), so an id it
        # has not seen can only be in this transaction's own ids.
        recorded = self._filter.bloom
        for key in keys:
            if key is None:
                continue
            if key not in recorded:
                expires = staged.get(key)
                if expires is not None and expires > now:
                    seen.add(key)
                continue
            expires = staged.get(key) or recent.get(key) or flushing.get(key)
            if expires is None:
                unknown.append(key)
            elif expires > now:
                seen.add(key)
        if unknown and self._dedup_reader is not None:
            seen.update(_seen(self._dedup_reader, unknown, now))
        return seen

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._main.submit(fn)

    # ------------------------------------------------------------------ operations

    async def enqueue(self, events: list[NewEvent]) -> list[EnqueueOutcome]:
        return await self.enqueue_tuples(event_tuples(events))

    async def enqueue_tuples(self, events: list[EventTuple]) -> list[EnqueueOutcome]:
        """`enqueue` for events in their tuple form (as they reach the store's process)."""
        # A rejected message with an id is de-duplicated too: a sender's retries of one bad
        # webhook are stored once.
        try:
            no_room = await self._room_problem()
        except (OSError, sqlite3.Error) as exc:
            raise _unavailable(exc) from None
        if no_room is not None:
            raise StoreFull(
                f"{no_room}; nothing acknowledged was lost, retry later", retry_after=30
            )
        keys = [None if e[6] is None else dedup_key(e[1], e[0], e[6]) for e in events]
        now = time.time()
        return await self._main.submit(lambda conn: self._enqueue(conn, events, keys, now))

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        events: list[EventTuple],
        keys: list[bytes | None],
        now: float,
    ) -> list[EnqueueOutcome]:
        new_deliveries = sum(len(e[5]) for e in events if not e[8])
        if self._pending + new_deliveries > self.max_pending:
            raise StoreFull(
                f"the queue holds {self._pending} deliveries, its limit"
                f" (storage.sqlite.max_pending) is {self.max_pending}; retry later",
                retry_after=30,
            )
        seen = self._known_ids(keys, now)
        recorded: list[tuple[bytes, float]] = []
        outcomes: list[EnqueueOutcome] = []
        rejected: list[tuple[Any, ...]] = []
        stored: list[EventTuple] = []
        for key, e in zip(keys, events, strict=True):
            if key is not None:
                if key in seen:
                    outcomes.append("duplicate")
                    continue
                seen.add(key)
                recorded.append((key, e[7]))
            if e[8]:
                rejected.append((e[0], e[1], e[3], e[8], e[2]))
                outcomes.append("rejected")
                continue
            stored.append(e)
            outcomes.append("queued")
        delivery_id = _insert_deliveries(conn, stored, self._next_delivery_id)
        if rejected:
            conn.executemany(
                "INSERT INTO rejected (source, kind, received_at, reason, message)"
                " VALUES (?, ?, ?, ?, ?)",
                rejected,
            )
        self._pending += delivery_id - self._next_delivery_id
        self._next_delivery_id = delivery_id
        # Last, so that an operation that failed above leaves no ids behind.
        self._staged.update(recorded)
        return outcomes

    def _disk_free(self) -> int:
        stat = os.statvfs(self._directory)
        return stat.f_bavail * stat.f_frsize

    async def _room_problem(self) -> str | None:
        """Why new events are refused for lack of space, or None when there is room.

        What is kept free must let what is queued be delivered: leasing and settling write
        to the log, and a checkpoint copies the log into the database file, which may grow
        by as much. With more free than the log's size on top of what is kept, that is sure
        (a few system calls); closer to full, the log is checkpointed first and the room
        counted exactly: free disk, plus pages that finished deliveries freed inside the
        database, less what the log still holds. `max_size_mb` is a second limit, counted
        the same way inside the database."""
        cap_kept = min(self.min_free, self._cap // 10) if self._cap else 0
        if self.min_free <= 0 and not self._cap:
            return None
        log_bytes = _file_size(self._wal_path)
        roomy = self._disk_free() - log_bytes >= self.min_free and (
            not self._cap or self._cap - _file_size(self.path) - log_bytes >= cap_kept
        )
        if roomy:
            if self._tight:
                await self._set_tight(False)
            return None
        if not self._tight:
            await self._set_tight(True)
        disk_room, cap_room = await self._dedup.submit(self._room_after_checkpoint)
        mb = 1024 * 1024
        if disk_room < self.min_free:
            return (
                f"the disk holding {self.path} is nearly full: {max(disk_room, 0) / mb:.1f} MB"
                f" left (free on the disk, and inside the database), under the"
                f" {self.min_free / mb:g} MB (storage.sqlite.min_free_mb) kept for delivering"
                " what is queued"
            )
        if self._cap and cap_room < cap_kept:
            return (
                f"the event store is full: {max(cap_room, 0) / mb:.1f} MB left of its"
                f" storage.sqlite.max_size_mb ({self.max_size_mb} MB), under the"
                f" {cap_kept / mb:g} MB kept for delivering what is queued"
            )
        return None

    async def _set_tight(self, tight: bool) -> None:
        # Close to full, the writer checkpoints the log after every commit that leaves more
        # than a few pages in it, so that the log starts over instead of growing into the
        # space kept for deliveries; otherwise the background checkpoints suffice.
        pages = _TIGHT_AUTOCHECKPOINT if tight else _AUTOCHECKPOINT
        await self._main.submit(lambda conn: conn.execute(f"PRAGMA wal_autocheckpoint={pages}"))
        self._tight = tight

    def _room_after_checkpoint(self, _conn: sqlite3.Connection) -> tuple[int, int]:
        """(room on the disk, room under max_size_mb) once the log is checkpointed as far as
        it can be; in the second writer's thread, beside the background checkpoints."""
        if self._checkpointer is None:
            self._checkpointer = _connect(self.path, "FULL", "")
        conn = self._checkpointer
        _busy, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        backlog = max(0, log_frames - copied) * (self._page_size + _WAL_FRAME_HEADER)
        free = conn.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        used = conn.execute("PRAGMA page_count").fetchone()[0] * self._page_size - free
        return self._disk_free() + free - backlog, self._cap - used - backlog

    async def write_problem(self) -> str | None:
        def probe(conn: sqlite3.Connection) -> None:
            if self._main.problem is not None:
                # A write tells whether the trouble is over (space freed, disk writable).
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (time.time(),))

        try:
            await self._submit(probe)
            no_room = await self._room_problem()
        except StoreUnavailable as exc:
            return self._main.problem or exc.message
        except (OSError, sqlite3.Error) as exc:
            return storage_trouble(exc) or str(exc)
        return self._main.problem or no_room

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        rows = await self.lease_rows(destination, limit, now)
        return [
            Delivery(did, destination, okey, attempts, created_at, source, kind, decode(message))
            for did, okey, attempts, created_at, source, kind, message in rows
        ]

    async def lease_rows(self, destination: str, limit: int, now: float) -> list[LeasedRow]:
        """`lease`, with each message as its stored JSON (for a caller that decodes it)."""
        return await self._submit(lambda conn: self._lease(conn, destination, limit, now))

    def _lease(
        self, conn: sqlite3.Connection, destination: str, limit: int, now: float
    ) -> list[LeasedRow]:
        rows: list[LeasedRow] = conn.execute(
            _LEASE, {"dest": destination, "now": now, "limit": limit}
        ).fetchall()
        if rows:
            conn.executemany(
                "UPDATE deliveries SET state = 'leased' WHERE id = ?", [(r[0],) for r in rows]
            )
            conn.executemany(
                "INSERT OR IGNORE INTO holds VALUES (?, ?, ?)",
                [(destination, r[1], r[0]) for r in rows],
            )
        return rows

    async def settle(self, settlement: Settlement, now: float) -> None:
        if settlement:
            await self._submit(lambda conn: self._settle(conn, settlement, now))

    def _settle(self, conn: sqlite3.Connection, settlement: Settlement, now: float) -> None:
        if settlement.dead:
            self._dead(conn, settlement.dead, now)
        if settlement.retries:
            conn.executemany(
                "UPDATE deliveries SET state = 'pending', attempts = attempts + 1,"
                " next_at = ?, last_error = ? WHERE id = ? AND state != 'dead'",
                [(r.next_at, r.error, r.id) for r in settlement.retries],
            )
        if settlement.done:
            self._finish(conn, settlement.done)
        if settlement.release:
            self._release(conn, settlement.release)

    def _finish(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for chunk in _chunks(ids):
            marks = _marks(len(chunk))
            self._unhold(conn, chunk)
            cur = conn.execute(
                f"DELETE FROM deliveries WHERE id IN ({marks}) AND state != 'dead'", chunk
            )
            self._pending -= cur.rowcount

    def _unhold(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        conn.execute(
            "DELETE FROM holds WHERE (destination, ordering_key, delivery_id) IN"
            f" (SELECT destination, ordering_key, id FROM deliveries"
            f" WHERE id IN ({_marks(len(ids))}))",
            ids,
        )

    def _release(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for chunk in _chunks(ids):
            self._unhold(conn, chunk)
            conn.execute(
                f"UPDATE deliveries SET state = 'pending' WHERE id IN ({_marks(len(chunk))})"
                " AND state = 'leased'",
                chunk,
            )

    def _dead(self, conn: sqlite3.Connection, items: Sequence[tuple[int, str]], now: float) -> None:
        for chunk in _chunks([did for did, _ in items]):
            self._unhold(conn, chunk)
        for did, reason in items:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_error = ?,"
                " next_at = ? WHERE id = ? AND state != 'dead'",
                (reason, now, did),
            )
            self._pending -= cur.rowcount

    async def dead_letters(
        self, limit: int = 100, destination: str | None = None
    ) -> list[DeadLetter]:
        return await self._submit(lambda conn: _dead_letters(conn, limit, destination))

    async def replay(self, ids: list[int] | None, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            if ids is None:
                cur = conn.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?,"
                    " created_at = ? WHERE state = 'dead'",
                    (now, now),
                )
                count = cur.rowcount
            else:
                count = 0
                for chunk in _chunks(ids):
                    cur = conn.execute(
                        "UPDATE deliveries SET state = 'pending', attempts = 0, next_at = ?,"
                        f" created_at = ? WHERE state = 'dead' AND id IN ({_marks(len(chunk))})",
                        (now, now, *chunk),
                    )
                    count += cur.rowcount
            self._pending += count
            return count

        return await self._submit(run)

    def _close_counter(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.close()

    async def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries by destination and state, read beside the writer: counting a queue of
        millions takes a while, and the commits that requests wait for go on meanwhile."""

        def run() -> dict[str, dict[str, int]]:
            if self._counter is None:
                self._counter = sqlite3.connect(self.path, isolation_level=None)
                self._counter.execute("PRAGMA busy_timeout=5000")
            return _count_deliveries(self._counter)

        if self._read_executor is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_executor, run)
        except sqlite3.Error as exc:
            raise _unavailable(exc) from None

    async def purge(self, now: float) -> None:
        first = self._purge_from
        self._purge_from = (first + _PURGE_SLICES) % 256
        await self._dedup.submit(lambda conn: _purge_slices(conn, first, _PURGE_SLICES, now))


def _dead_letters(
    conn: sqlite3.Connection, limit: int, destination: str | None
) -> list[DeadLetter]:
    where = "state = 'dead'" + (" AND destination = ?" if destination else "")
    args: tuple[Any, ...] = (destination,) if destination else ()
    out = [
        DeadLetter(did, dest, source, kind, reason, attempts, created_at, decode(message))
        for did, dest, source, kind, reason, attempts, created_at, message in conn.execute(
            "SELECT id, destination, source, kind, last_error, attempts, created_at, message"
            f" FROM deliveries WHERE {where} ORDER BY id LIMIT ?",
            (*args, limit),
        )
    ]
    if destination is None:
        out.extend(
            DeadLetter(rid, None, source, kind, reason, 0, received_at, decode(message))
            for rid, source, kind, reason, received_at, message in conn.execute(
                "SELECT id, source, kind, reason, received_at, message FROM rejected"
                " ORDER BY id LIMIT ?",
                (limit,),
            )
        )
    return out


def read_dead_letters(path: str, limit: int, destination: str | None) -> list[DeadLetter]:
    """The dead letters, read without writing anything: safe beside a running relay, whose
    leased deliveries a normal open would take back (and send again)."""
    if not os.path.exists(path):
        raise StoreCannotOpen(f"there is no event store at {path} (storage.sqlite.path)")
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _cannot_open(path, exc) from None
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return _dead_letters(conn, limit, destination)
    except sqlite3.Error as exc:
        raise _cannot_open(path, exc) from None
    finally:
        conn.close()


def _count_deliveries(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for dest, state, n in conn.execute(
        "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
    ):
        out.setdefault(dest, {})[state] = n
    return out


def _seen(conn: sqlite3.Connection, keys: list[bytes], now: float) -> set[bytes]:
    """The keys recorded and not yet expired."""
    seen: set[bytes] = set()
    for chunk in _chunks(keys):
        seen.update(
            row[0]
            for row in conn.execute(
                f"SELECT key FROM dedup WHERE key IN ({_marks(len(chunk))}) AND expires_at > ?",
                (*chunk, now),
            )
        )
    return seen


def _purge_slices(conn: sqlite3.Connection, first: int, count: int, now: float) -> None:
    """Forget the expired ids whose first byte is in [first, first + count)."""
    low = bytes([first])
    if first + count >= 256:
        conn.execute("DELETE FROM dedup WHERE key >= ? AND expires_at <= ?", (low, now))
    else:
        high = bytes([first + count])
        conn.execute(
            "DELETE FROM dedup WHERE key >= ? AND key < ? AND expires_at <= ?", (low, high, now)
        )


# Multi-row INSERTs: SQLite does the row work inside one step, which runs without the GIL
# (the event loop of relay's process, or of the store's, goes on meanwhile). Statements
# hold a fixed number of rows (64, then 32, 16 ... 1 for the rest), so that the few
# different texts stay prepared in the connection's cache: preparing a statement of 100
# rows costs more than running it.
_ROWS_PER_STATEMENT = 64
# Bound parameters in one statement, at most: well under SQLite's limit (32,766 since
# SQLite 3.32; builds of Python 3.11 and later are linked with newer ones).
_MAX_PARAMETERS = 2000
_INSERT_DELIVERIES = (
    "INSERT INTO deliveries (id, destination, ordering_key, next_at, created_at, source, kind,"
    " message, state) VALUES "
)


def _fixed_chunks(items: Sequence[T], largest: int = _ROWS_PER_STATEMENT) -> Iterable[Sequence[T]]:
    """`items` in chunks of `largest` (a power of two), the rest in chunks of half as many,
    a quarter as many ... and 1."""
    start, size = 0, largest
    while start < len(items):
        while start + size > len(items):
            size //= 2
        yield items[start : start + size]
        start += size


@functools.cache
def _shared_insert(events: int, destinations: int) -> str:
    """An INSERT of `events` events routed alike: ?1 source, ?2 kind, ?3 received at,
    ?4... the destinations, then id, ordering key and message for each row."""
    rows = []
    first = 4 + destinations
    for row in range(events * destinations):
        n = first + 3 * row
        dest = 4 + row % destinations
        rows.append(f"(?{n}, ?{dest}, ?{n + 1}, ?3, ?3, ?1, ?2, ?{n + 2}, 'pending')")
    return _INSERT_DELIVERIES + ",".join(rows)


@functools.cache
def _rows_insert(head: str, row: str, rows: int) -> str:
    return head + ",".join([row] * rows)


def _insert_deliveries(conn: sqlite3.Connection, events: list[EventTuple], next_id: int) -> int:
    """Insert a delivery row for each destination of each event; returns the next id."""
    if not events:
        return next_id
    source, kind, _, received_at, _, deliveries, _, _, _ = events[0]
    if deliveries and all(
        e[5] is deliveries and e[3] == received_at and e[0] == source and e[1] == kind
        for e in events
    ):
        # The usual request: every event from one source at one time, routed alike. What
        # the rows share is bound once, not once a row.
        destinations = [d for d, _ in deliveries]
        routed = [r for _, r in deliveries]
        largest = _ROWS_PER_STATEMENT
        while largest > 1 and 3 + len(destinations) * (1 + 3 * largest) > _MAX_PARAMETERS:
            largest //= 2
        for chunk in _fixed_chunks(events, largest):
            values: list[Any] = [source, kind, received_at, *destinations]
            for e in chunk:
                for message in routed:
                    values += (next_id, e[4], e[2] if message is None else message)
                    next_id += 1
            conn.execute(_shared_insert(len(chunk), len(destinations)), values)
        return next_id
    rows = []
    for e in events:
        for destination, message in e[5]:
            rows.append(
                (
                    next_id,
                    destination,
                    e[4],
                    e[3],
                    e[3],
                    e[0],
                    e[1],
                    e[2] if message is None else message,
                )
            )
            next_id += 1
    _insert_rows(conn, _INSERT_DELIVERIES, "(?, ?, ?, ?, ?, ?, ?, ?, 'pending')", rows)
    return next_id


def _record(conn: sqlite3.Connection, ids: dict[bytes, float]) -> None:
    # Sorted, so that the index pages are visited in order. This runs beside the main
    # writer, in the same process: the less of it holds the GIL, the better, so the keys
    # alone are sorted (comparing pairs costs more) and C code lays out the values.
    keys = sorted(ids)
    rows = list(zip(keys, map(ids.__getitem__, keys), strict=True))
    # 512 rows, 1,024 parameters: see _MAX_PARAMETERS.
    _insert_rows(conn, "INSERT OR REPLACE INTO dedup VALUES ", "(?, ?)", rows, 512)


def _insert_rows(
    conn: sqlite3.Connection,
    head: str,
    row: str,
    rows: Sequence[tuple[Any, ...]],
    largest: int = _ROWS_PER_STATEMENT,
) -> None:
    """`rows` in multi-row INSERTs of `largest` rows, then fewer (see _fixed_chunks)."""
    for chunk in _fixed_chunks(rows, largest):
        values = list(itertools.chain.from_iterable(chunk))
        conn.execute(_rows_insert(head, row, len(chunk)), values)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _cannot_open(path: str, exc: OSError | sqlite3.Error) -> StoreCannotOpen:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        why = describe_os_error(exc) + where
    else:
        why = storage_trouble(exc) or str(exc)
    return StoreCannotOpen(f"cannot open the event store {path}: {why}")


def _unavailable(exc: BaseException) -> StoreUnavailable:
    # The text of a SQLite error names the condition (full, read-only, I/O) without data;
    # the writer logs the condition once when it starts (`_Writer._set_problem`).
    return StoreUnavailable(
        f"the event store cannot take writes right now ({exc}); nothing acknowledged was lost,"
        " retry later",
        retry_after=5,
    )
