"""The SQLite store's de-duplication: ids are checked in the same operation that stores the
deliveries, kept in memory after their commit, and moved to the dedup database in the
background; a repeat is caught at every one of those stages and after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.codec import decode
from relay.errors import StoreFull, StoreUnavailable
from relay.store.base import NewDelivery, NewEvent, Settlement
from relay.store.sqlite import SqliteStore, dedup_key
from relay.store.sqlite import dedup as sqlite_dedup
from relay.store.sqlite import store as sqlite_store
from relay.store.sqlite.dedup import count_ids


def event(dedup_id: str, *, until: float | None = None, rejected: str | None = None) -> NewEvent:
    now = time.time()
    return NewEvent(
        source="web",
        kind="segment",
        message_json=b'{"type":"track","userId":"u1","event":"E"}',
        received_at=now,
        ordering_key="u:u1",
        deliveries=(NewDelivery("customerio.main"),),
        dedup_id=dedup_id,
        dedup_until=now + 3600 if until is None else until,
        rejected_reason=rejected,
    )


def store_at(tmp_path: Path) -> SqliteStore:
    # A flush interval far beyond the test: flushes happen only when the test asks.
    return SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=3600)


@contextlib.asynccontextmanager
async def opened(store: SqliteStore) -> AsyncIterator[SqliteStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def ids_on_disk(store: SqliteStore) -> int:
    with sqlite3.connect(store.dedup_path) as conn:
        return count_ids(conn)


async def test_a_repeat_is_caught_before_after_and_while_ids_move_to_disk(
    tmp_path: Path,
) -> None:
    async with opened(store_at(tmp_path)) as store:
        assert await store.enqueue([event("a"), event("a"), event("b")]) == [
            "queued",
            "duplicate",
            "queued",
        ]
        assert await store.enqueue([event("a")]) == ["duplicate"]  # in memory
        assert ids_on_disk(store) == 0
        assert await store.flush_ids() == 2
        assert ids_on_disk(store) == 2
        assert await store.enqueue([event("a"), event("b"), event("c")]) == [
            "duplicate",
            "duplicate",
            "queued",
        ]


async def test_concurrent_requests_with_one_id_store_it_once(tmp_path: Path) -> None:
    async with opened(store_at(tmp_path)) as store:
        outcomes = await asyncio.gather(*(store.enqueue([event("same")]) for _ in range(20)))
        assert sorted(o for [o] in outcomes) == ["duplicate"] * 19 + ["queued"]
        assert (await store.counts())["customerio.main"] == {"pending": 1}


async def test_ids_survive_a_restart(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    await store.open()
    assert await store.enqueue([event("kept")]) == ["queued"]
    await store.close()  # closing moves the ids still in memory to disk
    again = store_at(tmp_path)
    await again.open()
    try:
        assert await again.enqueue([event("kept"), event("new")]) == ["duplicate", "queued"]
    finally:
        await again.close()


async def test_a_flush_records_every_id_as_one_run_in_key_order(tmp_path: Path) -> None:
    count = 3 * 4096 + 5
    async with opened(store_at(tmp_path)) as store:
        ids = [f"id-{i}" for i in range(count)]
        until = time.time() + 3600.25
        assert await store.enqueue([event(i, until=until) for i in ids]) == ["queued"] * count
        assert await store.flush_ids() == count
        with sqlite3.connect(store.dedup_path) as conn:
            (run,) = sqlite_dedup.runs_of(conn)
            assert (run.ids, run.first_expiry, run.last_expiry) == (count, until, until)
            rows = conn.execute(f"SELECT key, expires_at FROM {run.table}").fetchall()
        keys = [dedup_key("segment", "web", i) for i in ids]
        assert [key for key, _ in rows] == sorted(keys)
        assert {expires for _, expires in rows} == {until}
        assert await store.enqueue([event(i) for i in ids[::1000]]) == ["duplicate"] * 13


async def test_an_expired_id_is_accepted_again_wherever_it_is_kept(tmp_path: Path) -> None:
    async with opened(store_at(tmp_path)) as store:
        past = time.time() - 1
        assert await store.enqueue([event("old", until=past)]) == ["queued"]
        assert await store.enqueue([event("old")]) == ["queued"]  # expired, in memory
        await store.flush_ids()
        assert await store.enqueue([event("older", until=past)]) == ["queued"]
        await store.flush_ids()
        assert await store.enqueue([event("older")]) == ["queued"]  # expired, on disk
        await store.purge(time.time())  # drops the run that holds the expired "older"
        assert ids_on_disk(store) == 1
        await store.flush_ids()  # "older" again, with its new expiry
        assert ids_on_disk(store) == 2


async def test_a_refused_request_leaves_its_ids_free(tmp_path: Path) -> None:
    async with opened(
        SqliteStore(str(tmp_path / "relay.db"), max_pending=1, dedup_flush_interval=3600)
    ) as store:
        assert await store.enqueue([event("first")]) == ["queued"]
        try:
            await store.enqueue([event("second")])
        except Exception as exc:
            assert "max_pending" in str(exc)
        else:
            raise AssertionError("a full queue must refuse")
        await store.settle(
            Settlement(done=[d.id for d in await store.lease("customerio.main", 10, 1e12)]), 0
        )
        assert await store.enqueue([event("second")]) == ["queued"]  # not taken as a repeat


async def test_a_request_refused_in_a_group_leaves_the_counts_of_the_others(
    tmp_path: Path,
) -> None:
    """Two requests that each fit when they ask, committed in one group: the second finds the
    queue full once the first is in, and is refused alone. What is kept in memory about the
    queue (its size, the next delivery id) stays what the database holds, without counting
    it again."""

    def named(name: str) -> NewEvent:
        return event(name)._replace(message_json=b'{"type":"track","event":"%s"}' % name.encode())

    store = SqliteStore(str(tmp_path / "relay.db"), max_pending=3, dedup_flush_interval=3600)
    async with opened(store):
        assert await store.enqueue([named("a"), named("b")]) == ["queued", "queued"]
        store._read_counters = None  # type: ignore[assignment,method-assign]  # never again
        first, second = await asyncio.gather(
            store.enqueue([named("c")]), store.enqueue([named("d")]), return_exceptions=True
        )
        assert first == ["queued"]
        assert isinstance(second, StoreFull)
        assert "the queue holds 3 deliveries" in str(second)
        assert store._pending == 3
        commits = store.commits
        with pytest.raises(StoreFull):  # refused before it reaches the writer
            await store.enqueue([named("d")])
        assert store.commits == commits
        leased = await store.lease("customerio.main", 10, 1e12)
        assert [(d.id, d.message["event"]) for d in leased] == [(1, "a"), (2, "b"), (3, "c")]
        await store.settle(Settlement(done=[d.id for d in leased]), 0)
        assert await store.enqueue([named("d")]) == ["queued"]  # not taken as a repeat
        more = await store.lease("customerio.main", 10, 1e12)
        assert [(d.id, d.message["event"]) for d in more] == [(4, "d")]
        with sqlite3.connect(store.path) as conn:
            assert conn.execute("SELECT count(*) FROM queue").fetchone() == (store._pending,)


async def test_ids_of_a_transaction_that_did_not_commit_are_never_recorded(
    tmp_path: Path,
) -> None:
    """A group whose COMMIT fails throws its ids away, with what was laid out to record them:
    the same event sent again is new, even once the filter is built from disk again."""
    async with opened(store_at(tmp_path)) as store:
        conn = store._main.conn
        assert conn is not None
        # A deferred foreign key: the insert passes, the COMMIT fails.
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE child (parent INTEGER REFERENCES parent DEFERRABLE INITIALLY DEFERRED)"
        )
        assert await store.enqueue([event("before")]) == ["queued"]
        lost = [event("lost")]
        keys: list[bytes | None] = [dedup_key("segment", "web", "lost")]

        def stored_then_not_committed(conn: sqlite3.Connection) -> None:
            store._enqueue(conn, [lost], keys, len(lost), time.time())
            conn.execute("INSERT INTO child VALUES (1)")

        with pytest.raises(StoreUnavailable):
            await store._main.submit(stored_then_not_committed)
        assert await store.enqueue([event("after")]) == ["queued"]  # the next commit
        assert await store.flush_ids() == 2
        assert ids_on_disk(store) == 2
    async with opened(store_at(tmp_path)) as store:
        assert await store.enqueue([event("lost"), event("after")]) == ["queued", "duplicate"]


async def test_a_rejected_message_with_an_id_is_stored_once(tmp_path: Path) -> None:
    async with opened(store_at(tmp_path)) as store:
        bad = event("bad", rejected="no person")
        assert await store.enqueue([bad]) == ["rejected"]
        assert await store.enqueue([bad]) == ["duplicate"]
        assert len(await store.dead_letters()) == 1


async def test_only_ids_the_filter_may_hold_are_looked_up_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[bytes] = []
    real_seen = sqlite_store.seen_ids

    def seen(conn: sqlite3.Connection, keys: list[bytes], now: float) -> set[bytes]:
        looked_up.extend(keys)
        return real_seen(conn, keys, now)

    monkeypatch.setattr(sqlite_store, "seen_ids", seen)
    async with opened(store_at(tmp_path)) as store:
        await store.enqueue([event(f"id-{i}") for i in range(50)])
        await store.flush_ids()
        assert looked_up == []  # new ids, none of them in the filter
        outcomes = await store.enqueue([event(f"id-{i}") for i in range(50, 150)])
        assert outcomes == ["queued"] * 100
        assert len(looked_up) < 10  # a false positive now and then, at 1%
        assert await store.enqueue([event("id-7")]) == ["duplicate"]
        assert looked_up[-1] == dedup_key("segment", "web", "id-7")


async def test_the_filter_is_built_from_disk_at_start_and_a_new_one_started_when_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "FILTER_MIN_IDS", 20)
    monkeypatch.setattr(sqlite_dedup, "FILTER_MIN_IDS", 20)
    store = store_at(tmp_path)
    await store.open()
    past = time.time() - 1
    await store.enqueue([event(f"old-{i}", until=past) for i in range(10)])
    await store.enqueue([event(f"on-disk-{i}") for i in range(10)])
    await store.close()

    again = store_at(tmp_path)
    await again.open()  # only the 10 live ids go into the filter, sized for at least 20
    try:
        assert again._filter.sizes == [(10, 20)]
        assert await again.enqueue([event("on-disk-3")]) == ["duplicate"]
        assert await again.enqueue([event("old-3")]) == ["queued"]  # expired: new again
        await again.enqueue([event(f"flushed-{i}") for i in range(9)])
        await again.flush_ids()
        assert again._filter.sizes == [(20, 20)]
        # Full: the next ids start a second filter, sized for the ids the first one holds.
        await again.enqueue([event(f"recent-{i}") for i in range(5)])
        assert again._filter.sizes == [(20, 20), (5, 20)]
        names = ["old-3"] + [f"{k}-{i}" for k in ("on-disk", "flushed") for i in range(9)]
        names += [f"recent-{i}" for i in range(5)]
        assert await again.enqueue([event(n) for n in names]) == ["duplicate"] * len(names)
        await again.flush_ids()  # only the filters and the disk are left
        assert await again.enqueue([event(n) for n in names]) == ["duplicate"] * len(names)
        assert await again.enqueue([event("new")]) == ["queued"]
    finally:
        await again.close()


async def test_a_filter_whose_ids_have_all_expired_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "FILTER_MIN_IDS", 20)
    monkeypatch.setattr(sqlite_dedup, "FILTER_MIN_IDS", 20)
    async with opened(store_at(tmp_path)) as store:
        soon = time.time() + 0.3
        await store.enqueue([event(f"short-{i}", until=soon) for i in range(20)])
        await store.enqueue([event("long-0")])
        assert store._filter.sizes == [(20, 20), (1, 20)]
        await asyncio.sleep(max(0.0, soon - time.time()) + 0.05)
        # The next commit drops the first filter: its ids have all expired.
        assert await store.enqueue([event("long-1")]) == ["queued"]
        assert store._filter.sizes == [(2, 20)]
        await store.flush_ids()
        assert await store.enqueue([event("short-4"), event("long-0")]) == [
            "queued",
            "duplicate",
        ]
        # The filter left takes more ids before a new one is started.
        await store.enqueue([event(f"more-{i}") for i in range(10)])
        assert store._filter.sizes == [(13, 20)]


async def test_the_log_starts_over_after_a_checkpoint_that_could_not_copy_all_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(store_at(tmp_path)) as store:
        await store.enqueue([event(f"a-{i}") for i in range(300)])
        # The background checkpoint copies the log as far as every reader has read it, and
        # no further; a write after what this reader reads stands for what the main writer
        # adds while the second writer copies.
        reader = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM meta").fetchone()
        with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as other:
            other.execute("INSERT OR REPLACE INTO meta VALUES ('meanwhile', 1)")
        in_background = store._checkpoint

        def checkpoint_beside_the_reader(conn: sqlite3.Connection, mode: str) -> None:
            in_background(conn, mode)
            reader.execute("COMMIT")

        monkeypatch.setattr(store, "_checkpoint", checkpoint_beside_the_reader)
        try:
            await store.checkpoint()
        finally:
            reader.close()
        log = Path(store.path + "-wal")
        size = log.stat().st_size
        # Fewer pages than the first: written over the start of the log, which does not grow.
        await store.enqueue([event(f"b-{i}") for i in range(100)])
        assert log.stat().st_size == size
        assert await store.enqueue([event("a-7"), event("b-7")]) == ["duplicate"] * 2


async def test_the_second_writer_syncs_what_it_copied_before_the_main_writer_copies_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite syncs the database file only after a checkpoint that copied the whole log; the
    second writer's, which the main writer's transactions outrun, syncs it itself, so that
    the main writer's copy of the rest, which requests wait for, has little to sync."""
    done: list[tuple[str, object]] = []
    fsync, copy_log = os.fsync, sqlite_store._copy_log

    def synced(fd: int) -> None:
        done.append(("synced in", threading.current_thread().name.split("_")[0]))
        done.append(("the file", os.fstat(fd).st_ino))
        fsync(fd)

    def copied(conn: sqlite3.Connection) -> None:
        done.append(("copied", None))
        copy_log(conn)

    monkeypatch.setattr(sqlite_store.os, "fsync", synced)
    monkeypatch.setattr(sqlite_store, "_copy_log", copied)
    async with opened(store_at(tmp_path)) as store:
        await store.enqueue([event(f"a-{i}") for i in range(300)])
        await store.checkpoint()
        database = os.stat(store.path).st_ino
        expected = [("synced in", "relay-sqlite-dedup"), ("the file", database), ("copied", None)]
        assert done == expected
        fd = store._database_fd
        assert fd is not None and os.fstat(fd).st_ino == database  # open until the store closes
        await store.checkpoint()
        assert store._database_fd == fd
        assert done == expected * 2
    assert store._database_fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


