"""YAML read with the line and column of every value, so that each problem can say where it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from relay.errors import ConfigProblem

Path = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"

# More values than any config holds: beyond this, aliases of aliases are multiplying a
# small file into a huge one ("billion laughs"), and reading it would never finish.
MAX_VALUES = 200_000

# What YAML counts as a line break, for turning a character position into line:column.
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


class AliasLoop(yaml.MarkedYAMLError):
    """An alias inside the node it names: the value would contain itself, without end."""

    def __init__(self, anchor: str, anchor_mark: Any, alias_mark: Any) -> None:
        super().__init__(
            problem=f"the alias *{anchor} is inside &{anchor}, the node it repeats, which"
            " would then contain itself without end",
            problem_mark=alias_mark,
            context_mark=anchor_mark,
        )
        self.anchor = anchor


class TooManyValues(yaml.YAMLError):
    def __init__(self, mark: Any) -> None:
        super().__init__()
        self.mark = mark


class Loader(yaml.SafeLoader):
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
                raise AliasLoop(anchor, start, event.start_mark)
            return super().compose_node(parent, index)
        self._open_anchors[anchor] = event.start_mark
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop(anchor, None)


def _key_name(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


class Builder:
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
        if self._count > MAX_VALUES:
            raise TooManyValues(node.start_mark)
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
                    field_name((*path, name)),
                    f'the key "{name}" is given twice: it is already set at line'
                    f" {earlier.start_mark.line + 1}, column {earlier.start_mark.column + 1}",
                    "remove one; YAML keeps only the last",
                )
            )


def line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character position, counting lines as YAML does."""
    line, start = 1, 0
    for m in _LINE_BREAK.finditer(text, 0, position):
        line, start = line + 1, m.end()
    return line, position - start + 1


def yaml_error_hint(exc: yaml.MarkedYAMLError, text: str) -> str:
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


def position_of(pos: Mapping[Path, tuple[int, int]], path: Path) -> tuple[int | None, int | None]:
    for n in range(len(path), -1, -1):
        prefix = path[:n]
        if n == len(path) and (*prefix, "<key>") in pos and prefix not in pos:
            return pos[(*prefix, "<key>")]
        if prefix in pos:
            return pos[prefix]
    return None, None


def field_name(path: Path) -> str:
    return ".".join(str(p) for p in path)
