"""The dependency floors pyproject.toml declares, as exact pins (`name>=X` as `name==X`), for
scripts/test-floors: installing exactly those proves that relay works with them.

    python scripts/floors.py > constraints.txt

Lint and type-check tools (ruff, mypy, stubs) are left out: they run at their current
versions, on relay installed at its floors.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TOOLS = ("ruff", "mypy", "types-")
_FLOOR = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)")


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    pins = []
    for requirement in wanted:
        match = _FLOOR.match(requirement)
        if match is None or match.group(1).startswith(TOOLS):
            continue
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(floors(root / "pyproject.toml")))
    sys.exit(0)
