"""The SQLite store itself (see the package's docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from relay.codec import encode
from relay.errors import StoreCannotOpen, StoreFull, StoreUnavailable
from relay.runtime import release_free_memory
from relay.store.base import (
    EVERY_DEAD_LETTER,
    AlikeEvents,
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EnqueueOutcome,
    EventTuple,
    Settlement,
    check_queue_room,
    deliveries_to_add,
    distinct_deliveries,
)
from relay.store.sqlite.dedup import (
    LOOKUPS_PREPARED,
    MERGE_PAUSE,
    IdFilter,
    Merge,
    Run,
    abandon_merge,
    dedup_keys,
    drop_expired,
    drop_table,
    filter_of,
    finish_merge,
    id_records,
    merge_step,
    open_runs,
    plan_merge,
    record_run,
    runs_of,
    seen_ids,
)
from relay.store.sqlite.files import (
    cannot_open,
    describe_os_error,
    file_size,
    storage_trouble,
    take_lock,
    unavailable,
)
from relay.store.sqlite.packing import Packer, dictionary_id, train, unused
from relay.store.sqlite.rows import (
    LeasedRow,
    T,
    count_deliveries,
    dead_letter_rows,
    dead_where,
    in_chunks,
    insert_deliveries,
    leased_deliveries,
    oldest_queued,
    placeholders,
    read_messages,
    rejected_where,
)
from relay.store.sqlite.schema import (
    ADD_ATTEMPT,
    AUTOCHECKPOINT,
    BACKGROUND_NICE,
    DEAD,
    DEDUP_SCHEMA,
    DEFAULT_MIN_FREE_MB,
    FILTER_MIN_IDS,
    LEASE,
    LEASED,
    PENDING,
    SCHEMA,
    TIGHT_AUTOCHECKPOINT,
    UNSHARED,
    WAL_FRAME_HEADER,
    WAL_KEPT_BYTES,
    log,
    move_old_tables,
    open_connection,
)
from relay.store.sqlite.writer import Writer


def _copy_log(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _dedup_untils(parts: Sequence[Sequence[EventTuple]]) -> Iterator[float]:
    """When each event's dedup id expires, in order."""
    return itertools.chain.from_iterable(
        itertools.repeat(part.dedup_until, len(part))
        if isinstance(part, AlikeEvents)
        else map(operator.itemgetter(7), part)
        for part in parts
    )


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
        self._main = Writer(
            "sqlite",
            self._open_main,
            max_group,
            on_commit=self._commit_ids,
            on_abort=self._drop_staged,
            save=self._save_counters,
            restore=self._restore_counters,
            # The store runs in a process of its own (relay.store.process), whose event loop
            # does nothing else: the main writer runs there, the dedup writer in a thread.
            inline=True,
        )
        self._dedup = Writer("sqlite-dedup", self._open_dedup, max_group)
        # Dedup ids not yet in the dedup database, by expiry time. Only the main writer's
        # thread changes `_staged` (this transaction's ids) and `_recent` (committed ids);
        # `_flushing` holds the ids being written to the dedup database meanwhile. The same
        # ids laid out for recording (id_records), a request's at a time, beside each.
        self._staged: dict[bytes, float] = {}
        self._recent: dict[bytes, float] = {}
        self._flushing: dict[bytes, float] = {}
        self._staged_records: list[bytes] = []
        self._recent_records: list[bytes] = []
        self._dedup_reader: sqlite3.Connection | None = None
        # Every id in the dedup database is in `_filter` (main writer's thread only).
        self._filter = IdFilter(FILTER_MIN_IDS)
        self._checkpointer: sqlite3.Connection | None = None
        self._database_fd: int | None = None  # the database file, for the checkpointer
        # `counts` reads on a connection and a thread of its own (WAL lets it read while
        # the writer writes).
        self._counter: sqlite3.Connection | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Runs of dedup ids: the id the next one takes, and the merging of them in the
        # background (relay.store.sqlite.dedup), woken when runs are added or dropped.
        self._next_run = 1
        self._merger: asyncio.Task[None] | None = None
        self._runs_changed = asyncio.Event()
        self._merging: frozenset[int] = frozenset()
        self._merge_failing = False
        self._ids_failing = False
        self._checkpoint_failing = False
        self._next_delivery_id = 1
        self._pending = 0
        self._sharing = False  # some message is shared (see _read_counters)
        self._unpacked: dict[int, list[bytes]] = {}  # blocks read lately (read_messages)
        self._packer = Packer()
        # The numbers names (destinations, sources, kinds) are stored as, both ways (main
        # writer's thread; a name is added in a commit of its own before rows use it).
        self._codes: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._training: asyncio.Task[None] | None = None

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
                raise cannot_open(self.path, exc) from None
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
        self._filter = await self._dedup.submit(lambda conn: filter_of(conn, now))
        await self._main.open()
        self._read_executor = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-read")
        self._flusher = asyncio.create_task(self._background_work(), name="relay-store-background")
        self._merger = asyncio.create_task(self._merge_runs(), name="relay-store-merge-ids")
        self._runs_changed.set()  # the runs found on disk may be due a merge already

    def _open_dedup(self) -> sqlite3.Connection:
        # Runs in the second writer's own thread. Its work (recording ids, checkpoints) can
        # wait: at a lower priority it takes the cores when the threads that requests wait
        # for leave them idle, instead of taking turns with them. So it runs as little
        # Python as it can (SQLite's work goes on without the GIL): Python here holds the
        # GIL while the system may leave the thread waiting for a core, and the main writer
        # waits for the GIL meanwhile (see id_records). On Linux a thread's own id names it
        # alone here (elsewhere it could name a process: left as it is).
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                me = threading.get_native_id()
                nice = os.getpriority(os.PRIO_PROCESS, me) + BACKGROUND_NICE
                os.setpriority(os.PRIO_PROCESS, me, min(19, nice))
        # Nothing kept prepared: each flush binds its ids, megabytes of them, to a statement
        # of its own (it names its run), and few statements run here, each seldom.
        conn = open_connection(self.dedup_path, "NORMAL", DEDUP_SCHEMA, cached_statements=0)
        self._next_run = open_runs(conn)
        return conn

    def _open_main(self) -> sqlite3.Connection:
        conn = open_connection(self.path, "FULL", SCHEMA)
        moved = move_old_tables(conn)
        if moved:
            log.info("moved %d queued deliveries to the store's compact tables", moved)
        self._names = dict(conn.execute("SELECT id, name FROM names"))
        self._codes = {name: code for code, name in self._names.items()}
        # The background writer checkpoints every second; this is the fallback if it falls
        # behind (20,000 pages, 80 MB of log, instead of SQLite's default of 1,000).
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")
        # Once a checkpoint lets the log start over, its file is cut back to this size, so
        # that a burst does not keep its disk space for good.
        conn.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._packer = Packer(
            [data for (data,) in conn.execute("SELECT data FROM dictionaries ORDER BY made_at")]
        )
        # Read in the main writer's thread, by the operation that checks ids.
        self._dedup_reader = open_connection(
            self.dedup_path, "NORMAL", "", cached_statements=LOOKUPS_PREPARED
        )
        if self.max_size_mb:
            conn.execute(
                f"PRAGMA max_page_count={int(self.max_size_mb * 1024 * 1024 // self._page_size)}"
            )
        # Whatever was leased when the last process died goes back to the queue; only the
        # deliveries waiting for a retry keep holding back their person.
        conn.execute(f"UPDATE queue SET state = {PENDING} WHERE state = {LEASED}")
        conn.execute("DELETE FROM held")
        conn.execute(
            "INSERT INTO held SELECT destination, ordering_key, id FROM queue"
            f" WHERE state = {PENDING} AND attempts > 0"
        )
        self._read_counters(conn)
        # A dictionary whose first id was not recorded (the store stopped, or a commit
        # failed, as it was adopted) is given the next id: later than its true first one,
        # which only keeps the dictionary before it longer.
        conn.execute(
            "UPDATE dictionaries SET first_id = ? WHERE first_id IS NULL", (self._next_delivery_id,)
        )
        return conn

    def _read_counters(self, conn: sqlite3.Connection) -> None:
        # As the store opens; from then on they follow the transactions (see Writer). The
        # next delivery id is past every shared row's ids too: a block whose last deliveries
        # are gone still serves the ones before them, and a new delivery must not take one
        # of its ids.
        self._next_delivery_id = 1 + max(
            conn.execute("SELECT max(id) FROM queue").fetchone()[0] or 0,
            conn.execute("SELECT max(id + deliveries) - 1 FROM shared").fetchone()[0] or 0,
        )
        # Whether any message is shared, so that a store with none skips looking for them.
        self._sharing = conn.execute("SELECT 1 FROM shared LIMIT 1").fetchone() is not None
        self._pending = conn.execute(
            f"SELECT count(*) FROM queue WHERE state != {DEAD}"
        ).fetchone()[0]

    def _save_counters(self) -> tuple[int, int, bool]:
        # In the main writer's thread, as a transaction or an operation begins (see Writer).
        return self._pending, self._next_delivery_id, self._sharing

    def _restore_counters(self, saved: tuple[int, int, bool]) -> None:
        # Where the transaction or the operation was rolled back: what it added is gone.
        self._pending, self._next_delivery_id, self._sharing = saved
        # A block read in a transaction rolled back may be gone, and its id taken again.
        self._unpacked.clear()

    async def close(self) -> None:
        training, self._training = self._training, None
        if training is not None:
            training.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await training
        for task in (self._flusher, self._merger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._flusher = self._merger = None
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
        database_fd, self._database_fd = self._database_fd, None
        if database_fd is not None:  # once SQLite's connections are closed (see _checkpoint)
            os.close(database_fd)
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # last: nobody else may open the store before it is closed

    # ------------------------------------------------------------------ dedup ids

    def _drop_staged(self) -> None:
        self._staged.clear()
        self._staged_records.clear()

    def _commit_ids(self) -> None:
        self._recent_records += self._staged_records
        self._staged_records.clear()
        staged = self._staged
        if staged:
            self._recent.update(staged)
            self._filter.add(staged, len(staged), max(staged.values()), time.time())
            staged.clear()

    async def _merge_runs(self) -> None:
        """Merge runs of dedup ids while there are runs to merge (see plan_merge), a step at a
        time, so that flushes and checkpoints go on between the steps."""
        while True:
            await self._runs_changed.wait()
            self._runs_changed.clear()
            try:
                while await self._merge_once():
                    pass
            except StoreUnavailable:
                pass
            except Exception as exc:  # lookups only have more runs to look in meanwhile
                if not self._merge_failing:
                    log.warning("merging runs of dedup ids failed: %s", exc)
                self._merge_failing = True
            else:
                self._merge_failing = False

    async def _merge_once(self) -> bool:
        now = time.time()

        def claim(conn: sqlite3.Connection) -> list[Run]:
            # In the dedup writer's thread, as purges are: a purge runs before this and
            # the merge does not see what it dropped, or after and leaves its runs alone.
            sources = plan_merge(runs_of(conn), now)
            self._merging = frozenset(run.id for run in sources)
            return sources

        sources = await self._dedup.submit(claim)
        if not sources:
            return False
        merge = Merge(self._next_run, tuple(sources), now)
        self._next_run += 1
        try:
            written = 0
            for step in range(merge.steps):
                written += await self._paced(functools.partial(merge_step, merge=merge, step=step))
            await self._dedup.submit(functools.partial(finish_merge, merge=merge, written=written))
        except BaseException:
            with contextlib.suppress(Exception):
                await self._dedup.submit(functools.partial(abandon_merge, merge=merge))
            raise
        finally:
            self._merging = frozenset()
        await self._drop_tables([run.id for run in sources])
        return True

    async def _drop_tables(self, run_ids: list[int]) -> None:
        """Drop the tables of runs no longer listed, one a transaction, paced as merges are
        (a table left by a stop is dropped at the next start)."""
        for run_id in run_ids:
            await self._paced(functools.partial(drop_table, run_id=run_id))

    async def _paced(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` on the dedup writer, then a pause MERGE_PAUSE times as long as it took. Merges
        and drops are never urgent, and a burst of their writes (a large merge writes hundreds
        of megabytes) slows the commits that requests wait for."""
        started = time.perf_counter()
        result = await self._dedup.submit(fn)
        await asyncio.sleep((time.perf_counter() - started) * MERGE_PAUSE)
        return result

    def _take_recent(self) -> tuple[dict[bytes, float], bytes]:
        # Runs in the main writer's thread, between two operations.
        taken, self._recent = self._recent, {}
        records, self._recent_records = self._recent_records, []
        self._flushing = taken
        return taken, b"".join(records)

    async def flush_ids(self) -> int:
        """Move the ids accepted since the last flush to the dedup database."""
        taken, records = await self._main.submit(lambda _conn: self._take_recent())
        if not taken:
            return 0
        run_id, self._next_run = self._next_run, self._next_run + 1
        try:
            await self._dedup.submit(lambda conn: record_run(conn, run_id, records))
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
                await self._main.submit(lambda _conn: self._keep_unrecorded(taken, records))
            return 0
        finally:
            self._flushing = {}
        if self._ids_failing:
            log.warning("dedup ids are recorded again")
            self._ids_failing = False
        self._runs_changed.set()
        return len(taken)

    def _keep_unrecorded(self, ids: dict[bytes, float], records: bytes) -> None:
        # In the main writer's thread: ids committed since keep their own (later) expiry;
        # the records go with the next flush's, where record_run keeps an id's later one.
        for key, expires in ids.items():
            self._recent.setdefault(key, expires)
        self._recent_records.append(records)

    async def train_dictionary(self) -> bool:
        """Train a dictionary on the messages sampled since the last one, record it and pack
        with it from then on (see packing.py); whether one was made."""
        samples = await self._main.submit(lambda _conn: self._packer.take_samples())
        data = await asyncio.to_thread(train, samples)
        if data is None:
            return False
        dict_id = dictionary_id(data)

        def record(conn: sqlite3.Connection) -> bool:
            added = conn.execute(
                "INSERT OR IGNORE INTO dictionaries (id, data, made_at) VALUES (?, ?, ?)",
                (dict_id, data, time.time()),
            ).rowcount
            return bool(added)

        def adopt(conn: sqlite3.Connection) -> None:
            # Rows from this id on may be packed with it (committed with the first of them).
            conn.execute(
                "UPDATE dictionaries SET first_id = ? WHERE id = ?",
                (self._next_delivery_id, dict_id),
            )
            self._packer.adopt(data)

        # Committed before any message is packed with it.
        if not await self._main.submit(record):
            return False  # the rare id made twice: the next samples make another
        await self._main.submit(adopt)
        return True

    def _forget_dictionaries(self, conn: sqlite3.Connection) -> None:
        """Delete the dictionaries no queued delivery can be packed with any more."""
        known = conn.execute("SELECT id, first_id FROM dictionaries ORDER BY made_at").fetchall()
        if len(known) < 2:
            return
        (oldest,) = conn.execute("SELECT min(id) FROM queue").fetchone()
        for dict_id in unused(known, oldest):
            conn.execute("DELETE FROM dictionaries WHERE id = ?", (dict_id,))
            self._packer.forget(dict_id)

    def _train_when_sampled(self) -> None:
        """Train in the background once the samples are in: until then, messages are stored
        as they came."""
        if self._packer.wants_training and self._training is None:
            self._training = asyncio.create_task(self._train(), name="relay-store-dictionary")

    async def _train(self) -> None:
        try:
            await self.train_dictionary()
        except StoreUnavailable:
            pass
        except Exception as exc:  # messages are stored as they are meanwhile
            log.warning("could not make a dictionary for packing messages: %s", exc)
        finally:
            self._training = None

    async def _background_work(self) -> None:
        while True:
            await asyncio.sleep(self.dedup_flush_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.flush_ids()
            # What the second's ids, requests and statements took and gave back goes back
            # to the system, instead of staying with the process as free heap.
            with contextlib.suppress(StoreUnavailable):
                await self._dedup.submit(lambda _conn: release_free_memory())
            try:
                await self.checkpoint()
            except Exception as exc:  # the writer checkpoints by itself as a fallback
                if not self._checkpoint_failing:
                    log.warning("checkpointing the store's write-ahead log failed: %s", exc)
                self._checkpoint_failing = True
            else:
                self._checkpoint_failing = False

    async def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file, so that the log starts over.

        The second writer copies what the log holds, without waiting for or blocking the
        main writer (PASSIVE). The log starts over only at a write that finds all of it
        copied, and under a steady load the main writer has always added to it meanwhile: it
        grew to the fallback's 80 MB, and that checkpoint, in a commit, held requests up for
        50–90 ms every 6 s. So the main writer then copies, between two of its transactions,
        the little added since (10–20 ms), and its next write starts the log over."""
        # While writes fail (a full disk), the whole log is copied and its file emptied,
        # which gives back its space as soon as the database file can take it.
        if self._main.problem is not None:
            await self._dedup.submit(functools.partial(self._checkpoint, mode="TRUNCATE"))
            return
        await self._dedup.submit(functools.partial(self._checkpoint, mode="PASSIVE"))
        await self._main.submit(_copy_log, between=True)

    def _checkpoint(self, _conn: sqlite3.Connection, mode: str) -> None:
        # Runs in the second writer's thread, on a connection of its own. PASSIVE copies what
        # it can without waiting for, or blocking, the main writer.
        if self._checkpointer is None:
            self._checkpointer = open_connection(self.path, "FULL", "")
        if self._database_fd is None:
            # Kept open until the store is closed: closing a file descriptor of the
            # database lets go of every lock the process holds on it, SQLite's included.
            self._database_fd = os.open(self.path, os.O_RDONLY)
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        if mode == "PASSIVE":
            # SQLite syncs the database file only after a checkpoint that copied the whole
            # log, and under load the main writer adds to it all along: the main writer's
            # own copy, between its transactions, used to sync all this one had written
            # (20 MB a second under scripts/bench_ingest.py's load), and every request in
            # flight waited the 46 ms that took. Synced here, that copy takes 3-6 ms.
            # Where it fails, that copy syncs it, and says what failed.
            with contextlib.suppress(OSError):
                os.fsync(self._database_fd)

    def _known_ids(self, keys: list[bytes | None], now: float) -> set[bytes]:
        """The ids among `keys` seen within their window: in memory, or in the database."""
        seen: set[bytes] = set()
        unknown: list[bytes] = []
        staged, recent, flushing = self._staged, self._recent, self._flushing
        # Every committed id is in the filters (recent and flushing ones too), so an id
        # none has seen can only be in this transaction's own ids.
        recorded = self._filter.blooms
        for key in keys:
            if key is None:
                continue
            for bloom in recorded:
                if key in bloom:
                    break
            else:
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
            seen.update(seen_ids(self._dedup_reader, unknown, now))
        return seen

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._main.submit(fn)

    # ------------------------------------------------------------------ operations

    async def enqueue(self, events: Sequence[EventTuple]) -> list[EnqueueOutcome]:
        return await self.enqueue_keyed([events], dedup_keys(events))

    async def enqueue_keyed(
        self, parts: Sequence[Sequence[EventTuple]], keys: list[bytes | None]
    ) -> list[EnqueueOutcome]:
        """`enqueue` of several requests' events, `parts` (each a list of events, or
        AlikeEvents), in one transaction, given each event's dedup key (dedup_keys): the
        store's process is given them by relay's, which has a core less busy than this
        one to hash them on."""
        # A rejected message with an id is de-duplicated too: a sender's retries of one bad
        # webhook are stored once.
        try:
            no_room = await self._room_problem()
        except (OSError, sqlite3.Error) as exc:
            raise unavailable(exc) from None
        if no_room is not None:
            raise StoreFull(
                f"{no_room}; nothing acknowledged was lost, retry later", retry_after=30
            )
        # Refused here while the queue is full, as in the operation (which counts what
        # commits before it): a group with a refused operation in it runs twice.
        new = sum(map(deliveries_to_add, parts))
        check_queue_room(self._pending, new, self.max_pending)
        unknown = self._unknown_names(parts)
        if unknown:
            added = await self._main.submit(lambda conn: self._add_names(conn, unknown))
            # Known once committed, before any row that uses them is written.
            self._codes.update(added)
            self._names.update({code: name for name, code in added.items()})
        now = time.time()
        outcomes = await self._main.submit(lambda conn: self._enqueue(conn, parts, keys, new, now))
        self._train_when_sampled()
        return outcomes

    def _unknown_names(self, parts: Sequence[Sequence[EventTuple]]) -> set[str]:
        names: set[str] = set()
        for part in parts:
            if isinstance(part, AlikeEvents):
                names.update((part.source, part.kind))
            else:
                names.update({e[0] for e in part} | {e[1] for e in part})
            for deliveries in distinct_deliveries(part):
                names.update(destination for destination, _ in deliveries)
        return names.difference(self._codes)

    @staticmethod
    def _add_names(conn: sqlite3.Connection, names: set[str]) -> dict[str, int]:
        added = {}
        for name in sorted(names):
            conn.execute("INSERT OR IGNORE INTO names (name) VALUES (?)", (name,))
            (added[name],) = conn.execute("SELECT id FROM names WHERE name = ?", (name,)).fetchone()
        return added

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        parts: Sequence[Sequence[EventTuple]],
        keys: list[bytes | None],
        new: int,
        now: float,
    ) -> list[EnqueueOutcome]:
        """Store `parts`, which would add `new` deliveries were none a duplicate."""
        check_queue_room(self._pending, new, self.max_pending)
        seen = self._known_ids(keys, now)
        recorded: list[tuple[bytes, float]]
        outcomes: list[EnqueueOutcome]
        rejected: list[tuple[Any, ...]] = []
        if (
            not seen
            and None not in keys
            and len(set(keys)) == len(keys)
            and not any(e[8] for part in parts if not isinstance(part, AlikeEvents) for e in part)
        ):
            # The usual call: every event new, with an id of its own, and none rejected.
            ids = cast("list[bytes]", keys)
            recorded = list(zip(ids, _dedup_untils(parts), strict=True))
            outcomes = ["queued"] * len(ids)
        else:
            recorded, outcomes, stored = [], [], []
            events = [e for part in parts for e in part]
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
            parts = [stored]
        delivery_id, shared = insert_deliveries(
            conn, parts, self._next_delivery_id, self._packer, self._codes
        )
        self._sharing = self._sharing or shared
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
        if recorded:
            self._staged_records.append(id_records(recorded))
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
        log_bytes = file_size(self._wal_path)
        roomy = self._disk_free() - log_bytes >= self.min_free and (
            not self._cap or self._cap - file_size(self.path) - log_bytes >= cap_kept
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
        pages = TIGHT_AUTOCHECKPOINT if tight else AUTOCHECKPOINT
        await self._main.submit(lambda conn: conn.execute(f"PRAGMA wal_autocheckpoint={pages}"))
        self._tight = tight

    def _room_after_checkpoint(self, _conn: sqlite3.Connection) -> tuple[int, int]:
        """(room on the disk, room under max_size_mb) once the log is checkpointed as far as
        it can be; in the second writer's thread, beside the background checkpoints."""
        if self._checkpointer is None:
            self._checkpointer = open_connection(self.path, "FULL", "")
        conn = self._checkpointer
        _busy, log_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        backlog = max(0, log_frames - copied) * (self._page_size + WAL_FRAME_HEADER)
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
        return leased_deliveries(destination, await self.lease_rows(destination, limit, now))

    async def lease_rows(self, destination: str, limit: int, now: float) -> list[LeasedRow]:
        """`lease` as plain tuples, which cross to relay's process faster than `Delivery`s."""
        return await self._submit(lambda conn: self._lease(conn, destination, limit, now))

    def _lease(
        self, conn: sqlite3.Connection, destination: str, limit: int, now: float
    ) -> list[LeasedRow]:
        code = self._codes.get(destination)
        if code is None:
            return []  # nothing was ever queued for it
        found = conn.execute(LEASE, {"dest": code, "now": now, "limit": limit}).fetchall()
        messages = read_messages(
            conn, [(r[0], r[6], r[7]) for r in found], self._packer, self._unpacked
        )
        names = self._names
        rows: list[LeasedRow] = [
            (did, okey, attempts, created_at, names[source], names[kind], message)
            for (did, okey, attempts, created_at, source, kind, _, _), message in zip(
                found, messages, strict=True
            )
        ]
        # A statement per chunk of ids rather than one per row: 1.96 → 1.39 µs a row for the
        # update, and 0.92 → 0.34 for the holds, which SQLite copies from the rows themselves.
        for chunk in in_chunks([r[0] for r in rows]):
            marks = placeholders(len(chunk))
            conn.execute(f"UPDATE queue SET state = {LEASED} WHERE id IN ({marks})", chunk)
            conn.execute(
                "INSERT OR IGNORE INTO held SELECT destination, ordering_key, id FROM queue"
                f" WHERE id IN ({marks})",
                chunk,
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
                f"UPDATE queue SET state = {PENDING}, attempts = attempts + 1,"
                f" next_at = ?, last_error = ?, {ADD_ATTEMPT} WHERE id = ? AND state != {DEAD}",
                [(r.next_at, r.error, now, r.error, r.id) for r in settlement.retries],
            )
        if settlement.done:
            self._finish(conn, settlement.done)
        if settlement.release:
            self._release(conn, settlement.release)

    def _finish(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for chunk in in_chunks(ids):
            marks = placeholders(len(chunk))
            self._unhold(conn, chunk)
            cur = conn.execute(
                f"DELETE FROM queue WHERE id IN ({marks}) AND state != {DEAD}", chunk
            )
            self._pending -= cur.rowcount
            self._unshare(conn, chunk)

    def _unshare(self, conn: sqlite3.Connection, deleted: Sequence[int]) -> None:
        """Delete the shared messages no delivery needs once `deleted` are gone."""
        if self._sharing:
            conn.execute(UNSHARED, (encode(list(deleted)).decode(),))  # JSON as text

    def _unhold(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        # Each hold by its whole key: SQLite plans the one-statement form (a row-value IN
        # over the deliveries) as a scan of the destination's holds, every lease's.
        conn.executemany(
            "DELETE FROM held WHERE destination = ? AND ordering_key = ? AND delivery_id = ?",
            conn.execute(
                "SELECT destination, ordering_key, id FROM queue"
                f" WHERE id IN ({placeholders(len(ids))})",
                ids,
            ).fetchall(),
        )

    def _release(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for chunk in in_chunks(ids):
            self._unhold(conn, chunk)
            conn.execute(
                f"UPDATE queue SET state = {PENDING} WHERE id IN ({placeholders(len(chunk))})"
                f" AND state = {LEASED}",
                chunk,
            )

    def _dead(self, conn: sqlite3.Connection, items: Sequence[tuple[int, str]], now: float) -> None:
        for chunk in in_chunks([did for did, _ in items]):
            self._unhold(conn, chunk)
        for did, reason in items:
            cur = conn.execute(
                f"UPDATE queue SET state = {DEAD}, attempts = attempts + 1, last_error = ?,"
                f" next_at = ?, {ADD_ATTEMPT} WHERE id = ? AND state != {DEAD}",
                (reason, now, now, reason, did),
            )
            self._pending -= cur.rowcount

    async def dead_letters(self, which: DeadLetterFilter = EVERY_DEAD_LETTER) -> list[DeadLetter]:
        return await self._submit(
            lambda conn: dead_letter_rows(conn, which, self._packer, self._unpacked)
        )

    async def replay(self, which: DeadLetterFilter, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, args = dead_where(which)
            cur = conn.execute(
                f"UPDATE queue SET state = {PENDING}, attempts = 0, next_at = ?,"
                " created_at = ?, last_error = NULL, history = NULL"
                f" WHERE id IN (SELECT id FROM queue WHERE {where})",
                (now, now, *args),
            )
            self._pending += cur.rowcount
            return cur.rowcount

        return await self._submit(run)

    async def discard(self, which: DeadLetterFilter) -> int:
        def run(conn: sqlite3.Connection) -> int:
            where, args = dead_where(which)
            ids = [did for (did,) in conn.execute(f"SELECT id FROM queue WHERE {where}", args)]
            count = 0
            for chunk in in_chunks(ids):
                count += conn.execute(
                    f"DELETE FROM queue WHERE id IN ({placeholders(len(chunk))})", chunk
                ).rowcount
                self._unshare(conn, chunk)
            if which.takes_rejected():
                where, args = rejected_where(which)
                count += conn.execute(
                    f"DELETE FROM rejected WHERE id IN (SELECT id FROM rejected WHERE {where})",
                    args,
                ).rowcount
            return count

        return await self._submit(run)

    def _close_counter(self) -> None:
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.close()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` on a reading connection and thread of its own, beside the writer: counting a
        queue of millions takes a while, and the commits that requests wait for go on
        meanwhile."""

        def run() -> T:
            if self._counter is None:
                self._counter = sqlite3.connect(self.path, isolation_level=None)
                self._counter.execute("PRAGMA busy_timeout=5000")
            return fn(self._counter)

        if self._read_executor is None:
            raise StoreUnavailable("the store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_executor, run)
        except sqlite3.Error as exc:
            raise unavailable(exc) from None

    async def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries by destination and state (read beside the writer)."""
        return await self._read(count_deliveries)

    async def oldest(self) -> dict[str, float]:
        return await self._read(oldest_queued)

    async def purge(self, now: float) -> None:
        await self._submit(self._forget_dictionaries)
        expired = await self._dedup.submit(lambda conn: drop_expired(conn, now, self._merging))
        await self._drop_tables(expired)
        self._runs_changed.set()  # a run may have expired enough to be written again
