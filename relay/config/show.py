"""What `relay config show` prints: the typed config, section by section as the schemas
define them, every default filled in and every secret described, never shown.

Nothing here names a setting: the sections and their keys are the schemas' fields, and the
values the typed settings' attributes of the same names, so a new setting is shown as soon
as its component adds it. A field marked `secret` is described by where its value came
from and its length; a value whose variable is unset says which one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from marshmallow import Schema, fields

from relay.config.positions import Path
from relay.config.schemas import ConfigSchema
from relay.config.values import Config
from relay.config.variables import Substitution
from relay.destinations.registry import TYPES

_ABSENT = object()


def shown_config(config: Config) -> dict[str, Any]:
    """The config as plain data (for YAML or JSON) in which no secret appears."""
    view = _View(config)
    # Config keeps destinations by key (customerio.main); the file nests them by kind.
    by_kind = {
        kind: {d.name: d for d in config.destinations.values() if d.kind == kind} for kind in TYPES
    }
    sections = {
        key: by_kind if key == "destinations" else getattr(config, key)
        for key in ConfigSchema().fields
    }
    return view.section(ConfigSchema(), sections, config.values, ())


def _member(typed: Any, key: str) -> Any:
    return typed.get(key) if isinstance(typed, Mapping) else getattr(typed, key)


def _child(written: Any, key: str | int) -> Any:
    return written.get(key, _ABSENT) if isinstance(written, dict) else _ABSENT


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _names(subs: list[Substitution]) -> str:
    return " and ".join(f"${{{s.name}}}" for s in subs)


@dataclass
class _View:
    config: Config

    def __post_init__(self) -> None:
        # What stands at each path whose variable is unset (or empty where a value must not
        # be): the variable, never a value.
        unset: dict[Path, list[str]] = {}
        for m in self.config.missing:
            unset.setdefault(m.path, []).append(f"{'empty' if m.empty else 'unset'}: ${{{m.name}}}")
        self.unset = {path: f"<{'; '.join(parts)}>" for path, parts in unset.items()}
        self.variables: dict[Path, list[Substitution]] = {}
        for s in self.config.variables:
            self.variables.setdefault(s.path, []).append(s)

    def section(self, schema: Schema, typed: Any, written: Any, path: Path) -> dict[str, Any]:
        return {
            key: self.field(field, _member(typed, key), _child(written, key), (*path, key))
            for key, field in schema.fields.items()
        }

    def field(self, field: fields.Field[Any], typed: Any, written: Any, path: Path) -> Any:
        if path in self.unset:
            return self.unset[path]
        if field.metadata.get("secret"):
            # Described from the value as written (after substitution), entry by entry: the
            # typed value leaves out the entries whose variable is unset.
            return self.secret(typed if written is _ABSENT else written, path)
        if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            # A section that is off unless written (storage.redis) shows as null.
            return None if typed is None else self.section(field.schema, typed, written, path)
        if isinstance(field, fields.Dict) and "each" in field.metadata:
            names = written if isinstance(written, dict) else typed
            return {
                name: self.unset.get((*path, name))
                or self.section(
                    field.metadata["each"](), typed[name], _child(written, name), (*path, name)
                )
                for name in names
            }
        return self.plain(typed, path)

    def plain(self, value: Any, path: Path) -> Any:
        if path in self.unset:
            return self.unset[path]
        if isinstance(value, dict):
            return {k: self.plain(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.plain(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, float) and value.is_integer():
            return int(value)  # 86400 seconds, 100 requests a second
        return value

    def secret(self, value: Any, path: Path) -> Any:
        if path in self.unset:
            return self.unset[path]
        if isinstance(value, dict):
            return {k: self.secret(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.secret(v, (*path, i)) for i, v in enumerate(value)]
        subs = self.variables.get(path, [])
        if value is None or value == "":
            # No secret at all; a variable that left it empty is named.
            for state in ("unset", "empty"):
                if named := [s for s in subs if s.found == state]:
                    return f"<{state}: {_names(named)}>"
            return value
        length = _plural(len(str(value)), "character")
        if read := [s for s in subs if s.found == "set"]:
            return f"<secret from {_names(read)}, {length}>"
        if defaults := [s for s in subs if s.took_default and s.default]:
            return f"<secret written in the file as the default of {_names(defaults)}, {length}>"
        return f"<secret written in the file, {length}>"