def _routed(i: int, deliveries: tuple[NewDelivery, ...], at: float) -> NewEvent:
    return NewEvent(
        source="web",
        kind="segment",
        message_json=f'{{"type":"track","userId":"u{i}","event":"E{i}"}}'.encode(),
        received_at=at,
        ordering_key=f"u:u{i}",
        deliveries=deliveries,
        dedup_id=f"m{i}",
        dedup_until=at + 3600,
    )


async def _leased(store: SqliteStore, destination: str) -> list[tuple[int, str, str, float]]:
    return [
        (d.id, d.ordering_key, d.message["event"], d.created_at)
        for d in await store.lease(destination, 1000, 1e12)
    ]


async def test_events_routed_alike_are_stored_with_what_they_share_bound_once(
    tmp_path: Path,
) -> None:
    async with opened(store_at(tmp_path)) as store:
        at = time.time()
        both = (
            NewDelivery("customerio.main"),
            NewDelivery("segment.analytics", b'{"type":"track","userId":"x","event":"Renamed"}'),
        )
        # 150 rows each: statements of 64, 64, 16, 4 and 2 events.
        assert await store.enqueue([_routed(i, both, at) for i in range(150)]) == ["queued"] * 150
        main = await _leased(store, "customerio.main")
        assert main == [(1 + 2 * i, f"u:u{i}", f"E{i}", at) for i in range(150)]
        other = await _leased(store, "segment.analytics")
        assert other == [(2 + 2 * i, f"u:u{i}", "Renamed", at) for i in range(150)]


