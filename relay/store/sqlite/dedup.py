"""Dedup ids: their keys, the Bloom filter in front of the dedup database, and recording,
looking up and forgetting them.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

import rbloom

from relay.store.sqlite.rows import in_chunks, insert_rows, placeholders
from relay.store.sqlite.schema import FILTER_FALSE_POSITIVES, FILTER_MIN_IDS

# Ids recorded at least per step (see record_ids).
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
    # In key order over the whole flush, so that each page of the index is written once with
    # all of its new ids: slices sorted each on its own but spread over the whole key space
    # made SQLite's 2 MB cache spill a page and write it again for nearly every slice, as
    # the index outgrew the cache (250,000 ids took 2.95 s into an index of a million).
    # This runs beside the main writer, in the same process, so it holds the GIL in short
    # steps only: one sort of every id of a second (30 ms for 100,000) would stall the main
    # writer, and every request waiting on it, as long. So the ids go into buckets by their
    # first byte (a loop the interpreter interrupts) and each bucket is sorted on its own.
    buckets: list[list[tuple[bytes, float]]] = [[] for _ in range(256)]
    for item in ids.items():
        buckets[item[0][0]].append(item)
    rows: list[tuple[bytes, float]] = []
    for bucket in buckets:
        bucket.sort()
        rows += bucket
        if len(rows) >= _RECORD_SLICE or bucket is buckets[-1]:
            # 512 rows, 1,024 parameters: see _MAX_PARAMETERS.
            insert_rows(conn, "INSERT OR REPLACE INTO dedup VALUES ", "(?, ?)", rows, 512)
            rows = []
