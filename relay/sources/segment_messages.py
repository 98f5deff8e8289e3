"""Pure checks on Segment Tracking API bodies: what a valid call looks like, and why not.

Validation here is hand-written rather than a marshmallow schema because it runs for every
event on the ingestion hot path; it returns reasons as values instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from relay.codec import NOT_UNICODE, decode, holds_lone_surrogate

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
MAX_MESSAGE_ID = 100

TYPES = ("identify", "track", "page", "screen", "group", "alias", "delete")
SHORT_PATHS = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_PATHS = ("batch", "import", "b")

_STRING_FIELDS = (
    "event",
    "messageId",
    "timestamp",
    "sentAt",
    "originalTimestamp",
    "name",
    "category",
    "previousId",
    "groupId",
)
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")


def _id_like(value: Any) -> bool:
    # Segment accepts numbers as ids and libraries send them; they are turned into strings.
    return (isinstance(value, str) and value != "") or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


_TYPE_SET = frozenset(TYPES)
_PLAIN_STRING_FIELDS = frozenset(_STRING_FIELDS) - {"previousId", "groupId"}
_ID_FIELDS = frozenset({"userId", "anonymousId", "previousId", "groupId"})
_OBJECT_FIELD_SET = frozenset(_OBJECT_FIELDS)


def message_problem(msg: Any) -> str | None:
    """Why a Segment message cannot be accepted, or None when it can."""
    # Most messages are fine: one pass over the fields they have says so. Anything unusual
    # goes through the full check, which also picks the problem to report.
    if isinstance(msg, dict) and plainly_valid(msg):
        return None
    return first_problem(msg)


def plainly_valid(msg: dict[str, Any]) -> bool:
    """True only for a message `first_problem` accepts; False means "look closer"."""
    mtype = msg.get("type")
    if type(mtype) is not str or mtype not in _TYPE_SET:
        return False
    for name, value in msg.items():
        if value is None:
            continue
        if name in _PLAIN_STRING_FIELDS:
            if type(value) is not str:
                return False
        elif name in _OBJECT_FIELD_SET:
            if type(value) is not dict:
                return False
        elif name in _ID_FIELDS:
            if type(value) is str:
                if not value or not value.isascii():
                    return False
            elif type(value) is not int and type(value) is not float:
                return False
    if msg.get("userId") is None and msg.get("anonymousId") is None:
        return False
    message_id = msg.get("messageId")
    if message_id is not None and len(message_id) >= MAX_MESSAGE_ID:
        return False
    if mtype == "track":
        return bool(msg.get("event"))
    if mtype == "group":
        return msg.get("groupId") is not None
    if mtype == "alias":
        return msg.get("previousId") is not None and msg.get("userId") is not None
    return True


def first_problem(msg: Any) -> str | None:
    """The first reason, in a fixed order, why a Segment message cannot be accepted."""
    if not isinstance(msg, dict):
        return "each message must be a JSON object"
    mtype = msg.get("type")
    if mtype not in TYPES:
        if mtype is None:
            return "field 'type' is missing"
        return f"field 'type' must be one of {', '.join(TYPES)}"
    for name in ("userId", "anonymousId"):
        value = msg.get(name)
        if value is not None and not _id_like(value):
            return f"field '{name}' must be a non-empty string"
    for name in _ID_NAMES:
        value = msg.get(name)
        if isinstance(value, str) and holds_lone_surrogate(value):
            # An id names a person or a group, kept as text: it must be Unicode.
            return f"field '{name}' {NOT_UNICODE}"
    if msg.get("userId") is None and msg.get("anonymousId") is None:
        return "one of 'userId' or 'anonymousId' is required"
    for name in _STRING_FIELDS:
        value = msg.get(name)
        if (
            value is not None
            and not isinstance(value, str)
            and not (name in ("previousId", "groupId") and _id_like(value))
        ):
            return f"field '{name}' must be a string"
    for name in _OBJECT_FIELDS:
        value = msg.get(name)
        if value is not None and not isinstance(value, dict):
            return f"field '{name}' must be an object"
    message_id = msg.get("messageId")
    if isinstance(message_id, str) and len(message_id) >= MAX_MESSAGE_ID:
        return f"field 'messageId' must be shorter than {MAX_MESSAGE_ID} characters"
    if mtype == "track" and not (isinstance(msg.get("event"), str) and msg["event"]):
        return "a track call needs a non-empty 'event'"
    if mtype == "group" and not _id_like(msg.get("groupId")):
        return "a group call needs 'groupId'"
    if mtype == "alias" and not (_id_like(msg.get("previousId")) and _id_like(msg.get("userId"))):
        return "an alias call needs 'previousId' and 'userId'"
    return None


_ID_NAMES = ("userId", "anonymousId", "previousId", "groupId")
_NUMBERS = (int, float)


def normalise(msg: dict[str, Any]) -> dict[str, Any]:
    """Ids as strings (Segment does the same), and no `writeKey`: the key a message was sent
    with (analytics.js puts it in every message) never travels on. The message is otherwise
    kept as sent."""
    msg.pop("writeKey", None)
    for name in _ID_NAMES:
        value = msg.get(name)
        if isinstance(value, _NUMBERS) and not isinstance(value, bool):
            msg[name] = str(value)
    return msg


def ordering_key(msg: dict[str, Any]) -> str:
    """The person a message is about; deliveries for one person stay in order."""
    user = msg.get("userId")
    if user is not None:
        return f"u:{user}"
    anon = msg.get("anonymousId")
    if anon is not None:
        return f"a:{anon}"
    return f"m:{msg.get('messageId')}"


def has_batch_defaults(body: dict[str, Any]) -> bool:
    """Whether a batch body has a top-level `context` or `integrations` for its items."""
    return any(isinstance(body.get(name), dict) and body[name] for name in _BATCH_DEFAULTS)


_BATCH_DEFAULTS = ("context", "integrations")


def merge_batch_defaults(item: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Top-level `context` and `integrations` of a batch apply to each item; the item wins."""
    for name in _BATCH_DEFAULTS:
        shared = body.get(name)
        if isinstance(shared, dict) and shared:
            own = item.get(name)
            item[name] = {**shared, **own} if isinstance(own, dict) else dict(shared)
    return item


