"""Compiled routes at work: `Routes.route` runs for every message at ingestion and says which
destinations get it, through which route.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.routing.edits import Edits
from relay.routing.language import CUSTOMERIO, KINDS, Check, Path
from relay.vocab import customerio as cio
from relay.vocab import segment as seg


@dataclass(frozen=True)
class Problem:
    """One problem in the routes config, at the path of the node that causes it."""

    path: Path
    message: str
    hint: str | None = None
    # About the mapping key itself (unknown, misspelt, renamed twice), not about its value:
    # a config points at the key.
    at_key: bool = False


@dataclass(frozen=True, eq=False)
class Route:
    """One compiled route. `kind` is the direction (`from`): "segment" or "customerio"."""

    name: str
    index: int
    kind: str
    to: tuple[str, ...]
    sources: frozenset[str] | None = None
    _check: Check | None = field(default=None, repr=False)
    _edits: Edits | None = field(default=None, repr=False)

    @property
    def has_edits(self) -> bool:
        return self._edits is not None

    @property
    def edits_spec(self) -> dict[str, Any] | None:
        """The route's edits as JSON (see Edits.spec), or None when it has none."""
        return None if self._edits is None else self._edits.spec

    def matches(self, message: Mapping[str, Any]) -> bool:
        """Whether `message` (a Segment message, or a Customer.io webhook) meets `match`."""
        if self._check is None:
            return True
        if self.kind == CUSTOMERIO:
            message = _as_mapped(message)
        return self._check(message)

    def edit(self, message: dict[str, Any]) -> dict[str, Any]:
        """The Segment message this route delivers: `message` with the route's edits applied.

        Returns `message` itself when nothing changes, so callers can test identity; the
        input is never modified.
        """
        if self._edits is None:
            return message
        return self._edits.apply(message)


# Not frozen: building the result is on the hot path, and frozen dataclasses set fields
# through object.__setattr__, which costs more than the rest of a simple routing.
@dataclass(slots=True)
class RoutingResult:
    """What routing decided for one message.

    `matched`: the matching routes, in route order. `deliveries`: each destination at most
    once, with the route whose edits apply. `suppressed`: Customer.io destinations that a
    matching route named but the message's `integrations` turned off.
    """

    matched: list[Route]
    deliveries: list[tuple[str, Route]]
    suppressed: list[tuple[str, Route]]
    # For the caller: what it derived from this result alone, kept with a result that is
    # shared between messages so that it is derived once.
    memo: Any = None

    @property
    def destinations(self) -> list[str]:
        return [destination for destination, _ in self.deliveries]


_Step = tuple[Route, frozenset[str] | None, Check | None, tuple[tuple[str, bool], ...]]


class Routes:
    """Compiled routes, in config order, ready to route messages."""

    __slots__ = ("_routes", "_steps", "_by_source_only", "_known")

    def __init__(self, routes: Sequence[Route] = ()) -> None:
        self._routes = tuple(routes)
        steps: dict[str, list[_Step]] = {kind: [] for kind in KINDS}
        for route in self._routes:
            targets = tuple((d, d.startswith("customerio.")) for d in route.to)
            steps[route.kind].append((route, route.sources, route._check, targets))
        self._steps: dict[str, tuple[_Step, ...]] = {k: tuple(v) for k, v in steps.items()}
        # Where no route of a kind looks at the message, its routing depends only on the
        # source and on `integrations` (Customer.io on or off): computed once for each.
        self._by_source_only = {
            k: all(check is None for _, _, check, _ in v) for k, v in self._steps.items()
        }
        self._known: dict[tuple[str, str, bool], RoutingResult] = {}

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes)

    def __len__(self) -> int:
        return len(self._routes)

    def __getitem__(self, index: int) -> Route:
        return self._routes[index]

    def reads_messages(self, kind: str) -> bool:
        """Whether routing messages of `kind` reads more of them than `integrations`, or
        reshapes them: where it does not, a message need not be decoded to be routed."""
        return not self._by_source_only[kind] or any(
            route.has_edits for route, _, _, _ in self._steps[kind]
        )

    def route(self, kind: str, source: str, message: Mapping[str, Any]) -> RoutingResult:
        """Route one message of `kind` ("segment" or "customerio") received from `source`.

        The result may be shared between messages: read it, do not change it.
        """
        steps = self._steps.get(kind)
        if steps is None:
            raise ValueError(f"unknown message kind {kind!r}: expected one of {KINDS}")
        blocked = kind != CUSTOMERIO and seg.customerio_turned_off(message)
        if self._by_source_only[kind]:
            key = (kind, source, blocked)
            known = self._known.get(key)
            if known is None:
                known = self._known[key] = self._route(steps, source, message, blocked)
            return known
        view = _as_mapped(message) if kind == CUSTOMERIO else message
        return self._route(steps, source, view, blocked)

    @staticmethod
    def _route(
        steps: tuple[_Step, ...], source: str, view: Mapping[str, Any], blocked: bool
    ) -> RoutingResult:
        matched: list[Route] = []
        deliveries: list[tuple[str, Route]] = []
        suppressed: list[tuple[str, Route]] = []
        seen: set[str] = set()
        for route, sources, check, targets in steps:
            if sources is not None and source not in sources:
                continue
            if check is not None and not check(view):
                continue
            matched.append(route)
            for destination, to_customerio in targets:
                if destination in seen:
                    continue
                seen.add(destination)
                if blocked and to_customerio:
                    suppressed.append((destination, route))
                else:
                    deliveries.append((destination, route))
        return RoutingResult(matched, deliveries, suppressed)


def _as_mapped(message: Any) -> Any:
    """A webhook as routes see it: `object_type` and `metric` as the mapping reads them (from
    a legacy `event_type` too, in any letter case)."""
    if not isinstance(message, Mapping):
        return message
    found = cio.kind(message)
    if isinstance(found, str):
        return message
    object_type, metric = found
    if message.get("object_type") == object_type and message.get("metric") == metric:
        return message
    view = dict(message)
    view["object_type"] = object_type
    view["metric"] = metric
    return view
