"""`${VAR}` and `${VAR:-default}` in config strings, filled from the environment; values that
came from it are never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from relay.config.positions import Path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Substitution:
    """One `${VAR}` of the file: the value it is in, what the environment held for it, and
    the default written beside it."""

    name: str
    path: Path
    found: Literal["set", "empty", "unset"]
    default: str | None = None

    @property
    def took_default(self) -> bool:
        """The default written in the file stands in for it (`VAR` is unset or empty)."""
        return self.default is not None and self.found != "set"

    @property
    def unset(self) -> bool:
        """Unset, with no default: it leaves an empty value."""
        return self.found == "unset" and self.default is None

    @property
    def empty(self) -> bool:
        """Set but empty, with no default."""
        return self.found == "empty" and self.default is None


def interpolate(value: Any, path: Path, env: Mapping[str, str], found: list[Substitution]) -> Any:
    """`value` with every `${VAR}` in its strings replaced; each one is added to `found`, in
    file order."""
    if isinstance(value, dict):
        return {k: interpolate(v, (*path, k), env, found) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, (*path, i), env, found) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        state: Literal["set", "empty", "unset"] = (
            "unset" if got is None else "empty" if got == "" else "set"
        )
        use = Substitution(name, path, state, default)
        found.append(use)
        if use.took_default:
            assert default is not None
            return default
        return got or ""

    return _VAR.sub(substitute, value)
