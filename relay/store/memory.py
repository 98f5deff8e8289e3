"""A `Store` in memory: the same queue, holds, dedup windows and dead letters as the SQLite
store, kept in dicts. Nothing survives the process: it serves `relay routes test` and tests,
and is the smallest statement of what a backend must do (the contract suite holds every
backend to it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.codec import decode
from relay.errors import StoreUnavailable
from relay.store.base import (
    EVERY_DEAD_LETTER,
    Attempt,
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EnqueueOutcome,
    EventTuple,
    NewEvent,
    Settlement,
    check_queue_room,
    deliveries_to_add,
)


@dataclass(slots=True)
class _Row:
    destination: str
    ordering_key: str
    state: str  # pending | leased | dead
    attempts: int
    next_at: float
    created_at: float
    source: str
    kind: str
    message: bytes
    last_error: str | None = None
    history: tuple[Attempt, ...] = ()


@dataclass(slots=True, frozen=True)
class _Rejected:
    source: str
    kind: str
    received_at: float
    reason: str
    message: bytes


class MemoryStore:
    def __init__(self, *, max_pending: int = 5_000_000) -> None:
        self.max_pending = max_pending
        self._rows: dict[int, _Row] = {}
        # Per (destination, person): the deliveries leased or waiting for a retry; a later
        # delivery of that person waits behind the lowest of them.
        self._holds: dict[tuple[str, str], set[int]] = {}
        self._ids: dict[tuple[str, str, str], float] = {}  # (kind, source, id) → expiry
        self._rejected: dict[int, _Rejected] = {}
        self._next_rejected_id = 1
        self._next_id = 1
        self._pending = 0  # deliveries not dead
        self._open = False

    async def open(self) -> None:
        self._open = True
        # As after a restart: what was leased goes back to the queue; retries keep holding.
        for did, row in self._rows.items():
            if row.state == "leased":
                row.state = "pending"
                self._unhold(did, row)

    async def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise StoreUnavailable("the event store is not open; retry in a few seconds")

    async def enqueue(self, events: Sequence[EventTuple]) -> list[EnqueueOutcome]:
        self._check_open()
        new = deliveries_to_add(events)
        check_queue_room(self._pending, new, self.max_pending)
        outcomes: list[EnqueueOutcome] = []
        now = time.time()  # dedup windows are wall-clock, as in every backend
        for e in map(NewEvent._make, events):
            if e.dedup_id is not None:
                key = (e.kind, e.source, e.dedup_id)
                expires = self._ids.get(key)
                if expires is not None and expires > now:
                    outcomes.append("duplicate")
                    continue
                self._ids[key] = e.dedup_until
            if e.rejected_reason:
                self._rejected[self._next_rejected_id] = _Rejected(
                    e.source, e.kind, e.received_at, e.rejected_reason, e.message_json
                )
                self._next_rejected_id += 1
                outcomes.append("rejected")
                continue
            for destination, routed in e.deliveries:
                self._rows[self._next_id] = _Row(
                    destination,
                    e.ordering_key,
                    "pending",
                    0,
                    e.received_at,
                    e.received_at,
                    e.source,
                    e.kind,
                    e.message_json if routed is None else routed,
                )
                self._next_id += 1
                self._pending += 1
            outcomes.append("queued")
        return outcomes

    def _held_before(self, did: int, row: _Row) -> bool:
        held = self._holds.get((row.destination, row.ordering_key))
        return held is not None and min(held) < did

    def _unhold(self, did: int, row: _Row) -> None:
        key = (row.destination, row.ordering_key)
        held = self._holds.get(key)
        if held is not None:
            held.discard(did)
            if not held:
                del self._holds[key]

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        self._check_open()
        out: list[Delivery] = []
        # Held by what was leased or retried before: one lease may carry several deliveries
        # of a person, in order (a batch keeps them in order).
        for did, row in self._rows.items():  # in id order: ids only grow
            if len(out) >= limit:
                break
            if (
                row.destination != destination
                or row.state != "pending"
                or row.next_at > now
                or self._held_before(did, row)
            ):
                continue
            row.state = "leased"
            out.append(
                Delivery(
                    did,
                    destination,
                    row.ordering_key,
                    row.attempts,
                    row.created_at,
                    row.source,
                    row.kind,
                    row.message,
                )
            )
        for d in out:
            self._holds.setdefault((destination, d.ordering_key), set()).add(d.id)
        return out

    async def settle(self, settlement: Settlement, now: float) -> None:
        self._check_open()
        for did, reason in settlement.dead:
            row = self._rows.get(did)
            if row is None or row.state == "dead":
                continue
            self._unhold(did, row)
            row.state, row.last_error, row.next_at = "dead", reason, now
            row.attempts += 1
            row.history += ((now, reason),)
            self._pending -= 1
        for retry in settlement.retries:
            row = self._rows.get(retry.id)
            if row is None or row.state == "dead":
                continue
            row.state, row.next_at, row.last_error = "pending", retry.next_at, retry.error
            row.attempts += 1  # the hold stays: the person waits for this retry
            row.history += ((now, retry.error),)
        for did in settlement.done:
            row = self._rows.get(did)
            if row is None or row.state == "dead":
                continue
            self._unhold(did, row)
            del self._rows[did]
            self._pending -= 1
        for did in settlement.release:
            row = self._rows.get(did)
            if row is None or row.state != "leased":
                continue
            self._unhold(did, row)
            row.state = "pending"

    def _letters(self, which: DeadLetterFilter) -> list[DeadLetter]:
        out = [
            letter
            for did, row in self._rows.items()
            if row.state == "dead"
            and which.matches(
                letter := DeadLetter(
                    did,
                    row.destination,
                    row.source,
                    row.kind,
                    row.last_error or "",
                    row.attempts,
                    row.created_at,
                    decode(row.message),
                    row.next_at,
                    row.history,
                )
            )
        ]
        if which.takes_rejected():
            out.extend(
                letter
                for rid, r in self._rejected.items()
                if which.matches(
                    letter := DeadLetter(
                        rid,
                        None,
                        r.source,
                        r.kind,
                        r.reason,
                        0,
                        r.received_at,
                        decode(r.message),
                        r.received_at,
                    )
                )
            )
        return out if which.limit is None else out[: which.limit]

    async def dead_letters(self, which: DeadLetterFilter = EVERY_DEAD_LETTER) -> list[DeadLetter]:
        self._check_open()
        return self._letters(which)

    async def replay(self, which: DeadLetterFilter, now: float) -> int:
        self._check_open()
        count = 0
        for letter in self._letters(which):
            if letter.destination is not None:
                row = self._rows[letter.id]
                row.state, row.attempts, row.next_at, row.created_at = "pending", 0, now, now
                row.last_error, row.history = None, ()
                count += 1
        self._pending += count
        return count

    async def discard(self, which: DeadLetterFilter) -> int:
        self._check_open()
        letters = self._letters(which)
        for letter in letters:
            if letter.destination is None:
                del self._rejected[letter.id]
            else:
                del self._rows[letter.id]
        return len(letters)

    async def counts(self) -> dict[str, dict[str, int]]:
        self._check_open()
        out: dict[str, dict[str, int]] = {}
        for row in self._rows.values():
            states = out.setdefault(row.destination, {})
            states[row.state] = states.get(row.state, 0) + 1
        return out

    async def oldest(self) -> dict[str, float]:
        self._check_open()
        out: dict[str, float] = {}
        for row in self._rows.values():
            if row.state != "dead":
                out[row.destination] = min(out.get(row.destination, row.created_at), row.created_at)
        return out

    async def purge(self, now: float) -> None:
        self._check_open()
        self._ids = {key: until for key, until in self._ids.items() if until > now}

    async def write_problem(self) -> str | None:
        return None if self._open else "the event store is not open"
