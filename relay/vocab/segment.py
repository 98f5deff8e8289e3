"""What a Segment Tracking API call is: its types and paths, fields, limits, when it is
valid (and why not), its person, and Segment's `integrations` rule.

Sources, routing, mapping and the CLI read Segment messages through these. Validation is
hand-written rather than a marshmallow schema because it runs for every event on the
ingestion hot path; it returns reasons as values instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from relay.codec import NOT_UNICODE, holds_lone_surrogate

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
# Every top-level field a Segment message may have; the rest are a sender's own.
# fmt: off
FIELDS: Final = frozenset({
    "type", "event", "name", "category", "userId", "anonymousId", "groupId", "previousId",
    "properties", "traits", "context", "integrations", "messageId", "timestamp",
    "originalTimestamp", "sentAt", "receivedAt", "version", "channel", "writeKey", "projectId",
    "_metadata",
})
# fmt: on
# The calls that carry `traits`; the others carry `properties`.
TRAITS_TYPES: Final = frozenset({"identify", "group"})
# The key of Customer.io in a message's `integrations` object.
CUSTOMERIO_INTEGRATION: Final = "Customer.io"

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


def person_key(user_id: str | None, anonymous_id: str | None) -> str | None:
    """The key of the person a message is about, by its (string) ids; None without one."""
    if user_id is not None:
        return f"u:{user_id}"
    if anonymous_id is not None:
        return f"a:{anonymous_id}"
    return None


def ordering_key(msg: dict[str, Any]) -> str:
    """The person a message is about; deliveries for one person stay in order."""
    key = person_key(msg.get("userId"), msg.get("anonymousId"))
    return f"m:{msg.get('messageId')}" if key is None else key


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


_MISSING = object()


def customerio_turned_off(message: Any) -> bool:
    """Segment's `integrations` rule for Customer.io, as Segment itself applies it."""
    # `type(...) is dict` first: it answers for nearly every message, and costs a tenth of
    # an isinstance check against an abstract class.
    if type(message) is not dict and not isinstance(message, Mapping):
        return False
    integrations = message.get("integrations")
    if integrations is None or (
        type(integrations) is not dict and not isinstance(integrations, Mapping)
    ):
        return False
    own = integrations.get(CUSTOMERIO_INTEGRATION, _MISSING)
    if own is False:
        return True
    # An options object enables a destination in Segment, just like `true`.
    if own is True or isinstance(own, Mapping):
        return False
    return integrations.get("All") is False
