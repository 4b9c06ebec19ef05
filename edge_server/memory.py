"""Give the heap back to the OS after bursts of work: few malloc arenas, and ``malloc_trim`` once the server is idle.

glibc keeps freed memory in its arenas (one per thread that allocated, up to 8 x cores) for reuse, so after a burst
of large or odd-sized frames the server's RSS stays at the burst's level although nothing is in use.
:func:`limit_arenas` (``mallopt(M_ARENA_MAX)``, at start-up, before the gRPC threads exist) keeps the threads on a
few arenas, and ``malloc_trim(0)`` returns the free pages of every arena; :class:`Trimmer` calls it once each time
the server has been idle for ``idle_s`` seconds after some work. Together they bring the RSS after the fuzz back to
its warm level (the numbers are in ``studies/results/fuzz_memory.md``). Without glibc (musl, macOS) they do
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 (absent outside glibc)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def limit_arenas(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas for the threads started from now on; True when glibc took it."""
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas)) if _LIBC is not None else False


def malloc_trim() -> bool:
    """Return the free heap pages to the OS; True when some were returned."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


class Trimmer:
    """A thread that calls :func:`malloc_trim` once whenever ``activity()`` (a counter of work begun) has stood still
    for ``idle_s`` seconds since it last moved; ``trims`` counts the calls."""

    def __init__(self, activity: Callable[[], int], idle_s: float) -> None:
        self.trims = 0
        self._activity = activity
        self._idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-trim", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        seen, trimmed = self._activity(), self._activity()
        while not self._stop.wait(self._idle_s):
            now = self._activity()
            if now == seen and now != trimmed:
                malloc_trim()
                self.trims += 1
                trimmed = now
            seen = now

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
