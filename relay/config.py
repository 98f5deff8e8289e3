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
from yaml.reader import ReaderError

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
    """A variable a setting needs that is unset, or set but empty where a value must not be
    empty (a key, a Site ID): relay treats both alike."""

    name: str
    path: Path
    line: int | None
    empty: bool = False


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
    # A connection without a complete request head for this long (idle, or sending its
    # headers slowly) is closed; a body must arrive within body_timeout (408 otherwise).
    idle_timeout: float
    body_timeout: float
    sqlite_path: str
    max_pending: int
    max_size_mb: int | None
    min_free_mb: float
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
    idle_timeout = Duration(load_default=15.0, validate=validate.Range(min=0, min_inclusive=False))
    body_timeout = Duration(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False))


class SqliteSchema(_Strict):
    path = fields.String(load_default="var/relay.db")
    max_pending = fields.Integer(load_default=5_000_000, validate=validate.Range(min=1))
    max_size_mb = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    min_free_mb = fields.Float(load_default=100.0, validate=validate.Range(min=0))


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


_MERGE_TAG = "tag:yaml.org,2002:merge"
# More values than any config holds: beyond this, aliases of aliases are multiplying a
# small file into a huge one ("billion laughs"), and reading it would never finish.
_MAX_VALUES = 200_000
# What YAML counts as a line break, for turning a character position into line:column.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


class _AliasLoop(yaml.MarkedYAMLError):
    """An alias inside the node it names: the value would contain itself, without end."""

    def __init__(self, anchor: str, anchor_mark: Any, alias_mark: Any) -> None:
        super().__init__(
            problem=f"the alias *{anchor} is inside &{anchor}, the node it repeats, which"
            " would then contain itself without end",
            problem_mark=alias_mark,
            context_mark=anchor_mark,
        )
        self.anchor = anchor


