"""Compiling the `routes:` list: every key is checked and every problem reported at once, each
with the path of its node.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.routing.checks import equals
from relay.routing.edits import Edits
from relay.routing.language import (
    COMBINATORS,
    CUSTOMERIO,
    KIND_LABEL,
    KINDS,
    OTHER_KIND,
    ROUTE_KEY_ALIASES,
    ROUTE_KEYS,
    SEGMENT,
    Path,
)
from relay.routing.match import MatchCompiler
from relay.routing.runtime import Problem, Route, Routes
from relay.routing.words import (
    copy_json,
    describe,
    glob_matcher,
    glob_problem,
    is_glob,
    non_json,
    suggest,
)
from relay.vocab import customerio as cio
from relay.vocab import segment as seg


def compile_routes(
    routes: Any,
    *,
    destinations: Collection[str],
    segment_sources: Collection[str],
    customerio_sources: Collection[str],
    destination_kinds: Sequence[str] = KINDS,
) -> tuple[Routes, list[Problem]]:
    """Compile the config's `routes` list; returns the routes and every problem found.

    `destinations` are qualified names, `<kind>.<name>` (`customerio.main`,
    `segment.analytics`), with a kind among `destination_kinds`; the source collections
    name the sources of each direction (Segment's include `webhook` when the Webhooks
    destination endpoint is in use). A route with a problem is left out of the returned
    `Routes`, which is meant for use only when there are no problems.
    """
    return Compiler(destinations, segment_sources, customerio_sources, destination_kinds).compile(
        routes
    )


@dataclass
class _Compiled:
    route: Route
    raw_match: Any
    ok: bool
    to_paths: tuple[Path, ...]
    named: bool


class Compiler:
    def __init__(
        self,
        destinations: Collection[str],
        segment_sources: Collection[str],
        customerio_sources: Collection[str],
        destination_kinds: Sequence[str] = KINDS,
    ) -> None:
        self.destinations = frozenset(destinations)
        self.destination_kinds = tuple(destination_kinds)
        # How a destination is named, for messages: customerio.<name> or segment.<name>.
        self.destination_forms = " or ".join(f"{k}.<name>" for k in self.destination_kinds)
        self.sources = {
            SEGMENT: frozenset(segment_sources),
            CUSTOMERIO: frozenset(customerio_sources),
        }
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str, hint: str, *, at_key: bool = False) -> None:
        self.problems.append(Problem(path, message, hint, at_key))

    def compile(self, routes: Any) -> tuple[Routes, list[Problem]]:
        if routes is None:
            return Routes(), []
        if not isinstance(routes, list):
            self.add(
                ("routes",),
                f"routes must be a list of routes, got {describe(routes)}",
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
                f"each route must be a mapping with from and to, got {describe(raw)}",
                "e.g. - {from: segment, to: [customerio.main]}",
            )
            return None
        before = len(self.problems)
        for key in raw:
            if key not in ROUTE_KEYS:
                self.add(
                    (*path, str(key)),
                    f'unknown key "{key}" in a route',
                    _route_key_hint(str(key)),
                    at_key=True,
                )
        name, named = self._name(raw, path, index)
        kind = self._kind(raw, path)
        sources = self._sources(raw, kind, path)
        check = MatchCompiler(self, kind).compile(raw.get("match"), (*path, "match"))
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
                f"a route name must be non-empty text, got {describe(value)}",
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
            hint = suggest(value.lower().replace(".", "").replace("-", ""), KINDS)
            self.add((*path, "from"), f'"from" must be segment or customerio, not "{value}"', hint)
        else:
            self.add(
                (*path, "from"),
                f'"from" must be segment or customerio, got {describe(value)}',
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
        other = self.sources[OTHER_KIND[kind]] - own if kind else frozenset()
        all_other = all(isinstance(n, str) and n in other for _, n in items)
        accepted: set[str] = set()
        for item_path, name in items:
            if not isinstance(name, str):
                self.add(
                    item_path,
                    f"a source name must be text, got {describe(name)}",
                    f"write source names as text, e.g. {self._sources_example(kind)}",
                )
            elif name in own:
                accepted.add(name)
            elif kind and name in other:
                other_kind = OTHER_KIND[kind]
                self.add(
                    item_path,
                    f'"{name}" is a {KIND_LABEL[other_kind]} source, '
                    f"but this route is from: {kind}",
                    f"this route can never match; did you mean from: {other_kind}?"
                    if all_other
                    else f"remove it: this route only sees {KIND_LABEL[kind]} messages",
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
            f"expected {what} or a list of them, got {describe(value)}",
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
                    f"a destination must be a name such as customerio.main, got {describe(name)}",
                    f"write it as {self.destination_forms}, e.g. {self._example_destination(kind)}",
                )
            elif name in accepted:
                self.add(item_path, f'"{name}" is listed twice', "remove the repeat")
            elif name not in self.destinations:
                prefix = name.split(".", 1)[0]
                if "." in name and prefix in self.destination_kinds:
                    message = f'unknown destination "{name}"'
                else:
                    message = (
                        f'"{name}" is not a destination name: '
                        f"destinations are named {self.destination_forms}"
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
        if prefix in self.destination_kinds and short:
            where = f"configure it under destinations.{prefix}.{short}"
        else:
            groups = " or ".join(f"destinations.{k}" for k in self.destination_kinds)
            where = f"configure destinations under {groups}"
        return f"{where} (known: {', '.join(known)})" if known else where

    # ----------------------------------------------------------------------- edits

    def _edits(self, raw: Mapping[str, Any], path: Path) -> Edits | None:
        rename_events = self._text_map(raw, "rename_events", path, "event names")
        drop = self._drop(raw, path)
        rename_properties = self._text_map(raw, "rename_properties", path, "property names")
        set_properties = self._set(raw, path)
        if rename_properties:
            self._check_renames(rename_properties, drop, (*path, "rename_properties"))
        if not (rename_events or drop or rename_properties or set_properties):
            return None
        return Edits(
            rename_events=rename_events,
            drop=tuple(matcher for _, matcher in drop),
            rename_properties=rename_properties,
            set_properties=set_properties,
            drop_patterns=tuple(pattern for pattern, _ in drop),
        )

    def _text_map(self, raw: Mapping[str, Any], key: str, path: Path, what: str) -> dict[str, str]:
        value = raw.get(key)
        if value is None:
            return {}
        kpath: Path = (*path, key)
        if not isinstance(value, Mapping):
            self.add(
                kpath,
                f"{key} must map old {what} to new ones, got {describe(value)}",
                f'e.g. {key}: {{"old name": "new name"}}',
            )
            return {}
        out: dict[str, str] = {}
        for old, new in value.items():
            item_path: Path = (*kpath, str(old))
            if not isinstance(new, str) or not new:
                self.add(
                    item_path,
                    f'"{old}" must be renamed to non-empty text, got {describe(new)}',
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
                    f"a property name or glob must be non-empty text, got {describe(pattern)}",
                    'write a top-level property name or a glob, e.g. "internal_*"; quote it if'
                    " YAML reads it as something else",
                )
                continue
            matcher = self._glob(pattern, item_path) if is_glob(pattern) else equals(pattern)
            if matcher is not None:
                out.append((pattern, matcher))
        return out

    def _glob(self, pattern: str, path: Path) -> Callable[[str], object] | None:
        problem = glob_problem(pattern)
        if problem is not None:
            message, hint = problem
            self.add(path, f'bad glob "{pattern}": {message}', hint)
            return None
        return glob_matcher(pattern)

    def _set(self, raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
        value = raw.get("set_properties")
        if value is None:
            return {}
        kpath: Path = (*path, "set_properties")
        if not isinstance(value, Mapping):
            self.add(
                kpath,
                f"set_properties must map property names to values, got {describe(value)}",
                "e.g. set_properties: {source_app: web}",
            )
            return {}
        out: dict[str, Any] = {}
        for name, item in value.items():
            bad = non_json(item, (*kpath, str(name)))
            if bad is not None:
                self.add(*bad)
            else:
                out[str(name)] = copy_json(item)
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
                    at_key=True,
                )
            if new in targets:
                self.add(
                    (*path, old),
                    f'"{old}" and "{targets[new]}" are both renamed to "{new}"; one would be lost',
                    "rename them to different names",
                    at_key=True,
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
    if key in COMBINATORS or head in seg.FIELDS | cio.FIELDS:
        # A condition written on the route itself, as in other tools' filters.
        return f"put it under match:, e.g. match: {{{key}: …}}"
    return suggest(key, ROUTE_KEYS, ROUTE_KEY_ALIASES, "route keys are")


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
