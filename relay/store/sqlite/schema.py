"""The SQLite store's tables, its lease query, and how its connections are opened: write-ahead
log, sync level, and the tuning that goes with them.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger("relay.store")

# One row per (message, destination). Names (destinations, sources, kinds) are stored as
# numbers from `names`, and states as numbers (STATES): 40 bytes less per delivery, in its
# row and in the queue's index.
#
# The messages of a request's deliveries are packed together, as blocks of up to
# rows.BLOCK_DELIVERIES (packing.Packer.pack_block) in `shared`: a block's id is the first
# of their ids, which follow one another, and each of them has an empty `message`. A
# delivery finds its message as its entry in the shared row with the greatest id not above
# its own (shared_of), and the row goes with the last delivery that needs it. Stores before
# blocks wrote there, for an event routed as it came to several destinations, one message
# that all its deliveries read (Packer.unpack_shared reads either).
SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS queue (
    id           INTEGER PRIMARY KEY,
    destination  INTEGER NOT NULL,         -- names.id
    ordering_key TEXT NOT NULL,
    state        INTEGER NOT NULL,         -- STATES: pending, leased, dead
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    created_at   REAL NOT NULL,
    source       INTEGER NOT NULL,         -- names.id
    kind         INTEGER NOT NULL,         -- names.id
    message      BLOB NOT NULL,            -- JSON as routed to this destination, packed
    last_error   TEXT,
    history      TEXT                      -- JSON [[time, error], ...]: the failed attempts
);
CREATE INDEX IF NOT EXISTS queue_by_state ON queue (destination, state, id);
-- Deliveries that are leased or waiting for a retry. Later deliveries of the same person
-- wait behind them. A small table instead of an index on every delivery's person keeps
-- random-key index writes off the ingestion path.
CREATE TABLE IF NOT EXISTS held (
    destination  INTEGER NOT NULL,
    ordering_key TEXT NOT NULL,
    delivery_id  INTEGER NOT NULL,
    PRIMARY KEY (destination, ordering_key, delivery_id)
) WITHOUT ROWID;
-- The message of each event that two or more deliveries share (see above): the first of
-- their ids, and how many ids the event's deliveries take from it.
CREATE TABLE IF NOT EXISTS shared (
    id         INTEGER PRIMARY KEY,
    deliveries INTEGER NOT NULL,
    message    BLOB NOT NULL
);
-- Small facts about the store itself; `probe` is written to find out whether writes work.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
-- The dictionaries messages are packed with (packing.py), by zstd's id of each, and the
-- first delivery id packed with each (NULL until it is used).
CREATE TABLE IF NOT EXISTS dictionaries (
    id       INTEGER PRIMARY KEY,
    data     BLOB NOT NULL,
    made_at  REAL NOT NULL,
    first_id INTEGER
);
CREATE TABLE IF NOT EXISTS rejected (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    received_at REAL NOT NULL,
    reason      TEXT NOT NULL,
    message     BLOB NOT NULL
);
"""

# A delivery's state, as stored.
PENDING, LEASED, DEAD = 0, 1, 2
STATES = {PENDING: "pending", LEASED: "leased", DEAD: "dead"}


def shared_of(row: str) -> str:
    """SQL for the id of the `shared` row that holds the message of the `queue` row named
    `row`, or NULL when that row holds its own."""
    return (
        f"CASE {row}.message WHEN x'' THEN"
        f" (SELECT id FROM shared WHERE id <= {row}.id ORDER BY id DESC LIMIT 1) END"
    )


# What deleting deliveries may leave unneeded: the shared rows that the deliveries with the
# ids in the JSON array ?1 read (one index step each), once no delivery they serve is
# left. (Over a range of ids instead, one old retry in a lease made it a scan.)
UNSHARED = """
DELETE FROM shared
WHERE id IN (
      SELECT (SELECT max(s.id) FROM shared AS s WHERE s.id <= gone.value) FROM json_each(?1) AS gone
  )
  AND NOT EXISTS (
      SELECT 1 FROM queue WHERE queue.id >= shared.id AND queue.id < shared.id + shared.deliveries
  )
"""

