"""The durable store's interface: what every backend (SQLite, Redis) must provide."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol, overload

from relay.codec import decode
from relay.errors import StoreFull

EnqueueOutcome = Literal["queued", "duplicate", "rejected"]


class NewDelivery(NamedTuple):
    destination: str
    # The message as routed for this destination (JSON), when a route reshaped it; None
    # means "the event's own message", which keeps the common case to one copy on disk.
    message_json: bytes | None = None


class NewEvent(NamedTuple):
    """An accepted (or rejected) message, with where it must go."""

    source: str
    kind: str  # "segment" | "customerio"
    message_json: bytes
    received_at: float
    ordering_key: str
    deliveries: tuple[NewDelivery, ...] = ()
    dedup_id: str | None = None
    dedup_until: float = 0.0
    rejected_reason: str | None = None


# What a store is given to enqueue: a NewEvent, or the same fields in a plain tuple, as
# relay.intake builds them for every message it accepts (a tuple display costs a fifth of
# a NewEvent's constructor), with deliveries as NewDelivery or plain (destination, message)
# pairs. The SQLite store reads them by position, on the hot path; elsewhere they are named
# with NewEvent._make, at the cost of a named tuple an event. Events routed alike
# share one tuple of deliveries, which pickles once for all of them on the way to the
# store's process.
EventTuple = tuple[
    str, str, bytes, float, str, tuple[tuple[str, bytes | None], ...], str | None, float, str | None
]


Deliveries = tuple[tuple[str, bytes | None], ...]


class AlikeEvents(Sequence[EventTuple]):
    """Events alike in all but their message, person and dedup id, kept as a column a field
    where they differ: a request's plain messages routed alike (Intake.build_plain), none
    rejected. As a sequence they are EventTuples, each made as it is read, so every store
    takes them as it takes a list; the socket to the SQLite store's process and that store
    take the columns as they are (pickled, a list a field costs a third of what a tuple an
    event does, and the store's process makes no tuple an event)."""

    __slots__ = (
        "source",
        "kind",
        "received_at",
        "deliveries",
        "dedup_until",
        "messages",
        "ordering_keys",
        "dedup_ids",
    )

    def __init__(
        self,
        source: str,
        kind: str,
        received_at: float,
        deliveries: Deliveries,
        dedup_until: float,
        messages: Sequence[bytes],
        ordering_keys: Sequence[str],
        dedup_ids: Sequence[str | None],
    ) -> None:
        self.source = source
        self.kind = kind
        self.received_at = received_at
        self.deliveries = deliveries
        self.dedup_until = dedup_until
        self.messages = messages
        self.ordering_keys = ordering_keys
        self.dedup_ids = dedup_ids

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __reduce__(self) -> tuple[type[AlikeEvents], tuple[Any, ...]]:
        return AlikeEvents, self._fields()

    def without_ids(self) -> AlikeEvents:
        """These events with None for each dedup id: for a store given each event's dedup key
        instead (the SQLite store's process, given them by relay's: dedup_keys), since
        pickling the ids too made the call to it a third dearer."""
        fields = [*self._fields()[:-1], (None,) * len(self.messages)]
        return AlikeEvents(*fields)

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, index: int) -> EventTuple: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[EventTuple]: ...

    def __getitem__(self, index: int | slice) -> EventTuple | Sequence[EventTuple]:
        if isinstance(index, slice):
            return list(self)[index]
        return self._event(self.messages[index], self.ordering_keys[index], self.dedup_ids[index])

    def _event(self, message: bytes, ordering_key: str, dedup_id: str | None) -> EventTuple:
        return (
            self.source,
            self.kind,
            message,
            self.received_at,
            ordering_key,
            self.deliveries,
            dedup_id,
            self.dedup_until,
            None,
        )

    def __iter__(self) -> Iterator[EventTuple]:
        return map(self._event, self.messages, self.ordering_keys, self.dedup_ids)

    def __repr__(self) -> str:
        return f"AlikeEvents({list(self)!r})"


def distinct_deliveries(events: Sequence[EventTuple]) -> Collection[Deliveries]:
    """Each tuple of deliveries among `events` once: events routed alike share one, so a
    request's destinations are read once, not once an event."""
    if isinstance(events, AlikeEvents):
        return (events.deliveries,)
    return {id(e[5]): e[5] for e in events}.values()


def deliveries_to_add(events: Sequence[EventTuple]) -> int:
    """The deliveries `events` would add to the queue, were none of them a duplicate."""
    if isinstance(events, AlikeEvents):
        return len(events) * len(events.deliveries)
    return sum(len(e[5]) for e in events if not e[8])


# A named tuple rather than a frozen dataclass, which sets each field through
# object.__setattr__: a lease builds one for every message it hands out (0.3 µs instead of 0.9).
class Delivery(NamedTuple):
    """A leased delivery, handed to a destination's worker.

    Its message is kept as the JSON stored, and decoded where a sink reads it (`message`), so
    that the decoded message lives only while it is mapped. Decoding a whole lease when it
    was taken, and freeing it a request later, cost relay's process a sixth of its time end to
    end: by the time each of a lease's thousand messages was mapped, and later freed, it was
    no longer in the CPU's cache (the README's benchmarks)."""

    id: int
    destination: str
    ordering_key: str
    attempts: int
    created_at: float
    source: str
    kind: str
    message_json: bytes

    @property
    def message(self) -> dict[str, Any]:
        """The message, decoded anew at each access: a sink reads it once, where it maps it."""
        message: dict[str, Any] = decode(self.message_json)
        return message


