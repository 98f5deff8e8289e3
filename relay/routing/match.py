"""Compiling a route's `match` into a check, reporting unknown fields, near misses and
contradictions as it goes.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from relay.routing.checks import (
    all_of,
    any_of,
    any_value,
    field_check,
    has_value,
    is_null,
    lacks_value,
    range_test,
)
from relay.routing.contradictions import (
    NEVER_ANY,
    NEVER_NOT,
    NEVER_ROUTE,
    NULL,
    Canon,
    Conjunction,
    Constraint,
    Fact,
    FieldState,
    canonical,
    tighter,
)
from relay.routing.language import (
    COMBINATORS,
    COMPARISON_TEXT,
    COMPARISON_WORDS,
    CUSTOMERIO,
    FIELD_SUGGESTION_CUTOFF,
    OPERATOR_ALIASES,
    OPERATORS,
    SEGMENT,
    TYPO_CUTOFF,
    Check,
    Path,
)
from relay.routing.words import describe, is_glob, looks_numeric, non_json, suggest
from relay.vocab import customerio as cio
from relay.vocab import segment as seg

if TYPE_CHECKING:  # compile uses this module; the compiler is only named here
    from relay.routing.compile import Compiler


class MatchCompiler:
    """Compiles one route's `match` into a check, reporting problems as it goes."""

    def __init__(self, compiler: Compiler, kind: str | None) -> None:
        self.compiler = compiler
        self.kind = kind

    def add(self, path: Path, message: str, hint: str, *, at_key: bool = False) -> None:
        self.compiler.add(path, message, hint, at_key=at_key)

    def compile(self, spec: Any, path: Path) -> Check | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            self.add(
                path,
                f"match must be a mapping of conditions, got {describe(spec)}",
                'e.g. match: {type: track, event: "Order *"}',
            )
            return None
        root = Conjunction()
        check = self._conjunction(spec, path, root)
        self._analyze(root, {}, NEVER_ROUTE, path)
        return check

    # ----------------------------------------------------------------------- structure

    def _conjunction(self, spec: Mapping[Any, Any], path: Path, conj: Conjunction) -> Check | None:
        checks: list[Check] = []
        for key, value in spec.items():
            kpath: Path = (*path, str(key))
            if not isinstance(key, str):
                self.add(
                    kpath,
                    f"a match key must be a field path, got {describe(key)}",
                    "write a field path such as event or properties.plan, or one of the words "
                    + ", ".join(COMBINATORS),
                    at_key=True,
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
        return all_of(checks)

    def _mappings(
        self, word: str, value: Any, path: Path
    ) -> list[tuple[Path, Mapping[Any, Any]]] | None:
        if not isinstance(value, list):
            hint = f"{word} takes a list of mappings: {word}: [{{event: A}}, {{event: B}}]"
            self.add(path, f"{word} must be a list of conditions, got {describe(value)}", hint)
            return None
        out: list[tuple[Path, Mapping[Any, Any]]] = []
        for j, item in enumerate(value):
            if isinstance(item, Mapping):
                out.append(((*path, j), item))
            else:
                self.add(
                    (*path, j),
                    f"each entry of {word} must be a mapping of conditions, got {describe(item)}",
                    "e.g. - {event: Order Completed}",
                )
        return out

    def _not(self, value: Any, path: Path, conj: Conjunction) -> Check | None:
        if not isinstance(value, Mapping):
            hint = (
                "to exclude any of several cases, write not: {any: [{…}, {…}]}"
                if isinstance(value, list)
                else "e.g. not: {event: Order Test*}"
            )
            self.add(path, f"not must be a mapping of conditions, got {describe(value)}", hint)
            return None
        if not value:
            self.add(path, "not: {} never holds, because empty conditions always hold", "remove it")
            return None
        inner_conj = Conjunction()
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

    def _any(self, value: Any, path: Path, conj: Conjunction) -> Check | None:
        items = self._mappings("any", value, path)
        if items is None:
            return None
        if not value:
            self.add(
                path, "any: [] never holds", "list at least one mapping of conditions, or remove it"
            )
            return None
        group: list[Conjunction] = []
        checks: list[Check] = []
        always = False
        for item_path, item in items:
            alternative = Conjunction()
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
        return any_of(checks)

    def _all(self, value: Any, path: Path, conj: Conjunction) -> Check | None:
        items = self._mappings("all", value, path)
        if items is None:
            return None
        # Members of `all` join the enclosing conjunction, for the analysis as for the check.
        checks = [c for p, item in items if (c := self._conjunction(item, p, conj)) is not None]
        return all_of(checks)

    def _presence(self, word: str, value: Any, path: Path, conj: Conjunction) -> Check | None:
        if isinstance(value, str):
            items: list[tuple[Path, Any]] = [(path, value)]
        elif isinstance(value, list):
            items = [((*path, j), item) for j, item in enumerate(value)]
        else:
            self.add(
                path,
                f"{word} must list field paths, got {describe(value)}",
                f"e.g. {word}: [userId, properties.plan]",
            )
            return None
        constraint = (
            Constraint(scalar_only=False)
            if word == "exists"
            else Constraint(present=False, not_null=False, scalar_only=False, missing=True)
        )
        checks: list[Check] = []
        for item_path, item in items:
            if not isinstance(item, str):
                self.add(
                    item_path,
                    f"a field path must be text, got {describe(item)}",
                    f"e.g. {word}: [userId, properties.plan]",
                )
                continue
            keys = self._path(item, item_path)
            if keys is None:
                continue
            conj.facts.append(Fact(keys, item_path, constraint))
            checks.append(field_check(keys, has_value if word == "exists" else lacks_value))
        return all_of(checks)

    def _field(self, key: str, value: Any, path: Path, conj: Conjunction) -> Check | None:
        close = (
            [key.lower()]
            if key.lower() in COMBINATORS
            else difflib.get_close_matches(key, COMBINATORS, n=1, cutoff=TYPO_CUTOFF)
        )
        if close and key not in seg.FIELDS | cio.FIELDS:
            self.add(path, f'unknown condition "{key}"', f'did you mean "{close[0]}"?', at_key=True)
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
        conj.facts.append(Fact(keys, path, constraint))
        return field_check(keys, test)

    def _path(self, text: str, path: Path) -> tuple[str, ...] | None:
        keys = tuple(text.split("."))
        if not all(keys):
            self.add(
                path,
                f'"{text}" is not a field path: it has an empty part',
                "separate names with single dots, e.g. properties.plan",
                at_key=True,
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
                    at_key=True,
                )
            elif head not in seg.FIELDS:
                # The top level of a Segment message is a fixed set of fields; custom data
                # lives under properties, traits or context.
                self.add(
                    path,
                    f'Segment messages have no "{head}" field',
                    _unknown_field_hint(keys, seg.FIELDS, _SEGMENT_NESTED),
                    at_key=True,
                )
        elif self.kind == CUSTOMERIO:
            if head in seg.FIELDS - cio.FIELDS:
                self.add(
                    path,
                    "from: customerio routes match the Customer.io webhook, "
                    f'which has no "{dotted}"',
                    "match on object_type, metric or data.* (e.g. {object_type: email, metric: "
                    "opened} for Email Opened); the edits act on the Segment track made from it",
                    at_key=True,
                )
            elif head not in cio.FIELDS:
                self.add(
                    path,
                    f'Customer.io webhooks have no "{head}" field',
                    _unknown_field_hint(keys, cio.FIELDS, _CUSTOMERIO_NESTED),
                    at_key=True,
                )
            elif head == "data" and len(keys) > 1 and keys[1] not in cio.DATA_FIELDS:
                self._near_miss(keys, 1, cio.DATA_FIELDS, path, "Customer.io webhook data")

    def _near_miss(
        self, keys: tuple[str, ...], at: int, known: frozenset[str], path: Path, where: str
    ) -> None:
        close = difflib.get_close_matches(keys[at], sorted(known), n=1, cutoff=TYPO_CUTOFF)
        if close:
            fixed = ".".join((*keys[:at], close[0], *keys[at + 1 :]))
            self.add(
                path,
                f'{where} have no "{".".join(keys[: at + 1])}" field',
                f'did you mean "{fixed}"?',
                at_key=True,
            )

    def _check_types(self, spec: Any, path: Path) -> None:
        for item_path, item in _listed(spec, path):
            if isinstance(item, str) and not is_glob(item) and item not in seg.TYPES:
                self.add(
                    item_path,
                    f'Segment messages have no type "{item}"',
                    suggest(item, seg.TYPES, None, "types are"),
                )

    def _check_customerio_values(self, name: str, spec: Any, path: Path) -> None:
        for item_path, item in _listed(spec, path):
            if not isinstance(item, str) or is_glob(item):
                continue
            if name == "object_type" and item not in cio.CHANNELS:
                self.add(
                    item_path,
                    f'Customer.io webhooks have no object_type "{item}"',
                    suggest(item, cio.CHANNELS, None, "object types are"),
                )
            elif name == "metric" and item not in cio.METRICS:
                close = difflib.get_close_matches(item, cio.METRICS, n=1, cutoff=TYPO_CUTOFF)
                if close:
                    self.add(
                        item_path,
                        f'Customer.io sends no metric "{item}"',
                        f'did you mean "{close[0]}"?',
                    )

    # ----------------------------------------------------------------------- values

    def _value(
        self, spec: Any, path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], Constraint] | None:
        if spec is None:
            return is_null, Constraint(not_null=False, exact=frozenset({NULL}))
        if isinstance(spec, bool):
            wanted = spec
            return (lambda v: v is wanted), Constraint(exact=frozenset({("b", spec)}))
        if isinstance(spec, int | float):
            number = spec
            return (lambda v: (type(v) is int or type(v) is float) and v == number), Constraint(
                exact=frozenset({("n", spec)})
            )
        if isinstance(spec, str):
            comparison = COMPARISON_TEXT.match(spec)
            if comparison is not None:
                self.add(
                    path,
                    f'"{spec}" is text, so it matches only that exact text, never a number',
                    _comparison_hint(comparison.group(1), comparison.group(2), keys),
                )
                return None
            if is_glob(spec):
                match = self.compiler._glob(spec, path)
                if match is None:
                    return None
                return (lambda v: isinstance(v, str) and bool(match(v))), Constraint(glob=match)
            text = spec
            return (lambda v: isinstance(v, str) and v == text), Constraint(
                exact=frozenset({("s", spec)})
            )
        if isinstance(spec, Mapping):
            return self._comparison(spec, path, keys)
        if isinstance(spec, list):
            return self._one_of(spec, path, keys)
        bad = non_json(spec, path)
        if bad is not None:
            self.add(*bad)
        else:
            self.add(
                path,
                f"cannot match on {describe(spec)}",
                "write text, a number, true/false, null, a list of them, or {gt: 10} and the like",
            )
        return None

    def _one_of(
        self, spec: list[Any], path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], Constraint] | None:
        if not spec:
            self.add(
                path,
                "an empty list matches nothing",
                "list at least one value, or remove the condition",
            )
            return None
        tests: list[Callable[[Any], bool]] = []
        exact: set[Canon] = set()
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
            canon = None if isinstance(item, str) and is_glob(item) else canonical(item)
            if canon is None:
                all_exact = False
            else:
                exact.add(canon)
        if all_exact:
            constraint = Constraint(not_null=NULL not in exact, exact=frozenset(exact))
            if all(t == "s" for t, _ in exact):
                # The common case, a list of event names or types: one set lookup.
                texts = frozenset(v for _, v in exact)
                return (lambda v: isinstance(v, str) and v in texts), constraint
            # Canonical forms keep true apart from 1 in the lookup.
            return (lambda v: canonical(v) in exact), constraint
        return any_value(tests), Constraint(not_null=None not in spec)

    def _comparison(
        self, spec: Mapping[Any, Any], path: Path, keys: tuple[str, ...]
    ) -> tuple[Callable[[Any], bool], Constraint] | None:
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
            if op not in OPERATORS:
                ok = False
                alias = OPERATOR_ALIASES.get(str(op))
                close = difflib.get_close_matches(str(op), OPERATORS, n=1, cutoff=0.6)
                if alias or close:
                    hint = f'did you mean "{alias or close[0]}"?'
                else:
                    hint = (
                        f"comparisons are {', '.join(OPERATORS)}; to match inside an object "
                        f"use a dotted path: {'.'.join(keys)}.{op}: …"
                    )
                self.add(op_path, f'unknown comparison "{op}"', hint, at_key=True)
                continue
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                ok = False
                hint = f"write a plain number, e.g. {op}: 10"
                if isinstance(bound, str) and looks_numeric(bound):
                    hint = (
                        f'YAML read "{bound}" as text; write a plain number such as 1000 or 1.0e+3'
                    )
                self.add(op_path, f'"{op}" compares numbers, got {describe(bound)}', hint)
                continue
            if op == "gt":
                lo = tighter(lo, (bound, False), lower=True)
            elif op == "gte":
                lo = tighter(lo, (bound, True), lower=True)
            elif op == "lt":
                hi = tighter(hi, (bound, False), lower=False)
            else:
                hi = tighter(hi, (bound, True), lower=False)
        if not ok:
            return None
        return range_test(lo, hi), Constraint(lo=lo, hi=hi)

    # ----------------------------------------------------------------------- can never hold

    def _analyze(
        self,
        conj: Conjunction,
        inherited: dict[tuple[str, ...], FieldState],
        consequence: str,
        match_path: Path,
    ) -> None:
        states = {k: replace(s) for k, s in inherited.items()}
        for fact in conj.facts:
            state = states.get(fact.field)
            if state is None:
                state = states[fact.field] = FieldState(fact.node, fact.constraint)
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
                self._analyze(alternative, states, NEVER_ANY, match_path)
        for negated in conj.nots:
            # What holds outside a `not` says nothing about the conditions inside it.
            self._analyze(negated, {}, NEVER_NOT, match_path)

    def _report_contradiction(
        self, fact: Fact, state: FieldState, fresh: bool, consequence: str, match_path: Path
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
    word = COMPARISON_WORDS.get(op)
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
        _normalised(head), list(by_form), n=1, cutoff=FIELD_SUGGESTION_CUTOFF
    )
    if close:
        return f'did you mean "{".".join((by_form[close[0]], *rest))}"?'
    dotted = ".".join(keys)
    if nested == _CUSTOMERIO_NESTED:
        data_close = difflib.get_close_matches(
            head, sorted(cio.DATA_FIELDS), n=1, cutoff=TYPO_CUTOFF
        )
        inner = ".".join((data_close[0], *rest)) if data_close else dotted
        return f'did you mean "data.{inner}"? The webhook\'s own fields are ' + ", ".join(
            sorted(known)
        )
    return (
        f'did you mean "{nested[0]}.{dotted}"? On identify and group calls it is'
        f' "{nested[1]}.{dotted}"'
    )


def _range_text(c: Constraint) -> str:
    parts = []
    if c.lo is not None:
        parts.append(f"{'>=' if c.lo[1] else '>'} {c.lo[0]}")
    if c.hi is not None:
        parts.append(f"{'<=' if c.hi[1] else '<'} {c.hi[0]}")
    return " and ".join(parts)