# A delivery may be leased when it is due and no earlier delivery of the same person is
# held (leased, or waiting for a retry): a retry holds back that person only.
LEASE = f"""
SELECT id, ordering_key, attempts, created_at, source, kind, message, {shared_of("d")}
FROM queue AS d
WHERE d.destination = :dest AND d.state = {PENDING} AND d.next_at <= :now
  AND NOT EXISTS (
      SELECT 1 FROM held AS h
      WHERE h.destination = :dest AND h.ordering_key = d.ordering_key AND h.delivery_id < d.id
  )
ORDER BY d.id
LIMIT :limit
"""

# Stores made before names and states were numbers kept their deliveries in `deliveries`
# (names and states as text) and their holds in `holds`: moved over when such a store opens.
OLD_TABLES_MOVED = f"""
INSERT OR IGNORE INTO names (name)
    SELECT destination FROM deliveries UNION SELECT source FROM deliveries
    UNION SELECT kind FROM deliveries;
INSERT INTO queue
    SELECT d.id, nd.id, d.ordering_key,
           CASE d.state WHEN 'pending' THEN {PENDING} WHEN 'leased' THEN {LEASED} ELSE {DEAD} END,
           d.attempts, d.next_at, d.created_at, ns.id, nk.id, d.message, d.last_error, d.history
    FROM deliveries AS d
    JOIN names AS nd ON nd.name = d.destination
    JOIN names AS ns ON ns.name = d.source
    JOIN names AS nk ON nk.name = d.kind;
DROP TABLE deliveries;
DROP TABLE IF EXISTS holds;
"""

# The dedup database lists its runs here; each run's ids are in a table `ids_<id>` (key, a
# digest of kind, source and dedup id; expires_at). See relay.store.sqlite.dedup.
DEDUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY,
    ids          INTEGER NOT NULL,
    first_expiry REAL NOT NULL,
    last_expiry  REAL NOT NULL
);
"""

# The filters in front of the dedup database (see dedup.IdFilter): each sized for at least
# this many ids, or twice the live ids for the one built from disk when the store opens.
FILTER_MIN_IDS = 1_000_000

# Of each filter, when it holds what it is sized for (11 bits for each id it is sized for):
# with the two filters of a steady stream, about 1 % of new ids are looked up on disk.
FILTER_FALSE_POSITIVES = 0.005

# How much nicer than the rest the second writer's thread is (see SqliteStore._open_dedup).
BACKGROUND_NICE = 10

# New events are refused while less than this is left on the disk (counting space inside
# the database that finished deliveries freed), so that what is queued can still be
# delivered: leasing and settling write too, and a checkpoint copies the log into the file.
DEFAULT_MIN_FREE_MB = 100.0

# The write-ahead log's file is cut back to this once a checkpoint lets it start over.
WAL_KEPT_BYTES = 16 * 1024 * 1024

WAL_FRAME_HEADER = 24

# Pages of log after which a commit checkpoints it: the background writer's fallback, and
# what it is close to full (see SqliteStore._set_tight).
AUTOCHECKPOINT = 20_000

TIGHT_AUTOCHECKPOINT = 64


# An UPDATE's assignment that adds a failed attempt (time, error: two parameters) to the
# delivery's history.
ADD_ATTEMPT = "history = json_insert(coalesce(history, '[]'), '$[#]', json_array(?, ?))"


def move_old_tables(conn: sqlite3.Connection) -> int:
    """Move the deliveries of a store made before names and states were numbers into the
    tables of today (in one transaction); how many there were."""
    old = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'deliveries'"
    ).fetchone()
    if old is None:
        return 0
    columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "history" not in columns:  # older still: failed attempts were not kept
            conn.execute("ALTER TABLE deliveries ADD COLUMN history TEXT")
        (count,) = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        for statement in OLD_TABLES_MOVED.split(";"):
            if statement.strip():
                conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return int(count)


def open_connection(
    path: str, synchronous: str, schema: str, cached_statements: int = 128
) -> sqlite3.Connection:
    """A connection in WAL mode with `schema` run on it. A statement kept prepared keeps what
    was last bound to it too (until it is bound again), and its program: `cached_statements`
    bounds both."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=cached_statements
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    # SQLite's own page cache (2 MB) and no memory-mapped reads: the queue's pages are
    # written once and read once, and the id filter spares most dedup lookups, so a larger
    # cache bought no ingest or delivery speed, only resident memory (a 128 MB cache and a
    # 1 GB map per connection: 271 MB in the store's process with a million queued, 96 MB
    # without them; scripts/bench_memory.py).
    conn.executescript(schema)
    return conn
