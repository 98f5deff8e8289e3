"""The dedup database's runs: recording, looking up, merging in steps, dropping expired ids,
and adopting the single table of earlier versions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.store.base import AlikeEvents, NewEvent
from relay.store.sqlite import SqliteStore, dedup_key
from relay.store.sqlite import dedup as runs
from relay.store.sqlite.dedup import (
    IdFilter,
    Merge,
    Run,
    count_ids,
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
from relay.store.sqlite.schema import DEDUP_SCHEMA
from tests.test_sqlite_store import event

NOW = 1_800_000_000.0


def database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(DEDUP_SCHEMA)
    return conn


def key(n: int) -> bytes:
    return dedup_key("segment", "web", f"id-{n}")


def stored(conn: sqlite3.Connection) -> dict[bytes, float]:
    """Every id on disk with its expiry, whichever run holds it."""
    found: dict[bytes, float] = {}
    for run in runs_of(conn):
        for k, expires in conn.execute(f"SELECT key, expires_at FROM {run.table}"):
            assert k not in found, "one id in two runs"
            found[k] = expires
    return found


def record(conn: sqlite3.Connection, run_id: int, ids: dict[bytes, float]) -> None:
    record_run(conn, run_id, id_records(ids.items()))


def merge_all(conn: sqlite3.Connection, target: int, sources: list[Run], now: float) -> None:
    merge = Merge(target, tuple(sources), now)
    written = sum(merge_step(conn, merge, step) for step in range(merge.steps))
    finish_merge(conn, merge, written)
    for run in sources:
        drop_table(conn, run.id)


def test_a_key_is_what_earlier_versions_recorded() -> None:
    # Keys are kept on disk across versions: a changed key would let every repeat through.
    assert dedup_key("segment", "web", "id-1").hex() == "a28ee74e5fe507fe3bec6ef9123563bf"
    assert dedup_key("customerio", "workspace", "\ud800é").hex() == (
        "cc9be70e3db270d278d1ea532135cf8b"
    )


# Any text, lone surrogates too (from `\\ud800` escapes in JSON), which are hashed as they are.
texts = st.lists(st.characters() | st.sampled_from(["\ud800", "\udfff"]), max_size=6).map("".join)


@given(
    st.lists(
        st.tuples(st.sampled_from(["segment", "customerio"]), texts, st.none() | texts),
        max_size=12,
    )
)
def test_the_keys_of_a_request_are_each_id_s_own_key(
    rows: list[tuple[str, str, str | None]],
) -> None:
    events = [NewEvent(source, kind, b"{}", NOW, "u:a", (), i) for kind, source, i in rows]
    expected = [None if i is None else dedup_key(kind, source, i) for kind, source, i in rows]
    assert dedup_keys(events) == expected


@given(texts, st.lists(st.none() | texts, max_size=12))
def test_the_keys_of_alike_events_are_each_id_s_own_key(source: str, ids: list[str | None]) -> None:
    alike = AlikeEvents(
        source, "segment", NOW, (), NOW, [b"{}"] * len(ids), ["u:a"] * len(ids), ids
    )
    expected = [None if i is None else dedup_key("segment", source, i) for i in ids]
    assert dedup_keys(alike) == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 30),  # ids committed together
            st.floats(0, 60, allow_nan=False),  # how long they live
            st.floats(0, 10, allow_nan=False),  # time passed before they came
        ),
        max_size=40,
    )
)
def test_the_filters_know_every_id_until_it_expires(
    commits: list[tuple[int, float, float]],
) -> None:
    with mock.patch.object(runs, "FILTER_MIN_IDS", 16):
        found = IdFilter(16)
        now, expiries = NOW, {}
        for count, lifetime, passed in commits:
            now += passed
            ids = {key(len(expiries) + i): now + lifetime for i in range(count)}
            found.add(ids, count, now + lifetime, now)
            expiries.update(ids)
            live = [k for k, expires in expiries.items() if expires > now]
            assert all(any(k in bloom for bloom in found.blooms) for k in live)
            assert found.count >= len(live)
            *older, (held, capacity) = found.sizes
            # A new filter is started only once the one before holds what it is sized for.
            assert all(held >= capacity >= 16 for held, capacity in older)
            assert capacity >= 16 and held <= capacity + count


def test_a_run_is_found_by_key_until_each_id_expires() -> None:
    conn = database()
    record(conn, 1, {key(1): NOW + 10, key(2): NOW - 1})
    record(conn, 2, {key(3): NOW + 0.5})
    assert [(r.id, r.ids, r.first_expiry, r.last_expiry) for r in runs_of(conn)] == [
        (1, 2, NOW - 1, NOW + 10),
        (2, 1, NOW + 0.5, NOW + 0.5),
    ]
    asked = [key(n) for n in range(6)]
    assert seen_ids(conn, asked, NOW) == {key(1), key(3)}
    assert seen_ids(conn, asked, NOW + 1) == {key(1)}
    # Every count of keys, padded to a power of two, and more than one statement's worth.
    many = [key(n) for n in range(1, 1200)]
    assert seen_ids(conn, many, NOW) == {key(1), key(3)}
    for size in range(1, 9):
        assert seen_ids(conn, [key(1)] * size, NOW) == {key(1)}
    assert seen_ids(database(), asked, NOW) == set()  # no run at all


def test_expiries_read_back_as_recorded() -> None:
    conn = database()
    expiries = {key(n): NOW + n / 7 + 1e-7 for n in range(500)}
    record(conn, 1, expiries)
    assert stored(conn) == expiries


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            # Times since 2001 (what an expiry is), often one of a few: ids of one request
            # share theirs.
            st.one_of(st.sampled_from([NOW, NOW + 1, NOW - 2]), st.floats(1e9, 9e9)),
        ),
        max_size=60,
    ).map(lambda ids: [(key(n), expires) for n, expires in ids])
)
def test_a_run_holds_each_id_once_with_its_latest_expiry(ids: list[tuple[bytes, float]]) -> None:
    """However the ids come (in any order, one id more than once, in groups that share an
    expiry or not), each is recorded once with the latest of its expiries, and the run's
    row counts and bounds what its table holds."""
    conn = database()
    record_run(conn, 1, id_records(ids))
    expected: dict[bytes, float] = {}
    for k, expires in ids:
        expected[k] = max(expires, expected.get(k, expires))
    assert stored(conn) == expected
    if expected:
        assert [(r.id, r.ids, r.first_expiry, r.last_expiry) for r in runs_of(conn)] == [
            (1, len(expected), min(expected.values()), max(expected.values()))
        ]
    else:
        assert runs_of(conn) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.integers(0, 60), st.integers(-5, 5).map(lambda d: NOW + d), min_size=1),
        min_size=1,
        max_size=5,
    ),
    st.integers(1, 40),
)
def test_a_merge_in_steps_keeps_every_live_id_with_its_latest_expiry(
    flushes: list[dict[int, float]], step_ids: int
) -> None:
    conn = database()
    for run_id, ids in enumerate(flushes, start=1):
        record(conn, run_id, {key(n): expires for n, expires in ids.items()})
    expected: dict[bytes, float] = {}
    for ids in flushes:
        for n, expires in ids.items():
            if expires > NOW:
                expected[key(n)] = max(expires, expected.get(key(n), 0.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs, "MERGE_STEP_IDS", step_ids)
        merge_all(conn, 99, runs_of(conn), NOW)
    assert stored(conn) == expected
    left = runs_of(conn)
    if expected:
        (merged,) = left
        assert merged.id == 99
        assert merged.ids == len(expected)
        assert merged.first_expiry <= min(expected.values())
        assert merged.last_expiry >= max(expected.values())
    else:
        assert left == []
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {t for t in tables if t.startswith("ids_")} == {r.table for r in left}


def test_the_steps_of_a_merge_cover_the_key_space_once() -> None:
    sources = (Run(1, 250_001, NOW, NOW), Run(2, 50_000, NOW, NOW))
    merge = Merge(3, sources, NOW)
    assert merge.steps == 4  # 300,001 ids in steps of at most 100,000
    bounds = [merge.bounds(step) for step in range(merge.steps)]
    assert bounds[0][0] == b""
    assert bounds[-1][1] > b"\xff" * 16
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    assert [low for low, _ in bounds] == sorted(low for low, _ in bounds)


def test_plan_merges_runs_of_a_size_oldest_first_then_mostly_expired_ones() -> None:
    small = [Run(i, 100, NOW + 10, NOW + 20) for i in range(1, 9)]
    assert plan_merge(small[:7], NOW) == []
    assert plan_merge(small, NOW) == small
    assert plan_merge(list(reversed(small)) + [Run(9, 100, NOW, NOW)], NOW) == small
    large = [Run(20 + i, 40_000, NOW + 10, NOW + 20) for i in range(8)]
    # The smallest size class that has FANOUT runs goes first.
    assert plan_merge(large + small, NOW) == small
    assert plan_merge(large + small[:3], NOW) == large
    # A large run past the middle of its expiries is written again alone; a small one waits
    # for its class to fill, or for its last id to expire and the run to be dropped.
    old = Run(50, 40_000, NOW - 100, NOW + 50)
    assert plan_merge([*small[:3], old], NOW) == [old]
    assert plan_merge([Run(51, 40_000, NOW - 100, NOW + 150)], NOW) == []
    assert plan_merge([Run(52, 100, NOW - 100, NOW + 50)], NOW) == []


def test_runs_whose_ids_all_expired_are_dropped_unless_being_merged() -> None:
    conn = database()
    record(conn, 1, {key(1): NOW - 5})
    record(conn, 2, {key(2): NOW - 5, key(3): NOW + 5})
    record(conn, 3, {key(4): NOW - 1})
    assert drop_expired(conn, NOW, frozenset({3})) == [1]
    assert [run.id for run in runs_of(conn)] == [2, 3]
    assert drop_expired(conn, NOW, frozenset()) == [3]
    assert stored(conn) == {key(2): NOW - 5, key(3): NOW + 5}
    # Their tables are left to drop one at a time; a start drops any a stop left.
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"ids_1", "ids_3"} <= tables
    open_runs(conn)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {t for t in tables if t.startswith("ids_")} == {"ids_2"}


def test_the_one_table_of_earlier_versions_becomes_a_run(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.db.dedup")
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE dedup (key BLOB PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"
        )
        old.executemany("INSERT INTO dedup VALUES (?, ?)", [(key(n), NOW + n) for n in range(5)])
        old.execute("CREATE TABLE ids_7 (key BLOB PRIMARY KEY, expires_at REAL) WITHOUT ROWID")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(DEDUP_SCHEMA)
    assert open_runs(conn) == 9  # ids_7, a merge's unfinished table, is dropped; 8 is taken
    (run,) = runs_of(conn)
    assert (run.id, run.ids, run.first_expiry, run.last_expiry) == (8, 5, NOW, NOW + 4)
    assert stored(conn) == {key(n): NOW + n for n in range(5)}
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "dedup" not in tables and "ids_7" not in tables
    assert open_runs(conn) == 9  # opening again changes nothing
    assert filter_of(conn, NOW + 2.5).count == 2


async def test_the_store_merges_runs_in_the_background_and_still_catches_every_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "FANOUT", 3)
    monkeypatch.setattr(runs, "MERGE_STEP_IDS", 7)
    store = SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=3600)
    await store.open()
    try:
        names = [f"m{i}" for i in range(90)]
        steps: list[int] = []
        real_step = runs.merge_step

        def counted(conn: sqlite3.Connection, merge: Merge, step: int) -> int:
            steps.append(step)
            return real_step(conn, merge, step)

        monkeypatch.setattr("relay.store.sqlite.store.merge_step", counted)
        for flush in range(9):
            batch = names[flush * 10 : flush * 10 + 10]
            assert await store.enqueue([event(n) for n in batch]) == ["queued"] * 10
            assert await store.flush_ids() == 10
        for _ in range(200):  # the merges run beside the test, a step at a time
            if len(await store._dedup.submit(runs_of)) == 1 and not store._merging:
                break
            await asyncio.sleep(0.01)
        on_disk = await store._dedup.submit(runs_of)
        assert [run.ids for run in on_disk] == [90]  # 9 runs, 3 merges of 3, then one of 3
        assert max(steps) >= 4  # merges of 30 ids and more took several steps
        assert await store.enqueue([event(n) for n in names[::7]]) == ["duplicate"] * 13
        assert await store.enqueue([event("new")]) == ["queued"]
    finally:
        await store.close()
    again = SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=3600)
    await again.open()  # the filter is built from the merged run
    try:
        assert again._filter.count == 91
        assert await again.enqueue([event("m42"), event("new")]) == ["duplicate", "duplicate"]
    finally:
        await again.close()
    with sqlite3.connect(str(tmp_path / "relay.db.dedup")) as conn:
        assert count_ids(conn) == 91


async def test_a_purge_during_a_merge_leaves_the_merged_runs_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runs, "FANOUT", 100)  # no merge while the runs are made
    store = SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=3600)
    await store.open()
    try:
        started, go_on = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        real_step = runs.merge_step

        def held(conn: sqlite3.Connection, merge: Merge, step: int) -> int:
            # In the dedup writer's thread: the test purges while the merge waits here.
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(go_on.wait(), loop).result(timeout=10)
            return real_step(conn, merge, step)

        monkeypatch.setattr("relay.store.sqlite.store.merge_step", held)
        for name in ("a", "b", "c"):  # one run each
            assert await store.enqueue([event(name)]) == ["queued"]
            await store.flush_ids()
        monkeypatch.setattr(runs, "FANOUT", 2)
        store._runs_changed.set()  # the two oldest runs are merged; the third is left
        await asyncio.wait_for(started.wait(), 10)
        later = time.time() + 7200  # every id has expired by then
        purge = asyncio.create_task(store.purge(later))
        await asyncio.sleep(0.05)
        go_on.set()
        await purge
        for _ in range(200):
            if not store._merging:
                break
            await asyncio.sleep(0.01)
        # The purge dropped the one run outside the merge; the merge ended as planned.
        (merged,) = await store._dedup.submit(runs_of)
        assert (merged.id, merged.ids) == (4, 2)
        assert "merging runs of dedup ids failed" not in caplog.text
        await store.purge(later)
        assert await store._dedup.submit(runs_of) == []
    finally:
        await store.close()


async def test_runs_found_at_start_are_merged_without_waiting_for_a_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "FANOUT", 2)
    with sqlite3.connect(str(tmp_path / "relay.db.dedup"), isolation_level=None) as conn:
        conn.executescript(DEDUP_SCHEMA)
        record(conn, 1, {key(1): time.time() + 60})
        record(conn, 2, {key(2): time.time() + 60})
    store = SqliteStore(str(tmp_path / "relay.db"), dedup_flush_interval=3600)
    await store.open()
    try:
        for _ in range(200):
            if len(await store._dedup.submit(runs_of)) == 1 and not store._merging:
                break
            await asyncio.sleep(0.01)
        (merged,) = await store._dedup.submit(runs_of)
        assert (merged.id, merged.ids) == (3, 2)
    finally:
        await store.close()
