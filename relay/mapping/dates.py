"""Strict ISO-8601 dates to unix time, the only form Customer.io takes dates in."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["convert_dates", "iso_to_millis", "iso_to_seconds"]

# `YYYY-MM-DD`, optionally `THH:MM[:SS[.fraction]]` and then `Z` or `±HH[:]MM`. ASCII digits
# only: `\d` would also match other scripts' digits, which no date library writes.
_ISO_DATE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
    r"(?:(Z)|([+-])([0-9]{2}):?([0-9]{2}))?)?"
)
_JSON_SCALARS = frozenset({int, float, bool, type(None)})
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


@functools.lru_cache(maxsize=4096)
def _start_seconds(prefix: str) -> int | None:
    """Unix seconds at the start of `prefix`, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM` with digits
    where the pattern above has them, or None when that day or minute does not exist.

    Kept for the most recent days and minutes, which the messages of a batch mostly share:
    reading and checking them cost more than the rest of a date."""
    year, month, day = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
    if not 1 <= month <= 12:
        return None
    month_days = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= month_days:
        return None
    seconds = _days_from_civil(year, month, day) * 86400
    if len(prefix) == 10:
        return seconds
    hour, minute = int(prefix[11:13]), int(prefix[14:16])
    if hour > 23 or minute > 59:
        return None
    return seconds + hour * 3600 + minute * 60


def iso_to_millis(text: str) -> int | None:
    """Unix milliseconds (floor) of a strict ISO-8601 date or date-time, or None if it is not one.

    No offset means UTC. A date or time that does not exist (`2023-02-30`, `24:00`) is not a date.
    """
    # Cheap shape test first: most strings an attribute holds are not dates at all.
    if not _could_be_date(text):
        return None
    match = _ISO_DATE.fullmatch(text)
    if match is None:
        return None
    _, _, _, hour, _, second, fraction, _, sign, offset_hours, offset_minutes = match.groups()
    start = _start_seconds(text[:10] if hour is None else text[:16])
    if start is None:
        return None
    if second is not None:
        seconds = int(second)
        if seconds > 59:
            return None
        start += seconds
    if sign is not None:  # `Z` is UTC, the same as no offset at all
        hours, minutes = int(offset_hours), int(offset_minutes)
        if hours > 23 or minutes > 59:
            return None
        offset = (hours * 60 + minutes) * 60
        start += offset if sign == "-" else -offset
    if fraction is None:
        return start * 1000
    return start * 1000 + int(fraction[:3].ljust(3, "0"))


def iso_to_seconds(text: str) -> int | None:
    """Unix seconds (floor) of a strict ISO-8601 date or date-time, or None if it is not one."""
    millis = iso_to_millis(text)
    return None if millis is None else millis // 1000


def _could_be_date(text: str) -> bool:
    """A cheap test that rules out most strings before the pattern is tried: a date has
    dashes at 4 and 7."""
    return len(text) >= 10 and text[4] == "-" and text[7] == "-"


def convert_dates(value: Any) -> Any:
    """`value` with every strict ISO-8601 string, at any depth, replaced by its unix seconds.

    Objects and arrays are copied, never changed in place; anything else is returned as is.
    """
    # Exact-type checks first: this runs on every value of every message, and an isinstance
    # check against the Mapping ABC costs several times more than `type(...) is dict`.
    kind = type(value)
    if kind is dict:
        return _convert_object(value)
    if kind is str:
        return _convert_text(value)
    if kind is list:
        return [convert_dates(item) for item in value]
    if kind in _JSON_SCALARS:
        return value
    if isinstance(value, str):
        return _convert_text(str(value))
    if isinstance(value, Mapping):
        return _convert_object(value)
    if isinstance(value, list):
        return [convert_dates(item) for item in value]
    return value


def _convert_text(text: str) -> str | int:
    millis = iso_to_millis(text)  # which rules out most strings by their shape first
    return text if millis is None else millis // 1000


def _convert_object(value: Mapping[Any, Any]) -> dict[Any, Any]:
    # Scalars and strings that cannot be dates, the most of any object, are copied without a
    # call of their own: an object of a few properties takes a third of the time.
    out = {}
    for key, item in value.items():
        kind = type(item)
        if kind is str:
            if _could_be_date(item):
                item = _convert_text(item)
        elif kind not in _JSON_SCALARS:
            item = convert_dates(item)
        out[key] = item
    return out
