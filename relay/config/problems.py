"""Problems in a config, worded with where they are, what is wrong and what to write instead."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from relay.config.positions import Path, field_name, position_of
from relay.errors import ConfigProblem
from relay.settings import Duration, KeyList


def value_at(data: Any, path: Path) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _flatten(messages: Any, path: Path) -> list[tuple[Path, str]]:
    if isinstance(messages, dict):
        out: list[tuple[Path, str]] = []
        for k, v in messages.items():
            key: str | int = k if isinstance(k, int) else str(k)
            out.extend(_flatten(v, (*path, key)))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [(path, "; ".join(messages))]
    if isinstance(messages, list):
        out = []
        for m in messages:
            out.extend(_flatten(m, path))
        return out
    return [(path, str(messages))]


def _known_keys(schema: Schema) -> list[str]:
    return sorted(schema.fields)


class Collector:
    """Turns validation messages into located problems, each with a hint that says what to
    write instead."""

    def __init__(
        self,
        file: str,
        pos: dict[Path, tuple[int, int]],
        skip: Collection[Path] = (),
        empty: Mapping[Path, str] | None = None,
    ) -> None:
        self.file = file
        self.pos = pos
        self.skip = frozenset(skip)
        # Paths whose value came from a variable that is set but empty, by variable name.
        self.empty = dict(empty or {})
        self.problems: list[ConfigProblem] = []
        self.masked: set[Path] = set()

    def add(self, path: Path, message: str, hint: str) -> None:
        if path in self.skip:
            self.masked.add(path)
            return
        line, col = position_of(self.pos, path)
        if message == "Unknown field.":
            key_pos = self.pos.get((*path, "<key>"))
            if key_pos:
                line, col = key_pos
            message = f'unknown key "{path[-1]}"'
        elif message.startswith("Missing data for required field"):
            message = "is required"
        elif message[:1].isupper():
            # marshmallow's sentences ("Not a valid integer.") in the style of the others.
            message = message[0].lower() + message[1:].rstrip(".")
        if path in self.empty:
            hint = (
                f"it comes from the environment variable {self.empty[path]}, which is empty; {hint}"
            )
        self.problems.append(ConfigProblem(self.file, line, col, field_name(path), message, hint))

    def add_validation(self, err: ValidationError, base: Path, schema: Schema) -> None:
        for raw_path, message in _flatten(err.messages, base):
            rel, found = _resolve(schema, raw_path[len(base) :])
            path = (*base, *rel)
            if message == "Unknown field.":
                hint = _did_you_mean(str(path[-1]), _schema_at(schema, rel))
                if len(path) == 1 and not hint.startswith("did you mean"):
                    hint += "; a top-level key starting with x- is ignored (to hold YAML anchors)"
            else:
                hint = _validation_hint(found, message, path)
            self.add(path, message, hint)


def _resolve(schema: Schema, rel: Path) -> tuple[Path, fields.Field[Any] | None]:
    """A validation message's path without marshmallow's `value`/`key` markers inside
    dicts (write_keys.web, not write_keys.web.value), and the field it is about."""
    out: list[str | int] = []
    container: Schema | fields.Dict | None = schema
    found: fields.Field[Any] | None = None
    i = 0
    while i < len(rel):
        part = rel[i]
        out.append(part)
        if isinstance(container, Schema):
            found = container.fields.get(str(part))
            if isinstance(found, fields.Nested) and isinstance(found.schema, Schema):
                container = found.schema
            elif isinstance(found, fields.Dict):
                container = found
            else:
                container = None
        elif isinstance(container, fields.Dict):
            marker = rel[i + 1] if i + 1 < len(rel) else None
            found = None
            if marker == "value":
                found, i = container.value_field, i + 1
            elif marker == "key":
                found, i = container.key_field, i + 1
            container = None
        else:
            found = None
        i += 1
    return tuple(out), found


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _what_to_write(found: fields.Field[Any] | None, path: Path) -> str:
    """What a valid value of the field at `path` looks like, as words after "write"."""
    name = str(path[-1])
    if found is not None and "write" in found.metadata:
        return str(found.metadata["write"])
    if isinstance(found, Duration):
        return "a number of seconds or 30s, 15m, 24h, 7d"
    validators = list(found.validators) if found is not None else []
    for v in validators:
        if isinstance(v, validate.OneOf):
            choices = [str(c) for c in v.choices]
            return ", ".join(choices[:-1]) + " or " + choices[-1]
        if isinstance(v, validate.URL):
            return f"a full URL, or remove {name} to use the default"
    if isinstance(found, fields.Integer | fields.Float):
        words = "a whole number" if isinstance(found, fields.Integer) else "a number"
        for v in validators:
            if isinstance(v, validate.Range):
                if v.min is not None and v.max is not None:
                    words += f" from {v.min} to {v.max}"
                elif v.min is not None:
                    words += f" of at least {v.min}" if v.min_inclusive else f" above {v.min}"
                elif v.max is not None:
                    words += f" of at most {v.max}"
        default = found.load_default
        if isinstance(default, int | float) and not isinstance(default, bool):
            words += f", such as {_number_text(default)}"
        return words
    if isinstance(found, fields.String):
        return "text; quote it if YAML reads it as a number or true/false"
    return "a value as the Configuration section of the README describes"


def _validation_hint(found: fields.Field[Any] | None, message: str, path: Path) -> str:
    name = str(path[-1])
    if found is not None and message in found.metadata.get("complete", ()):
        return ""  # the message itself says what to do
    if message.startswith("Missing data for required field"):
        return str(found.metadata.get("required_hint", f"add {name}")) if found else f"add {name}"
    if isinstance(found, KeyList):
        return (
            'write one signing key, or a list of them while rotating keys: ["${OLD_KEY}",'
            ' "${NEW_KEY}"]'
        )
    if isinstance(found, fields.Dict):
        if "write" in found.metadata:
            return f"write {found.metadata['write']}"
        return f"write {name}: on its own line, and each name: {{settings}} indented below it"
    if isinstance(found, fields.Nested):
        return f"write the settings of {name} as a mapping: key: value lines indented below it"
    if message == "Field may not be null.":
        return f"write {_what_to_write(found, path)}, or remove {name} to use the default"
    return "write " + _what_to_write(found, path)


def _schema_at(schema: Schema, rel: Path) -> list[str]:
    current: Any = schema
    for part in rel[:-1]:
        f = current.fields.get(str(part)) if isinstance(current, Schema) else None
        if isinstance(f, fields.Nested):
            nested = f.schema
            current = nested
        else:
            return []
    return _known_keys(current) if isinstance(current, Schema) else []


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    if choices:
        return "known keys: " + ", ".join(choices)
    return "remove it"
