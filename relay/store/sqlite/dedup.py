"""Dedup ids: their keys, the Bloom filters in front of the dedup database, and that database,
where ids are kept in sorted runs, each written once and merged in the background.

Why runs. Ids are digests, so they fall at random places of an index. In one index of every
id, once it outgrew SQLite's page cache, each id cost a page read and a page write, more as
the index grew (10.6 µs an id with a million recorded, 16.5 with three million), and the
ids waiting meanwhile piled up in memory. A run is a table of the ids of one flush, which
SQLite sorts and writes in a single statement: about 1.3 µs an id, however many ids are
recorded already. Runs of a like size are merged, `FANOUT` at a time, in key order and in
steps of `MERGE_STEP_IDS` ids, so that recording goes on between the steps and a lookup has
few runs to look in. A run whose ids have all expired is dropped whole, and a run whose ids
have mostly expired is written again without them.

Every run is a row of `runs` and a table `ids_<run id>`. A table without its row is a merge's
target not yet finished, or a source whose table is still to be dropped; one left when the
process stopped is dropped when the store opens.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import rbloom

from relay.store.base import AlikeEvents, EventTuple
from relay.store.sqlite.rows import in_chunks
from relay.store.sqlite.schema import FILTER_FALSE_POSITIVES, FILTER_MIN_IDS

# Runs of up to SMALLEST_CLASS × FANOUT ids are of the first size class, up to FANOUT times
# that of the next, and so on; FANOUT runs of one class are merged into one.
FANOUT = 8
SMALLEST_CLASS = 4096

# Ids a merge writes per step, each step a transaction of its own (about 0.1 s); after each
# step, the merge waits MERGE_PAUSE times as long as the step took.
MERGE_STEP_IDS = 100_000
MERGE_PAUSE = 1.0

KEY_BYTES = 16

# A flush is handed to SQLite as one blob (id_records): per id, its key and then its expiry
# in ASCII, always this wide: seconds since 1970, up to the year 2286, with nine decimals,
# enough for any time since 2001 to read back as the very same float.
_EXPIRY_WIDTH = 20
_RECORD_WIDTH = KEY_BYTES + _EXPIRY_WIDTH
_LATEST_EXPIRY = 9_999_999_999.0

_RUN_COLUMNS = "(key BLOB PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID"

_RECORD = (
    "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n < ?1)"
    " INSERT OR REPLACE INTO {table} SELECT"
    f" substr(?2, n * {_RECORD_WIDTH} + 1, {KEY_BYTES}),"
    f" CAST(CAST(substr(?2, n * {_RECORD_WIDTH} + {KEY_BYTES + 1}, {_EXPIRY_WIDTH}) AS TEXT)"
    " AS REAL) FROM i ORDER BY 1, 2"
)

# A lookup asks for at most this many keys per statement, padded to a power of two (1, 2,
# 4 … 64), over every run at once; the connection that looks up keeps this many of those
# statements prepared. A statement's program grows with keys × runs (160 KB for 64 keys
# and 20 runs, 30 KB for 4 keys).
_LOOKUP_CHUNK = 64
LOOKUPS_PREPARED = 16

# Above every key: the upper bound of a merge's last step.
_PAST_EVERY_KEY = b"\xff" * (KEY_BYTES + 1)


def _hash_of_source(kind: str, source: str) -> hashlib.blake2b:
    """The hash of a key, started with what its kind and source add."""
    return hashlib.blake2b(
        f"{kind}\x1f{source}\x1f".encode("utf-8", "surrogatepass"), digest_size=KEY_BYTES
    )


def dedup_key(kind: str, source: str, dedup_id: str) -> bytes:
    """16 bytes of BLAKE2b: a collision between two ids is as likely as guessing a UUID."""
    key = _hash_of_source(kind, source)
    key.update(dedup_id.encode("utf-8", "surrogatepass"))
    return key.digest()


def dedup_keys(events: Sequence[EventTuple]) -> list[bytes | None]:
    """The dedup key of each event (None for an event without a dedup id), as dedup_key
    gives it. The hash started with what kind and source add is made once for the events
    that share them, and copied for each (about a quarter cheaper than a new hash each);
    it is looked up again only where the source or kind is another object than the event
    before's (a request's events share them: 0.33 µs an event instead of 0.39)."""
    if isinstance(events, AlikeEvents):
        return _alike_keys(events)
    keys: list[bytes | None] = []
    started: dict[tuple[str, str], hashlib.blake2b] = {}
    source = kind = ""
    prefix = None
    for e in events:
        dedup_id = e[6]
        if dedup_id is None:
            keys.append(None)
            continue
        if prefix is None or e[0] is not source or e[1] is not kind:
            source, kind = e[0], e[1]
            prefix = started.get((kind, source))
            if prefix is None:
                prefix = started[kind, source] = _hash_of_source(kind, source)
        key = prefix.copy()
        key.update(dedup_id.encode("utf-8", "surrogatepass"))
        keys.append(key.digest())
    return keys


def _alike_keys(events: AlikeEvents) -> list[bytes | None]:
    """dedup_keys of events that share their source and kind."""
    prefix = _hash_of_source(events.kind, events.source)
    keys: list[bytes | None] = []
    for dedup_id in events.dedup_ids:
        if dedup_id is None:
            keys.append(None)
        else:
            key = prefix.copy()
            key.update(dedup_id.encode("utf-8", "surrogatepass"))
            keys.append(key.digest())
    return keys


@dataclass
class _Generation:
    bloom: rbloom.Bloom
    capacity: int  # the ids it is sized for
    count: int = 0
    last_expiry: float = float("-inf")  # of the ids added to it


class IdFilter:
    """The dedup ids that the dedup database may hold; "no" is certain, "yes" is probably.

    A Bloom filter cannot forget an id, and one holding more ids than it is sized for says
    "yes" ever more often. So ids go into the newest of a few filters. Once it holds what it
    is sized for, the next ids committed start a new one, sized for the ids the filters kept
    hold (at least FILTER_MIN_IDS), and a filter whose ids have all expired is dropped whole.
    In a steady stream two are kept, the older one's ids expiring as the newer one fills.

    No filter is built again from the ids on disk while requests are served, as one used to
    be when it was full: that is a Python step for each live id, in the background writer's
    low-priority thread. With every core busy, it took 20 s for 2 million ids, and requests
    waited for the GIL it held meanwhile: their p99 tripled (scripts/bench_store.py with
    --filter-min-ids shows such a tail).
    """

    def __init__(self, capacity: int) -> None:
        self._generations: list[_Generation] = []
        # Asked directly (`key in bloom`, each in turn) on the hot path: a method call costs
        # more. Only ever replaced, never changed in place.
        self.blooms: tuple[rbloom.Bloom, ...] = ()
        self._start(capacity)

    def _start(self, capacity: int) -> _Generation:
        started = _Generation(rbloom.Bloom(capacity, FILTER_FALSE_POSITIVES), capacity)
        self._generations.append(started)
        self.blooms = tuple(g.bloom for g in self._generations)
        return started

    def add(self, keys: Iterable[bytes], count: int, last_expiry: float, now: float) -> None:
        """Add `count` ids, none expiring after `last_expiry`; filters whose ids have all
        expired by `now` are dropped first."""
        *older, newest = self._generations
        if any(g.last_expiry <= now for g in older):
            self._generations = [g for g in older if g.last_expiry > now] + [newest]
            self.blooms = tuple(g.bloom for g in self._generations)
        if newest.count >= newest.capacity:
            newest = self._start(max(FILTER_MIN_IDS, self.count))
        newest.bloom.update(keys)
        newest.count += count
        newest.last_expiry = max(newest.last_expiry, last_expiry)

    @property
    def count(self) -> int:
        """Ids added to the filters kept, some of them expired maybe."""
        return sum(g.count for g in self._generations)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """The ids each filter kept holds and is sized for, oldest first."""
        return [(g.count, g.capacity) for g in self._generations]


@dataclass(frozen=True)
class Run:
    id: int
    ids: int
    # No id of the run expires before `first_expiry` (or has expired by then, for a run
    # written again without its expired ids), none after `last_expiry`.
    first_expiry: float
    last_expiry: float

    @property
    def table(self) -> str:
        return run_table(self.id)


def run_table(run_id: int) -> str:
    return f"ids_{run_id}"


def runs_of(conn: sqlite3.Connection) -> list[Run]:
    """Every run, oldest first."""
    return [Run(*row) for row in conn.execute("SELECT * FROM runs ORDER BY id")]


def open_runs(conn: sqlite3.Connection) -> int:
    """Drop what an unfinished merge left, adopt the one table of ids of earlier versions as a
    run, and return the id the next run takes."""
    registered = {run.id for run in runs_of(conn)}
    tables = [
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    numbered = {int(name[4:]) for name in tables if name.startswith("ids_") and name[4:].isdigit()}
    conn.execute("BEGIN IMMEDIATE")
    for orphan in numbered - registered:
        conn.execute(f"DROP TABLE {run_table(orphan)}")
    next_id = max(numbered | registered | {0}) + 1
    if "dedup" in tables:
        conn.execute("DROP INDEX IF EXISTS dedup_expiry")
        count, first, last = conn.execute(
            "SELECT count(*), min(expires_at), max(expires_at) FROM dedup"
        ).fetchone()
        if count:
            conn.execute(f"ALTER TABLE dedup RENAME TO {run_table(next_id)}")
            conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (next_id, count, first, last))
            next_id += 1
        else:
            conn.execute("DROP TABLE dedup")
    conn.execute("COMMIT")
    return next_id


def id_records(ids: Iterable[tuple[bytes, float]]) -> bytes:
    """Dedup ids, as (key of KEY_BYTES, expiry time), laid end to end as `record_run` takes
    them.

    Built where ids are committed, a request's at a time, and not by the writer that records
    them: that writer's thread runs at a lower priority, and Python code there holds the GIL
    while the system may leave the thread waiting for a core, so the main writer waited for
    it (see SqliteStore._open_dedup). The ids of one request share their expiry, so the work
    here is a join per request, not a Python step per id.
    """
    parts: list[bytes] = []
    for expires, same in itertools.groupby(ids, operator.itemgetter(1)):
        text = b"%020.9f" % min(max(expires, 0.0), _LATEST_EXPIRY)
        parts += (text.join(map(operator.itemgetter(0), same)), text)
    return b"".join(parts)


def record_run(conn: sqlite3.Connection, run_id: int, records: bytes) -> None:
    """Record the ids of `records` (see id_records) as the run `run_id`; of an id recorded
    twice, the later expiry is kept. SQLite sorts and writes them without the GIL."""
    if not records:
        return
    table = run_table(run_id)
    conn.execute(f"CREATE TABLE {table} {_RUN_COLUMNS}")
    conn.execute(_RECORD.format(table=table), (len(records) // _RECORD_WIDTH - 1, records))
    conn.execute(
        f"INSERT INTO runs SELECT ?, count(*), min(expires_at), max(expires_at) FROM {table}",
        (run_id,),
    )


def count_ids(conn: sqlite3.Connection) -> int:
    """Ids recorded, expired ones included, counted row by row."""
    return sum(
        conn.execute(f"SELECT count(*) FROM {run.table}").fetchone()[0] for run in runs_of(conn)
    )


def filter_of(conn: sqlite3.Connection, now: float) -> IdFilter:
    """A filter of the ids in the dedup database that have not expired."""
    runs = runs_of(conn)
    live = sum(
        conn.execute(f"SELECT count(*) FROM {run.table} WHERE expires_at > ?", (now,)).fetchone()[0]
        for run in runs
    )
    found = IdFilter(max(FILTER_MIN_IDS, 2 * live))
    keys = (
        conn.execute(f"SELECT key FROM {run.table} WHERE expires_at > ?", (now,)) for run in runs
    )
    last_expiry = max((run.last_expiry for run in runs), default=now)
    found.add((row[0] for row in itertools.chain.from_iterable(keys)), live, last_expiry, now)
    return found


def seen_ids(conn: sqlite3.Connection, keys: list[bytes], now: float) -> set[bytes]:
    """The keys recorded and not yet expired, looked up in every run with one statement."""
    seen: set[bytes] = set()
    # One read transaction: a merge that ends meanwhile drops runs the statement names.
    conn.execute("BEGIN")
    try:
        tables = [run_table(run_id) for (run_id,) in conn.execute("SELECT id FROM runs")]
        if not tables:
            return seen
        for chunk in in_chunks(keys, _LOOKUP_CHUNK):
            # Padded with a key no run holds, so that a few statements serve every count.
            size = 1 << (len(chunk) - 1).bit_length()
            marks = ",".join(f"?{i}" for i in range(1, size + 1))
            where = f"WHERE key IN ({marks}) AND expires_at > ?{size + 1}"
            statement = " UNION ALL ".join(f"SELECT key FROM {t} {where}" for t in tables)
            padding = (b"",) * (size - len(chunk))
            seen.update(row[0] for row in conn.execute(statement, (*chunk, *padding, now)))
        return seen
    finally:
        conn.execute("COMMIT")


def drop_expired(conn: sqlite3.Connection, now: float, busy: frozenset[int]) -> list[int]:
    """Take every run whose ids have all expired, except those in `busy` (being merged), off
    the list of runs, and return their ids: their tables are for drop_table, one at a time,
    as a merge's sources are."""
    expired = [run.id for run in runs_of(conn) if run.last_expiry <= now and run.id not in busy]
    conn.executemany("DELETE FROM runs WHERE id = ?", [(run_id,) for run_id in expired])
    return expired


