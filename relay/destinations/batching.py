"""Splitting an ordered list of items into requests under a count and a byte budget."""

from __future__ import annotations

from collections.abc import Sequence


def pack(
    items: Sequence[tuple[int, int]], max_count: int, max_bytes: int, overhead: int
) -> list[range]:
    """Consecutive index ranges of `items` (each `(count, bytes)`), every range holding at
    most `max_count` units and `max_bytes` bytes (plus `overhead` and one separator byte per
    item). An item too large alone still gets a range of its own: the caller decides."""
    groups: list[range] = []
    start, count, size = 0, 0, overhead
    for i, (n, b) in enumerate(items):
        if i > start and (count + n > max_count or size + b + 1 > max_bytes):
            groups.append(range(start, i))
            start, count, size = i, 0, overhead
        count += n
        size += b + 1
    if start < len(items):
        groups.append(range(start, len(items)))
    return groups
