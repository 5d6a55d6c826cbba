"""Give the heap that ended streams freed back to the operating system (glibc malloc_trim).

Why: every stream allocates buffers (jitter buffer, decoder, a window of audio for the
scorer). When a burst of streams ends (a busy hour, or an attacker's streams that passed
probation), glibc keeps the freed memory in its heap for reuse, so RSS stays at the
burst's high-water mark (issue 18: 50 attack streams left the monitor 24 MB larger for
good). ``malloc_trim(0)`` hands free heap pages back. Elsewhere (no glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["HeapTrimmer"]


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """Call ``streams_now(n)`` periodically with the live stream count: it trims once
    after the count has fallen (not on every tick: a trim walks the whole heap)."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._last = 0

    def streams_now(self, count: int) -> bool:
        """Trim if streams ended since the last call; True if a trim ran."""
        fell = count < self._last
        self._last = count
        if fell and self._trim is not None:
            self._trim(0)
            return True
        return False
