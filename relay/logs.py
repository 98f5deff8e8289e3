"""How relay logs: its two line formats, the context each line carries, and its clients'
mistakes as one short line each.

Lines are JSON (one object a line: `time`, `level`, `logger`, `message`, then the context
fields present) or text (the classic line, then the context as ` key=value`). The context:
`request_id` on every line written while a request is handled (a contextvar set by the
app's outermost middleware, added to records by `ContextFields`), and `destination`,
`delivery_ids` on lines about deliveries (given as `extra`, see `about_deliveries`).

aiohttp logs a request it cannot parse (a bad request line, a header too long, a broken
chunked body) as an ERROR with a traceback; so does a client that hangs up mid-request.
Those are the client's mistakes, answered with a 400 or nothing: here they become one
WARNING line without the traceback, and when they come in a flood only the first few of each
10 seconds are written, the next line saying how many were left out. Tracebacks stay for
relay's own faults.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, TextIO

from aiohttp.http_exceptions import HttpProcessingError

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("json", "text")
# server.log_format: `auto` is text when stderr is a terminal, JSON otherwise.
FORMAT_SETTINGS = ("auto", *FORMATS)

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID = 128
# The id of the request being handled. Each request runs in a task of its own (aiohttp
# copies the context for it), so a value set while handling one is seen by no other.
REQUEST_ID: ContextVar[str | None] = ContextVar("relay_request_id", default=None)

# A line about many deliveries names the first few, then how many more.
FEW_DELIVERY_IDS = 5
# The context fields, in the order lines show them.
CONTEXT_FIELDS = ("request_id", "destination", "delivery_ids", "delivery_ids_more")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_AIOHTTP_SERVER = "aiohttp.server"
_PER_WINDOW = 5
_WINDOW = 10.0
_MAX_WORDS = 100


def _client_mistake(exc: BaseException | None) -> str | None:
    """A short description of a client's mistake, or None for anything else."""
    if isinstance(exc, HttpProcessingError):
        # The parser's words only: what follows them quotes the client's bytes, which may
        # hold a key (an Authorization header too long), and is cut off.
        first = (exc.message or "").strip().splitlines()
        words = first[0] if first else type(exc).__name__
        words = words.split(": b'")[0].split(" b'")[0].split("'")[0].rstrip(": ")
        return f"{exc.code} {words[:_MAX_WORDS]}"
    if isinstance(exc, ConnectionError):
        return f"the connection broke ({type(exc).__name__})"
    return None


class ClientMistakes(logging.Filter):
    """Turns aiohttp's traceback for a bad request into one line, and rate-limits them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._window_start = 0.0
        self._written = 0
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        mistake = _client_mistake(exc)
        if mistake is None:
            return True
        now = self._clock()
        if now - self._window_start >= _WINDOW:
            self._window_start, self._written = now, 0
        if self._written >= _PER_WINDOW:
            self._left_out += 1
            return False
        self._written += 1
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        note = f" ({self._left_out} more not logged)" if self._left_out else ""
        self._left_out = 0
        record.msg = "bad request from %s: %s%s"
        record.args = (peer, mistake, note)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_errors() -> None:
    """Install the filter on aiohttp's server logger (once per process)."""
    logger = logging.getLogger(_AIOHTTP_SERVER)
    if not any(isinstance(f, ClientMistakes) for f in logger.filters):
        logger.addFilter(ClientMistakes())


def request_id(header: str | None) -> str:
    """The client's X-Request-Id when it is sane (printable ASCII, at most 128 characters),
    else a new one."""
    if header and len(header) <= MAX_REQUEST_ID and header.isascii() and header.isprintable():
        return header
    return uuid.uuid4().hex


def about_deliveries(destination: str, ids: Sequence[int] = ()) -> dict[str, Any]:
    """The `extra` of a line about a destination's deliveries: the destination, the first
    few ids and how many more there are."""
    fields: dict[str, Any] = {"destination": destination}
    if ids:
        fields["delivery_ids"] = list(ids[:FEW_DELIVERY_IDS])
        if len(ids) > FEW_DELIVERY_IDS:
            fields["delivery_ids_more"] = len(ids) - FEW_DELIVERY_IDS
    return fields


class ContextFields(logging.Filter):
    """Adds the id of the request being handled to each record (on a handler, so that it
    sees the records of every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = REQUEST_ID.get()
            if rid is not None:
                record.request_id = rid
        return True


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The context fields a record carries, in their order."""
    return {
        name: getattr(record, name)
        for name in CONTEXT_FIELDS
        if getattr(record, name, None) is not None
    }


def _text_value(value: Any) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then each context field as ` key=value` (quoted when
    it holds a space); a traceback follows on the next lines."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        line = super().formatMessage(record)
        context = context_of(record)
        more = context.pop("delivery_ids_more", None)
        if more is not None:
            context["delivery_ids"] = f"{_text_value(context['delivery_ids'])} +{more} more"
        return line + "".join(f" {k}={_text_value(v)}" for k, v in context.items())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (ISO 8601, UTC, milliseconds), `level`, `logger`,
    `message`, the context fields present, and `exc` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        exc = "\n".join(t for t in (record.exc_text, record.stack_info) if t)
        if exc:
            entry["exc"] = exc
        return json.dumps(entry, default=str)


FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "json": JsonFormatter,
    "text": TextFormatter,
}


def choose_format(setting: str, stream: TextIO) -> str:
    """`json` or `text`: as set, or for `auto` text on a terminal and JSON elsewhere."""
    if setting != "auto":
        return setting
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class _RelayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """relay's own handler on the root logger; `configure` replaces it."""


def configure(level: str, log_format: str = "auto", stream: TextIO | None = None) -> str:
    """Send every log line to `stream` (stderr) in the chosen format, at `level` and above;
    calling it again replaces what an earlier call set. Returns the format used."""
    stream = sys.stderr if stream is None else stream
    chosen = choose_format(log_format, stream)
    handler = _RelayHandler(stream)
    handler.setFormatter(FORMATTERS[chosen]())
    handler.addFilter(ContextFields())
    handler.setLevel(level)  # also for loggers given a lower level of their own
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RelayHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log would be a line per request; relay's own lines say what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return chosen
