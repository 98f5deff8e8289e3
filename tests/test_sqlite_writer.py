"""The group-commit writer: operations committed in groups, and operations run on their own
between two transactions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from relay.store.sqlite.writer import Writer


def writer_at(tmp_path: Path, *, inline: bool) -> Writer:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(tmp_path / "w.db"), isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        return conn

    return Writer("test", connect, lambda _conn: None, max_group=64, inline=inline)


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
