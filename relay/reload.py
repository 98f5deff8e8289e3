"""Reloading the config of a running relay: on SIGHUP, or when the file changes.

A reload reads the file again, validates it and compiles its routes exactly as
`relay check` does (unset environment variables are tolerated, as at start-up). Any
problem rejects the whole new config: every problem is logged and the running config stays.
A valid config is swapped in by `Relay.reconfigure`, and one log line says what changed.
An empty file is refused too, as `relay check` refuses it: it is far more likely caught
half-written than meant.

The file is polled (size, modification time and inode, once a second) rather than watched
with an OS-specific API; a change is acted on once the file has stayed the same for one
poll, so an editor that writes in several steps is not caught half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping

from relay.app import Relay
from relay.config import check_config

log = logging.getLogger("relay.reload")

Signature = tuple[int, int, int] | None


def file_signature(path: str) -> Signature:
    """What the poller compares: None when the file cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Reloader:
    """Reloads `path` into `relay`, one reload at a time."""

    def __init__(
        self,
        relay: Relay,
        path: str,
        *,
        env: Mapping[str, str] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.relay = relay
        self.path = path
        self.env = env
        self.interval = interval
        self._lock = asyncio.Lock()
        self._seen: Signature = file_signature(path)
        self._watcher: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[bool]] = set()
        self._closed = False
        self._started = asyncio.Event()

    def start(self) -> None:
        """Start polling the file for changes (and act on reloads requested before)."""
        self._started.set()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="relay-config-watch")

    def request(self, reason: str) -> None:
        """Reload soon, from a signal handler or any other synchronous caller; a request
        made before `start` waits for it."""
        if self._closed:
            return
        task = asyncio.create_task(self._requested(reason), name="relay-config-reload")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _requested(self, reason: str) -> bool:
        await self._started.wait()
        return await self.reload(reason)

    async def close(self) -> None:
        """Stop polling, and let a reload in progress finish."""
        self._closed = True
        self._started.set()  # requests still waiting for start give up at once
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._requests:
            await asyncio.gather(*self._requests, return_exceptions=True)

    async def reload(self, reason: str) -> bool:
        """Read, check and apply the file; True when the new config is now in force."""
        async with self._lock:
            if self._closed:
                return False
            self._seen = file_signature(self.path)
            result = await asyncio.to_thread(check_config, self.path, self.env, require_env=False)
            problems = result.problems
            if problems or result.config is None or result.routes is None:
                for problem in problems:
                    log.error("%s", problem)
                count = len(problems)
                log.error(
                    "config reload (%s) rejected: %d problem%s in %s; still running the"
                    " previous config",
                    reason,
                    count,
                    "" if count == 1 else "s",
                    self.path,
                )
                return False
            try:
                changes = await self.relay.reconfigure(result.config, result.routes)
            except Exception:
                log.exception("config reload (%s) failed while applying it", reason)
                return False
            log.log(
                logging.WARNING if any("need a restart" in c for c in changes) else logging.INFO,
                "config reloaded (%s) from %s: %s",
                reason,
                self.path,
                "; ".join(changes) if changes else "nothing changed",
            )
            return True

    async def _watch(self) -> None:
        pending: Signature = self._seen
        while True:
            await asyncio.sleep(self.interval)
            current = file_signature(self.path)
            if current == self._seen:
                pending = current
                continue
            if current != pending:
                pending = current  # changed since the last poll: wait until it settles
                continue
            try:
                await self.reload("file changed")
            except Exception:  # the watcher must outlive any one failed reload
                log.exception("config reload after a file change failed")
