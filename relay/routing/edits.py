"""A route's edits of the Segment message it delivers: renamed events, dropped, set and mapped
properties.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.routing.words import copy_json, glob_matcher
from relay.vocab import segment as seg


@dataclass(frozen=True)
class Edits:
    """The compiled edits of a route; applied to the Segment message being delivered."""

    rename_events: Mapping[str, str]
    drop: tuple[Callable[[str], object], ...]
    rename_properties: Mapping[str, str]
    set_properties: Mapping[str, Any]
    drop_patterns: tuple[str, ...] = ()  # `drop` as written

    @functools.cached_property
    def spec(self) -> dict[str, Any]:
        """The edits as JSON, kept with a webhook's delivery: the edits in force when it was
        accepted apply when it is mapped, at delivery. Built once per route; read it, do
        not change it."""
        return {
            "rename_events": dict(self.rename_events),
            "drop_properties": list(self.drop_patterns),
            "rename_properties": dict(self.rename_properties),
            "set_properties": copy_json(dict(self.set_properties)),
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Edits:
        """The edits `spec()` wrote (checked when their route was compiled)."""
        patterns = tuple(spec.get("drop_properties", ()))
        return cls(
            rename_events=dict(spec.get("rename_events", {})),
            drop=tuple(glob_matcher(p) for p in patterns),
            rename_properties=dict(spec.get("rename_properties", {})),
            set_properties=dict(spec.get("set_properties", {})),
            drop_patterns=patterns,
        )

    def apply(self, message: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(message, Mapping):
            return message
        out: dict[str, Any] | None = None
        if self.rename_events:
            event = message.get("event")
            if isinstance(event, str):
                renamed = self.rename_events.get(event)
                if renamed is not None and renamed != event:
                    out = dict(message)
                    out["event"] = renamed
        if self.drop or self.rename_properties or self.set_properties:
            target = "traits" if message.get("type") in seg.TRAITS_TYPES else "properties"
            current = message.get(target)
            updated = self._edit_properties(current)
            if updated is not current:
                if out is None:
                    out = dict(message)
                out[target] = updated
        return message if out is None else out

    def _edit_properties(self, current: Any) -> Any:
        if current is None:
            if not self.set_properties:
                return current
            source: Mapping[Any, Any] = {}
        elif isinstance(current, Mapping):
            source = current
        else:
            # Not an object: sources reject such messages; leave it as it came.
            return current
        changed = current is None
        props: dict[Any, Any] = {}
        for key, value in source.items():
            if self.drop and isinstance(key, str) and any(m(key) for m in self.drop):
                changed = True
                continue
            props[key] = value
        if self.rename_properties:
            moved = {
                new: props.pop(old)
                for old, new in self.rename_properties.items()
                if old in props and old != new
            }
            if moved:
                props.update(moved)
                changed = True
        if self.set_properties:
            props.update(self.set_properties)
            changed = True
        if not changed:
            return current
        # The edited object is copied whole, so the result shares nothing mutable with
        # the input message or with the compiled route.
        return copy_json(props)
