"""Routes: which destinations receive each incoming message, and how it is reshaped for them.

The ``routes:`` list of the config is compiled once by :func:`compile_routes`, which checks
everything and reports every problem at once, each with the path of the offending node.
:meth:`Routes.route` then runs for every message at ingestion. Everything here is pure.

Route keys
----------
``name``
    Optional; defaults to ``route-<index>`` (``route-0`` is the first route). Names must be
    unique: they label metrics and log lines.
``from``
    Required. ``segment``: Segment messages (tracking API and the Webhooks destination).
    ``customerio``: Customer.io reporting webhooks.
``sources``
    Optional: a source name or a list of them; the route only sees messages from those
    sources. Segment sources are the keys of ``sources.segment.write_keys`` plus ``webhook``
    (Segment's Webhooks destination); Customer.io sources are the keys of
    ``sources.customerio.signing_keys``. Without it, the route sees every source.
``match``
    Optional: conditions on the message, all of which must hold (see *Matching*).
``to``
    Required: a destination or a list of them, ``customerio.<name>`` or ``segment.<name>``
    as configured under ``destinations``. ``from: segment`` routes may send to both kinds
    (``segment.*`` forwards to another Segment source); ``from: customerio`` routes send to
    ``segment.*`` only, because Customer.io events sent back to Customer.io would loop.
``rename_events``
    ``{old: new}``: renames the ``event`` of a matching message (exact names).
``drop_properties``
    A glob or a list of globs on property names; matching properties are removed.
``rename_properties``
    ``{old: new}``: renames properties. All renames happen at once, so ``{a: b, b: a}``
    swaps two properties; a renamed property replaces one that already had the new name.
``set_properties``
    ``{name: value}``: sets properties, replacing any value they had.

Edits act on the Segment message that is delivered: for ``from: segment``, the message as
received; for ``from: customerio``, the Segment ``track`` made from the webhook (events
named like ``Email Opened``, properties like ``email_subject``). Property edits apply to
``properties``, or to ``traits`` for ``identify`` and ``group``; they address top-level
names only (a name may itself contain dots). They run in this order: ``rename_events``,
``drop_properties``, ``rename_properties``, ``set_properties``.

Matching
--------
``match`` is a mapping whose entries must all hold. A key is a dotted path into the message
(``event``, ``properties.plan``, ``context.device.type``; only objects are walked, so a
name that itself contains a dot cannot be reached), or one of the words below. The value
says what the field must be:

======================  ===========================================================
``"Order Completed"``   equals this text (case-sensitive)
``"Order *"``           a glob (text with ``*``, ``?`` or ``[``): ``*`` any run of
                        characters, ``?`` one character, ``[abc]``, ``[a-z]``, ``[!a]``
                        one character from (or not from) a set; ``[*]``, ``[?]`` and
                        ``[[]`` match those characters literally. Matches text only.
``42``, ``9.5``         equals this number (``42`` matches ``42.0``, never ``"42"``)
``true``, ``false``     is exactly JSON true / false (never ``1`` or ``0``)
``null``                is an explicit JSON null (an absent field is not null here)
``{gt: 10, lte: 99}``   numeric comparisons ``gt``, ``gte``, ``lt``, ``lte``; all
                        given must hold; numbers only (text like ``"12"`` never matches)
``[a, "b*", {gt: 3}]``  any of the listed forms
======================  ===========================================================

A field that is absent never matches any of these forms. The words:

``exists: [path, …]``
    Each path is present and not null (a single path may be written without a list).
``missing: [path, …]``
    Each path is absent or null: the opposite of ``exists``.
``not: {…}``
    The conditions inside do not all hold.
``any: [{…}, …]``
    At least one of the mappings holds.
``all: [{…}, …]``
    Every mapping holds; use it to put two conditions on the same field.

``from: segment`` routes match Segment messages: ``type`` (``identify``, ``track``,
``page``, ``screen``, ``group``, ``alias``, ``delete``), ``event``, ``userId``,
``properties.*``, ``traits.*``, ``context.*``, ``integrations.*`` and the other common
fields. ``from: customerio`` routes match the webhook as Customer.io sends it:
``object_type`` (``email``, ``push``, ``sms``, ``in_app``, …), ``metric`` (``sent``,
``opened``, ``clicked``, …), ``event_id``, ``timestamp`` and ``data.*``; for older
workspaces that send only ``event_type`` (``email_opened``), ``object_type`` and ``metric``
are derived from it for matching, so one route serves both formats. The top-level fields
of each kind are a closed set (``seg.FIELDS``, ``cio.FIELDS``); below them
(``properties.*``, ``data.*``, …) any name may be matched.

Delivery
--------
Every route of the message's direction is tried in order, each against the message as
received (never as edited by an earlier route). Each matching route adds its
destinations, and a destination receives a message at most once: the first matching route
that names it decides which edits apply. A message that matches no route goes nowhere.

A Segment message whose ``integrations`` has ``"Customer.io": false``, or ``"All": false``
without ``"Customer.io"`` enabled (``true`` or an options object), is never delivered to a
``customerio.*`` destination (names are case-sensitive, as in Segment). This also breaks
loops: events relay makes from Customer.io webhooks carry ``"Customer.io": false``.

Checks
------
Besides unknown keys (with the closest known one, or "put it under match:" for a
condition written on the route itself) and wrong types, :func:`compile_routes` reports: an
unknown ``from``, destination or source; a source of the other direction; an empty ``to``,
``sources``, ``any`` or list of values; a repeated destination; a ``from: customerio``
route sending to Customer.io; bad globs (an unclosed ``[``, an empty range like
``[z-a]``); YAML that read a value as a date; comparisons with non-numbers, and comparisons
written as text (``">= 100"``, which only matches that text); field paths of the other
direction, unknown top-level fields (``user_id``: did you mean ``userId``; ``plan``: did
you mean ``properties.plan``) and near-miss names below them (``data.campain_id``); Segment
``type`` and Customer.io ``object_type`` values that do not exist, and ``metric`` values
that are near misses of a known metric (``opend``; other metrics are allowed, the set is
open); conditions that can never hold together (``type: track`` with
``all: [{type: identify}]``, ``missing`` with ``exists``, ``{gt: 10, lt: 5}``, an
``any`` alternative that contradicts its surroundings); a property renamed after being
dropped; two properties renamed to the same name; repeated route names; and destinations
that never receive anything from a route because an earlier route of the same direction
always takes them first: one whose ``match`` entries are a subset of this route's (so it
matches at least as much), whose ``sources`` include this route's, and that names the
same destination.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from typing import Any, Final

from relay.vocab import customerio as cio
from relay.vocab import segment as seg

__all__ = [
    "CUSTOMERIO",
    "KINDS",
    "SEGMENT",
    "Problem",
    "Route",
    "Routes",
    "RoutingResult",
    "compile_routes",
]

Path = tuple[str | int, ...]
Check = Callable[[Any], bool]

SEGMENT: Final = "segment"
CUSTOMERIO: Final = "customerio"
KINDS: Final = (SEGMENT, CUSTOMERIO)

_KIND_LABEL: Final = {SEGMENT: "Segment", CUSTOMERIO: "Customer.io"}
_OTHER_KIND: Final = {SEGMENT: CUSTOMERIO, CUSTOMERIO: SEGMENT}

ROUTE_KEYS: Final = (
    "name",
    "from",
    "sources",
    "match",
    "to",
    "rename_events",
    "drop_properties",
    "rename_properties",
    "set_properties",
)
# Words people reach for from other tools; difflib would not find these on spelling alone.
_ROUTE_KEY_ALIASES: Final = {
    "filter": "match",
    "filters": "match",
    "where": "match",
    "when": "match",
    "if": "match",
    "conditions": "match",
    "destination": "to",
    "destinations": "to",
    "source": "sources",
    "direction": "from",
    "kind": "from",
}
_COMBINATORS: Final = ("not", "any", "all", "exists", "missing")
_OPERATORS: Final = ("gt", "gte", "lt", "lte")
_OPERATOR_ALIASES: Final = {
    ">": "gt",
    ">=": "gte",
    "<": "lt",
    "<=": "lte",
    "ge": "gte",
    "le": "lte",
    "min": "gte",
    "max": "lte",
}

# Near-miss field names are reported only when this close, so that a genuinely custom
# field is never mistaken for a typo.
_TYPO_CUTOFF: Final = 0.8
# How close an unknown top-level field must be to a known one to be offered as the fix
# (compared without case, "_" and "-": user_id and UserID are userId).
_FIELD_SUGGESTION_CUTOFF: Final = 0.7
# A number comparison written as text (">= 100"), which would only match that very text.
_COMPARISON_TEXT: Final = re.compile(
    r"^\s*(>=|=>|<=|=<|>|<|==|=|!=|<>)\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$"
)
_COMPARISON_WORDS: Final = {
    ">=": "gte",
    "=>": "gte",
    "<=": "lte",
    "=<": "lte",
    ">": "gt",
    "<": "lt",
}


class _Missing:
    """The value of a path that is not in the message; equal to nothing."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Problem:
    """One problem in the routes config, at the path of the node that causes it."""

    path: Path
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class _Edits:
    """The compiled edits of a route; applied to the Segment message being delivered."""

    rename_events: Mapping[str, str]
    drop: tuple[Callable[[str], object], ...]
    rename_properties: Mapping[str, str]
    set_properties: Mapping[str, Any]

    def apply(self, message: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(message, Mapping):
            return message
        out: dict[str, Any] | None = None
        if self.rename_events:
            event = message.get("event")
            if isinstance(event, str):
                renamed = self.rename_events.get(event)
                if renamed is not None and renamed != event:
                    out = dict(message)
                    out["event"] = renamed
        if self.drop or self.rename_properties or self.set_properties:
            target = "traits" if message.get("type") in seg.TRAITS_TYPES else "properties"
            current = message.get(target)
            updated = self._edit_properties(current)
            if updated is not current:
                if out is None:
                    out = dict(message)
                out[target] = updated
        return message if out is None else out

    def _edit_properties(self, current: Any) -> Any:
        if current is None:
            if not self.set_properties:
                return current
            source: Mapping[Any, Any] = {}
        elif isinstance(current, Mapping):
            source = current
        else:
            # Not an object: sources reject such messages; leave it as it came.
            return current
        changed = current is None
        props: dict[Any, Any] = {}
        for key, value in source.items():
            if self.drop and isinstance(key, str) and any(m(key) for m in self.drop):
                changed = True
                continue
            props[key] = value
        if self.rename_properties:
            moved = {
                new: props.pop(old)
                for old, new in self.rename_properties.items()
                if old in props and old != new
            }
            if moved:
                props.update(moved)
                changed = True
        if self.set_properties:
            props.update(self.set_properties)
            changed = True
        if not changed:
            return current
        # The edited object is copied whole, so the result shares nothing mutable with
        # the input message or with the compiled route.
        return _copy_json(props)


@dataclass(frozen=True, eq=False)
class Route:
    """One compiled route. `kind` is the direction (`from`): "segment" or "customerio"."""

    name: str
    index: int
    kind: str
    to: tuple[str, ...]
    sources: frozenset[str] | None = None
    _check: Check | None = field(default=None, repr=False)
    _edits: _Edits | None = field(default=None, repr=False)

    @property
    def has_edits(self) -> bool:
        return self._edits is not None

    def accepts(self, source: str) -> bool:
        """Whether this route sees messages from `source` (its `sources`, if any)."""
        return self.sources is None or source in self.sources

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


# --------------------------------------------------------------------------- compiling


def compile_routes(
    routes: Any,
    *,
    destinations: Collection[str],
    segment_sources: Collection[str],
    customerio_sources: Collection[str],
) -> tuple[Routes, list[Problem]]:
    """Compile the config's `routes` list; returns the routes and every problem found.

    `destinations` are qualified names (`customerio.main`, `segment.analytics`); the source
    collections name the sources of each direction (Segment's include `webhook` when the
    Webhooks destination endpoint is in use). A route with a problem is left out of the
    returned `Routes`, which is meant for use only when there are no problems.
    """
    return _Compiler(destinations, segment_sources, customerio_sources).compile(routes)


@dataclass
class _Compiled:
    route: Route
    raw_match: Any
    ok: bool
    to_paths: tuple[Path, ...]
    named: bool


class _Compiler:
    def __init__(
        self,
        destinations: Collection[str],
        segment_sources: Collection[str],
        customerio_sources: Collection[str],
    ) -> None:
        self.destinations = frozenset(destinations)
        self.sources = {
            SEGMENT: frozenset(segment_sources),
            CUSTOMERIO: frozenset(customerio_sources),
        }
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str, hint: str) -> None:
        self.problems.append(Problem(path, message, hint))

    def compile(self, routes: Any) -> tuple[Routes, list[Problem]]:
        if routes is None:
            return Routes(), []
        if not isinstance(routes, list):
            self.add(
                ("routes",),
                f"routes must be a list of routes, got {_describe(routes)}",
                'start each route with "- ", e.g. - {from: segment, to: [customerio.main]}',
            )
            return Routes(), self.problems
        compiled = [c for i, raw in enumerate(routes) if (c := self._route(i, raw)) is not None]
        self._check_names(compiled)
        usable = [c.route for c in compiled if c.ok]
        self._check_shadowed([c for c in compiled if c.ok])
        return Routes(usable), self.problems

    # ----------------------------------------------------------------------- one route

    def _route(self, index: int, raw: Any) -> _Compiled | None:
        path: Path = ("routes", index)
        if not isinstance(raw, Mapping):
            self.add(
                path,
                f"each route must be a mapping with from and to, got {_describe(raw)}",
                "e.g. - {from: segment, to: [customerio.main]}",
            )
            return None
        before = len(self.problems)
        for key in raw:
            if key not in ROUTE_KEYS:
                self.add(
                    (*path, str(key)), f'unknown key "{key}" in a route', _route_key_hint(str(key))
                )
        name, named = self._name(raw, path, index)
        kind = self._kind(raw, path)
        sources = self._sources(raw, kind, path)
        check = _MatchCompiler(self, kind).compile(raw.get("match"), (*path, "match"))
        to, to_paths = self._to(raw, kind, path)
        edits = self._edits(raw, path)
        ok = len(self.problems) == before
        route = Route(
            name=name,
            index=index,
            kind=kind or SEGMENT,
            to=to,
            sources=sources,
            _check=check,
            _edits=edits,
        )
        return _Compiled(route, raw.get("match"), ok, to_paths, named)

    def _name(self, raw: Mapping[str, Any], path: Path, index: int) -> tuple[str, bool]:
        default = f"route-{index}"
        value = raw.get("name")
        if value is None:
            return default, False
        if not isinstance(value, str) or not value.strip():
            self.add(
                (*path, "name"),
                f"a route name must be non-empty text, got {_describe(value)}",
                "e.g. name: orders-to-marketing",
            )
            return default, False
        return value, True

    def _kind(self, raw: Mapping[str, Any], path: Path) -> str | None:
        if "from" not in raw:
            self.add(path, 'the route has no "from"', "add from: segment or from: customerio")
            return None
        value = raw["from"]
        if value in KINDS:
            return str(value)
        if isinstance(value, str):
            hint = _suggest(value.lower().replace(".", "").replace("-", ""), KINDS)
            self.add((*path, "from"), f'"from" must be segment or customerio, not "{value}"', hint)
        else:
            self.add(
                (*path, "from"),
                f'"from" must be segment or customerio, got {_describe(value)}',
                "write from: segment or from: customerio",
            )
        return None

    def _sources(
        self, raw: Mapping[str, Any], kind: str | None, path: Path
    ) -> frozenset[str] | None:
        value = raw.get("sources")
        if value is None:
            return None
        spath: Path = (*path, "sources")
        items = self._names_list(value, spath, "source names", self._sources_example(kind))
        if items is None:
            return None
        if not items:
            self.add(
                spath,
                "sources is empty, so this route never sees a message",
                "remove sources to accept every source, or list the ones to accept",
            )
            return frozenset()
        own = self.sources[kind] if kind else self.sources[SEGMENT] | self.sources[CUSTOMERIO]
        other = self.sources[_OTHER_KIND[kind]] - own if kind else frozenset()
        all_other = all(isinstance(n, str) and n in other for _, n in items)
        accepted: set[str] = set()
        for item_path, name in items:
            if not isinstance(name, str):
                self.add(
                    item_path,
                    f"a source name must be text, got {_describe(name)}",
                    f"write source names as text, e.g. {self._sources_example(kind)}",
                )
            elif name in own:
                accepted.add(name)
            elif kind and name in other:
                other_kind = _OTHER_KIND[kind]
                self.add(
                    item_path,
                    f'"{name}" is a {_KIND_LABEL[other_kind]} source, '
                    f"but this route is from: {kind}",
                    f"this route can never match; did you mean from: {other_kind}?"
                    if all_other
                    else f"remove it: this route only sees {_KIND_LABEL[kind]} messages",
                )
            else:
                self.add(item_path, f'unknown source "{name}"', self._source_hint(name, kind, own))
        return frozenset(accepted)

    def _sources_example(self, kind: str | None) -> str:
        own = self.sources[kind] if kind else self.sources[SEGMENT]
        names = sorted(own - {"webhook"})[:2] or (["marketing"] if kind == CUSTOMERIO else ["web"])
        return f"sources: [{', '.join(names)}]"

    def _source_hint(self, name: str, kind: str | None, own: frozenset[str]) -> str:
        close = difflib.get_close_matches(name, sorted(own), n=1, cutoff=0.6)
        if close:
            return f'did you mean "{close[0]}"?'
        where = {
            SEGMENT: "the keys of sources.segment.write_keys",
            CUSTOMERIO: "the keys of sources.customerio.signing_keys",
            None: "the keys of sources.segment.write_keys and sources.customerio.signing_keys",
        }[kind]
        known = f" (known: {', '.join(sorted(own))})" if own else ""
        return f"sources are {where}{known}"

    def _names_list(
        self, value: Any, path: Path, what: str, example: str
    ) -> list[tuple[Path, Any]] | None:
        """A name or a list of names, each with its own path; None (reported) otherwise."""
        if isinstance(value, str):
            return [(path, value)]
        if isinstance(value, list):
            return [((*path, j), item) for j, item in enumerate(value)]
        self.add(
            path,
            f"expected {what} or a list of them, got {_describe(value)}",
            f"write one name, or a list: e.g. {example}",
        )
        return None

    def _to(
        self, raw: Mapping[str, Any], kind: str | None, path: Path
    ) -> tuple[tuple[str, ...], tuple[Path, ...]]:
        if "to" not in raw:
            self.add(path, 'the route has no "to"', f"add to: [{self._example_destination(kind)}]")
            return (), ()
        tpath: Path = (*path, "to")
        items = self._names_list(
            raw["to"], tpath, "destination names", f"to: [{self._example_destination(kind)}]"
        )
        if items is None:
            return (), ()
        if not items:
            self.add(
                tpath,
                "to is empty, so this route sends nowhere",
                f"list at least one destination, e.g. to: [{self._example_destination(kind)}]",
            )
            return (), ()
        accepted: list[str] = []
        paths: list[Path] = []
        for item_path, name in items:
            if not isinstance(name, str):
                self.add(
                    item_path,
                    f"a destination must be a name such as customerio.main, got {_describe(name)}",
                    f"write it as customerio.<name> or segment.<name>, e.g."
                    f" {self._example_destination(kind)}",
                )
            elif name in accepted:
                self.add(item_path, f'"{name}" is listed twice', "remove the repeat")
            elif name not in self.destinations:
                prefix = name.split(".", 1)[0]
                if "." in name and prefix in KINDS:
                    message = f'unknown destination "{name}"'
                else:
                    message = (
                        f'"{name}" is not a destination name: '
                        "destinations are named customerio.<name> or segment.<name>"
                    )
                self.add(item_path, message, self._destination_hint(name, kind))
            elif kind == CUSTOMERIO and name.startswith("customerio."):
                segment = sorted(d for d in self.destinations if d.startswith("segment."))
                self.add(
                    item_path,
                    f"a from: customerio route cannot send to {name}: Customer.io webhook "
                    "events go to Segment, and sending them back to Customer.io would loop",
                    f'use a Segment destination such as "{segment[0]}"'
                    if segment
                    else "configure a destination under destinations.segment and use it",
                )
            else:
                accepted.append(name)
                paths.append(item_path)
        return tuple(accepted), tuple(paths)

    def _example_destination(self, kind: str | None) -> str:
        prefix = "segment." if kind == CUSTOMERIO else "customerio."
        known = sorted(d for d in self.destinations if d.startswith(prefix))
        return known[0] if known else f"{prefix}main"

    def _destination_hint(self, name: str, kind: str | None) -> str:
        known = sorted(self.destinations)
        if "." not in name:
            same = [d for d in known if d.split(".", 1)[-1] == name]
            if same:
                preferred = [
                    d for d in same if not (kind == CUSTOMERIO and d[:11] == "customerio.")
                ]
                return f'did you mean "{(preferred or same)[0]}"?'
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        if close:
            return f'did you mean "{close[0]}"?'
        prefix, _, short = name.partition(".")
        if prefix in KINDS and short:
            where = f"configure it under destinations.{prefix}.{short}"
        else:
            where = "configure destinations under destinations.customerio or destinations.segment"
        return f"{where} (known: {', '.join(known)})" if known else where

    # ----------------------------------------------------------------------- edits

    def _edits(self, raw: Mapping[str, Any], path: Path) -> _Edits | None:
        rename_events = self._text_map(raw, "rename_events", path, "event names")
        drop = self._drop(raw, path)
        rename_properties = self._text_map(raw, "rename_properties", path, "property names")
        set_properties = self._set(raw, path)
        if rename_properties:
            self._check_renames(rename_properties, drop, (*path, "rename_properties"))
        if not (rename_events or drop or rename_properties or set_properties):
            return None
        return _Edits(
            rename_events=rename_events,
            drop=tuple(matcher for _, matcher in drop),
            rename_properties=rename_properties,
            set_properties=set_properties,
        )

    def _text_map(self, raw: Mapping[str, Any], key: str, path: Path, what: str) -> dict[str, str]:
        value = raw.get(key)
        if value is None:
            return {}
        kpath: Path = (*path, key)
        if not isinstance(value, Mapping):
            self.add(
                kpath,
                f"{key} must map old {what} to new ones, got {_describe(value)}",
                f'e.g. {key}: {{"old name": "new name"}}',
            )
            return {}
        out: dict[str, str] = {}
        for old, new in value.items():
            item_path: Path = (*kpath, str(old))
            if not isinstance(new, str) or not new:
                self.add(
                    item_path,
                    f'"{old}" must be renamed to non-empty text, got {_describe(new)}',
                    "quote the new name if YAML reads it as something else",
                )
            else:
                out[str(old)] = new
        return out

    def _drop(
        self, raw: Mapping[str, Any], path: Path
    ) -> list[tuple[str, Callable[[str], object]]]:
        value = raw.get("drop_properties")
        if value is None:
            return []
        items = self._names_list(
            value,
            (*path, "drop_properties"),
            "property names or globs",
            'drop_properties: ["internal_*", card_last4]',
        )
        out: list[tuple[str, Callable[[str], object]]] = []
        for item_path, pattern in items or ():
            if not isinstance(pattern, str) or not pattern:
                self.add(
                    item_path,
                    f"a property name or glob must be non-empty text, got {_describe(pattern)}",
                    'write a top-level property name or a glob, e.g. "internal_*"; quote it if'
                    " YAML reads it as something else",
                )
                continue
            matcher = self._glob(pattern, item_path) if _is_glob(pattern) else _equals(pattern)
            if matcher is not None:
                out.append((pattern, matcher))
        return out

    def _glob(self, pattern: str, path: Path) -> Callable[[str], object] | None:
        problem = _glob_problem(pattern)
        if problem is not None:
            message, hint = problem
            self.add(path, f'bad glob "{pattern}": {message}', hint)
            return None
        return _glob_matcher(pattern)

    def _set(self, raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
        value = raw.get("set_properties")
        if value is None:
            return {}
        kpath: Path = (*path, "set_properties")
        if not isinstance(value, Mapping):
            self.add(
                kpath,
                f"set_properties must map property names to values, got {_describe(value)}",
                "e.g. set_properties: {source_app: web}",
            )
            return {}
        out: dict[str, Any] = {}
        for name, item in value.items():
            bad = _non_json(item, (*kpath, str(name)))
            if bad is not None:
                self.add(*bad)
            else:
                out[str(name)] = _copy_json(item)
        return out

    def _check_renames(
        self,
        renames: Mapping[str, str],
        drop: Sequence[tuple[str, Callable[[str], object]]],
        path: Path,
    ) -> None:
        targets: dict[str, str] = {}
        for old, new in renames.items():
            dropped_by = next((pattern for pattern, match in drop if match(old)), None)
            if dropped_by is not None:
                self.add(
                    (*path, old),
                    f'"{old}" is removed by drop_properties "{dropped_by}" '
                    "before it can be renamed",
                    "drop_properties runs first; narrow the glob or remove this rename",
                )
            if new in targets:
                self.add(
                    (*path, old),
                    f'"{old}" and "{targets[new]}" are both renamed to "{new}"; one would be lost',
                    "rename them to different names",
                )
            else:
                targets[new] = old

    # ----------------------------------------------------------------------- across routes

    def _check_names(self, compiled: Sequence[_Compiled]) -> None:
        first: dict[str, int] = {}
        for c in compiled:
            name = c.route.name
            if name in first:
                path: Path = (
                    ("routes", c.route.index, "name") if c.named else ("routes", c.route.index)
                )
                self.add(
                    path,
                    f'the route name "{name}" is already used by routes[{first[name]}]',
                    "give each route its own name: names label metrics and logs",
                )
            else:
                first[name] = c.route.index

    def _check_shadowed(self, compiled: Sequence[_Compiled]) -> None:
        """Report destinations a route names that an earlier, broader route always takes."""
        for j, later in enumerate(compiled):
            taken: dict[str, Route] = {}
            for earlier in compiled[:j]:
                if _covers(earlier, later):
                    for destination in earlier.route.to:
                        taken.setdefault(destination, earlier.route)
            dead = [
                (d, p) for d, p in zip(later.route.to, later.to_paths, strict=True) if d in taken
            ]
            if not dead:
                continue
            route = later.route
            if len(dead) == len(route.to):
                by = taken[dead[0][0]]
                self.add(
                    ("routes", route.index),
                    f'route "{route.name}" never delivers anything: every message it matches '
                    f'also matches route "{by.name}" (routes[{by.index}]), which comes first '
                    f"and already sends to {', '.join(d for d, _ in dead)}",
                    f'move it before route "{by.name}", narrow that route, or remove this one',
                )
                continue
            for destination, item_path in dead:
                by = taken[destination]
                self.add(
                    item_path,
                    f'{destination} never receives anything from route "{route.name}": route '
                    f'"{by.name}" (routes[{by.index}]) matches every such message first',
                    f'move this route before "{by.name}", narrow that route, or remove '
                    f"{destination} here",
                )


def _route_key_hint(key: str) -> str:
    head = key.split(".", 1)[0]
    if key in _COMBINATORS or head in seg.FIELDS | cio.FIELDS:
        # A condition written on the route itself, as in other tools' filters.
        return f"put it under match:, e.g. match: {{{key}: …}}"
    return _suggest(key, ROUTE_KEYS, _ROUTE_KEY_ALIASES, "route keys are")


def _covers(earlier: _Compiled, later: _Compiled) -> bool:
    """True when every message `later` matches is certainly matched by `earlier` too."""
    a, b = earlier.route, later.route
    if a.kind != b.kind:
        return False
    if a.sources is not None and (b.sources is None or not b.sources <= a.sources):
        return False
    # Conditions are conjunctive, so a route whose match is a subset of another's
    # (same entries, same values) accepts everything the other accepts.
    a_match = earlier.raw_match or {}
    b_match = later.raw_match or {}
    if not isinstance(a_match, Mapping) or not isinstance(b_match, Mapping):
        return False
    return all(key in b_match and _same_json(b_match[key], value) for key, value in a_match.items())


def _same_json(a: Any, b: Any) -> bool:
    # JSON text keeps true and 1 apart, which Python's == does not.
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(
        b, sort_keys=True, default=repr
    )


# --------------------------------------------------------------------------- match


# Canonical forms of scalars, so that true and 1 (equal in Python) stay apart.
_Canon = tuple[str, Any]
_NULL: Final[_Canon] = ("z", None)


def _canon(value: Any) -> _Canon | None:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


@dataclass(frozen=True)
class _Constraint:
    """What one condition says about one field, for finding conditions that cannot hold."""

    present: bool = True  # excludes an absent field
    not_null: bool = True
    scalar_only: bool = True  # excludes objects and arrays
    exact: frozenset[_Canon] | None = None
    glob: Callable[[str], object] | None = None
    lo: tuple[float, bool] | None = None  # (bound, inclusive)
    hi: tuple[float, bool] | None = None
    missing: bool = False


@dataclass
class _FieldState:
    """Which values of one field still satisfy every condition seen so far."""

    first: Path
    first_constraint: _Constraint
    absent: bool = True
    null: bool = True
    other: bool = True
    bools: frozenset[bool] | None = None
    numbers: frozenset[Any] | None = None
    strings: frozenset[str] | None = None
    globs: tuple[Callable[[str], object], ...] = ()
    lo: tuple[float, bool] | None = None
    hi: tuple[float, bool] | None = None
    dead: bool = False

    def apply(self, c: _Constraint) -> None:
        if c.missing:
            self.bools, self.numbers, self.strings = frozenset(), frozenset(), frozenset()
            self.other = False
        self.absent = self.absent and not c.present
        self.null = self.null and not c.not_null
        self.other = self.other and not c.scalar_only
        if c.exact is not None:
            self.null = self.null and _NULL in c.exact
            self.bools = _meet(self.bools, frozenset(v for t, v in c.exact if t == "b"))
            self.numbers = _meet(self.numbers, frozenset(v for t, v in c.exact if t == "n"))
            self.strings = _meet(self.strings, frozenset(v for t, v in c.exact if t == "s"))
        if c.glob is not None:
            self.bools, self.numbers = frozenset(), frozenset()
            self.globs = (*self.globs, c.glob)
        if c.lo is not None or c.hi is not None:
            self.bools, self.strings = frozenset(), frozenset()
            self.lo = _tighter(self.lo, c.lo, lower=True)
            self.hi = _tighter(self.hi, c.hi, lower=False)

    def satisfiable(self) -> bool:
        if self.absent or self.null or self.other:
            return True
        if self.bools is None or self.bools:
            return True
        if self.numbers is None:
            if _range_possible(self.lo, self.hi):
                return True
        elif any(_in_range(n, self.lo, self.hi) for n in self.numbers):
            return True
        if self.strings is None:
            # Whether several globs can match one text is not worth deciding here.
            return True
        return any(all(g(s) for g in self.globs) for s in self.strings)


def _meet(current: frozenset[Any] | None, new: frozenset[Any]) -> frozenset[Any]:
    return new if current is None else current & new


def _tighter(
    current: tuple[float, bool] | None, new: tuple[float, bool] | None, *, lower: bool
) -> tuple[float, bool] | None:
    if new is None:
        return current
    if current is None:
        return new
    if current[0] == new[0]:
        return (current[0], current[1] and new[1])
    if lower:
        return new if new[0] > current[0] else current
    return new if new[0] < current[0] else current


def _range_possible(lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    if lo is None or hi is None:
        return True
    return lo[0] < hi[0] or (lo[0] == hi[0] and lo[1] and hi[1])


def _in_range(n: Any, lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    if lo is not None and not (n >= lo[0] if lo[1] else n > lo[0]):
        return False
    return hi is None or (n <= hi[0] if hi[1] else n < hi[0])


@dataclass
class _Fact:
    field: tuple[str, ...]
    node: Path
    constraint: _Constraint


@dataclass
class _Conjunction:
    """Conditions that must hold together, kept for the can-never-hold analysis."""

    facts: list[_Fact] = field(default_factory=list)
    anys: list[list[_Conjunction]] = field(default_factory=list)
    nots: list[_Conjunction] = field(default_factory=list)


_NEVER_ROUTE: Final = "so this route can never match"
_NEVER_ANY: Final = "so this alternative of any can never hold"
_NEVER_NOT: Final = "so the not around it excludes nothing"


class _MatchCompiler:
    """Compiles one route's `match` into a check, reporting problems as it goes."""

    def __init__(self, compiler: _Compiler, kind: str | None) -> None:
        self.compiler = compiler
        self.kind = kind

    def add(self, path: Path, message: str, hint: str) -> None:
        self.compiler.add(path, message, hint)

    def compile(self, spec: Any, path: Path) -> Check | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            self.add(
                path,
                f"match must be a mapping of conditions, got {_describe(spec)}",
                'e.g. match: {type: track, event: "Order *"}',
            )
            return None
        root = _Conjunction()
        check = self._conjunction(spec, path, root)
        self._analyze(root, {}, _NEVER_ROUTE, path)
        return check

    # ----------------------------------------------------------------------- structure

    def _conjunction(self, spec: Mapping[Any, Any], path: Path, conj: _Conjunction) -> Check | None:
        checks: list[Check] = []
        for key, value in spec.items():
            kpath: Path = (*path, str(key))
            if not isinstance(key, str):
                self.add(
                    kpath,
                    f"a match key must be a field path, got {_describe(key)}",
                    "write a field path such as event or properties.plan, or one of the words "
                    + ", ".join(_COMBINATORS),
                )
                continue
            if key == "not":
                check = self._not(value, kpath, conj)
            elif key == "any":
                check = self._any(value, kpath, conj)
            elif key == "all":
                check = self._all(value, kpath, conj)
            elif key in ("exists", "missing"):
                check = self._presence(key, value, kpath, conj)
            else:
                check = self._field(key, value, kpath, conj)
            if check is not None:
                checks.append(check)
        return _all_of(checks)

    def _mappings(
        self, word: str, value: Any, path: Path
    ) -> list[tuple[Path, Mapping[Any, Any]]] | None:
        if not isinstance(value, list):
            hint = f"{word} takes a list of mappings: {word}: [{{event: A}}, {{event: B}}]"
            self.add(path, f"{word} must be a list of conditions, got {_describe(value)}", hint)
            return None
        out: list[tuple[Path, Mapping[Any, Any]]] = []
        for j, item in enumerate(value):
            if isinstance(item, Mapping):
                out.append(((*path, j), item))
            else:
                self.add(
                    (*path, j),
                    f"each entry of {word} must be a mapping of conditions, got {_describe(item)}",
                    "e.g. - {event: Order Completed}",
                )
        return out

    def _not(self, value: Any, path: Path, conj: _Conjunction) -> Check | None:
        if not isinstance(value, Mapping):
            hint = (
                "to exclude any of several cases, write not: {any: [{…}, {…}]}"
                if isinstance(value, list)
                else "e.g. not: {event: Order Test*}"
            )
            self.add(path, f"not must be a mapping of conditions, got {_describe(value)}", hint)
            return None
        if not value:
            self.add(path, "not: {} never holds, because empty conditions always hold", "remove it")
            return None
        inner_conj = _Conjunction()
        conj.nots.append(inner_conj)
        before = len(self.compiler.problems)
        inner = self._conjunction(value, path, inner_conj)
        if inner is None:
            if len(self.compiler.problems) == before:
                # The conditions inside always hold (say, any: [{}]), so the not never does.
                self.add(
                    path,
                    "this not never holds: the conditions inside always hold",
                    "remove the not, or put conditions inside it that a message can fail",
                )
            return None
        return lambda message: not inner(message)

    def _any(self, value: Any, path: Path, conj: _Conjunction) -> Check | None:
        items = self._mappings("any", value, path)
        if items is None:
            return None
        if not value:
            self.add(
                path, "any: [] never holds", "list at least one mapping of conditions, or remove it"
            )
            return None
        group: list[_Conjunction] = []
        checks: list[Check] = []
        always = False
        for item_path, item in items:
            alternative = _Conjunction()
            group.append(alternative)
            check = self._conjunction(item, item_path, alternative)
            if check is None:
                # An empty alternative always holds, and so does the whole `any`.
                always = always or not item
            else:
                checks.append(check)
        conj.anys.append(group)
        if always or not checks:
            return None
        return _any_of(checks)

    def _all(self, value: Any, path: Path, conj: _Conjunction) -> Check | None:
        items = self._mappings("all", value, path)
        if items is None:
            return None
        # Members of `all` join the enclosing conjunction, for the analysis as for the check.
        checks = [c for p, item in items if (c := self._conjunction(item, p, conj)) is not None]
        return _all_of(checks)

    def _presence(self, word: str, value: Any, path: Path, conj: _Conjunction) -> Check | None:
        if isinstance(value, str):
            items: list[tuple[Path, Any]] = [(path, value)]
        elif isinstance(value, list):
            items = [((*path, j), item) for j, item in enumerate(value)]
        else:
            self.add(
                path,
                f"{word} must list field paths, got {_describe(value)}",
                f"e.g. {word}: [userId, properties.plan]",
            )
            return None
        constraint = (
            _Constraint(scalar_only=False)
            if word == "exists"
            else _Constraint(present=False, not_null=False, scalar_only=False, missing=True)
        )
        checks: list[Check] = []
        for item_path, item in items:
            if not isinstance(item, str):
                self.add(
                    item_path,
                    f"a field path must be text, got {_describe(item)}",
                    f"e.g. {word}: [userId, properties.plan]",
                )
                continue
            keys = self._path(item, item_path)
            if keys is None:
                continue
            conj.facts.append(_Fact(keys, item_path, constraint))
            checks.append(_field_check(keys, _has_value if word == "exists" else _lacks_value))
        return _all_of(checks)

    def _field(self, key: str, value: Any, path: Path, conj: _Conjunction) -> Check | None:
        close = (
            [key.lower()]
            if key.lower() in _COMBINATORS
            else difflib.get_close_matches(key, _COMBINATORS, n=1, cutoff=_TYPO_CUTOFF)
        )
        if close and key not in seg.FIELDS | cio.FIELDS:
            self.add(path, f'unknown condition "{key}"', f'did you mean "{close[0]}"?')
            return None
        keys = self._path(key, path)
        if keys is None:
            return None
        compiled = self._value(value, path, keys)
        if compiled is None:
            return None
        test, constraint = compiled
        if self.kind == SEGMENT and keys == ("type",):
            self._check_types(value, path)
        elif self.kind == CUSTOMERIO and keys in (("object_type",), ("metric",)):
            self._check_customerio_values(keys[0], value, path)
        conj.facts.append(_Fact(keys, path, constraint))
        return _field_check(keys, test)

    def _path(self, text: str, path: Path) -> tuple[str, ...] | None:
        keys = tuple(text.split("."))
        if not all(keys):
            self.add(
                path,
                f'"{text}" is not a field path: it has an empty part',
                "separate names with single dots, e.g. properties.plan",
            )
            return None
        self._check_field_name(keys, path)
        return keys

    def _check_field_name(self, keys: tuple[str, ...], path: Path) -> None:
        head, dotted = keys[0], ".".join(keys)
        if self.kind == SEGMENT:
            if head in cio.FIELDS - seg.FIELDS:
                self.add(
                    path,
                    f'Segment messages have no "{head}" field: it belongs to Customer.io webhooks',
                    "did you mean from: customerio?",
                )
            elif head not in seg.FIELDS:
                # The top level of a Segment message is a fixed set of fields; custom data
                # lives under properties, traits or context.
                self.add(
                    path,
                    f'Segment messages have no "{head}" field',
                    _unknown_field_hint(keys, seg.FIELDS, _SEGMENT_NESTED),
                )
        elif self.kind == CUSTOMERIO:
            if head in seg.FIELDS - cio.FIELDS:
                self.add(
                    path,
                    "from: customerio routes match the Customer.io webhook, "
                    f'which has no "{dotted}"',
                    "match on object_type, metric or data.* (e.g. {object_type: email, metric: "
                    "opened} for Email Opened); the edits act on the Segment track made from it",
                )
            elif head not in cio.FIELDS:
                self.add(
                    path,
                    f'Customer.io webhooks have no "{head}" field',
                    _unknown_field_hint(keys, cio.FIELDS, _CUSTOMERIO_NESTED),
                )
            elif head == "data" and len(keys) > 1 and keys[1] not in cio.DATA_FIELDS:
                self._near_miss(keys, 1, cio.DATA_FIELDS, path, "Customer.io webhook data")

    def _near_miss(
        self, keys: tuple[str, ...], at: int, known: frozenset[str], path: Path, where: str
    ) -> None:
        close = difflib.get_close_matches(keys[at], sorted(known), n=1, cutoff=_TYPO_CUTOFF)
        if close:
            fixed = ".".join((*keys[:at], close[0], *keys[at + 1 :]))
            self.add(
                path,
                f'{where} have no "{".".join(keys[: at + 1])}" field',
                f'did you mean "{fixed}"?',
            )

    def _check_types(self, spec: Any, path: Path) -> None:
        for item_path, item in _listed(spec, path):
            if isinstance(item, str) and not _is_glob(item) and item not in seg.TYPES:
                self.add(
                    item_path,
                    f'Segment messages have no type "{item}"',
                    _suggest(item, seg.TYPES, None, "types are"),
                )

    def _check_customerio_values(self, name: str, spec: Any, path: Path) -> None:
        for item_path, item in _listed(spec, path):
            if not isinstance(item, str) or _is_glob(item):
                continue
            if name == "object_type" and item not in cio.CHANNELS:
                self.add(
                    item_path,
                    f'Customer.io webhooks have no object_type "{item}"',
                    _suggest(item, cio.CHANNELS, None, "object types are"),
                )
            elif name == "metric" and item not in cio.METRICS:
                close = difflib.get_close_matches(item, cio.METRICS, n=1, cutoff=_TYPO_CUTOFF)
                if close:
                    self.add(
                        item_path,
                        f'Customer.io sends no metric "{item}"',
                        f'did you mean "{close[0]}"?',
                    )

    # ----------------------------------------------------------------------- values

    def _value(
        self, spec: Any, path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], _Constraint] | None:
        if spec is None:
            return _is_null, _Constraint(not_null=False, exact=frozenset({_NULL}))
        if isinstance(spec, bool):
            wanted = spec
            return (lambda v: v is wanted), _Constraint(exact=frozenset({("b", spec)}))
        if isinstance(spec, int | float):
            number = spec
            return (lambda v: (type(v) is int or type(v) is float) and v == number), _Constraint(
                exact=frozenset({("n", spec)})
            )
        if isinstance(spec, str):
            comparison = _COMPARISON_TEXT.match(spec)
            if comparison is not None:
                self.add(
                    path,
                    f'"{spec}" is text, so it matches only that exact text, never a number',
                    _comparison_hint(comparison.group(1), comparison.group(2), keys),
                )
                return None
            if _is_glob(spec):
                match = self.compiler._glob(spec, path)
                if match is None:
                    return None
                return (lambda v: isinstance(v, str) and bool(match(v))), _Constraint(glob=match)
            text = spec
            return (lambda v: isinstance(v, str) and v == text), _Constraint(
                exact=frozenset({("s", spec)})
            )
        if isinstance(spec, Mapping):
            return self._comparison(spec, path, keys)
        if isinstance(spec, list):
            return self._one_of(spec, path, keys)
        bad = _non_json(spec, path)
        if bad is not None:
            self.add(*bad)
        else:
            self.add(
                path,
                f"cannot match on {_describe(spec)}",
                "write text, a number, true/false, null, a list of them, or {gt: 10} and the like",
            )
        return None

    def _one_of(
        self, spec: list[Any], path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], _Constraint] | None:
        if not spec:
            self.add(
                path,
                "an empty list matches nothing",
                "list at least one value, or remove the condition",
            )
            return None
        tests: list[Callable[[Any], bool]] = []
        exact: set[_Canon] = set()
        all_exact = True
        for j, item in enumerate(spec):
            item_path: Path = (*path, j)
            if isinstance(item, list):
                self.add(
                    item_path,
                    "a list inside a list of values is not a condition",
                    "flatten the list",
                )
                return None
            compiled = self._value(item, item_path, keys)
            if compiled is None:
                return None
            tests.append(compiled[0])
            canon = None if isinstance(item, str) and _is_glob(item) else _canon(item)
            if canon is None:
                all_exact = False
            else:
                exact.add(canon)
        if all_exact:
            constraint = _Constraint(not_null=_NULL not in exact, exact=frozenset(exact))
            if all(t == "s" for t, _ in exact):
                # The common case, a list of event names or types: one set lookup.
                texts = frozenset(v for _, v in exact)
                return (lambda v: isinstance(v, str) and v in texts), constraint
            # Canonical forms keep true apart from 1 in the lookup.
            return (lambda v: _canon(v) in exact), constraint
        return _any_value(tests), _Constraint(not_null=None not in spec)

    def _comparison(
        self, spec: Mapping[Any, Any], path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], _Constraint] | None:
        if not spec:
            self.add(
                path,
                "an empty mapping is not a condition",
                "compare numbers with {gt: 10} and the like, or write null to match null",
            )
            return None
        lo: tuple[float, bool] | None = None
        hi: tuple[float, bool] | None = None
        ok = True
        for op, bound in spec.items():
            op_path: Path = (*path, str(op))
            if op not in _OPERATORS:
                ok = False
                alias = _OPERATOR_ALIASES.get(str(op))
                close = difflib.get_close_matches(str(op), _OPERATORS, n=1, cutoff=0.6)
                if alias or close:
                    hint = f'did you mean "{alias or close[0]}"?'
                else:
                    hint = (
                        f"comparisons are {', '.join(_OPERATORS)}; to match inside an object "
                        f"use a dotted path: {'.'.join(keys)}.{op}: …"
                    )
                self.add(op_path, f'unknown comparison "{op}"', hint)
                continue
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                ok = False
                hint = f"write a plain number, e.g. {op}: 10"
                if isinstance(bound, str) and _looks_numeric(bound):
                    hint = (
                        f'YAML read "{bound}" as text; write a plain number such as 1000 or 1.0e+3'
                    )
                self.add(op_path, f'"{op}" compares numbers, got {_describe(bound)}', hint)
                continue
            if op == "gt":
                lo = _tighter(lo, (bound, False), lower=True)
            elif op == "gte":
                lo = _tighter(lo, (bound, True), lower=True)
            elif op == "lt":
                hi = _tighter(hi, (bound, False), lower=False)
            else:
                hi = _tighter(hi, (bound, True), lower=False)
        if not ok:
            return None
        return _range_test(lo, hi), _Constraint(lo=lo, hi=hi)

    # ----------------------------------------------------------------------- can never hold

    def _analyze(
        self,
        conj: _Conjunction,
        inherited: dict[tuple[str, ...], _FieldState],
        consequence: str,
        match_path: Path,
    ) -> None:
        states = {k: replace(s) for k, s in inherited.items()}
        for fact in conj.facts:
            state = states.get(fact.field)
            if state is None:
                state = states[fact.field] = _FieldState(fact.node, fact.constraint)
                fresh = True
            else:
                fresh = False
            if state.dead:
                continue
            state.apply(fact.constraint)
            if state.satisfiable():
                continue
            state.dead = True
            self._report_contradiction(fact, state, fresh, consequence, match_path)
        for group in conj.anys:
            for alternative in group:
                self._analyze(alternative, states, _NEVER_ANY, match_path)
        for negated in conj.nots:
            # What holds outside a `not` says nothing about the conditions inside it.
            self._analyze(negated, {}, _NEVER_NOT, match_path)

    def _report_contradiction(
        self, fact: _Fact, state: _FieldState, fresh: bool, consequence: str, match_path: Path
    ) -> None:
        name = ".".join(fact.field)
        if fresh:
            self.add(
                fact.node,
                f"no number is {_range_text(fact.constraint)}, {consequence}",
                "check the bounds: the lower one is above the upper one",
            )
            return
        where = ".".join(str(p) for p in state.first[len(match_path) - 1 :])
        first, this = state.first_constraint, fact.constraint
        hint = "remove one of the two conditions"
        if first.exact is not None and this.exact is not None:
            values = [v for _, v in sorted(first.exact, key=repr)]
            values += [v for _, v in sorted(this.exact - first.exact, key=repr)]
            hint = f"to accept any of them, list the values together: {name}: {json.dumps(values)}"
        self.add(
            fact.node,
            f'"{name}" cannot meet both this condition and the one at {where}, {consequence}',
            hint,
        )


