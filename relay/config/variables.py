"""`${VAR}` and `${VAR:-default}` in config strings, filled from the environment; values that
came from it are never shown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from relay.config.positions import Path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(
    value: Any,
    path: Path,
    env: Mapping[str, str],
    missing: list[tuple[str, Path]],
    defaulted: list[tuple[str, Path]],
    empty: list[tuple[str, Path]],
) -> Any:
    if isinstance(value, dict):
        return {
            k: interpolate(v, (*path, k), env, missing, defaulted, empty) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            interpolate(v, (*path, i), env, missing, defaulted, empty) for i, v in enumerate(value)
        ]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = env.get(name)
        if got is None or (got == "" and default is not None):
            if default is not None:
                if default:
                    defaulted.append((name, path))
                return default
            missing.append((name, path))
            return ""
        if got == "":
            empty.append((name, path))
        return got

    return _VAR.sub(substitute, value)
