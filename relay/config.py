"""Load relay's YAML config: ${VAR} interpolation, marshmallow validation, errors with file:line.

Secrets come from the environment; no value that came from the environment is ever put
into an error message or a log line.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from relay.errors import ConfigError, ConfigProblem
from relay.routing import Routes, compile_routes

Path = tuple[str | int, ...]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

CUSTOMERIO_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
SEGMENT_HOSTS = {"us": "https://api.segment.io", "eu": "https://events.eu1.segmentapis.com"}
SEGMENT_WEBHOOK_SOURCE = "webhook"


# --------------------------------------------------------------------------- loaded values


@dataclass(frozen=True)
class MissingVariable:
    name: str
    path: Path
    line: int | None


@dataclass(frozen=True)
class CustomerIODestination:
    name: str
    site_id: str
    api_key: str
    region: str
    base_url: str
    rate_limit: float
    api: str
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"customerio.{self.name}"


@dataclass(frozen=True)
class SegmentDestination:
    name: str
    write_key: str
    region: str
    base_url: str
    rate_limit: float
    batch_size: int
    concurrency: int
    timeout: float
    max_age: float
    missing: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"segment.{self.name}"


Destination = CustomerIODestination | SegmentDestination


@dataclass(frozen=True)
class Config:
    path: str
    host: str
    port: int
    shutdown_timeout: float
    sqlite_path: str
    max_pending: int
    max_size_mb: int | None
    redis_url: str | None
    segment_write_keys: dict[str, str]
    segment_webhook_secret: str | None
    segment_dedup_window: float
    customerio_signing_keys: dict[str, tuple[str, ...]]
    customerio_timestamp_tolerance: float | None
    customerio_dedup_window: float
    customerio_profile: str
    destinations: dict[str, Destination]
    routes: list[Any]
    missing: list[MissingVariable] = field(default_factory=list)
    # Variables that were unset and replaced by their ${VAR:-default}.
    defaulted: list[MissingVariable] = field(default_factory=list)
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # Every source name the file declares, including those whose key is unset (routes may
    # name them; such a source simply never authenticates until its key is set).
    segment_sources: tuple[str, ...] = ()
    customerio_sources: tuple[str, ...] = ()

    def locate(self, path: Path) -> tuple[int | None, int | None]:
        return _locate(self.positions, path)


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


# --------------------------------------------------------------------------- schemas


class Duration(fields.Field[float]):
    """Seconds as a number, or a string such as `30s`, `15m`, `24h`, `7d`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool):
            raise ValidationError("must be a duration such as 30s, 15m, 24h or 7d")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        else:
            raise ValidationError("must be a duration such as 30s, 15m, 24h or 7d")
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


