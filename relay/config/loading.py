"""Loading and checking a config file: reading, interpolating, validating, and compiling its
routes, every problem reported at once.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

import yaml
from marshmallow import ValidationError
from yaml.reader import ReaderError

from relay.config.positions import (
    MAX_VALUES,
    AliasLoop,
    Builder,
    Loader,
    Path,
    TooManyValues,
    field_name,
    line_column,
    position_of,
    yaml_error_hint,
)
from relay.config.problems import Collector, value_at
from relay.config.schemas import ConfigSchema, field_at, is_secret_path, must_not_be_empty
from relay.config.values import Config, ConfigCheck, MissingVariable
from relay.config.variables import Substitution, interpolate
from relay.destinations.registry import TYPES, Destination
from relay.errors import ConfigError, ConfigProblem
from relay.routing import Routes, compile_routes
from relay.sources.segment.settings import WEBHOOK_SOURCE


def _read_file(path: str) -> str | ConfigProblem:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        return ConfigProblem(
            path,
            None,
            None,
            "",
            f"cannot read the file: {exc.strerror or exc}",
            "check the path given to --config",
        )
    except UnicodeDecodeError as exc:
        return ConfigProblem(
            path,
            None,
            None,
            "",
            f"the file is not UTF-8 text (byte {exc.start + 1} is not)",
            "save the file as UTF-8",
        )


def load_config(path: str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem found.

    Routes are not compiled here (see `compile_config_routes`), and unset environment
    variables are not errors: they are listed in `Config.missing`.
    """
    env = os.environ if env is None else env
    text = _read_file(path)
    if isinstance(text, ConfigProblem):
        raise ConfigError([text])
    return parse_config(text, path, env)


def parse_config(text: str, file: str, env: Mapping[str, str]) -> Config:
    """Validate config text; raises ConfigError listing every problem found."""
    reading = _Reading(text, file, env)
    problems = (
        reading.problems
        + reading.routes_shape
        + [_missing_problem(file, reading.pos, m) for m in reading.blocking_missing]
    )
    if problems or reading.config is None:
        raise ConfigError(sorted_problems(problems))
    return reading.config


def check_config(
    path: str,
    env: Mapping[str, str] | None = None,
    *,
    require_env: bool = True,
    read_env: bool = True,
) -> ConfigCheck:
    """Every problem of a config file at once: its settings, unset environment variables
    (when `require_env`), and its routes, compiled against the destinations and sources the
    file declares even when some of their settings are wrong.

    With `read_env=False` (`--no-env`) the environment is not read at all (`env` is
    ignored): every variable counts as unset, which is then no problem, and what a
    variable's value would decide is not checked (a `${VAR:-default}` is checked with its
    default). The typed config then holds the defaults of the settings that could not be
    read: it describes the file, and is never one to run."""
    env = {} if not read_env else os.environ if env is None else env
    text = _read_file(path)
    if isinstance(text, ConfigProblem):
        return ConfigCheck(None, None, [text])
    return check_text(text, path, env, require_env=require_env, read_env=read_env)


def check_text(
    text: str,
    file: str,
    env: Mapping[str, str],
    *,
    require_env: bool = True,
    read_env: bool = True,
) -> ConfigCheck:
    """`check_config` for text already read."""
    reading = _Reading(text, file, env, read_env=read_env)
    if reading.data is None:  # not YAML, or not a mapping: nothing more can be read
        return ConfigCheck(None, None, sorted_problems(reading.problems))
    problems = list(reading.problems)
    missing = reading.missing if require_env and read_env else reading.blocking_missing
    problems.extend(_missing_problem(file, reading.pos, m) for m in missing)
    routes, route_problems = _compile(
        reading.data.get("routes"),
        file=file,
        positions=reading.pos,
        destinations=reading.declared_destinations,
        segment_sources=reading.declared_segment_sources,
        customerio_sources=reading.declared_customerio_sources,
    )
    problems.extend(route_problems)
    if problems or reading.config is None:
        return ConfigCheck(None, None, sorted_problems(problems))
    return ConfigCheck(reading.config, routes, [])


def sorted_problems(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """Problems in file order (those without a place first); ties keep their order."""
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0))


