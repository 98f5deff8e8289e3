"""Load relay's YAML config: ${VAR} interpolation, validation against the sections each
component owns, and every problem with its file:line and a hint.

Secrets come from the environment; no value that came from the environment is ever put
into an error message or a log line.
"""

from __future__ import annotations

from relay.config.loading import (
    check_config,
    check_text,
    compile_config_routes,
    load_config,
    parse_config,
    sorted_problems,
)
from relay.config.schemas import is_secret_path
from relay.config.show import shown_config
from relay.config.values import Config, ConfigCheck, MissingVariable
from relay.errors import ConfigError

__all__ = [
    "Config",
    "ConfigCheck",
    "ConfigError",
    "MissingVariable",
    "check_config",
    "check_text",
    "compile_config_routes",
    "is_secret_path",
    "load_config",
    "parse_config",
    "shown_config",
    "sorted_problems",
]
