"""The embedded durable store: SQLite in WAL mode, one writer thread doing group commits.

Every operation is a function run on the one connection, in the one writer thread. The
writer takes all the operations that are waiting, runs them in one transaction and commits
them together with a single `synchronous=FULL` sync; when one of them fails, the group runs
again with each operation in its own savepoint, so one failing request cannot undo another's
work. Concurrent requests therefore share the cost of a sync instead of
paying one each, and a request is answered only after the commit that holds it returned.

Dedup ids are checked by the same operation that stores the deliveries, so two requests
carrying one id cannot both get through. Ids are digests inserted at random places in an
index, the costliest write of ingestion, so they are not written with each commit: an id
accepted in a commit is kept in memory, and a second writer moves the ids to their own
database file (`<path>.dedup`) about once a second, as a sorted run that later merges with
others (relay.store.sqlite.dedup). A crash can lose the last second of ids, which can only
let a repeat through (at least once), never lose an event.

Bloom filters of the ids in the dedup database stand in front of it: an id no filter has
seen is new without a lookup, so only about one new id in a hundred is looked up at all (a
lookup at a random place of a large index is the costliest read of ingestion). One filter
is built from the database when the store opens; when the newest holds as many ids as it
was sized for, a new one is started beside it, and one whose ids have all expired is
dropped (dedup.IdFilter).

The same second writer also checkpoints the main database's write-ahead log, so that copying
it into the database file does not hold up the commits that requests wait for.
"""

from __future__ import annotations

from relay.store.sqlite.dedup import dedup_key
from relay.store.sqlite.rows import LeasedRow, leased_deliveries
from relay.store.sqlite.schema import DEFAULT_MIN_FREE_MB
from relay.store.sqlite.store import SqliteStore

__all__ = ["DEFAULT_MIN_FREE_MB", "LeasedRow", "SqliteStore", "dedup_key", "leased_deliveries"]
