"""The group-commit writer: operations committed in groups, and operations run on their own
between two transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from relay.errors import StoreUnavailable
from relay.store.sqlite.writer import Writer


def writer_at(tmp_path: Path, *, inline: bool, **hooks: Any) -> Writer:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(tmp_path / "w.db"), isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        return conn

    return Writer("test", connect, max_group=64, inline=inline, **hooks)


@pytest.mark.parametrize("inline", [True, False])
async def test_an_operation_between_transactions_runs_alone_in_its_turn(
    tmp_path: Path, inline: bool
) -> None:
    writer = writer_at(tmp_path, inline=inline)
    await writer.open()
    seen: list[tuple[str, int, bool]] = []

    def insert(n: int):  # type: ignore[no-untyped-def]
        def op(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?)", (n,))
            seen.append(("insert", n, conn.in_transaction))
            return n

        return op

    def count(conn: sqlite3.Connection) -> int:
        # Outside any transaction, so that what it sees is what was committed.
        (rows,) = conn.execute("SELECT count(*) FROM t").fetchone()
        seen.append(("count", rows, conn.in_transaction))
        return int(rows)

    def failing(_conn: sqlite3.Connection) -> None:
        raise ValueError("its own failure")

    try:
        # Queued all at once, so that the writer takes several from its queue at a time.
        futures = [writer.submit(insert(n)) for n in range(3)]
        counted = writer.submit(count, between=True)
        failed = writer.submit(failing, between=True)
        futures += [writer.submit(insert(n)) for n in range(3, 5)]
        assert await asyncio.gather(*futures) == [0, 1, 2, 3, 4]
        assert await counted == 3  # the three before it, committed; none after it
        with pytest.raises(ValueError, match="its own failure"):
            await failed
        assert seen == [
            *[("insert", n, True) for n in range(3)],
            ("count", 3, False),
            *[("insert", n, True) for n in range(3, 5)],
        ]
        assert await writer.submit(count, between=True) == 5
    finally:
        await writer.close()


@pytest.mark.parametrize("inline", [True, False])
async def test_what_is_kept_in_memory_follows_the_transactions_and_savepoints(
    tmp_path: Path, inline: bool
) -> None:
    """A counter of the rows inserted, kept beside the database: an operation that fails has
    its part taken back with its savepoint, and a transaction that SQLite abandons (a full
    disk does that) has everything taken back before its operations run again."""
    rows = [0]

    def save() -> int:
        return rows[0]

    def restore(saved: int) -> None:
        rows[0] = saved

    writer = writer_at(tmp_path, inline=inline, save=save, restore=restore)
    await writer.open()

    def insert(n: int):  # type: ignore[no-untyped-def]
        def op(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t VALUES (?)", (n,))
            rows[0] += 1
            return n

        return op

    def refused(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (-1)")
        rows[0] += 1
        raise ValueError("refused after its insert")

    def abandoned(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (-2)")
        rows[0] += 1
        conn.execute("ROLLBACK")  # as SQLite does on some errors: the whole transaction
        raise sqlite3.OperationalError("database or disk is full")

    try:
        # Queued all at once: one group, tried whole, then an operation at a time.
        futures = [
            writer.submit(insert(0)),
            writer.submit(refused),
            writer.submit(insert(1)),
            writer.submit(abandoned),
            writer.submit(insert(2)),
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert [results[0], results[2], results[4]] == [0, 1, 2]
        assert isinstance(results[1], ValueError)
        assert isinstance(results[3], StoreUnavailable)
        count = await writer.submit(
            lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0], between=True
        )
        assert rows[0] == count == 3
    finally:
        await writer.close()
