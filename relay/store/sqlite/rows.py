"""Rows in and out of the SQLite store: multi-row INSERTs whose statements stay prepared, and
the reads of dead letters and counts.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from relay.codec import decode
from relay.store.base import (
    AlikeEvents,
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EventTuple,
    deliveries_to_add,
)
from relay.store.sqlite.packing import Packer
from relay.store.sqlite.schema import DEAD, PENDING, STATES, shared_of

T = TypeVar("T")

# id, ordering key, attempts, created at, source, kind, message JSON
LeasedRow = tuple[int, str, int, float, str, str, bytes]


# Blocks kept unpacked by read_messages, the most recently read: a lease of a few deliveries
# of a large block reads the rest of it at the next lease.
UNPACKED_BLOCKS = 8


def read_messages(
    conn: sqlite3.Connection,
    stored: Sequence[tuple[int, bytes, int | None]],
    packer: Packer,
    unpacked: dict[int, list[bytes]],
) -> list[bytes]:
    """The message of each delivery, from its id, its row's `message` and the id of the
    `shared` row it reads (shared_of): each shared row read and unpacked once, and kept in
    `unpacked` (by id) for the next reads. A shared row never changes, and its id is never
    used again while the store is open: keep `unpacked` no longer than that, and empty it
    when a transaction is rolled back."""
    blocks: dict[int, list[bytes]] = {}
    missing: set[int] = set()
    for _, _, shared in stored:
        if shared is not None and shared not in blocks:
            block = unpacked.get(shared)
            if block is None:
                missing.add(shared)
            else:
                blocks[shared] = block
    for chunk in in_chunks(sorted(missing)):
        for shared, deliveries, data in conn.execute(
            f"SELECT id, deliveries, message FROM shared WHERE id IN ({placeholders(len(chunk))})",
            chunk,
        ):
            blocks[shared] = packer.unpack_shared(data, deliveries)
    for shared, block in blocks.items():  # the most recent last
        unpacked.pop(shared, None)
        unpacked[shared] = block
    while len(unpacked) > UNPACKED_BLOCKS:
        del unpacked[next(iter(unpacked))]
    unpack = packer.unpack
    return [
        unpack(message) if shared is None else blocks[shared][did - shared]
        for did, message, shared in stored
    ]


def leased_deliveries(destination: str, rows: Sequence[LeasedRow]) -> list[Delivery]:
    """A lease's rows as the deliveries handed to `destination`'s worker."""
    return [
        Delivery(did, destination, okey, attempts, created_at, source, kind, message)
        for did, okey, attempts, created_at, source, kind, message in rows
    ]


_CHUNK = 500  # stays well under SQLite's bound-parameter limit


def in_chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def placeholders(n: int) -> str:
    return ",".join("?" * n)


def _conditions(
    which: DeadLetterFilter, reason_column: str, time_column: str
) -> tuple[list[str], list[Any]]:
    """The WHERE conditions of `which` other than ids (see DeadLetterFilter.matches)."""
    where: list[str] = []
    args: list[Any] = []
    if which.reason is not None:
        where.append(f"instr(lower({reason_column}), ?) > 0")
        args.append(which.reason.lower())
    if which.since is not None:
        where.append(f"{time_column} >= ?")
        args.append(which.since)
    if which.until is not None:
        where.append(f"{time_column} < ?")
        args.append(which.until)
    return where, args


def _ids_and_limit(
    where: list[str], args: list[Any], ids: tuple[int, ...] | None, limit: int | None
) -> tuple[str, tuple[Any, ...]]:
    if ids is not None:
        where.append(f"id IN ({placeholders(len(ids))})" if ids else "0")
        args.extend(ids)
    text = " AND ".join(where) or "1"
    if limit is not None:
        text += " ORDER BY id LIMIT ?"
        args.append(limit)
    return text, tuple(args)


def dead_where(which: DeadLetterFilter, limit: int | None = None) -> tuple[str, tuple[Any, ...]]:
    """SQL over `queue` for the dead deliveries `which`
    takes, up to `limit` (which.limit when not given). Ids are bound one by one: operators
    name a few."""
    where, args = _conditions(which, "last_error", "next_at")
    where.insert(0, f"state = {DEAD}")
    if which.destination is not None:
        where.append("destination = (SELECT id FROM names WHERE name = ?)")
        args.append(which.destination)
    ids = which.ids if which.by_id else None
    if which.by_id and ids is None:
        ids = ()
    return _ids_and_limit(where, args, ids, which.limit if limit is None else limit)


def rejected_where(
    which: DeadLetterFilter, limit: int | None = None
) -> tuple[str, tuple[Any, ...]]:
    """SQL over `rejected` for the rejected messages `which` takes (when it takes any:
    see DeadLetterFilter.takes_rejected)."""
    where, args = _conditions(which, "reason", "received_at")
    ids = which.rejected_ids if which.by_id else None
    if which.by_id and ids is None:
        ids = ()
    return _ids_and_limit(where, args, ids, which.limit if limit is None else limit)


def dead_letter_rows(
    conn: sqlite3.Connection,
    which: DeadLetterFilter,
    packer: Packer,
    unpacked: dict[int, list[bytes]],
) -> list[DeadLetter]:
    where, args = dead_where(which)
    found = conn.execute(
        f"SELECT id, {_name_of('destination')}, {_name_of('source')}, {_name_of('kind')},"
        f" last_error, attempts, created_at, next_at, history, message, {shared_of('queue')}"
        f" FROM queue WHERE {where}",
        args,
    ).fetchall()
    messages = iter(
        read_messages(conn, [(row[0], row[9], row[10]) for row in found], packer, unpacked)
    )
    out = [
        DeadLetter(
            did,
            dest,
            source,
            kind,
            reason,
            attempts,
            created_at,
            decode(next(messages)),
            dead_at,
            tuple((at, error) for at, error in decode(history or b"[]")),
        )
        for did, dest, source, kind, reason, attempts, created_at, dead_at, history, _, _ in found
    ]
    left = None if which.limit is None else which.limit - len(out)
    if which.takes_rejected() and (left is None or left > 0):
        where, args = rejected_where(which, left)
        out.extend(
            DeadLetter(
                rid, None, source, kind, reason, 0, received_at, decode(message), received_at
            )
            for rid, source, kind, reason, received_at, message in conn.execute(
                "SELECT id, source, kind, reason, received_at, message FROM rejected"
                f" WHERE {where}",
                args,
            )
        )
    return out


def _name_of(column: str) -> str:
    """SQL for the name a `queue` column holds the number of."""
    return f"(SELECT name FROM names WHERE names.id = queue.{column})"


def oldest_queued(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(
        conn.execute(
            f"SELECT {_name_of('destination')}, min(created_at) FROM queue"
            f" WHERE state != {DEAD} GROUP BY destination"
        )
    )


def count_deliveries(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for dest, state, n in conn.execute(
        f"SELECT {_name_of('destination')}, state, count(*) FROM queue GROUP BY destination, state"
    ):
        out.setdefault(dest, {})[STATES[state]] = n
    return out


# Multi-row INSERTs: SQLite does the row work inside one step, which runs without the GIL
# (the event loop of relay's process, or of the store's, goes on meanwhile). Statements
# hold a fixed number of rows (64, then 32, 16 ... 1 for the rest), so that the few
# different texts stay prepared in the connection's cache: preparing a statement of 100
# rows costs more than running it.
_ROWS_PER_STATEMENT = 64

# Bound parameters in one statement, at most: well under SQLite's limit (32,766 since
# SQLite 3.32; builds of Python 3.11 and later are linked with newer ones).
_MAX_PARAMETERS = 2000

# Deliveries whose messages are packed as one block (packing.py), at most: a request of up
# to 500 KB (the Tracking API's limit) is one block or a few.
BLOCK_DELIVERIES = 512

_INSERT_DELIVERIES = (
    "INSERT INTO queue (id, destination, ordering_key, next_at, created_at, source, kind,"
    " message, state) VALUES "
)


def _fixed_chunks(items: Sequence[T], largest: int = _ROWS_PER_STATEMENT) -> Iterable[Sequence[T]]:
    """`items` in chunks of `largest` (a power of two), the rest in chunks of half as many,
    a quarter as many ... and 1."""
    start, size = 0, largest
    while start < len(items):
        while start + size > len(items):
            size //= 2
        yield items[start : start + size]
        start += size


@functools.cache
def _alike_insert(events: int, destinations: int) -> str:
    """An INSERT of `events` events routed alike: ?1 source, ?2 kind, ?3 received at,
    ?4... the destinations, then id, ordering key and message for each row."""
    rows = []
    first = 4 + destinations
    for row in range(events * destinations):
        n = first + 3 * row
        dest = 4 + row % destinations
        rows.append(f"(?{n}, ?{dest}, ?{n + 1}, ?3, ?3, ?1, ?2, ?{n + 2}, {PENDING})")
    return _INSERT_DELIVERIES + ",".join(rows)


@functools.cache
def _rows_insert(head: str, row: str, rows: int) -> str:
    return head + ",".join([row] * rows)


def insert_deliveries(
    conn: sqlite3.Connection,
    parts: Sequence[Sequence[EventTuple]],
    next_id: int,
    packer: Packer,
    codes: Mapping[str, int],
) -> tuple[int, bool]:
    """Insert a delivery row for each destination of each event of `parts` (lists of events,
    or AlikeEvents), with its names as their numbers in `codes`; returns the next id, and
    whether a block was written.

    The messages of the call's deliveries are packed together, as blocks of up to
    BLOCK_DELIVERIES in `shared` (see schema.py); an event routed as it came to several
    destinations is in its block once. The one delivery of a call of one keeps its message,
    packed, in its row."""
    total = sum(map(deliveries_to_add, parts))
    if total <= 1:  # one delivery, or none (events routed nowhere)
        entries: list[bytes] = []
        lone = _rows_of(itertools.chain.from_iterable(parts), next_id, codes, entries)
        own = [(*row[:-1], packer.pack(entry)) for row, entry in zip(lone, entries, strict=True)]
        insert_rows(conn, _INSERT_DELIVERIES, _DELIVERY_ROW, own)
        return next_id + len(own), False
    first = next_id
    entries = []  # the message of each delivery, in the order of their ids
    rows: list[tuple[Any, ...]] = []  # the deliveries of events not routed alike
    repeats = False  # else each entry is an event's own message
    for alike in _alike_runs(parts):
        if isinstance(alike, AlikeEvents):
            next_id = _insert_alike(conn, alike, next_id, entries, codes)
            repeats = repeats or len(alike.deliveries) > 1
            continue
        added = _rows_of(alike, next_id, codes, entries)
        rows += added
        next_id += len(added)
        repeats = True
    insert_rows(conn, _INSERT_DELIVERIES, _DELIVERY_ROW, rows)
    insert_rows(
        conn,
        "INSERT INTO shared (id, deliveries, message) VALUES ",
        "(?, ?, ?)",
        [
            (first + at, len(part), packer.pack_block(part, repeats))
            for at in range(0, len(entries), BLOCK_DELIVERIES)
            for part in (entries[at : at + BLOCK_DELIVERIES],)
        ],
    )
    return next_id, True


_DELIVERY_ROW = f"(?, ?, ?, ?, ?, ?, ?, ?, {PENDING})"


def _rows_of(
    events: Iterable[EventTuple], first_id: int, codes: Mapping[str, int], entries: list[bytes]
) -> list[tuple[Any, ...]]:
    """A row of _DELIVERY_ROW for each delivery of `events`, with ids from `first_id` and
    no message (b""); each delivery's message is added to `entries`."""
    rows: list[tuple[Any, ...]] = []
    for e in events:
        for destination, message in e[5]:
            entries.append(e[2] if message is None else message)
            did = first_id + len(rows)
            rows.append((did, codes[destination], e[4], e[3], e[3], codes[e[0]], codes[e[1]], b""))
    return rows


