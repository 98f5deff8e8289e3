"""The runtime settings of relay's long-running processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from importlib.metadata import version

import pytest
import uvloop

from relay import runtime

# A child process, so that this process's heap does not decide the figures: it fills the C
# heap with blocks too large for Python's own allocator, frees 15 of every 16 (the rest keep
# the freed ones from being at the heap's end), and prints its resident memory before and
# after giving the free pages back.
_CHILD = """
from relay.runtime import release_free_memory
def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) // 1024
blocks = [bytes(2048) + bytes([i % 256]) for i in range(100_000)]
kept = blocks[::16]
del blocks
before = rss()
release_free_memory()
print(before, rss(), len(kept))
"""


@pytest.mark.skipif(
    runtime._TRIM is None or not sys.platform.startswith("linux"),
    reason="the C library has no malloc_trim (not glibc)",
)
def test_free_heap_pages_go_back_to_the_system() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True
    )
    before, after, kept = (int(word) for word in done.stdout.split())
    assert kept == 6250
    assert before - after > 100  # MB: nearly all of the 190 MB freed


async def _loop_of_the_run() -> tuple[type[asyncio.AbstractEventLoop], str]:
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    return type(loop), runtime.event_loop_name(loop)


def test_run_is_on_uvloop_where_it_is_installed() -> None:
    assert runtime.run(_loop_of_the_run()) == (uvloop.Loop, f"uvloop {version('uvloop')}")
    with pytest.raises(KeyError, match="raised in the run"):
        runtime.run(_fails())


async def _fails() -> None:
    raise KeyError("raised in the run")


def test_run_is_on_asyncios_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    loop, name = runtime.run(_loop_of_the_run())
    assert issubclass(loop, asyncio.BaseEventLoop) and not issubclass(loop, uvloop.Loop)
    assert name == "asyncio"
