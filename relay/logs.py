"""What relay logs about its clients' mistakes: one short line each, at most a few a second.

aiohttp logs a request it cannot parse (a bad request line, a header too long, a broken
chunked body) as an ERROR with a traceback; so does a client that hangs up mid-request.
Those are the client's mistakes, answered with a 400 or nothing: here they become one
WARNING line without the traceback, and when they come in a flood only the first few of each
10 seconds are written, the next line saying how many were left out. Tracebacks stay for
relay's own faults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

_LOGGER = "aiohttp.server"
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
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, ClientMistakes) for f in logger.filters):
        logger.addFilter(ClientMistakes())
