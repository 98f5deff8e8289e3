"""The checks a compiled `match` runs on each message: small closures over field paths."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.routing.contradictions import in_range
from relay.routing.language import MISSING, Check


def _lookup(message: Any, keys: tuple[str, ...]) -> Any:
    current = message
    for key in keys:
        if not isinstance(current, Mapping):
            return MISSING
        current = current.get(key, MISSING)
        if current is MISSING:
            return MISSING
    return current


def field_check(keys: tuple[str, ...], test: Callable[[Any], bool]) -> Check:
    if len(keys) == 1:
        key = keys[0]

        def check_top(message: Any) -> bool:
            if type(message) is dict or isinstance(message, Mapping):
                return test(message.get(key, MISSING))
            return False

        return check_top
    return lambda message: test(_lookup(message, keys))


def all_of(checks: Sequence[Check]) -> Check | None:
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


def any_of(checks: Sequence[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    frozen = tuple(checks)
    return lambda message: any(c(message) for c in frozen)


def any_value(tests: Sequence[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    frozen = tuple(tests)
    return lambda value: any(t(value) for t in frozen)


def range_test(
    lo: tuple[float, bool] | None, hi: tuple[float, bool] | None
) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        return (type(value) is int or type(value) is float) and in_range(value, lo, hi)

    return test


def equals(text: str) -> Callable[[str], object]:
    return lambda name: name == text


def is_null(value: Any) -> bool:
    return value is None


def has_value(value: Any) -> bool:
    return value is not MISSING and value is not None


def lacks_value(value: Any) -> bool:
    return value is MISSING or value is None
