"""The group-commit writer: one connection, a queue of operations committed together, and each
failing operation failing alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from relay.errors import StoreUnavailable
from relay.store.sqlite.files import storage_trouble, unavailable
from relay.store.sqlite.rows import T
from relay.store.sqlite.schema import log

# An operation, the future its caller waits on, and whether it runs between transactions.
_Item = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", bool]


def _settle(fut: asyncio.Future[Any], result: tuple[bool, Any]) -> None:
    if fut.done():  # its caller stopped waiting
        return
    ok, value = result
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Writer:
    """One connection, one thread, and a queue of operations committed in groups.

    `inline` runs the groups on the event loop's own thread instead: for a process whose
    loop does nothing but feed the store (relay.store.process), where a second thread would
    only add hand-overs of the GIL. Requests that arrive meanwhile wait in the socket and
    make the next group larger.

    What the caller keeps in memory about the database (counters) follows the transactions:
    `save` takes it as a transaction begins and before each operation of a group that runs
    in savepoints, and `restore` puts it back where SQLite rolls the transaction or the
    operation back, so that it never has to be read again from the database (a count of
    every queued row took 0.3 s with 5 million queued, twice for each group where one
    request was refused).
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], sqlite3.Connection],
        max_group: int,
        on_commit: Callable[[], None] = lambda: None,
        on_abort: Callable[[], None] = lambda: None,
        inline: bool = False,
        save: Callable[[], Any] = lambda: None,
        restore: Callable[[Any], None] = lambda _saved: None,
    ) -> None:
        self.name = name
        self.inline = inline
        self._connect = connect
        self._save = save
        self._restore = restore
        # Told when a transaction committed, or when all its work was thrown away.
        self._on_commit = on_commit
        self._on_abort = on_abort
        self.max_group = max_group
        self.conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
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

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], *, between: bool = False
    ) -> asyncio.Future[T]:
        """Run `fn` with the connection: in a transaction, committed with the operations
        queued beside it; or, `between` transactions, on its own, once those queued before it
        have committed and before those queued after it (a checkpoint, which cannot run in a
        transaction)."""
        if self._task is None:
            raise StoreUnavailable("the store is not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, fut, between))
        return fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        taken: list[_Item | None] = []  # taken from the queue ahead of its turn
        while True:
            item = taken.pop() if taken else await self._queue.get()
            if item is None:
                break
            if item[2]:
                fn, fut, _ = item
                if self.inline:
                    alone = self._run_alone(fn)
                else:
                    alone = await loop.run_in_executor(self._executor, self._run_alone, fn)
                _settle(fut, alone)
                continue
            group = [item]
            while len(group) < self.max_group:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None or nxt[2]:  # the end, or an operation that runs alone
                    taken.append(nxt)
                    break
                group.append(nxt)
            fns = [fn for fn, _, _ in group]
            if self.inline:
                results = self._run_group(fns)
            else:
                results = await loop.run_in_executor(self._executor, self._run_group, fns)
            for (_, fut, _), result in zip(group, results, strict=True):
                _settle(fut, result)

    def _run_alone(self, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        assert self.conn is not None
        try:
            return True, fn(self.conn)
        except Exception as exc:  # the operation's own failure, for its caller
            return False, exc

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
            todo = [i for i in todo if i != lost]
        return [
            r if r is not None else (False, unavailable(RuntimeError("not run"))) for r in results
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
        saved = self._save()
        changes = conn.total_changes
        try:
            values = [fn(conn) for fn in fns]
            conn.execute("COMMIT")
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # Counters were advanced by operations that were rolled back.
            self._on_abort()
            self._restore(saved)
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
                out[i] = (False, unavailable(exc))
            return None
        self._on_abort()  # whatever an earlier try of this group left behind
        begun = self._save()
        changes = conn.total_changes
        trouble: str | None = None  # an operation failed because of the files themselves
        for i in todo:
            conn.execute("SAVEPOINT op")
            before = self._save()
            try:
                value = fns[i](conn)
            except Exception as exc:  # each operation fails alone
                error = unavailable(exc) if isinstance(exc, sqlite3.Error) else exc
                trouble = storage_trouble(exc) or trouble
                if not conn.in_transaction:
                    self._set_problem(trouble or self.problem)
                    out[i] = (False, error)
                    self._on_abort()
                    self._restore(begun)
                    return i
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                self._restore(before)
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
            self._restore(begun)
            for i in todo:
                out[i] = (False, unavailable(exc))
            return None
        self._on_commit()
        for i, result in zip(todo, results, strict=True):
            out[i] = result
        return None
