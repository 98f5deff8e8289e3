"""Segment batches read without decoding every message (see below); what they may hold is
relay.vocab.segment."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

import msgspec

from relay.codec import decode
from relay.intake import PlainMessage
from relay.vocab.segment import (
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_ID,
    person_key,
)

# ---------------------------------------------------------------------- plain batches
#
# Most batches hold nothing but plain messages: string ids, a messageId, the usual fields
# of the usual types. For those, the message is stored as the bytes it arrived as, and only
# the fields the checks read are decoded: no dict is built, checked, encoded again and
# freed for each message. msgspec cuts a batch into its messages' bytes and decodes the
# checked fields of each (skipping the content of properties, traits and context), in C.
# Anything unusual (numeric ids, a missing messageId, batch-wide context, sizes near a
# limit, what the two parsers might read differently) goes through relay.vocab.segment's
# checks on a decoded message instead, so both ways accept, reject and store the same
# messages.


class _Object(msgspec.Struct):
    """Any JSON object; its content is skipped, not decoded."""


_Id = Annotated[str, msgspec.Meta(min_length=1)]


class _Plain(msgspec.Struct, tag_field="type", kw_only=True):
    """The fields `plainly_valid` reads, in the only types a plain message has. A subclass
    for each call type (`type` picks it) makes the fields that type needs required, so
    that msgspec checks all of it."""

    userId: _Id | None = None
    anonymousId: _Id | None = None
    previousId: _Id | None = None
    groupId: _Id | None = None
    messageId: Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_ID - 1)] | None = None
    event: str | None = None
    timestamp: str | None = None
    sentAt: str | None = None
    originalTimestamp: str | None = None
    name: str | None = None
    category: str | None = None
    properties: _Object | None = None
    traits: _Object | None = None
    context: _Object | None = None
    integrations: dict[str, Any] | None = None
    # Present means the stored message would carry the sender's key: not plain (see normalise).
    writeKey: msgspec.Raw = msgspec.Raw(b"")


class _PlainIdentify(_Plain, tag="identify"):
    pass


class _PlainTrack(_Plain, tag="track"):
    event: Annotated[str, msgspec.Meta(min_length=1)]


class _PlainPage(_Plain, tag="page"):
    pass


class _PlainScreen(_Plain, tag="screen"):
    pass


class _PlainGroup(_Plain, tag="group"):
    groupId: _Id


class _PlainAlias(_Plain, tag="alias"):
    previousId: _Id
    userId: _Id


class _PlainDelete(_Plain, tag="delete"):
    pass


_PlainCall = (
    _PlainIdentify
    | _PlainTrack
    | _PlainPage
    | _PlainScreen
    | _PlainGroup
    | _PlainAlias
    | _PlainDelete
)


class _PlainBatch(msgspec.Struct):
    batch: list[msgspec.Raw]
    writeKey: str | None = None
    # Present (even empty) means the items may need them merged: not a plain batch.
    context: msgspec.Raw = msgspec.Raw(b"")
    integrations: msgspec.Raw = msgspec.Raw(b"")


class _PlainHeads(msgspec.Struct):
    batch: list[_PlainCall]


_BATCH_DECODER = msgspec.json.Decoder(_PlainBatch)
_HEADS_DECODER = msgspec.json.Decoder(_PlainHeads)
_CALL_DECODER = msgspec.json.Decoder(_PlainCall)
# Compact JSON is never more than 4.5 times shorter than what it was written from (`1E15`
# becomes `1000000000000000.0`), so a message this short is within the 32 KB limit however
# its numbers are written; a longer one is measured the usual way, encoded.
_PLAIN_MAX_BYTES = int(MAX_MESSAGE_BYTES / 4.5)
# Nested deeper than this, a message goes the usual way: near Python's recursion limit
# (about 1,000 levels) the usual way refuses what msgspec still reads. A message shorter
# than twice this cannot have that many brackets, and is not counted.
_PLAIN_MAX_DEPTH = 500


class PlainBatch(NamedTuple):
    write_key: str | None
    # Each message as a PlainMessage where it is plain, else decoded, for the full checks.
    items: list[PlainMessage | Any]
    every_one_plain: bool


def plain_batch(body: bytes, decoded: bool = False) -> PlainBatch | None:
    """A `/v1/batch` body as its writeKey and its items: each valid plain message as a
    PlainMessage (what routing reads of it decoded when `decoded`, else only its
    `integrations`), and any other item decoded, for the full checks. None when the body
    must be read the usual way (it is not a plain batch, or not valid JSON, or not what
    `relay.codec.decode` would read alike)."""
    if not body.isascii():
        try:
            body.decode("utf-8")  # msgspec does not check the strings it skips
        except UnicodeDecodeError:
            return None
    try:
        parsed = _BATCH_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if parsed.context or parsed.integrations or len(parsed.batch) > MAX_BATCH_MESSAGES:
        return None
    raws = [bytes(raw) for raw in parsed.batch]
    calls: list[_Plain | None]
    try:
        # The checked fields of every message at once: the usual case, all of them plain.
        calls = list(_HEADS_DECODER.decode(body).batch)
    except (msgspec.DecodeError, RecursionError):
        calls = []
    if len(calls) != len(raws):  # one message could not be read as plain: each on its own
        calls = [_plain_call(data) for data in raws]
    items: list[PlainMessage | Any] = []
    others = 0
    # The checks of a plain message, inline: this runs for every message of every batch.
    for data, call in zip(raws, calls, strict=True):
        if (
            call is not None
            and call.messageId
            and not call.writeKey
            and len(data) <= _PLAIN_MAX_BYTES
            and (
                len(data) < 2 * _PLAIN_MAX_DEPTH
                or data.count(b"{") + data.count(b"[") < _PLAIN_MAX_DEPTH
            )
        ):
            key = person_key(call.userId, call.anonymousId)
            if key is not None:  # else not plain: the usual checks refuse it, and say why
                if decoded:
                    view = decode(data)
                elif call.integrations is None:
                    view = None
                else:
                    view = {"integrations": call.integrations}
                items.append((data, key, call.messageId, view))
                continue
        try:
            items.append(decode(data))
        except ValueError:
            return None
        others += 1
    return PlainBatch(parsed.writeKey, items, others == 0)


def _plain_call(data: bytes) -> _Plain | None:
    try:
        call: _Plain = _CALL_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    return call
