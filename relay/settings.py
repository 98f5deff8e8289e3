"""What every settings schema is built from: relay's marshmallow field types, a base schema
that refuses unknown keys, and the metadata through which a field says what the config
checker must know of it.

Each component owns the schema and the typed values of its own section (a source's under
relay.sources, a destination's under relay.destinations, the SQLite store's under
relay.store.sqlite); relay.config assembles them and turns their messages into located
problems with hints.

Field metadata read by the checker:
- ``secret``: the value (for a mapping, each of its values) is never shown.
- ``never_empty``: what the value is ("write key"), for a value that is never valid empty
  (it would authenticate nothing); ``empty_hint`` says what to write instead when the file
  writes it empty.
- ``required_hint``: what to add when the key is missing.
- ``write``: what a valid value looks like, as words after "write".
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

URL = validate.URL(require_tld=False, schemes={"http", "https"})


class Duration(fields.Field[float]):
    """Seconds as a number, or a string such as `30s`, `15m`, `24h`, `7d`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool):
            raise ValidationError("must be a duration")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValidationError("must be a duration")
        if seconds < 0:
            raise ValidationError("must not be negative")
        return seconds


class KeyList(fields.Field[tuple[str, ...]]):
    """One key, or a list of keys (several are accepted at once while rotating)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ValidationError("must be a key, or a list of keys")


class StrictBool(fields.Boolean):
    """true or false, as YAML writes them; not the words and numbers marshmallow would also
    read as one ("yes", 1, "off")."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {}).setdefault("write", "true or false")
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class StrictStr(fields.String):
    """A string that refuses booleans instead of silently converting them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a numeric site id written without quotes is still an id
        return super()._deserialize(value, attr, data, **kwargs)


class Strict(Schema):
    """A section of the config: a key it does not know is a mistake, never ignored."""

    class Meta:
        unknown = RAISE


def defaults(schema: type[Schema]) -> Any:
    """The section as it is when the file leaves it out."""
    return lambda: schema().load({})
