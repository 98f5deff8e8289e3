"""Pure checks on Segment Tracking API bodies: what a valid call looks like, and why not.

Validation here is hand-written rather than a marshmallow schema because it runs for every
event on the ingestion hot path; it returns reasons as values instead of raising.
"""

from __future__ import annotations

from typing import Any

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
                if not value:
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
    """Ids as strings (Segment does the same); the message is otherwise kept as sent."""
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
