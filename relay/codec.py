"""JSON encoding of messages on the hot paths (storing, sizing and sending).

orjson encodes several times faster than the standard library, which matters because
every request body is parsed and every accepted event is encoded once to be sized and
stored. The standard library is the fallback for what orjson refuses.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON; raises ValueError for what cannot be written as JSON at all.

    orjson refuses NaN-free but odd values (lone surrogates, integers beyond 64 bits, more
    than 255 levels): the standard library writes those, escaping non-ASCII so that a lone
    surrogate becomes a valid `\\udXXX` escape rather than an encoding error.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=True).encode("ascii")
    except RecursionError:
        raise ValueError(
            "the JSON is nested too deeply: more than about 1,000 levels of arrays and"
            " objects (send flatter JSON)"
        ) from None
    except TypeError as exc:
        raise ValueError(f"the value cannot be written as JSON: {exc}") from None


def decode(raw: bytes | str) -> Any:
    """Parse JSON; raises ValueError when it is not JSON, or is nested too deeply to parse.

    Integers beyond 64 bits come back as floats, as they do in Segment's own pipeline
    (JSON numbers are IEEE doubles there). What orjson refuses but the standard parser
    takes (NaN and Infinity literals, lone surrogates) goes through the standard parser.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except RecursionError:
        # orjson stops at 1024 levels and the standard parser at Python's recursion limit.
        # A ValueError makes every caller answer "not valid JSON" instead of failing (500).
        raise ValueError(
            "the JSON is nested too deeply: more than about 1,000 levels of arrays and"
            " objects (send flatter JSON)"
        ) from None


def holds_lone_surrogate(text: str) -> bool:
    """Whether `text` is not Unicode: a lone surrogate, which a JSON `\\ud800` escape (or the
    bytes ED A0 80, read by the standard parser) can carry into a Python string. JSON
    stores and sends such text as its escape; SQLite cannot hold it as text, so it must
    never become a key (a person, a dedup id)."""
    if text.isascii():  # constant time in CPython: the usual case costs nothing
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


NOT_UNICODE = (
    "is not valid Unicode: it holds a lone surrogate (a \\ud800-\\udfff escape without its"
    " pair), which cannot be stored as an id; send it as UTF-8 text"
)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in `value` nest more than `limit` levels.

    orjson reads up to 1024 levels, but encoding falls back to the standard library beyond
    255, and it (like any recursive code) fails near Python's recursion limit: a source that
    keeps what it decoded checks this first. Iterative, so any depth is safe to ask about.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
