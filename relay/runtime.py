"""Settings of the Python runtime for relay's long-running processes (the server and the
store's process), and the event loop every command of relay runs on."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

# Ingestion allocates thousands of short-lived objects per request, which refcounting frees;
# at Python's default threshold (700) the cyclic collector would run every few events, each
# time holding the GIL. Collect young objects every 100,000 allocations instead, and keep
# what start-up made out of every collection.
GC_THRESHOLDS = (100_000, 50, 1000)


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What `loop` is, as the server's first line names it: uvloop's (with its version), or
    asyncio's own."""
    if type(loop).__module__.partition(".")[0] == "uvloop":
        from importlib.metadata import version  # not at import: the store's process needs none

        return f"uvloop {version('uvloop')}"
    return "asyncio"


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run `main` as asyncio.run does, on uvloop's event loop where it is installed.

    Its loop and transports are written in C (on libuv), and relay's process spends about
    a sixth of its time taking in events in asyncio's loop, selector and socket writes. In
    runs alternating with asyncio's loop, `scripts/bench_ingest.py` took in 1.04–1.09 times
    the events a second (5 pairs), with less CPU an event in each. Where uvloop is not
    installed (it does not build on Windows), asyncio's own loop runs the same code. The
    store's process stays on asyncio's (relay.store.process), and does not import uvloop,
    which would add 2.4 MB to it.
    """
    try:
        import uvloop
    except ImportError:  # Windows, where it does not build, or uninstalled
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _malloc_trim() -> Callable[[int], int] | None:
    # The symbols the process has loaded, the C library's among them.
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system, where the C library can (glibc's
    `malloc_trim`; elsewhere this does nothing).

    A busy store allocates and frees tens of megabytes a second (a second's dedup ids, large
    requests, SQLite's sorting); glibc keeps what was freed, scattered between live blocks,
    and a process's resident memory only grows. Once a second, this took 2–5 ms and kept the
    store's process at 71–76 MB with a million events queued, against 87–97 MB without it
    (scripts/bench_memory.py). ctypes lets go of the GIL for the call.
    """
    if _TRIM is not None:
        _TRIM(0)
