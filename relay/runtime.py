"""Settings of the Python runtime for relay's long-running processes (the server and the
store's process)."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

# Ingestion allocates thousands of short-lived objects per request, which refcounting frees;
# at Python's default threshold (700) the cyclic collector would run every few events, each
# time holding the GIL. Collect young objects every 100,000 allocations instead, and keep
# what start-up made out of every collection.
GC_THRESHOLDS = (100_000, 50, 1000)


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
