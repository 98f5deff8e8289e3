"""What a loaded config is: the typed settings of each section, as the components that own
them define them, and what loading learned about the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from relay.admin.settings import AdminSettings
from relay.config.positions import Path
from relay.config.schemas import ServerSettings, SourcesSettings, StorageSettings
from relay.config.variables import Substitution
from relay.destinations.registry import Destination
from relay.errors import ConfigProblem
from relay.routing import Routes


@dataclass(frozen=True)
class MissingVariable:
    """A variable a setting needs that is unset, or set but empty where a value must not be
    empty (a key, a Site ID): relay treats both alike."""

    name: str
    path: Path
    line: int | None
    empty: bool = False


@dataclass(frozen=True)
class Config:
    path: str
    server: ServerSettings
    storage: StorageSettings
    sources: SourcesSettings
    admin: AdminSettings
    # By key: customerio.main, segment.analytics.
    destinations: dict[str, Destination]
    routes: list[Any]
    missing: list[MissingVariable] = field(default_factory=list)
    # Variables that were unset and replaced by their ${VAR:-default}.
    defaulted: list[MissingVariable] = field(default_factory=list)
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Every ${VAR} of the file, where it is and what it gave, in file order.
    variables: list[Substitution] = field(default_factory=list)
    # The file's settings after ${VAR} substitution, secrets included (never shown).
    values: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ConfigCheck:
    """Everything `relay check` learns about a file.

    `config` and `routes` are set when the file can run (no problem other than, when they
    are not required, unset environment variables); `problems` lists every problem found,
    in file order.
    """

    config: Config | None
    routes: Routes | None
    problems: list[ConfigProblem]