def size_class(ids: int) -> int:
    size, limit = 0, SMALLEST_CLASS * FANOUT
    while ids >= limit:
        size, limit = size + 1, limit * FANOUT
    return size


def plan_merge(runs: list[Run], now: float) -> list[Run]:
    """The runs to merge next, oldest first: FANOUT runs of the smallest size class that has
    as many; else one run (not among the smallest) whose ids have mostly expired, going by its
    first and last expiry, to write again without them; else none."""
    by_class: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_class[size_class(run.ids)].append(run)
    for size in sorted(by_class):
        if len(by_class[size]) >= FANOUT:
            return sorted(by_class[size], key=lambda run: run.id)[:FANOUT]
    for run in runs:
        span = run.last_expiry - run.first_expiry
        if run.ids >= SMALLEST_CLASS and now > run.first_expiry + span / 2:
            return [run]
    return []


@dataclass(frozen=True)
class Merge:
    """Runs being merged into a new run, `steps` transactions long."""

    target: int
    sources: tuple[Run, ...]
    now: float

    @property
    def steps(self) -> int:
        return max(1, -(-sum(run.ids for run in self.sources) // MERGE_STEP_IDS))

    def bounds(self, step: int) -> tuple[bytes, bytes]:
        """The keys that step `step` writes: from the first bound, up to the second."""

        def bound(i: int) -> bytes:
            if i == 0:
                return b""
            if i == self.steps:
                return _PAST_EVERY_KEY
            return (i * 65536 // self.steps).to_bytes(2, "big")

        return bound(step), bound(step + 1)


def merge_step(conn: sqlite3.Connection, merge: Merge, step: int) -> int:
    """Write step `step` of `merge`; return how many ids it wrote. Running a step again (its
    transaction rolled back) writes the same ids."""
    target = run_table(merge.target)
    if step == 0:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {target} {_RUN_COLUMNS}")
    # Each source is read in key order through its primary key, and SQLite merges them;
    # where two runs hold one key, the later expiry is written last and kept.
    arms = " UNION ALL ".join(
        f"SELECT key, expires_at FROM {run.table} WHERE key >= ?1 AND key < ?2 AND expires_at > ?3"
        for run in merge.sources
    )
    low, high = merge.bounds(step)
    conn.execute(f"INSERT OR REPLACE INTO {target} {arms} ORDER BY 1, 2", (low, high, merge.now))
    # Counted, not taken from the statement's changes: a replaced key counts there twice.
    (written,) = conn.execute(
        f"SELECT count(*) FROM {target} WHERE key >= ? AND key < ?", (low, high)
    ).fetchone()
    return int(written)


def finish_merge(conn: sqlite3.Connection, merge: Merge, written: int) -> None:
    """Put the merged run in place of its sources, in one transaction. Their tables are
    left for drop_table, one at a time: dropping them all in this transaction (a third of
    a second for 2.4 million ids) delayed commits by as long."""
    for run in merge.sources:
        conn.execute("DELETE FROM runs WHERE id = ?", (run.id,))
    if written:
        first = max(min(run.first_expiry for run in merge.sources), merge.now)
        last = max(run.last_expiry for run in merge.sources)
        conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?)", (merge.target, written, first, last))
    else:
        drop_table(conn, merge.target)


def abandon_merge(conn: sqlite3.Connection, merge: Merge) -> None:
    drop_table(conn, merge.target)


def drop_table(conn: sqlite3.Connection, run_id: int) -> None:
    """Drop the table of a run no longer listed (a merge's source, or an abandoned target)."""
    conn.execute(f"DROP TABLE IF EXISTS {run_table(run_id)}")