def compile_config_routes(config: Config) -> Routes:
    """The config's routes, compiled; raises ConfigError with every problem located."""
    routes, problems = _compile(
        config.routes,
        file=config.path,
        positions=config.positions,
        destinations=list(config.destinations),
        segment_sources=config.sources.segment.route_names,
        customerio_sources=config.sources.customerio.route_names,
    )
    if problems:
        raise ConfigError(sorted_problems(problems))
    return routes


def _compile(
    raw_routes: Any,
    *,
    file: str,
    positions: Mapping[Path, tuple[int, int]],
    destinations: Collection[str],
    segment_sources: Collection[str],
    customerio_sources: Collection[str],
) -> tuple[Routes, list[ConfigProblem]]:
    routes, problems = compile_routes(
        raw_routes,
        destinations=destinations,
        segment_sources=segment_sources,
        customerio_sources=customerio_sources,
        destination_kinds=tuple(TYPES),
    )
    located = []
    for p in problems:
        path: Path = p.path if p.path[:1] == ("routes",) else ("routes", *p.path)
        line, col = position_of(positions, path)
        if p.at_key and (*path, "<key>") in positions:
            line, col = positions[(*path, "<key>")]
        located.append(ConfigProblem(file, line, col, field_name(path), p.message, p.hint))
    return routes, located


def _missing_problem(
    file: str, pos: Mapping[Path, tuple[int, int]], m: MissingVariable
) -> ConfigProblem:
    line, col = position_of(pos, m.path)
    if m.empty:
        # Never the value: only that there is none.
        what = must_not_be_empty(m.path) or "value"
        return ConfigProblem(
            file,
            line,
            col,
            field_name(m.path),
            f"environment variable {m.name} is empty",
            f"set {m.name} to the {what} itself: an empty {what} is never valid",
        )
    if is_secret_path(m.path):
        hint = "export it before running relay; secrets belong in the environment"
    else:
        hint = f"export it, or write ${{{m.name}:-default}} to give a default"
    return ConfigProblem(
        file, line, col, field_name(m.path), f"environment variable {m.name} is not set", hint
    )


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(k) for k in value) if isinstance(value, dict) else ()


