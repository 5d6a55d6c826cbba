"""The drop-oldest queue: what the live path does when a consumer falls behind.

Everywhere a producer must never wait for a slower consumer (a websocket client behind
the hub, Redis behind the broker publisher, the scorer thread behind a stream's hops),
the queue between them is bounded, and when it is full the *oldest droppable* item goes:
a score that old is the least useful one, while stream start and end messages (and a
stream's end marker) must arrive. What to do when only must-deliver items are left
differs (overfill, disconnect the client, drop the oldest anyway) and stays with the
caller: this queue only says whether the next item fits.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldest(Generic[T]):
    """A FIFO bounded in items (``max_items``; ``math.inf``: unbounded) and in total size
    (``max_bytes``, each item's ``size`` as given to ``append``). Iterating yields
    ``(droppable, item)`` oldest first."""

    def __init__(self, max_items: float, max_bytes: float = math.inf) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: deque[tuple[bool, T, int]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[tuple[bool, T]]:
        return ((droppable, item) for droppable, item, _ in self._items)

    def fits(self, size: int = 0) -> bool:
        """Whether one more item of ``size`` is within both bounds."""
        return len(self._items) < self.max_items and self.bytes + size <= self.max_bytes

    def make_room(self, size: int = 0) -> int:
        """Drop the oldest droppable items until one more of ``size`` fits, or none is left
        to drop; how many were dropped (check ``fits`` for the outcome)."""
        dropped = 0
        while not self.fits(size):
            victim = next((i for i, (droppable, _, _) in enumerate(self._items) if droppable), None)
            if victim is None:
                break
            self.bytes -= self._items[victim][2]
            del self._items[victim]
            dropped += 1
        return dropped

    def append(self, item: T, *, droppable: bool = True, size: int = 0) -> None:
        """Add ``item`` whatever the bounds (call ``make_room`` first to keep them)."""
        self._items.append((droppable, item, size))
        self.bytes += size

    def popleft(self) -> T:
        _, item, size = self._items.popleft()
        self.bytes -= size
        return item

    def peek(self) -> T:
        """The oldest item, left in place."""
        return self._items[0][1]

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
