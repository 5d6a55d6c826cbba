"""Hand items from a worker thread to an event loop with at most one wake-up pending.

Why one: every ``loop.call_soon_threadsafe`` writes a byte to the loop's self-pipe, which is
also where a signal is reported. A producer that outruns the loop (the scoring worker on a
clock-less ALSA device, PortAudio's callback on a busy machine) calling it once per item
filled that pipe, and a Ctrl-C was lost ("Exception ignored when trying to write to the
signal wakeup fd"). Here the producer appends to a deque and schedules a drain only when
none is pending; the drain delivers the items that were there when it began, so a producer
that keeps handing over cannot keep one callback running and starve the loop's sockets:
what arrives meanwhile schedules the next drain.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopHandoff(Generic[T]):
    """Items put by one thread, delivered in order on ``loop`` by ``deliver``."""

    def __init__(self, deliver: Callable[[T], None], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.deliver = deliver
        self.loop = loop  # may be set later, before the first put (a source learns it at start)
        self.items: deque[T] = deque()
        self._woken = False  # a drain is scheduled on the loop and has not started

    def put(self, item: T) -> bool:
        """Queue ``item`` (producer thread); False if the loop is closed, so nobody will
        take it."""
        self.items.append(item)
        if self._woken:
            return True
        self._woken = True
        assert self.loop is not None, "LoopHandoff.put before its loop was set"
        try:
            self.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop is closed (shutdown)
            return False
        return True

    def drain(self) -> None:
        """Loop thread: deliver what was queued when this began, oldest first (scheduled by
        :meth:`put`; called directly by an owner that must flush, e.g. a source closing).
        The flag is cleared first, so an item put while this runs schedules the next drain."""
        self._woken = False
        for _ in range(len(self.items)):
            self.deliver(self.items.popleft())