class _Reading:
    """One pass over config text: every settings problem, and what could be read anyway."""

    def __init__(
        self, text: str, file: str, env: Mapping[str, str], *, read_env: bool = True
    ) -> None:
        self.file = file
        # Without the environment every variable counts as unset (read_env=False).
        self.read_env = read_env
        env = env if read_env else {}
        self.pos: dict[Path, tuple[int, int]] = {}
        self.problems: list[ConfigProblem] = []
        self.data: dict[str, Any] | None = None
        self.config: Config | None = None
        self.missing: list[MissingVariable] = []
        self.variables: list[Substitution] = []
        # Unset variables whose empty value leaves a setting invalid: these are errors even
        # where unset variables are tolerated.
        self.blocking_missing: list[MissingVariable] = []
        self.routes_shape: list[ConfigProblem] = []
        self.declared_destinations: tuple[str, ...] = ()
        self.declared_segment_sources: tuple[str, ...] = ()
        self.declared_customerio_sources: tuple[str, ...] = ()
        raw = self._yaml(text)
        if raw is None:
            return
        self._read(raw, env)

    def _yaml(self, text: str) -> dict[str, Any] | None:
        file = self.file

        def fail(line: int | None, col: int | None, message: str, hint: str) -> None:
            self.problems.append(ConfigProblem(file, line, col, "", message, hint))

        try:
            loader = Loader(text)
            try:
                node = loader.get_single_node()
                if node is None:
                    # Reloading refuses it as well: an empty file is far more likely caught
                    # half-written than meant to drop every source and destination.
                    fail(
                        None,
                        None,
                        "the file holds no settings at all",
                        "write the settings into it; config/relay.yaml is a commented example"
                        " to start from",
                    )
                    return None
                builder = Builder(loader, file, self.pos)
                raw = builder.build(node, ())
                self.problems.extend(builder.problems)
            finally:
                loader.dispose()
        except AliasLoop as exc:
            mark, anchor = exc.problem_mark, exc.context_mark
            assert mark is not None and anchor is not None
            fail(
                mark.line + 1,
                mark.column + 1,
                f"not valid YAML: {exc.problem}",
                f"&{exc.anchor} starts at line {anchor.line + 1}, column {anchor.column + 1};"
                " an alias may only repeat a node that ends before it",
            )
            return None
        except TooManyValues as exc:
            fail(
                exc.mark.line + 1,
                exc.mark.column + 1,
                f"the aliases in this file expand to more than {MAX_VALUES} values",
                "an alias repeats a whole node, so aliases of nodes full of aliases multiply;"
                " write the values out instead",
            )
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            fail(
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
                f"not valid YAML: {exc.problem or exc}",
                yaml_error_hint(exc, text),
            )
            return None
        except ReaderError as exc:
            line, col = line_column(text, exc.position)
            what = (
                f"the control character U+{exc.character:04X}"
                if isinstance(exc.character, int)
                else "a character"
            )
            fail(
                line,
                col,
                f"not valid YAML: {what} is not allowed in a YAML file",
                "delete it: most editors do not show it; in a double-quoted value, write it"
                f" as the escape \\x{exc.character:02x}"
                if isinstance(exc.character, int)
                else "delete it",
            )
            return None
        except yaml.YAMLError as exc:
            fail(None, None, f"not valid YAML: {exc}", "fix the YAML syntax")
            return None
        except RecursionError:
            fail(
                None,
                None,
                "the file nests lists and mappings too deeply to be read",
                "use fewer levels of nesting",
            )
            return None
        if not isinstance(raw, dict):
            top_line, top_col = position_of(self.pos, ())
            hint = (
                "the file is a list: write keys such as destinations: and routes: at the"
                ' start of lines, without "- "'
                if isinstance(raw, list)
                else "write keys such as destinations: and routes: at the start of lines;"
                " config/relay.yaml is a commented example"
            )
            fail(
                top_line,
                top_col,
                "the file must hold a mapping with keys such as server, sources, routes",
                hint,
            )
            return None
        return raw

    def _read(self, raw: dict[str, Any], env: Mapping[str, str]) -> None:
        file, pos = self.file, self.pos
        # Top-level x-… keys hold YAML anchors for use elsewhere in the file; relay reads
        # only what the aliases bring where they are used.
        raw = {k: v for k, v in raw.items() if not k.startswith("x-")}
        found: list[Substitution] = []
        data = interpolate(raw, (), env, found)
        self.data = data
        self.variables = found
        missing_raw = [(s.name, s.path) for s in found if s.unset]
        defaulted_raw = [(s.name, s.path) for s in found if s.took_default and s.default]
        empty_raw = [(s.name, s.path) for s in found if s.empty]
        # A variable that is set but empty, for a key or a Site ID, is as good as unset:
        # `relay check` reports it, and a running relay leaves that destination or source
        # unconfigured, exactly as when the variable is unset.
        empty_paths = {p for _, p in empty_raw if must_not_be_empty(p) and value_at(data, p) == ""}
        missing_raw += [(n, p) for n, p in empty_raw if p in empty_paths]
        missing = [
            MissingVariable(n, p, position_of(pos, p)[0], empty=p in empty_paths)
            for n, p in missing_raw
        ]
        defaulted = [MissingVariable(n, p, position_of(pos, p)[0]) for n, p in defaulted_raw]
        self.missing = missing

        raw_sources = data.get("sources")
        seg = raw_sources.get("segment") if isinstance(raw_sources, dict) else None
        cio = raw_sources.get("customerio") if isinstance(raw_sources, dict) else None
        self.declared_segment_sources = (
            *_names(seg.get("write_keys") if isinstance(seg, dict) else None),
            WEBHOOK_SOURCE,
        )
        self.declared_customerio_sources = _names(
            cio.get("signing_keys") if isinstance(cio, dict) else None
        )
        raw_destinations = data.get("destinations")
        self.declared_destinations = tuple(
            f"{kind}.{name}"
            for kind in TYPES
            for name in _names(
                raw_destinations.get(kind) if isinstance(raw_destinations, dict) else None
            )
        )

        # An unset variable is reported once, by name; what its empty value then breaks
        # (a port that is not a number) would only repeat the same problem.
        skip = {p for _, p in missing_raw}
        empty_by_path = {p: n for n, p in empty_raw}
        collector = Collector(file, pos, skip=skip, empty=empty_by_path)
        top, destinations = self._validate(data, collector, missing_raw)
        if not self.read_env and collector.masked and not collector.problems:
            # Without the environment, what a variable's value would decide cannot be
            # checked: those settings are left out, so that their defaults stand in for
            # them in the typed config, and the rest is read again.
            masked = collector.masked
            collector = Collector(file, pos, skip=skip, empty=empty_by_path)
            top, destinations = self._validate(_without(data, masked), collector, missing_raw)
        self.problems.extend(collector.problems)
        self.blocking_missing = [m for m in missing if m.path in collector.masked]
        if collector.problems or collector.masked or top is None:
            return

        self.config = Config(
            path=file,
            server=top["server"],
            storage=top["storage"],
            admin=top["admin"],
            sources=top["sources"],
            destinations=destinations,
            routes=top["routes"],
            missing=missing,
            defaulted=defaulted,
            positions=pos,
            variables=found,
            values=data,
        )

    def _validate(
        self, data: dict[str, Any], collector: Collector, missing_raw: list[tuple[str, Path]]
    ) -> tuple[dict[str, Any] | None, dict[str, Destination]]:
        """The typed sections and destinations of interpolated data, every problem into
        `collector`."""
        missing_paths = collector.skip
        schema = ConfigSchema()
        top: dict[str, Any] | None = None
        try:
            top = schema.load(data)
        except ValidationError as err:
            collector.add_validation(err, (), schema)
            # A `routes` that is not a list is also reported, with a hint, by the route
            # compiler; `relay check` shows only that one.
            self.routes_shape = [p for p in collector.problems if p.field == "routes"]
            collector.problems = [p for p in collector.problems if p.field != "routes"]
        for path, hint in _written_empty(data, ()):
            if path not in missing_paths:
                collector.add(path, "must not be empty", hint)

        # Destinations are validated one by one, even when the rest failed, so that one run
        # of `relay check` lists every problem in the file.
        destinations: dict[str, Destination] = {}
        raw_destinations = data.get("destinations")
        for kind, dest_type in TYPES.items():
            group = raw_destinations.get(kind) if isinstance(raw_destinations, dict) else None
            dest_schema = dest_type.schema()
            for name, body in group.items() if isinstance(group, dict) else ():
                dpath: Path = ("destinations", kind, name)
                if not isinstance(body, dict):
                    collector.add(
                        dpath,
                        "must be a mapping of settings",
                        f"write its settings as a mapping, e.g. {name}: {dest_type.example}",
                    )
                    continue
                for path, message, hint in dest_type.credential_problems(body, dpath):
                    if path not in missing_paths:
                        collector.add(path, message, hint)
                try:
                    values = dest_schema.load(body)
                except ValidationError as err:
                    collector.add_validation(err, dpath, dest_schema)
                    continue
                dest_missing = tuple(
                    sorted({n for n, p in missing_raw if p[: len(dpath)] == dpath})
                )
                destinations[f"{kind}.{name}"] = dest_type.settings(name, values, dest_missing)
        return top, destinations


def _without(data: Any, paths: Collection[Path], at: Path = ()) -> Any:
    """`data` without the values at `paths`."""
    if isinstance(data, dict):
        return {k: _without(v, paths, (*at, k)) for k, v in data.items() if (*at, k) not in paths}
    if isinstance(data, list):
        return [_without(v, paths, (*at, i)) for i, v in enumerate(data) if (*at, i) not in paths]
    return data


def _written_empty(data: Any, path: Path) -> list[tuple[Path, str]]:
    """Values written empty in the file where an empty value is never valid (a key that
    would authenticate nothing), each with what to write instead."""
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        found = field_at(path) if data == "" else None
        hint = found.metadata.get("empty_hint") if found is not None else None
        return [(path, hint)] if hint else []
    return [found for key, value in items for found in _written_empty(value, (*path, key))]