async def test_events_routed_alike_from_requests_received_apart_keep_each_its_own_time(
    tmp_path: Path,
) -> None:
    # The requests that relay's process stores by one call each have a time of their own.
    async with opened(store_at(tmp_path)) as store:
        at = time.time()
        main = (NewDelivery("customerio.main"),)
        times = [at] * 40 + [at + 1] * 70 + [at] * 3 + [at + 2]
        events = [_routed(i, main, t) for i, t in enumerate(times)]
        assert await store.enqueue(events) == ["queued"] * len(events)
        with contextlib.closing(sqlite3.connect(store.path)) as conn:
            rows = conn.execute("SELECT next_at, created_at FROM queue ORDER BY id").fetchall()
        assert rows == [(t, t) for t in times]
        leased = await _leased(store, "customerio.main")
        assert leased == [(1 + i, f"u:u{i}", f"E{i}", t) for i, t in enumerate(times)]


async def test_events_routed_differently_in_one_request_are_all_stored(tmp_path: Path) -> None:
    async with opened(store_at(tmp_path)) as store:
        at = time.time()
        main = (NewDelivery("customerio.main"),)
        other = (NewDelivery("segment.analytics"),)
        events = [_routed(i, main if i % 3 else other, at + (i % 2)) for i in range(70)]
        events[5] = NewEvent("web", "segment", b"{}", at, "u:bad", (), "bad", at + 60, "no event")
        events[6] = _routed(6, (), at)  # routed nowhere
        outcomes = await store.enqueue(events)
        assert outcomes == ["queued"] * 5 + ["rejected"] + ["queued"] * 64
        stored = [e for e in events if e.deliveries and not e.rejected_reason]
        expected: dict[str, list[tuple[int, str, str, float]]] = {}
        for n, e in enumerate(stored, start=1):
            expected.setdefault(e.deliveries[0].destination, []).append(
                (n, e.ordering_key, decode(e.message_json)["event"], e.received_at)
            )
        assert await _leased(store, "customerio.main") == expected["customerio.main"]
        assert await _leased(store, "segment.analytics") == expected["segment.analytics"]