@dataclass(frozen=True)
class Retry:
    id: int
    next_at: float
    error: str


@dataclass(frozen=True)
class Settlement:
    """What became of leased deliveries, recorded in one call (one transaction)."""

    done: Sequence[int] = ()
    retries: Sequence[Retry] = ()
    dead: Sequence[tuple[int, str]] = ()  # (delivery id, reason)
    release: Sequence[int] = ()  # given back untouched (shutdown, pause, held back)

    def __bool__(self) -> bool:
        return bool(self.done or self.retries or self.dead or self.release)


# One failed attempt of a delivery: (unix time, what went wrong — the status and the
# destination's answer, or why there was none).
Attempt = tuple[float, str]


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that was given up on, or a message rejected at the door."""

    id: int  # the delivery's id, or the rejected message's id when destination is None
    destination: str | None
    source: str
    kind: str
    reason: str
    attempts: int
    created_at: float
    message: dict[str, Any]
    dead_at: float = 0.0  # when it was given up on (a rejected message: when it came)
    history: tuple[Attempt, ...] = ()  # every failed attempt, oldest first

    @property
    def ref(self) -> str:
        """How operators name it: the delivery's id, or `r` and the id of a rejected message
        (the two are numbered apart)."""
        return f"r{self.id}" if self.destination is None else str(self.id)


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means: every one, those named by id, or those that
    match all of the conditions given. `ids` names dead deliveries and `rejected_ids`
    rejected messages; naming either leaves out what the other does not name."""

    ids: tuple[int, ...] | None = None
    rejected_ids: tuple[int, ...] | None = None
    destination: str | None = None
    reason: str | None = None  # a part of the reason, in any letter case
    since: float | None = None  # given up on at or after this unix time
    until: float | None = None  # ... and before this one
    limit: int | None = None

    @property
    def by_id(self) -> bool:
        return self.ids is not None or self.rejected_ids is not None

    def takes_rejected(self) -> bool:
        """Whether rejected messages (which have no destination) can match at all."""
        if self.by_id:
            return bool(self.rejected_ids)
        return self.destination is None

    def matches(self, letter: DeadLetter) -> bool:
        """The whole rule, for backends that filter in memory; SQL backends say the same
        in their WHERE clause (the contract suite holds them to this)."""
        rejected = letter.destination is None
        if self.by_id:
            wanted = self.rejected_ids if rejected else self.ids
            if letter.id not in (wanted or ()):
                return False
        if self.destination is not None and letter.destination != self.destination:
            return False
        if self.reason is not None and self.reason.lower() not in letter.reason.lower():
            return False
        if self.since is not None and letter.dead_at < self.since:
            return False
        return self.until is None or letter.dead_at < self.until


EVERY_DEAD_LETTER: Final = DeadLetterFilter()


class Store(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def enqueue(self, events: Sequence[EventTuple]) -> list[EnqueueOutcome]:
        """Durably record events and their deliveries; returns once committed."""
        ...

    async def lease(self, destination: str, limit: int, now: float) -> list[Delivery]:
        """Due deliveries for a destination, oldest first, never overtaking an earlier
        pending or leased delivery of the same person."""
        ...

    async def settle(self, settlement: Settlement, now: float) -> None:
        """Record what became of leased deliveries: done ones are forgotten, a retry keeps
        holding back its person until it is due, a dead one stops holding, a released one
        is pending again. A delivery already dead is left as it is."""
        ...

    async def dead_letters(self, which: DeadLetterFilter = EVERY_DEAD_LETTER) -> list[DeadLetter]:
        """Dead deliveries (by id), then rejected messages (by id), up to `which.limit` in
        all, each with its history of attempts."""
        ...

    async def replay(self, which: DeadLetterFilter, now: float) -> int:
        """Put the dead deliveries that match back in the queue, as new (attempts and
        history start over); rejected messages have nowhere to go and stay."""
        ...

    async def discard(self, which: DeadLetterFilter) -> int:
        """Delete the dead deliveries and rejected messages that match, for good."""
        ...

    async def counts(self) -> dict[str, dict[str, int]]:
        """Deliveries by destination and state."""
        ...

    async def oldest(self) -> dict[str, float]:
        """Per destination with deliveries waiting (pending or leased), when the oldest of
        them was queued (unix time)."""
        ...

    async def purge(self, now: float) -> None:
        """Forget expired dedup ids and finished events."""
        ...

    async def write_problem(self) -> str | None:
        """Why new events would be refused now (a full disk, a read-only file, the store not
        running), or None while they are taken."""
        ...


def check_queue_room(
    pending: int, new: int, limit: int, setting: str = "storage.sqlite.max_pending"
) -> None:
    """Every backend refuses new deliveries alike once `limit` (max_pending) would be passed:
    with StoreFull, which says what the queue holds and when to try again."""
    if pending + new > limit:
        raise StoreFull(
            f"the queue holds {pending} deliveries, its limit ({setting}) is {limit}; retry later",
            retry_after=30,
        )


# The Store's calls beyond open and close, in one place: the store's process serves exactly
# these, and the contract suite checks that every backend has them.
STORE_CALLS: Final = (
    "enqueue",
    "lease",
    "settle",
    "dead_letters",
    "replay",
    "discard",
    "counts",
    "oldest",
    "purge",
    "write_problem",
)