class _TooManyValues(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        super().__init__()
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing aliases that refer to a node they are inside of."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # Anchors of the nodes being composed, with where each starts.
        self._open_anchors: dict[str, Any] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        anchor = getattr(event, "anchor", None)
        if not isinstance(anchor, str):
            return super().compose_node(parent, index)
        if isinstance(event, yaml.AliasEvent):
            start = self._open_anchors.get(anchor)
            if start is not None:
                raise _AliasLoop(anchor, start, event.start_mark)
            return super().compose_node(parent, index)
        self._open_anchors[anchor] = event.start_mark
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop(anchor, None)


def _key_name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


class _Builder:
    """Python values from composed YAML, the position of every path, and the keys given
    twice in one mapping (YAML itself silently keeps the last one)."""

    def __init__(self, loader: yaml.SafeLoader, file: str, pos: dict[Path, tuple[int, int]]):
        self.loader = loader
        self.file = file
        self.pos = pos
        self.problems: list[ConfigProblem] = []
        self._checked: set[int] = set()
        self._count = 0

    def build(self, node: yaml.Node, path: Path) -> Any:
        self._count += 1
        if self._count > _MAX_VALUES:
            raise _TooManyValues(node.start_mark)
        self.pos[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            # An aliased node is built once per alias, but its keys are checked once, and
            # before merge keys (<<) are expanded: a key that overrides a merged one is meant.
            if id(node) not in self._checked:
                self._checked.add(id(node))
                self._check_duplicates(node, path)
            self.loader.flatten_mapping(node)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                name = _key_name(self.loader.construct_object(key_node, deep=True))
                child = (*path, name)
                out[name] = self.build(value_node, child)
                # A key's own position is the most useful place to point at for key errors.
                self.pos[(*child, "<key>")] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _check_duplicates(self, node: yaml.MappingNode, path: Path) -> None:
        first: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            name = _key_name(self.loader.construct_object(key_node, deep=True))
            earlier = first.setdefault(name, key_node)
            if earlier is key_node:
                continue
            mark = key_node.start_mark
            self.problems.append(
                ConfigProblem(
                    self.file,
                    mark.line + 1,
                    mark.column + 1,
                    _field_name((*path, name)),
                    f'the key "{name}" is given twice: it is already set at line'
                    f" {earlier.start_mark.line + 1}, column {earlier.start_mark.column + 1}",
                    "remove one; YAML keeps only the last",
                )
            )


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character position, counting lines as YAML does."""
    line, start = 1, 0
    for m in _LINE_BREAK.finditer(text, 0, position):
        line, start = line + 1, m.end()
    return line, position - start + 1


def _yaml_error_hint(exc: yaml.MarkedYAMLError, text: str) -> str:
    problem = exc.problem or ""
    mark = exc.problem_mark
    if ("'\\t'" in problem or " tab " in problem) and mark is not None:
        lines = text.splitlines()
        before = lines[mark.line][: mark.column] if mark.line < len(lines) else ""
        if not before.strip():
            return "indent with spaces, not tabs"
        return "write spaces, not tabs: YAML does not allow a tab here"
    start = exc.context_mark
    if exc.context and start is not None and mark is not None:
        # Where the unclosed bracket or quote began is usually where the mistake is.
        return f"{exc.context} that starts at line {start.line + 1}, column {start.column + 1}"
    return "fix the YAML syntax at this place"


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
    empty: list[tuple[str, Path]],
) -> Any:
    if isinstance(value, dict):
        return {
            k: _interpolate(v, (*path, k), env, missing, defaulted, empty) for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, (*path, i), env, missing, defaulted, empty) for i, v in enumerate(value)
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


def _must_not_be_empty(path: Path) -> str | None:
    """What the setting at `path` is, when it is one that is never valid empty (an empty
    key or Site ID authenticates nothing); None otherwise."""
    if len(path) == 4 and path[:3] == ("sources", "segment", "write_keys"):
        return "write key"
    if len(path) in (4, 5) and path[:3] == ("sources", "customerio", "signing_keys"):
        return "signing key"
    if len(path) == 4 and path[:2] == ("destinations", "customerio"):
        return {"site_id": "Site ID", "api_key": "API key"}.get(str(path[3]))
    if len(path) == 4 and path[:2] == ("destinations", "segment") and path[3] == "write_key":
        return "write key"
    return None


def _value_at(data: Any, path: Path) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


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
    """Turns validation messages into located problems, each with a hint that says what to
    write instead."""

    def __init__(
        self,
        file: str,
        pos: dict[Path, tuple[int, int]],
        skip: Collection[Path] = (),
        empty: Mapping[Path, str] | None = None,
    ) -> None:
        self.file = file
        self.pos = pos
        self.skip = frozenset(skip)
        # Paths whose value came from a variable that is set but empty, by variable name.
        self.empty = dict(empty or {})
        self.problems: list[ConfigProblem] = []
        self.masked: set[Path] = set()

    def add(self, path: Path, message: str, hint: str) -> None:
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
        if path in self.empty:
            hint = (
                f"it comes from the environment variable {self.empty[path]}, which is empty; {hint}"
            )
        self.problems.append(ConfigProblem(self.file, line, col, _field_name(path), message, hint))

    def add_validation(self, err: ValidationError, base: Path, schema: Schema) -> None:
        for raw_path, message in _flatten(err.messages, base):
            rel, found = _resolve(schema, raw_path[len(base) :])
            path = (*base, *rel)
            if message == "Unknown field.":
                hint = _did_you_mean(str(path[-1]), _schema_at(schema, rel))
                if len(path) == 1 and not hint.startswith("did you mean"):
                    hint += "; a top-level key starting with x- is ignored (to hold YAML anchors)"
            else:
                hint = _validation_hint(found, message, path)
            self.add(path, message, hint)


def _resolve(schema: Schema, rel: Path) -> tuple[Path, fields.Field[Any] | None]:
    """A validation message's path without marshmallow's `value`/`key` markers inside
    dicts (write_keys.web, not write_keys.web.value), and the field it is about."""
    out: list[str | int] = []
    container: Schema | fields.Dict | None = schema
    found: fields.Field[Any] | None = None
    i = 0
    while i < len(rel):
        part = rel[i]
        out.append(part)
        if isinstance(container, Schema):
            found = container.fields.get(str(part))
            if isinstance(found, fields.Nested) and isinstance(found.schema, Schema):
                container = found.schema
            elif isinstance(found, fields.Dict):
                container = found
            else:
                container = None
        elif isinstance(container, fields.Dict):
            marker = rel[i + 1] if i + 1 < len(rel) else None
            found = None
            if marker == "value":
                found, i = container.value_field, i + 1
            elif marker == "key":
                found, i = container.key_field, i + 1
            container = None
        else:
            found = None
        i += 1
    return tuple(out), found


_REQUIRED_HINTS = {
    "site_id": 'add site_id: "${CIO_SITE_ID}", the Site ID from Customer.io: Settings > API'
    " Credentials",
    "api_key": 'add api_key: "${CIO_API_KEY}", the Track API key from Customer.io: Settings >'
    " API Credentials",
    "write_key": 'add write_key: "${SEGMENT_WRITE_KEY}", the write key of the Segment source'
    " that receives these events",
    "url": "add url: redis://127.0.0.1:6379/0",
}


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _what_to_write(found: fields.Field[Any] | None, path: Path) -> str:
    """What a valid value of the field at `path` looks like, as words after "write"."""
    name = str(path[-1])
    if isinstance(found, Duration):
        return "a number of seconds or 30s, 15m, 24h, 7d"
    validators = list(found.validators) if found is not None else []
    for v in validators:
        if isinstance(v, validate.OneOf):
            choices = [str(c) for c in v.choices]
            return ", ".join(choices[:-1]) + " or " + choices[-1]
        if isinstance(v, validate.URL):
            hosts = SEGMENT_HOSTS if path[:2] == ("destinations", "segment") else CUSTOMERIO_HOSTS
            host = hosts["us"]
            return f"a full URL such as {host}, or remove {name} to use the region's host"
    if isinstance(found, fields.Integer | fields.Float):
        words = "a whole number" if isinstance(found, fields.Integer) else "a number"
        for v in validators:
            if isinstance(v, validate.Range):
                if v.min is not None and v.max is not None:
                    words += f" from {v.min} to {v.max}"
                elif v.min is not None:
                    words += f" of at least {v.min}" if v.min_inclusive else f" above {v.min}"
                elif v.max is not None:
                    words += f" of at most {v.max}"
        default = found.load_default
        if isinstance(default, int | float) and not isinstance(default, bool):
            words += f", such as {_number_text(default)}"
        return words
    if path[-2:-1] == ("write_keys",) or name == "write_key":
        return 'the write key as text, e.g. "${SEGMENT_WRITE_KEY}"'
    if name in ("api_key", "site_id"):
        return f'it as text, e.g. "${{CIO_{name.upper()}}}"'
    if isinstance(found, fields.String):
        return "text; quote it if YAML reads it as a number or true/false"
    return "a value as the Configuration section of the README describes"


def _validation_hint(found: fields.Field[Any] | None, message: str, path: Path) -> str:
    name = str(path[-1])
    if message.startswith("Missing data for required field"):
        return _REQUIRED_HINTS.get(name, f"add {name}")
    if isinstance(found, KeyList):
        return (
            'write one signing key, or a list of them while rotating keys: ["${OLD_KEY}",'
            ' "${NEW_KEY}"]'
        )
    if isinstance(found, fields.Dict):
        if name == "write_keys":
            return 'write source names and their keys, e.g. write_keys: {web: "${WEB_WRITE_KEY}"}'
        if name == "signing_keys":
            return 'write source names and their keys, e.g. signing_keys: {marketing: "${CIO_KEY}"}'
        return f"write {name}: on its own line, and each name: {{settings}} indented below it"
    if isinstance(found, fields.Nested):
        return f"write the settings of {name} as a mapping: key: value lines indented below it"
    if message == "Field may not be null.":
        return f"write {_what_to_write(found, path)}, or remove {name} to use the default"
    return "write " + _what_to_write(found, path)


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


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    if choices:
        return "known keys: " + ", ".join(choices)
    return "remove it"


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
    if m.empty:
        # Never the value: only that there is none.
        what = _must_not_be_empty(m.path) or "value"
        return ConfigProblem(
            file,
            line,
            col,
            _field_name(m.path),
            f"environment variable {m.name} is empty",
            f"set {m.name} to the {what} itself: an empty {what} is never valid",
        )
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

        def fail(line: int | None, col: int | None, message: str, hint: str) -> None:
            self.problems.append(ConfigProblem(file, line, col, "", message, hint))

        try:
            loader = _Loader(text)
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
                builder = _Builder(loader, file, self.pos)
                raw = builder.build(node, ())
                self.problems.extend(builder.problems)
            finally:
                loader.dispose()
        except _AliasLoop as exc:
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
        except _TooManyValues as exc:
            fail(
                exc.mark.line + 1,
                exc.mark.column + 1,
                f"the aliases in this file expand to more than {_MAX_VALUES} values",
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
                _yaml_error_hint(exc, text),
            )
            return None
        except ReaderError as exc:
            line, col = _line_column(text, exc.position)
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
            top_line, top_col = _locate(self.pos, ())
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
        missing_raw: list[tuple[str, Path]] = []
        defaulted_raw: list[tuple[str, Path]] = []
        empty_raw: list[tuple[str, Path]] = []
        data = _interpolate(raw, (), env, missing_raw, defaulted_raw, empty_raw)
        self.data = data
        # A variable that is set but empty, for a key or a Site ID, is as good as unset:
        # `relay check` reports it, and a running relay leaves that destination or source
        # unconfigured, exactly as when the variable is unset.
        empty_paths = {
            p for _, p in empty_raw if _must_not_be_empty(p) and _value_at(data, p) == ""
        }
        missing_raw += [(n, p) for n, p in empty_raw if p in empty_paths]
        missing = [
            MissingVariable(n, p, _locate(pos, p)[0], empty=p in empty_paths)
            for n, p in missing_raw
        ]
        defaulted = [MissingVariable(n, p, _locate(pos, p)[0]) for n, p in defaulted_raw]
        self.missing = missing
        missing_paths = {p for _, p in missing_raw}
        # An unset variable is reported once, by name; what its empty value then breaks
        # (a port that is not a number) would only repeat the same problem.
        collector = _Collector(file, pos, skip=missing_paths, empty={p: n for n, p in empty_raw})

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
        _check_keys_not_empty(data, missing_paths, collector)

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
                    example = (
                        '{site_id: "${CIO_SITE_ID}", api_key: "${CIO_API_KEY}"}'
                        if kind == "customerio"
                        else '{write_key: "${SEGMENT_WRITE_KEY}"}'
                    )
                    collector.add(
                        dpath,
                        "must be a mapping of settings",
                        f"write its settings as a mapping, e.g. {name}: {example}",
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
            idle_timeout=server["idle_timeout"],
            body_timeout=server["body_timeout"],
            sqlite_path=storage["sqlite"]["path"],
            max_pending=storage["sqlite"]["max_pending"],
            max_size_mb=storage["sqlite"]["max_size_mb"],
            min_free_mb=storage["sqlite"]["min_free_mb"],
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


def _check_keys_not_empty(data: Any, missing_paths: set[Path], collector: _Collector) -> None:
    """Keys written empty in the file (not through a variable): they would authenticate
    nothing, and a source with an empty key silently accepts no one."""
    sources = data.get("sources") if isinstance(data, dict) else None
    places: list[tuple[Path, Any, str]] = []
    for kind, key, what in (
        ("segment", "write_keys", "the write key of the Segment source"),
        ("customerio", "signing_keys", "the signing key of the Customer.io reporting webhook"),
    ):
        source = sources.get(kind) if isinstance(sources, dict) else None
        keys = source.get(key) if isinstance(source, dict) else None
        for name, value in keys.items() if isinstance(keys, dict) else ():
            path: Path = ("sources", kind, key, name)
            if isinstance(value, list):
                places += [((*path, i), v, what) for i, v in enumerate(value)]
            else:
                places.append((path, value, what))
    destinations = data.get("destinations") if isinstance(data, dict) else None
    group = destinations.get("segment") if isinstance(destinations, dict) else None
    for name, body in group.items() if isinstance(group, dict) else ():
        if isinstance(body, dict):
            places.append(
                (
                    ("destinations", "segment", name, "write_key"),
                    body.get("write_key"),
                    "the write key of the Segment source that receives these events",
                )
            )
    for path, value, what in places:
        if value == "" and path not in missing_paths:
            collector.add(path, "must not be empty", f"write {what}, or remove this entry")


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