def _listed(spec: Any, path: Path) -> list[tuple[Path, Any]]:
    """The values of a condition, each with its path: the items of a list, or the one value."""
    if isinstance(spec, list):
        return [((*path, j), v) for j, v in enumerate(spec)]
    return [(path, spec)]


def _comparison_hint(op: str, number: str, keys: tuple[str, ...]) -> str:
    word = _COMPARISON_WORDS.get(op)
    if word is not None:
        return f"to compare numbers, write {{{word}: {number}}}"
    if op in ("!=", "<>"):
        return f"to exclude a number, write not: {{{'.'.join(keys)}: {number}}}"
    return f"to match the number, write it without quotes: {number}"


# Where custom data sits in each kind of message, for "did you mean properties.plan?".
_SEGMENT_NESTED: Final = ("properties", "traits")
_CUSTOMERIO_NESTED: Final = ("data",)


def _normalised(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _unknown_field_hint(
    keys: tuple[str, ...], known: frozenset[str], nested: tuple[str, ...]
) -> str:
    """The fix for a top-level field that does not exist: a known field spelt another way
    (Type, user_id, eventname), else the same name under the object that holds custom data."""
    head, rest = keys[0], keys[1:]
    by_form = {_normalised(k): k for k in sorted(known)}
    close = difflib.get_close_matches(
        _normalised(head), list(by_form), n=1, cutoff=_FIELD_SUGGESTION_CUTOFF
    )
    if close:
        return f'did you mean "{".".join((by_form[close[0]], *rest))}"?'
    dotted = ".".join(keys)
    if nested == _CUSTOMERIO_NESTED:
        data_close = difflib.get_close_matches(
            head, sorted(cio.DATA_FIELDS), n=1, cutoff=_TYPO_CUTOFF
        )
        inner = ".".join((data_close[0], *rest)) if data_close else dotted
        return f'did you mean "data.{inner}"? The webhook\'s own fields are ' + ", ".join(
            sorted(known)
        )
    return (
        f'did you mean "{nested[0]}.{dotted}"? On identify and group calls it is'
        f' "{nested[1]}.{dotted}"'
    )


def _range_text(c: _Constraint) -> str:
    parts = []
    if c.lo is not None:
        parts.append(f"{'>=' if c.lo[1] else '>'} {c.lo[0]}")
    if c.hi is not None:
        parts.append(f"{'<=' if c.hi[1] else '<'} {c.hi[0]}")
    return " and ".join(parts)


# --------------------------------------------------------------------------- checks


def _lookup(message: Any, keys: tuple[str, ...]) -> Any:
    current = message
    for key in keys:
        if not isinstance(current, Mapping):
            return _MISSING
        current = current.get(key, _MISSING)
        if current is _MISSING:
            return _MISSING
    return current


def _field_check(keys: tuple[str, ...], test: Callable[[Any], bool]) -> Check:
    if len(keys) == 1:
        key = keys[0]

        def check_top(message: Any) -> bool:
            if type(message) is dict or isinstance(message, Mapping):
                return test(message.get(key, _MISSING))
            return False

        return check_top
    return lambda message: test(_lookup(message, keys))


def _all_of(checks: Sequence[Check]) -> Check | None:
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda message: a(message) and b(message)
    frozen = tuple(checks)

    # A plain loop: all() over a generator costs a frame per message on the hot path.
    def check_all(message: Any) -> bool:
        for check in frozen:  # noqa: SIM110
            if not check(message):
                return False
        return True

    return check_all


def _any_of(checks: Sequence[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)
    return lambda message: any(c(message) for c in frozen)


def _any_value(tests: Sequence[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    frozen = tuple(tests)
    return lambda value: any(t(value) for t in frozen)


def _range_test(
    lo: tuple[float, bool] | None, hi: tuple[float, bool] | None
) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        return (type(value) is int or type(value) is float) and _in_range(value, lo, hi)

    return test


def _equals(text: str) -> Callable[[str], object]:
    return lambda name: name == text


def _is_null(value: Any) -> bool:
    return value is None


def _has_value(value: Any) -> bool:
    return value is not _MISSING and value is not None


def _lacks_value(value: Any) -> bool:
    return value is _MISSING or value is None


# --------------------------------------------------------------------------- helpers


def _glob_matcher(pattern: str) -> Callable[[str], object]:
    """A matcher for a valid glob; the usual prefix/suffix/contains forms skip the regex."""
    inner = pattern.strip("*")
    if not _is_glob(inner):
        # Only stars, and only at the ends: a plain string method does the same job.
        if pattern == "*" * len(pattern):
            return _always
        starts, ends = pattern.startswith("*"), pattern.endswith("*")
        if starts and ends:
            return lambda text: inner in text
        if ends:
            return lambda text: text.startswith(inner)
        return lambda text: text.endswith(inner)
    return re.compile(fnmatch.translate(pattern)).match


def _always(text: str) -> bool:
    return True


def _is_glob(text: str) -> bool:
    return "*" in text or "?" in text or "[" in text


def _glob_problem(pattern: str) -> tuple[str, str] | None:
    """What is wrong with a glob that fnmatch would silently read another way."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "[":
            i += 1
            continue
        start = i
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":
            j += 1
        while j < n and pattern[j] != "]":
            j += 1
        if j >= n:
            return (
                f'the "[" at position {start + 1} is never closed',
                'close it with "]", or write "[[]" to match a literal "["',
            )
        body = pattern[start + 1 : j]
        if body.startswith("!"):
            body = body[1:]
        k = 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":
                if body[k] > body[k + 2]:
                    return (
                        f'the range "{body[k]}-{body[k + 2]}" is empty',
                        "write ranges low to high, e.g. [a-z]",
                    )
                k += 3
            else:
                k += 1
        i = j + 1
    return None


_NUMERIC_TEXT: Final = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _looks_numeric(text: str) -> bool:
    return bool(_NUMERIC_TEXT.match(text.strip()))


def _non_json(value: Any, path: Path) -> tuple[Path, str, str] | None:
    """The first value YAML produced that JSON cannot hold (dates, mostly), as a problem."""
    if isinstance(value, datetime | date | time):
        return (
            path,
            f"YAML read {value.isoformat()} as a date, which messages never contain",
            f'quote it to mean the text: "{value.isoformat()}"',
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _non_json(item, (*path, str(key)))
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        for j, item in enumerate(value):
            found = _non_json(item, (*path, j))
            if found is not None:
                return found
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return None
    return (path, f"cannot use {_describe(value)} here", "use text, a number, true/false or null")


def _copy_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the text "{value}"' if len(value) <= 40 else "a long text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, datetime | date | time):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def _suggest(
    word: str,
    choices: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    known_label: str = "known",
) -> str:
    if aliases and word in aliases:
        return f'did you mean "{aliases[word]}"?'
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return f"{known_label}: {', '.join(choices)}"