class StrictStr(fields.String):
    """A string that refuses numbers and booleans instead of silently converting them."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a numeric site id written without quotes is still an id
        return super()._deserialize(value, attr, data, **kwargs)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ServerSchema(_Strict):
    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=8080, validate=validate.Range(0, 65535))
    shutdown_timeout = Duration(load_default=10.0)


class SqliteSchema(_Strict):
    path = fields.String(load_default="var/relay.db")
    max_pending = fields.Integer(load_default=5_000_000, validate=validate.Range(min=1))
    max_size_mb = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))


class RedisSchema(_Strict):
    url = fields.String(required=True)


class StorageSchema(_Strict):
    sqlite = fields.Nested(SqliteSchema, load_default=lambda: SqliteSchema().load({}))
    redis = fields.Nested(RedisSchema, load_default=None, allow_none=True)


class SegmentSourceSchema(_Strict):
    write_keys = fields.Dict(keys=fields.String(), values=StrictStr(), load_default=dict)
    webhook_secret = fields.String(load_default=None, allow_none=True)
    dedup_window = Duration(load_default=86400.0)


class CustomerIOSourceSchema(_Strict):
    signing_keys = fields.Dict(keys=fields.String(), values=KeyList(), load_default=dict)
    timestamp_tolerance = Duration(load_default=None, allow_none=True)
    dedup_window = Duration(load_default=7 * 86400.0)
    profile = fields.String(load_default="default", validate=validate.OneOf(["default", "raw"]))


class SourcesSchema(_Strict):
    segment = fields.Nested(
        SegmentSourceSchema, load_default=lambda: SegmentSourceSchema().load({})
    )
    customerio = fields.Nested(
        CustomerIOSourceSchema, load_default=lambda: CustomerIOSourceSchema().load({})
    )


_URL = validate.URL(require_tld=False, schemes={"http", "https"})


class CustomerIODestinationSchema(_Strict):
    site_id = StrictStr(required=True)
    api_key = StrictStr(required=True)
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(load_default=None, allow_none=True, validate=_URL)
    rate_limit = fields.Float(
        load_default=100.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    api = fields.String(load_default="v2", validate=validate.OneOf(["v1", "v2"]))
    batch_size = fields.Integer(load_default=100, validate=validate.Range(1, 1000))
    concurrency = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)


class SegmentDestinationSchema(_Strict):
    write_key = StrictStr(required=True)
    region = fields.String(load_default="us", validate=validate.OneOf(["us", "eu"]))
    base_url = fields.String(load_default=None, allow_none=True, validate=_URL)
    rate_limit = fields.Float(
        load_default=50.0, validate=validate.Range(min=0, min_inclusive=False)
    )
    batch_size = fields.Integer(load_default=500, validate=validate.Range(1, 2500))
    concurrency = fields.Integer(load_default=2, validate=validate.Range(1, 64))
    timeout = Duration(load_default=10.0)
    max_age = Duration(load_default=86400.0)


class DestinationsSchema(_Strict):
    customerio = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)
    segment = fields.Dict(keys=fields.String(), values=fields.Raw(), load_default=dict)


class ConfigSchema(_Strict):
    server = fields.Nested(ServerSchema, load_default=lambda: ServerSchema().load({}))
    storage = fields.Nested(StorageSchema, load_default=lambda: StorageSchema().load({}))
    sources = fields.Nested(SourcesSchema, load_default=lambda: SourcesSchema().load({}))
    destinations = fields.Nested(
        DestinationsSchema, load_default=lambda: DestinationsSchema().load({})
    )
    routes = fields.List(fields.Raw(), load_default=list)


_SECRET_FIELDS = {"api_key", "write_key", "webhook_secret"}
_SECRET_PARENTS = {"write_keys", "signing_keys"}


# --------------------------------------------------------------------------- YAML with positions


def _build(
    node: yaml.Node, path: Path, loader: yaml.SafeLoader, pos: dict[Path, tuple[int, int]]
) -> Any:
    pos[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                key = str(key)
            child = (*path, key if isinstance(key, str) else str(key))
            out[child[-1]] = _build(value_node, child, loader, pos)
            # A key's own position is the most useful place to point at for key errors.
            pos[(*child, "<key>")] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), loader, pos) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _locate(pos: Mapping[Path, tuple[int, int]], path: Path) -> tuple[int | None, int | None]:
    for n in range(len(path), -1, -1):
        prefix = path[:n]
        if n == len(path) and (*prefix, "<key>") in pos and prefix not in pos:
            return pos[(*prefix, "<key>")]
        if prefix in pos:
            return pos[prefix]
    return None, None


def _interpolate(
    value: Any,
    path: Path,
    env: Mapping[str, str],
    missing: list[tuple[str, Path]],
    defaulted: list[tuple[str, Path]],
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), env, missing, defaulted) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), env, missing, defaulted) for i, v in enumerate(value)]
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
        return got

    return _VAR.sub(substitute, value)


def _field_name(path: Path) -> str:
    return ".".join(str(p) for p in path)


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


class _Collector:
    """Turns validation messages into located problems, with hints for the usual mistakes."""

    def __init__(
        self, file: str, pos: dict[Path, tuple[int, int]], skip: Collection[Path] = ()
    ) -> None:
        self.file = file
        self.pos = pos
        self.skip = frozenset(skip)
        self.problems: list[ConfigProblem] = []
        self.masked: set[Path] = set()

    def add(self, path: Path, message: str, hint: str | None = None) -> None:
        if path in self.skip:
            self.masked.add(path)
            return
        line, col = _locate(self.pos, path)
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
        self.problems.append(ConfigProblem(self.file, line, col, _field_name(path), message, hint))

    def add_validation(self, err: ValidationError, base: Path, schema: Schema) -> None:
        for path, message in _flatten(err.messages, base):
            hint = None
            if message == "Unknown field.":
                hint = _did_you_mean(str(path[-1]), _schema_at(schema, path[len(base) :]))
            self.add(path, message, hint)


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


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    if choices:
        return "known keys: " + ", ".join(choices)
    return None


# --------------------------------------------------------------------------- loading


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
    except UnicodeDecodeError:
        return ConfigProblem(path, None, None, "", "the file is not UTF-8 text")


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
    path: str, env: Mapping[str, str] | None = None, *, require_env: bool = True
) -> ConfigCheck:
    """Every problem of a config file at once: its settings, unset environment variables
    (when `require_env`), and its routes, compiled against the destinations and sources the
    file declares even when some of their settings are wrong."""
    env = os.environ if env is None else env
    text = _read_file(path)
    if isinstance(text, ConfigProblem):
        return ConfigCheck(None, None, [text])
    return check_text(text, path, env, require_env=require_env)


def check_text(
    text: str, file: str, env: Mapping[str, str], *, require_env: bool = True
) -> ConfigCheck:
    """`check_config` for text already read."""
    reading = _Reading(text, file, env)
    if reading.data is None:  # not YAML, or not a mapping: nothing more can be read
        return ConfigCheck(None, None, sorted_problems(reading.problems))
    problems = list(reading.problems)
    missing = reading.missing if require_env else reading.blocking_missing
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
        segment_sources=config.segment_sources or tuple(config.segment_write_keys),
        customerio_sources=config.customerio_sources or tuple(config.customerio_signing_keys),
    )
    if problems:
        raise ConfigError(sorted_problems(problems))
    return routes


# Route problems about a mapping key itself (an unknown key, a misspelt field name, a
# property renamed twice) point at the key; every other problem points at the value.
_KEY_PROBLEMS = re.compile(
    r'^(unknown key |unknown condition |unknown comparison |a match key must |"[^"]*" is not a'
    r' field path|.* have no "|from: customerio routes match the Customer\.io webhook, which'
    r' has no |"[^"]*" is removed by drop_properties |"[^"]*" and "[^"]*" are both renamed )'
)


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
        segment_sources=[*segment_sources, SEGMENT_WEBHOOK_SOURCE],
        customerio_sources=customerio_sources,
    )
    located = []
    for p in problems:
        path: Path = p.path if p.path[:1] == ("routes",) else ("routes", *p.path)
        line, col = _locate(positions, path)
        if _KEY_PROBLEMS.match(p.message) and (*path, "<key>") in positions:
            line, col = positions[(*path, "<key>")]
        located.append(ConfigProblem(file, line, col, _field_name(path), p.message, p.hint))
    return routes, located


def _missing_problem(
    file: str, pos: Mapping[Path, tuple[int, int]], m: MissingVariable
) -> ConfigProblem:
    line, col = _locate(pos, m.path)
    if is_secret_path(m.path):
        hint = "export it before running relay; secrets belong in the environment"
    else:
        hint = f"export it, or write ${{{m.name}:-default}} to give a default"
    return ConfigProblem(
        file, line, col, _field_name(m.path), f"environment variable {m.name} is not set", hint
    )


def _names(value: Any) -> tuple[str, ...]:
    return tuple(str(k) for k in value) if isinstance(value, dict) else ()


class _Reading:
    """One pass over config text: every settings problem, and what could be read anyway."""

    def __init__(self, text: str, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.pos: dict[Path, tuple[int, int]] = {}
        self.problems: list[ConfigProblem] = []
        self.data: dict[str, Any] | None = None
        self.config: Config | None = None
        self.missing: list[MissingVariable] = []
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
        try:
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                raw = {} if node is None else _build(node, (), loader, self.pos)
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            col = mark.column + 1 if mark else None
            hint = "fix the YAML syntax at this place"
            start = exc.context_mark
            if exc.context and start is not None and exc.problem_mark is not None:
                # Where the unclosed bracket or quote began is usually where the mistake is.
                hint = (
                    f"{exc.context} that starts at line {start.line + 1}, column {start.column + 1}"
                )
            self.problems.append(
                ConfigProblem(file, line, col, "", f"not valid YAML: {exc.problem or exc}", hint)
            )
            return None
        except yaml.YAMLError as exc:
            self.problems.append(ConfigProblem(file, None, None, "", f"not valid YAML: {exc}"))
            return None
        if not isinstance(raw, dict):
            collector = _Collector(file, self.pos)
            collector.add(
                (), "the file must hold a mapping with keys such as server, sources, routes"
            )
            self.problems.extend(collector.problems)
            return None
        return raw

    def _read(self, raw: dict[str, Any], env: Mapping[str, str]) -> None:
        file, pos = self.file, self.pos
        missing_raw: list[tuple[str, Path]] = []
        defaulted_raw: list[tuple[str, Path]] = []
        data = _interpolate(raw, (), env, missing_raw, defaulted_raw)
        self.data = data
        missing = [MissingVariable(n, p, _locate(pos, p)[0]) for n, p in missing_raw]
        defaulted = [MissingVariable(n, p, _locate(pos, p)[0]) for n, p in defaulted_raw]
        self.missing = missing
        missing_paths = {p for _, p in missing_raw}
        # An unset variable is reported once, by name; what its empty value then breaks
        # (a port that is not a number) would only repeat the same problem.
        collector = _Collector(file, pos, skip=missing_paths)

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

        storage = data.get("storage")
        if isinstance(storage, dict) and storage.get("redis") is not None:
            # Better refused than silently ignored: the Redis backend is not built yet.
            collector.add(
                ("storage", "redis"),
                "the Redis backend is not available in this version of relay",
                "remove storage.redis: events are stored in SQLite, under storage.sqlite",
            )

        raw_sources = data.get("sources")
        seg = raw_sources.get("segment") if isinstance(raw_sources, dict) else None
        cio = raw_sources.get("customerio") if isinstance(raw_sources, dict) else None
        self.declared_segment_sources = _names(
            seg.get("write_keys") if isinstance(seg, dict) else None
        )
        self.declared_customerio_sources = _names(
            cio.get("signing_keys") if isinstance(cio, dict) else None
        )

        # Destinations are validated one by one, even when the rest failed, so that one run
        # of `relay check` lists every problem in the file.
        destinations: dict[str, Destination] = {}
        declared: list[str] = []
        raw_destinations = data.get("destinations")
        for kind, dest_schema in (
            ("customerio", CustomerIODestinationSchema()),
            ("segment", SegmentDestinationSchema()),
        ):
            group = raw_destinations.get(kind) if isinstance(raw_destinations, dict) else None
            for name, body in group.items() if isinstance(group, dict) else ():
                declared.append(f"{kind}.{name}")
                dpath: Path = ("destinations", kind, name)
                if not isinstance(body, dict):
                    collector.add(
                        dpath,
                        "must be a mapping of settings",
                        "see the destinations section of the README",
                    )
                    continue
                if kind == "customerio":
                    _check_customerio_credentials(body, dpath, missing_paths, collector)
                try:
                    values = dest_schema.load(body)
                except ValidationError as err:
                    collector.add_validation(err, dpath, dest_schema)
                    continue
                dest_missing = tuple(
                    sorted({n for n, p in missing_raw if p[: len(dpath)] == dpath})
                )
                if kind == "customerio":
                    destinations[f"customerio.{name}"] = _customerio_destination(
                        name, values, dest_missing
                    )
                else:
                    destinations[f"segment.{name}"] = _segment_destination(
                        name, values, dest_missing
                    )
        self.declared_destinations = tuple(declared)
        self.problems.extend(collector.problems)
        self.blocking_missing = [m for m in missing if m.path in collector.masked]
        if collector.problems or collector.masked or top is None:
            return

        sources = top["sources"]
        storage = top["storage"]
        server = top["server"]
        self.config = Config(
            path=file,
            host=server["host"],
            port=server["port"],
            shutdown_timeout=server["shutdown_timeout"],
            sqlite_path=storage["sqlite"]["path"],
            max_pending=storage["sqlite"]["max_pending"],
            max_size_mb=storage["sqlite"]["max_size_mb"],
            redis_url=storage["redis"]["url"] if storage.get("redis") else None,
            segment_write_keys={k: v for k, v in sources["segment"]["write_keys"].items() if v},
            segment_webhook_secret=sources["segment"]["webhook_secret"] or None,
            segment_dedup_window=sources["segment"]["dedup_window"],
            customerio_signing_keys={
                k: tuple(x for x in v if x)
                for k, v in sources["customerio"]["signing_keys"].items()
                if any(v)
            },
            customerio_timestamp_tolerance=sources["customerio"]["timestamp_tolerance"],
            customerio_dedup_window=sources["customerio"]["dedup_window"],
            customerio_profile=sources["customerio"]["profile"],
            destinations=destinations,
            routes=top["routes"],
            missing=missing,
            defaulted=defaulted,
            positions=pos,
            segment_sources=tuple(sources["segment"]["write_keys"]),
            customerio_sources=tuple(sources["customerio"]["signing_keys"]),
        )


def _check_customerio_credentials(
    body: dict[str, Any], path: Path, missing_paths: set[Path], collector: _Collector
) -> None:
    """Credentials Customer.io would refuse, checked even when other settings are wrong."""
    site_id, api_key = body.get("site_id"), body.get("api_key")
    if (*path, "site_id") not in missing_paths and site_id == "":
        collector.add(
            (*path, "site_id"),
            "must not be empty",
            "copy the Site ID from Customer.io: Settings > API Credentials",
        )
    if (
        (*path, "api_key") not in missing_paths
        and isinstance(api_key, str)
        and len(api_key) not in (20, 64)
    ):
        # Never echo the key itself: only its length.
        collector.add(
            (*path, "api_key"),
            f"must be 20 or 64 characters long, this one has {len(api_key)}",
            "copy the Track API key from Customer.io: Settings > API Credentials",
        )


def _customerio_destination(
    name: str, v: dict[str, Any], missing: tuple[str, ...]
) -> CustomerIODestination:
    site_id, api_key = v["site_id"], v["api_key"]
    return CustomerIODestination(
        name=name,
        site_id=site_id,
        api_key=api_key,
        region=v["region"],
        base_url=(v["base_url"] or CUSTOMERIO_HOSTS[v["region"]]).rstrip("/"),
        rate_limit=v["rate_limit"],
        api=v["api"],
        batch_size=v["batch_size"],
        concurrency=v["concurrency"] or (16 if v["api"] == "v1" else 4),
        timeout=v["timeout"],
        max_age=v["max_age"],
        missing=missing,
    )


def _segment_destination(
    name: str, v: dict[str, Any], missing: tuple[str, ...]
) -> SegmentDestination:
    return SegmentDestination(
        name=name,
        write_key=v["write_key"],
        region=v["region"],
        base_url=(v["base_url"] or SEGMENT_HOSTS[v["region"]]).rstrip("/"),
        rate_limit=v["rate_limit"],
        batch_size=v["batch_size"],
        concurrency=v["concurrency"],
        timeout=v["timeout"],
        max_age=v["max_age"],
        missing=missing,
    )


def is_secret_path(path: Path) -> bool:
    """Whether a config path holds a secret (its value must never be shown)."""
    return bool(path) and (
        path[-1] in _SECRET_FIELDS or (len(path) >= 2 and path[-2] in _SECRET_PARENTS)
    )


__all__ = [
    "Config",
    "ConfigCheck",
    "ConfigError",
    "CustomerIODestination",
    "Destination",
    "MissingVariable",
    "SegmentDestination",
    "check_config",
    "check_text",
    "compile_config_routes",
    "load_config",
    "parse_config",
    "sorted_problems",
]
