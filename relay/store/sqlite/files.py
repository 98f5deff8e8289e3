"""The store's files: its lock, and what goes wrong with them (a full or read-only disk, a
damaged file) in plain words.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time

from relay.errors import StoreCannotOpen, StoreInUse, StoreUnavailable

# SQLite's primary result codes for trouble with the files themselves (not with a statement).
_STORAGE_TROUBLE = {
    3: "permission denied",  # SQLITE_PERM
    5: "another process holds the database",  # SQLITE_BUSY
    8: "it cannot be written (a read-only file or filesystem)",  # SQLITE_READONLY
    10: "an I/O error (the disk may be failing, or was remounted read-only)",  # SQLITE_IOERR
    11: "the database file is damaged",  # SQLITE_CORRUPT
    13: "the disk is full",  # SQLITE_FULL
    14: "a file of the database cannot be opened",  # SQLITE_CANTOPEN
    26: "the file is not a database",  # SQLITE_NOTADB
}


def storage_trouble(exc: BaseException) -> str | None:
    """In plain words, what is wrong with the store's files, for an error that says so;
    None for any other error (a statement's own mistake is a bug, not the disk)."""
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    words = _STORAGE_TROUBLE.get(code & 0xFF) if isinstance(code, int) else None
    if words is None and type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError):
        words = "it cannot be used"
    return None if words is None else f"{words} ({exc})"


def describe_os_error(exc: OSError) -> str:
    """`[Errno 30] Read-only file system: 'x'` as `Read-only file system`."""
    return exc.strerror or str(exc)


def _lock_holder(lock_path: str) -> str:
    try:
        with open(lock_path, encoding="ascii", errors="replace") as fh:
            pid = fh.read().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


def take_lock(path: str, wait: float) -> int:
    """Hold `<path>.lock` for as long as the returned file stays open: one relay process at
    a time may write the store, and recover what the last one left leased. Waits up to
    `wait` seconds for another holder (a relay killed a moment ago may still be finishing)."""
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreCannotOpen(
            f"cannot write {lock_path}: {describe_os_error(exc)}", retry_after=5
        ) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _lock_holder(lock_path)
                os.close(fd)
                raise StoreInUse(
                    f"another relay process{holder} is using the event store {path}",
                    retry_after=5,
                ) from None
            time.sleep(0.1)
        except OSError as exc:
            os.close(fd)
            raise StoreCannotOpen(
                f"cannot lock {lock_path}: {describe_os_error(exc)}", retry_after=5
            ) from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    return fd


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def cannot_open(path: str, exc: OSError | sqlite3.Error) -> StoreCannotOpen:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        why = describe_os_error(exc) + where
    else:
        why = storage_trouble(exc) or str(exc)
    return StoreCannotOpen(f"cannot open the event store {path}: {why}")


def unavailable(exc: BaseException) -> StoreUnavailable:
    # The text of a SQLite error names the condition (full, read-only, I/O) without data;
    # the writer logs the condition once when it starts (`Writer._set_problem`).
    return StoreUnavailable(
        f"the event store cannot take writes right now ({exc}); nothing acknowledged was lost,"
        " retry later",
        retry_after=5,
    )
