"""relay.codec: what decoding refuses, and how deep a decoded value nests."""

from __future__ import annotations

import math
from typing import Any

import pytest

from relay.codec import decode, nested_deeper_than

TOO_DEEP = (
    "the JSON is nested too deeply: more than about 1,000 levels of arrays and objects"
    " (send flatter JSON)"
)


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize(
    "text",
    [
        arrays(1100),
        objects(5000),
        arrays(100_000),
        # what orjson refuses for another reason goes to the standard parser, which fails too
        "[NaN," + arrays(5000) + "]",
    ],
    ids=["arrays-1100", "objects-5000", "arrays-100000", "nan-then-deep"],
)
@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_json_nested_too_deeply_is_a_value_error(text: str, as_bytes: bool) -> None:
    with pytest.raises(ValueError) as caught:
        decode(text.encode() if as_bytes else text)
    assert str(caught.value) == TOO_DEEP
    assert not isinstance(caught.value, RecursionError)


def test_json_nested_500_levels_deep_is_read() -> None:
    value = decode(arrays(500))
    for _ in range(499):
        value = value[0]
    assert value == []


def test_nan_and_infinity_still_go_through_the_standard_parser() -> None:
    value = decode(b'{"a": NaN, "b": Infinity}')
    assert math.isnan(value["a"]) and value["b"] == math.inf


@pytest.mark.parametrize(
    "value, limit, expected",
    [
        (1, 0, False),
        ("text", 0, False),
        ([], 0, True),
        ([], 1, False),
        ({}, 1, False),
        ({"a": {"b": [1, 2, {"c": 3}]}}, 3, True),
        ({"a": {"b": [1, 2, {"c": 3}]}}, 4, False),
        # the deepest branch decides, wherever it is
        ([1, [2], {"x": [[[["deep"]]]]}], 5, True),
        ([1, [2], {"x": [[[["deep"]]]]}], 6, False),
        (decode(objects(1000)), 512, True),
        (decode(objects(512)), 512, False),
        (decode(objects(513)), 512, True),
    ],
)
def test_nested_deeper_than(value: Any, limit: int, expected: bool) -> None:
    assert nested_deeper_than(value, limit) is expected
