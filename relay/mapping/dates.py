"""Strict ISO-8601 dates to unix time, the only form Customer.io takes dates in."""

from __future__ import annotations

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


def iso_to_millis(text: str) -> int | None:
    """Unix milliseconds (floor) of a strict ISO-8601 date or date-time, or None if it is not one.

    No offset means UTC. A date or time that does not exist (`2023-02-30`, `24:00`) is not a date.
    """
    # Cheap shape test first: most strings an attribute holds are not dates at all.
    if len(text) < 10 or text[4] != "-":
        return None
    match = _ISO_DATE.fullmatch(text)
    if match is None:
        return None
    year, month, day = int(match[1]), int(match[2]), int(match[3])
    if not 1 <= month <= 12:
        return None
    month_days = 29 if month == 2 and _is_leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= month_days:
        return None
    hour = int(match[4] or 0)
    minute = int(match[5] or 0)
    second = int(match[6] or 0)
    if hour > 23 or minute > 59 or second > 59:
        return None
    offset = 0
    if match[9] is not None:  # `Z` (group 8) is UTC, the same as no offset at all
        offset_hours, offset_minutes = int(match[10]), int(match[11])
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset = (offset_hours * 60 + offset_minutes) * 60
        if match[9] == "-":
            offset = -offset
    fraction = match[7] or ""
    millis = int(fraction[:3].ljust(3, "0"))
    days = _days_from_civil(year, month, day)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    return seconds * 1000 + millis


def iso_to_seconds(text: str) -> int | None:
    """Unix seconds (floor) of a strict ISO-8601 date or date-time, or None if it is not one."""
    millis = iso_to_millis(text)
    return None if millis is None else millis // 1000


def convert_dates(value: Any) -> Any:
    """`value` with every strict ISO-8601 string, at any depth, replaced by its unix seconds.

    Objects and arrays are copied, never changed in place; anything else is returned as is.
    """
    # Exact-type checks first: this runs on every value of every message, and an isinstance
    # check against the Mapping ABC costs several times more than `type(...) is dict`.
    kind = type(value)
    if kind is str:
        if len(value) < 10 or value[4] != "-":
            return value
        millis = iso_to_millis(value)
        return value if millis is None else millis // 1000
    if kind is dict:
        return {key: convert_dates(item) for key, item in value.items()}
    if kind is list:
        return [convert_dates(item) for item in value]
    if kind in _JSON_SCALARS:
        return value
    if isinstance(value, str):
        return convert_dates(str(value))
    if isinstance(value, Mapping):
        return {key: convert_dates(item) for key, item in value.items()}
    if isinstance(value, list):
        return [convert_dates(item) for item in value]
    return value