# ---------------------------------------------------------------------- plain batches
#
# Most batches hold nothing but plain messages: string ids, a messageId, the usual fields
# of the usual types. For those, the message is stored as the bytes it arrived as, and only
# the fields the checks read are decoded: no dict is built, checked, encoded again and
# freed for each message. msgspec cuts a batch into its messages' bytes and decodes the
# checked fields of each (skipping the content of properties, traits and context), in C.
# Anything unusual (numeric ids, a missing messageId, batch-wide context, sizes near a
# limit, what the two parsers might read differently) goes through the checks above on a
# decoded message instead, so both ways accept, reject and store the same messages.


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


@dataclass(slots=True)
class PlainMessage:
    """A valid message kept as the bytes it arrived as, with what routing and storing need."""

    raw: bytes
    message_id: str
    ordering_key: str
    integrations: dict[str, Any] | None


def plain_batch(body: bytes) -> tuple[str | None, list[PlainMessage | Any]] | None:
    """A `/v1/batch` body as (writeKey, items): each item a `PlainMessage`, or the decoded
    message for the full checks. None when the body must be read the usual way (it is not
    a plain batch, or not valid JSON, or not what `relay.codec.decode` would read alike)."""
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
    for data, call in zip(raws, calls, strict=True):
        plain = None if call is None else _plain_message(data, call)
        if plain is None:
            try:
                items.append(decode(data))
            except ValueError:
                return None
        else:
            items.append(plain)
    return parsed.writeKey, items


def _plain_call(data: bytes) -> _Plain | None:
    try:
        call: _Plain = _CALL_DECODER.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    return call


def _plain_message(data: bytes, call: _Plain) -> PlainMessage | None:
    message_id = call.messageId
    if (
        not message_id
        or call.writeKey
        or len(data) > _PLAIN_MAX_BYTES
        or (
            len(data) >= 2 * _PLAIN_MAX_DEPTH
            and data.count(b"{") + data.count(b"[") >= _PLAIN_MAX_DEPTH
        )
    ):
        return None
    if call.userId is not None:
        key = "u:" + call.userId
    elif call.anonymousId is not None:
        key = "a:" + call.anonymousId
    else:
        return None
    return PlainMessage(data, message_id, key, call.integrations)
