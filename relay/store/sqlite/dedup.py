"""Dedup ids: their keys, the Bloom filter in front of the dedup database, and recording,
looking up and forgetting them.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterable

import rbloom

from relay.store.sqlite.rows import in_chunks, insert_rows, placeholders
from relay.store.sqlite.schema import FILTER_FALSE_POSITIVES, FILTER_MIN_IDS

# Ids recorded per step (see record_ids).
_RECORD_SLICE = 4096


def dedup_key(kind: str, source: str, dedup_id: str) -> bytes:
    """16 bytes of BLAKE2b: a collision between two ids is as likely as guessing a UUID."""
    return hashlib.blake2b(
        f"{kind}\x1f{source}\x1f{dedup_id}".encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()


class IdFilter:
    """The dedup ids that the dedup database may hold; "no" is certain, "yes" is probably."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        # Asked directly (`key in f.bloom`) on the hot path: a method call costs more.
        self.bloom = rbloom.Bloom(capacity, FILTER_FALSE_POSITIVES)

    def add(self, keys: Iterable[bytes], count: int) -> None:
        self.bloom.update(keys)
        self.count += count

    @property
    def full(self) -> bool:
        return self.count > self.capacity


def filter_of(conn: sqlite3.Connection, now: float) -> IdFilter:
    """A filter of the ids in the dedup database that have not expired."""
    (live,) = conn.execute("SELECT count(*) FROM dedup WHERE expires_at > ?", (now,)).fetchone()
    found = IdFilter(max(FILTER_MIN_IDS, 2 * live))
    rows = conn.execute("SELECT key FROM dedup WHERE expires_at > ?", (now,))
    found.add((row[0] for row in rows), live)
    return found


def seen_ids(conn: sqlite3.Connection, keys: list[bytes], now: float) -> set[bytes]:
    """The keys recorded and not yet expired."""
    seen: set[bytes] = set()
    for chunk in in_chunks(keys):
        seen.update(
            row[0]
            for row in conn.execute(
                f"SELECT key FROM dedup WHERE key IN ({placeholders(len(chunk))})"
                " AND expires_at > ?",
                (*chunk, now),
            )
        )
    return seen


def purge_slices(conn: sqlite3.Connection, first: int, count: int, now: float) -> None:
    """Forget the expired ids whose first byte is in [first, first + count)."""
    low = bytes([first])
    if first + count >= 256:
        conn.execute("DELETE FROM dedup WHERE key >= ? AND expires_at <= ?", (low, now))
    else:
        high = bytes([first + count])
        conn.execute(
            "DELETE FROM dedup WHERE key >= ? AND key < ? AND expires_at <= ?", (low, high, now)
        )


def record_ids(conn: sqlite3.Connection, ids: dict[bytes, float]) -> None:
    # This runs beside the main writer, in the same process, so it holds the GIL in short
    # steps only: one C call over every id of a second (sorting 100,000 of them took some
    # 30 ms) stalled the main writer, and every request waiting on it, as long. Each slice is
    # sorted, so that the index pages it touches are visited in order.
    items = iter(ids.items())
    while chunk := sorted(itertools.islice(items, _RECORD_SLICE)):
        # 512 rows, 1,024 parameters: see _MAX_PARAMETERS.
        insert_rows(conn, "INSERT OR REPLACE INTO dedup VALUES ", "(?, ?)", chunk, 512)