async def test_events_routed_to_many_destinations_are_split_within_the_parameter_limit(
    tmp_path: Path,
) -> None:
    async with opened(store_at(tmp_path)) as store:
        at = time.time()
        many = tuple(NewDelivery(f"customerio.w{n}") for n in range(30))
        assert await store.enqueue([_routed(i, many, at) for i in range(40)]) == ["queued"] * 40
        for n in (0, 29):
            leased = await _leased(store, f"customerio.w{n}")
            assert leased == [(1 + n + 30 * i, f"u:u{i}", f"E{i}", at) for i in range(40)]


async def test_counting_the_queue_does_not_hold_up_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = threading.Event()
    committed = threading.Event()
    real_count = sqlite_store.count_deliveries

    def count(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
        counting.set()
        assert committed.wait(10), "a commit waited for the count"
        return real_count(conn)

    monkeypatch.setattr(sqlite_store, "count_deliveries", count)
    store = store_at(tmp_path)
    await store.open()
    try:
        await store.enqueue([event("before")])
        counted = asyncio.create_task(store.counts())
        while not counting.is_set():
            await asyncio.sleep(0.001)
        # The count is running (and waits for this commit): the writer is free.
        assert await asyncio.wait_for(store.enqueue([event("during")]), 5) == ["queued"]
        committed.set()
        assert (await counted)["customerio.main"]["pending"] in (1, 2)
        assert (await store.counts())["customerio.main"] == {"pending": 2}
    finally:
        committed.set()
        await store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux only")
async def test_the_background_writer_runs_at_a_lower_priority(tmp_path: Path) -> None:
    async with opened(store_at(tmp_path)) as store:
        nice = await store._dedup.submit(
            lambda _conn: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        )
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert nice == min(19, mine + sqlite_store.BACKGROUND_NICE)
        assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # the process itself is untouched


async def test_ids_that_cannot_be_recorded_are_kept_and_recorded_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(store_at(tmp_path)) as store:
        assert await store.enqueue([event("a"), event("b")]) == ["queued", "queued"]
        real_record = sqlite_store.record_run

        def full(_conn: sqlite3.Connection, _run: int, _records: bytes) -> None:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(sqlite_store, "record_run", full)
        assert await store.flush_ids() == 0  # the dedup database refuses them
        assert ids_on_disk(store) == 0
        # Still known: a repeat is caught while they wait in memory ...
        assert await store.enqueue([event("a"), event("c")]) == ["duplicate", "queued"]
        monkeypatch.setattr(sqlite_store, "record_run", real_record)
        assert await store.flush_ids() == 3  # ... and they are recorded once it takes them
        assert ids_on_disk(store) == 3
        assert await store.enqueue([event("b")]) == ["duplicate"]


OLD_DELIVERIES = (
    "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, destination TEXT NOT NULL,"
    " ordering_key TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " next_at REAL NOT NULL, created_at REAL NOT NULL, source TEXT NOT NULL,"
    " kind TEXT NOT NULL, message BLOB NOT NULL, last_error TEXT{history});"
    "CREATE INDEX deliveries_queue ON deliveries (destination, state, id);"
    "CREATE TABLE holds (destination TEXT NOT NULL, ordering_key TEXT NOT NULL,"
    " delivery_id INTEGER NOT NULL, PRIMARY KEY (destination, ordering_key, delivery_id))"
    " WITHOUT ROWID;"
)


async def test_a_store_made_before_attempts_were_kept_gains_their_column(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        OLD_DELIVERIES.format(history="")
        + "INSERT INTO deliveries VALUES (7, 'customerio.main', 'u:u1', 'dead', 3, 50.0, 10.0,"
        " 'web', 'segment', '{\"event\":\"E\"}', 'HTTP 400: old');"
    )
    conn.close()
    store = SqliteStore(str(path))
    await store.open()
    try:
        [old] = await store.dead_letters()
        assert (old.id, old.reason, old.history, old.dead_at) == (7, "HTTP 400: old", (), 50.0)
        await store.enqueue([event("m-1")])
        [new] = await store.lease("customerio.main", 10, time.time() + 1)
        await store.settle(Settlement(dead=[(new.id, "HTTP 400: new")]), 60.0)
        letters = await store.dead_letters()
        assert [d.history for d in letters] == [(), ((60.0, "HTTP 400: new"),)]
    finally:
        await store.close()


async def test_a_store_made_before_names_were_numbers_keeps_its_queue(tmp_path: Path) -> None:
    """Every delivery of the old tables is moved over as it was: state, attempts, history,
    the hold of a delivery waiting for its retry, ids going on from the last one."""
    path = tmp_path / "relay.db"
    conn = sqlite3.connect(path)
    rows = [
        (1, "customerio.main", "u:a", "pending", 0, 5.0, 5.0, "web", "segment", b'{"n":1}', None),
        (
            2,
            "customerio.main",
            "u:b",
            "pending",
            1,
            5.0,
            4.0,
            "web",
            "segment",
            b'{"n":2}',
            "HTTP 500",
        ),
        (3, "customerio.main", "u:b", "pending", 0, 5.0, 5.0, "web", "segment", b'{"n":3}', None),
        (4, "segment.main", "c:1", "leased", 0, 6.0, 6.0, "cio", "customerio", b'{"n":4}', None),
        (5, "customerio.main", "u:c", "dead", 3, 50.0, 1.0, "web", "segment", b'{"n":5}', "400"),
    ]
    conn.executescript(OLD_DELIVERIES.format(history=", history TEXT"))
    conn.executemany("INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)", rows)
    conn.execute("INSERT INTO holds VALUES ('customerio.main', 'u:b', 2)")
    conn.commit()
    conn.close()
    store = SqliteStore(str(path))
    await store.open()
    try:
        assert await store.counts() == {
            "customerio.main": {"pending": 3, "dead": 1},
            "segment.main": {"pending": 1},  # leased when the store closed: pending again
        }
        leased = await store.lease("customerio.main", 10, 10.0)
        # u:b's retry is due first; its later delivery waits behind the hold.
        assert [(d.id, d.attempts, d.source, d.kind, d.message) for d in leased] == [
            (1, 0, "web", "segment", {"n": 1}),
            (2, 1, "web", "segment", {"n": 2}),
        ]
        [other] = await store.lease("segment.main", 10, 10.0)
        assert (other.id, other.source, other.kind, other.message) == (
            4,
            "cio",
            "customerio",
            {"n": 4},
        )
        [dead] = await store.dead_letters()
        assert (dead.id, dead.destination, dead.reason, dead.message) == (
            5,
            "customerio.main",
            "400",
            {"n": 5},
        )
        await store.enqueue([event("m-1")])
        assert max(d.id for d in await store.lease("customerio.main", 10, time.time() + 1)) == 6
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
    assert "deliveries" not in tables and "holds" not in tables
