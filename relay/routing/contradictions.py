"""Conditions that can never hold together: the facts each condition states about a field, and
when two of them clash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from relay.routing.language import Path

# Canonical forms of scalars, so that true and 1 (equal in Python) stay apart.
Canon = tuple[str, Any]

NULL: Final[Canon] = ("z", None)


def canonical(value: Any) -> Canon | None:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


@dataclass(frozen=True)
class Constraint:
    """What one condition says about one field, for finding conditions that cannot hold."""

    present: bool = True  # excludes an absent field
    not_null: bool = True
    scalar_only: bool = True  # excludes objects and arrays
    exact: frozenset[Canon] | None = None
    glob: Callable[[str], object] | None = None
    lo: tuple[float, bool] | None = None  # (bound, inclusive)
    hi: tuple[float, bool] | None = None
    missing: bool = False


@dataclass
class FieldState:
    """Which values of one field still satisfy every condition seen so far."""

    first: Path
    first_constraint: Constraint
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

    def apply(self, c: Constraint) -> None:
        if c.missing:
            self.bools, self.numbers, self.strings = frozenset(), frozenset(), frozenset()
            self.other = False
        self.absent = self.absent and not c.present
        self.null = self.null and not c.not_null
        self.other = self.other and not c.scalar_only
        if c.exact is not None:
            self.null = self.null and NULL in c.exact
            self.bools = _meet(self.bools, frozenset(v for t, v in c.exact if t == "b"))
            self.numbers = _meet(self.numbers, frozenset(v for t, v in c.exact if t == "n"))
            self.strings = _meet(self.strings, frozenset(v for t, v in c.exact if t == "s"))
        if c.glob is not None:
            self.bools, self.numbers = frozenset(), frozenset()
            self.globs = (*self.globs, c.glob)
        if c.lo is not None or c.hi is not None:
            self.bools, self.strings = frozenset(), frozenset()
            self.lo = tighter(self.lo, c.lo, lower=True)
            self.hi = tighter(self.hi, c.hi, lower=False)

    def satisfiable(self) -> bool:
        if self.absent or self.null or self.other:
            return True
        if self.bools is None or self.bools:
            return True
        if self.numbers is None:
            if _range_possible(self.lo, self.hi):
                return True
        elif any(in_range(n, self.lo, self.hi) for n in self.numbers):
            return True
        if self.strings is None:
            # Whether several globs can match one text is not worth deciding here.
            return True
        return any(all(g(s) for g in self.globs) for s in self.strings)


def _meet(current: frozenset[Any] | None, new: frozenset[Any]) -> frozenset[Any]:
    return new if current is None else current & new


def tighter(
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


def in_range(n: Any, lo: tuple[float, bool] | None, hi: tuple[float, bool] | None) -> bool:
    if lo is not None and not (n >= lo[0] if lo[1] else n > lo[0]):
        return False
    return hi is None or (n <= hi[0] if hi[1] else n < hi[0])


@dataclass
class Fact:
    field: tuple[str, ...]
    node: Path
    constraint: Constraint


@dataclass
class Conjunction:
    """Conditions that must hold together, kept for the can-never-hold analysis."""

    facts: list[Fact] = field(default_factory=list)
    anys: list[list[Conjunction]] = field(default_factory=list)
    nots: list[Conjunction] = field(default_factory=list)


NEVER_ROUTE: Final = "so this route can never match"

NEVER_ANY: Final = "so this alternative of any can never hold"

NEVER_NOT: Final = "so the not around it excludes nothing"
