"""The embedded durable store: SQLite in WAL mode, one writer thread doing group commits.

Every operation is a function run on the one connection, in the one writer thread. The
writer takes all the operations that are waiting, runs each inside its own savepoint (so
one failing request cannot undo another's work) and commits them together with a single
`synchronous=FULL` sync. Concurrent requests therefore share the cost of a sync instead of
paying one each, and a request is answered only after the commit that holds it returned.

Dedup ids live in a second database file with a writer of its own, so that the costliest
work of ingestion (inserting ids at random places in a large index) runs in parallel with
the queue's writes. An id is recorded only after its event is committed: a crash between
the two can cause a duplicate delivery, never a lost event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from relay.codec import decode
from relay.errors import StoreUnavailable
from relay.store.base import (
    DeadLetter,
    Delivery,
    EnqueueOutcome,
    NewEvent,
    Retry,
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

_DEDUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    kind       TEXT NOT NULL,
    source     TEXT NOT NULL,
    dedup_id   TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (kind, source, dedup_id)
) WITHOUT ROWID;
"""

DedupKey = tuple[str, str, str]

_CHUNK = 500  # stays well under SQLite's bound-parameter limit


def _chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class StoreFull(StoreUnavailable):
    pass


class _Writer:
    """One connection, one thread, and a queue of operations committed in groups."""

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        on_rollback: Callable[[sqlite3.Connection], None],
        max_group: int,
    ) -> None:
        self.name = name
        self._connect = connect
        self._on_rollback = on_rollback
        self.max_group = max_group
        self.conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[
            tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None
        ] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.healthy = True

    async def open(self) -> None:
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
            results = await loop.run_in_executor(
                self._executor, self._run_group, [fn for fn, _ in group]
            )
            for (_, fut), (ok, value) in zip(group, results, strict=True):
                if fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

    def _run_group(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
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
            self.healthy = False
            for i in todo:
                out[i] = (False, _unavailable(exc))
            return None
        for i in todo:
            conn.execute("SAVEPOINT op")
            try:
                value = fns[i](conn)
            except Exception as exc:  # each operation fails alone
                error = _unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
                if not conn.in_transaction:
                    out[i] = (False, error)
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
            self.healthy = True
        except sqlite3.Error as exc:
            self.healthy = False
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._on_rollback(conn)
            for i in todo:
                out[i] = (False, _unavailable(exc))
            return None
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
        max_group: int = 256,
    ) -> None:
        self.path = path
        self.dedup_path = f"{path}.dedup"
        self.max_pending = max_pending
        self.max_size_mb = max_size_mb
        self._main = _Writer("sqlite", self._open_main, self._resync, max_group)
        # Losing the last dedup ids in a power cut can only cause duplicates: no sync.
        self._dedup = _Writer(
            "sqlite-dedup",
            lambda: _connect(self.dedup_path, "NORMAL", _DEDUP_SCHEMA),
            lambda _conn: None,
            max_group,
        )
        # Ids of events being stored right now, so that two requests carrying the same id
        # at the same moment do not both get through.
        self._claims: set[DedupKey] = set()
        self._recording: set[asyncio.Future[None]] = set()
        self._next_delivery_id = 1
        self._pending = 0

    @property
    def commits(self) -> int:
        return self._main.commits

    @property
    def healthy(self) -> bool:
        return self._main.healthy

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        await self._main.open()
        await self._dedup.open()

    def _open_main(self) -> sqlite3.Connection:
        conn = _connect(self.path, "FULL", _SCHEMA)
        if self.max_size_mb:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(
                f"PRAGMA max_page_count={int(self.max_size_mb * 1024 * 1024 // page_size)}"
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
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        await self._dedup.close()
        await self._main.close()

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._main.submit(fn)

    # ------------------------------------------------------------------ operations

    async def enqueue(self, events: list[NewEvent]) -> list[EnqueueOutcome]:
        now = time.time()
        keys: list[DedupKey | None] = [
            (e.kind, e.source, e.dedup_id) if e.dedup_id and not e.rejected_reason else None
            for e in events
        ]
        wanted = list(dict.fromkeys(k for k in keys if k is not None))
        seen: set[DedupKey] = (
            await self._dedup.submit(lambda conn: _seen(conn, wanted, now)) if wanted else set()
        )
        claimed: list[DedupKey] = []
        for key in wanted:
            if key in seen:
                continue
            if key in self._claims:
                seen.add(key)
            else:
                self._claims.add(key)
                claimed.append(key)
        try:
            outcomes = await self._main.submit(lambda conn: self._enqueue(conn, events, keys, seen))
        except BaseException:
            self._claims.difference_update(claimed)
            raise
        until = {
            k: e.dedup_until
            for k, e, o in zip(keys, events, outcomes, strict=True)
            if k is not None and o == "queued"
        }
        if until:
            recording = self._dedup.submit(lambda conn: _record(conn, until))
            self._recording.add(recording)
            recording.add_done_callback(lambda f: self._recorded(f, claimed))
        else:
            self._claims.difference_update(claimed)
        return outcomes

    def _recorded(self, fut: asyncio.Future[None], claimed: list[DedupKey]) -> None:
        self._recording.discard(fut)
        self._claims.difference_update(claimed)
        if not fut.cancelled() and fut.exception() is not None:
            log.error(
                "dedup ids could not be recorded; repeats of them may be delivered twice: %s",
                fut.exception(),
            )

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        events: list[NewEvent],
        keys: list[DedupKey | None],
        seen: set[DedupKey],
    ) -> list[EnqueueOutcome]:
        new_deliveries = sum(len(e.deliveries) for e in events if not e.rejected_reason)
        if self._pending + new_deliveries > self.max_pending:
            raise StoreFull(
                f"the queue holds {self._pending} deliveries, its limit"
                f" (storage.sqlite.max_pending) is {self.max_pending}; retry later",
                retry_after=30,
            )
        done: set[DedupKey] = set()
        outcomes: list[EnqueueOutcome] = []
        rejected: list[tuple[Any, ...]] = []
        dl_rows: list[tuple[Any, ...]] = []
        delivery_id = self._next_delivery_id
        for key, e in zip(keys, events, strict=True):
            if e.rejected_reason:
                rejected.append(
                    (e.source, e.kind, e.received_at, e.rejected_reason, e.message_json)
                )
                outcomes.append("rejected")
                continue
            if key is not None:
                if key in seen or key in done:
                    outcomes.append("duplicate")
                    continue
                done.add(key)
            for d in e.deliveries:
                dl_rows.append(
                    (
                        delivery_id,
                        d.destination,
                        e.ordering_key,
                        e.received_at,
                        e.received_at,
                        e.source,
                        e.kind,
                        e.message_json if d.message_json is None else d.message_json,
                    )
                )
                delivery_id += 1
            outcomes.append("queued")
        # Multi-row INSERTs: SQLite does the row work inside one step, which runs without
        # the GIL, so the event loop keeps parsing requests meanwhile.
        _insert_rows(
            conn,
            "INSERT INTO deliveries (id, destination, ordering_key, next_at, created_at, source,"
            " kind, message, state) VALUES ",
            "(?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            dl_rows,
        )
        if rejected:
            conn.executemany(
                "INSERT INTO rejected (source, kind, received_at, reason, message)"
                " VALUES (?, ?, ?, ?, ?)",
                rejected,
            )
        self._next_delivery_id = delivery_id
        self._pending += len(dl_rows)
        return outcomes

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        return await self._submit(lambda conn: self._lease(conn, destination, limit, now))

    def _lease(
        self, conn: sqlite3.Connection, destination: str, limit: int, now: float
    ) -> list[Delivery]:
        rows = conn.execute(_LEASE, {"dest": destination, "now": now, "limit": limit}).fetchall()
        if rows:
            conn.executemany(
                "UPDATE deliveries SET state = 'leased' WHERE id = ?", [(r[0],) for r in rows]
            )
            conn.executemany(
                "INSERT OR IGNORE INTO holds VALUES (?, ?, ?)",
                [(destination, r[1], r[0]) for r in rows],
            )
        return [
            Delivery(
                id=did,
                destination=destination,
                ordering_key=okey,
                attempts=attempts,
                created_at=created_at,
                source=source,
                kind=kind,
                message=decode(message),
            )
            for did, okey, attempts, created_at, source, kind, message in rows
        ]

    async def complete(self, ids: list[int]) -> None:
        if ids:
            await self._submit(lambda conn: self._finish(conn, ids))

    def _finish(self, conn: sqlite3.Connection, ids: list[int]) -> None:
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

    async def retry(self, retries: list[Retry]) -> None:
        if retries:
            await self._submit(
                lambda conn: conn.executemany(
                    "UPDATE deliveries SET state = 'pending', attempts = attempts + 1,"
                    " next_at = ?, last_error = ? WHERE id = ?",
                    [(r.next_at, r.error, r.id) for r in retries],
                )
            )

    async def release(self, ids: list[int]) -> None:
        if ids:
            await self._submit(lambda conn: self._release(conn, ids))

    def _release(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        for chunk in _chunks(ids):
            self._unhold(conn, chunk)
            conn.execute(
                f"UPDATE deliveries SET state = 'pending' WHERE id IN ({_marks(len(chunk))})"
                " AND state = 'leased'",
                chunk,
            )

    async def dead_letter(self, items: list[tuple[int, str]], now: float) -> None:
        if items:
            await self._submit(lambda conn: self._dead(conn, items, now))

    def _dead(self, conn: sqlite3.Connection, items: list[tuple[int, str]], now: float) -> None:
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
        return await self._submit(lambda conn: self._dead_letters(conn, limit, destination))

    def _dead_letters(
        self, conn: sqlite3.Connection, limit: int, destination: str | None
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

    async def counts(self) -> dict[str, dict[str, int]]:
        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for dest, state, n in conn.execute(
                "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
            ):
                out.setdefault(dest, {})[state] = n
            return out

        return await self._submit(run)

    async def purge(self, now: float) -> None:
        await self._dedup.submit(
            lambda conn: conn.execute("DELETE FROM dedup WHERE expires_at <= ?", (now,))
        )

    async def writable(self) -> bool:
        try:
            await self._submit(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreUnavailable:
            return False
        return self.healthy


def _seen(conn: sqlite3.Connection, keys: list[DedupKey], now: float) -> set[DedupKey]:
    """The keys recorded and not yet expired."""
    by_source: dict[tuple[str, str], list[str]] = {}
    for kind, source, dedup_id in keys:
        by_source.setdefault((kind, source), []).append(dedup_id)
    seen: set[DedupKey] = set()
    for (kind, source), ids in by_source.items():
        for chunk in _chunks(ids):
            seen.update(
                (kind, source, row[0])
                for row in conn.execute(
                    "SELECT dedup_id FROM dedup WHERE kind = ? AND source = ?"
                    f" AND expires_at > ? AND dedup_id IN ({_marks(len(chunk))})",
                    (kind, source, now, *chunk),
                )
            )
    return seen


def _record(conn: sqlite3.Connection, until: dict[DedupKey, float]) -> None:
    _insert_rows(
        conn,
        "INSERT OR REPLACE INTO dedup VALUES ",
        "(?, ?, ?, ?)",
        [(*key, expires) for key, expires in until.items()],
    )


def _insert_rows(
    conn: sqlite3.Connection, head: str, row: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    per_statement = max(1, 2000 // max(1, row.count("?")))
    for chunk in _chunks(rows, per_statement):
        conn.execute(head + ",".join([row] * len(chunk)), [v for r in chunk for v in r])


def _unavailable(exc: BaseException) -> StoreUnavailable:
    # The text of a SQLite error names the condition (full, read-only, I/O) without data.
    log.error("store write failed: %s", exc)
    return StoreUnavailable(
        f"the event store cannot take writes right now ({exc}); nothing acknowledged was lost,"
        " retry later",
        retry_after=5,
    )
