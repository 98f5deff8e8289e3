"""Helpers for patterns and for the words of problems: globs, numbers written as text, JSON
values, descriptions and suggestions.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Any, Final

from relay.routing.language import Path


def glob_matcher(pattern: str) -> Callable[[str], object]:
    """A matcher for a valid glob; the usual prefix/suffix/contains forms skip the regex."""
    inner = pattern.strip("*")
    if not is_glob(inner):
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


def is_glob(text: str) -> bool:
    return "*" in text or "?" in text or "[" in text


def glob_problem(pattern: str) -> tuple[str, str] | None:
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


def looks_numeric(text: str) -> bool:
    return bool(_NUMERIC_TEXT.match(text.strip()))


def non_json(value: Any, path: Path) -> tuple[Path, str, str] | None:
    """The first value YAML produced that JSON cannot hold (dates, mostly), as a problem."""
    if isinstance(value, datetime | date | time):
        return (
            path,
            f"YAML read {value.isoformat()} as a date, which messages never contain",
            f'quote it to mean the text: "{value.isoformat()}"',
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = non_json(item, (*path, str(key)))
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        for j, item in enumerate(value):
            found = non_json(item, (*path, j))
            if found is not None:
                return found
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return None
    return (path, f"cannot use {describe(value)} here", "use text, a number, true/false or null")


def copy_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def describe(value: Any) -> str:
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


def suggest(
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