def _alike_runs(
    parts: Sequence[Sequence[EventTuple]],
) -> Iterator[AlikeEvents | Sequence[EventTuple]]:
    """The events of `parts`, in order: each AlikeEvents as it is; the events of the lists
    between them as AlikeEvents too, a run for each time they were received at, where all
    of them are from one source and routed alike (the single events of `/v1/track` and the
    like usually are, a request each), else as they are."""
    events: list[EventTuple] = []
    for part in parts:
        if isinstance(part, AlikeEvents):
            yield from _alike_if_so(events)
            events = []
            yield part
        else:
            events += part
    yield from _alike_if_so(events)


def _alike_if_so(events: list[EventTuple]) -> Iterator[AlikeEvents | Sequence[EventTuple]]:
    if not events:
        return
    source, kind, _, _, _, deliveries, _, _, _ = events[0]
    if not all(e[5] is deliveries and e[0] == source and e[1] == kind for e in events):
        yield events
        return
    for at, run in itertools.groupby(events, operator.itemgetter(3)):
        alike = list(run)
        yield AlikeEvents(
            source,
            kind,
            at,
            deliveries,
            alike[0][7],
            [e[2] for e in alike],
            [e[4] for e in alike],
            [e[6] for e in alike],
        )


def _insert_alike(
    conn: sqlite3.Connection,
    alike: AlikeEvents,
    next_id: int,
    entries: list[bytes],
    codes: Mapping[str, int],
) -> int:
    """Insert the deliveries of `alike`, their messages added to `entries`; returns the next
    id. What the rows share is bound once a statement, not once a row."""
    if not alike.deliveries:  # routed nowhere
        return next_id
    destinations = [codes[d] for d, _ in alike.deliveries]
    routed = [r for _, r in alike.deliveries]
    largest = _ROWS_PER_STATEMENT
    while largest > 1 and 3 + len(destinations) * (1 + 3 * largest) > _MAX_PARAMETERS:
        largest //= 2
    shared: list[Any] = [codes[alike.source], codes[alike.kind], alike.received_at, *destinations]
    for chunk in _fixed_chunks(range(len(alike)), largest):
        messages = alike.messages[chunk[0] : chunk[0] + len(chunk)]
        keys = alike.ordering_keys[chunk[0] : chunk[0] + len(chunk)]
        values = shared.copy()
        if routed == [None]:
            entries += messages
            start, next_id = next_id, next_id + len(messages)
            values += itertools.chain.from_iterable(
                zip(range(start, next_id), keys, itertools.repeat(b""))
            )
        else:
            for message, key in zip(messages, keys, strict=True):
                for own in routed:
                    entries.append(message if own is None else own)
                    values += (next_id, key, b"")
                    next_id += 1
        conn.execute(_alike_insert(len(messages), len(destinations)), values)
    return next_id


def insert_rows(
    conn: sqlite3.Connection,
    head: str,
    row: str,
    rows: Sequence[tuple[Any, ...]],
    largest: int = _ROWS_PER_STATEMENT,
) -> None:
    """`rows` in multi-row INSERTs of `largest` rows, then fewer (see _fixed_chunks)."""
    for chunk in _fixed_chunks(rows, largest):
        values = list(itertools.chain.from_iterable(chunk))
        conn.execute(_rows_insert(head, row, len(chunk)), values)
