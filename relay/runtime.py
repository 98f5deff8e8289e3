"""Settings of the Python runtime for relay's long-running processes (the server and the
store's process)."""

from __future__ import annotations

import gc

# Ingestion allocates thousands of short-lived objects per request, which refcounting frees;
# at Python's default threshold (700) the cyclic collector would run every few events, each
# time holding the GIL. Collect young objects every 100,000 allocations instead, and keep
# what start-up made out of every collection.
GC_THRESHOLDS = (100_000, 50, 1000)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
