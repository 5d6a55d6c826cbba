"""Rate-limited logging: an unauthenticated peer must not be able to fill the disk.

Every malformed request or aborted handshake may log a line (websockets logs some with a
traceback); 500 connections a second would write hundreds of KB a second to stderr
(issue 18). ``LogThrottle`` lets each distinct message through at a steady rate, drops
the rest, and tells the next line that passes how many were dropped.
"""

from __future__ import annotations

import logging
import time

from .ratelimit import TokenBucket

__all__ = ["LogThrottle", "throttled"]

MAX_KEYS = 256  # distinct messages tracked; beyond it the table starts over


class LogThrottle(logging.Filter):
    """At most ``burst`` records of one message (its format string) at once, then
    ``per_s`` a second. Suppressed records lose their traceback too."""

    def __init__(self, per_s: float = 1.0, burst: int = 5) -> None:
        super().__init__()
        self.per_s = per_s
        self.burst = burst
        self.suppressed = 0  # all records dropped so far, for tests and /metrics readers
        self._buckets: dict[tuple[str, object], tuple[TokenBucket, list[int]]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = (record.name, record.msg)
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= MAX_KEYS:
                self._buckets.clear()
            entry = self._buckets[key] = (TokenBucket(self.per_s, self.burst, now), [0])
        bucket, dropped = entry
        if not bucket.take(now):
            dropped[0] += 1
            self.suppressed += 1
            return False
        if dropped[0]:
            record.msg = f"{record.msg} ({dropped[0]} similar messages suppressed)"
            dropped[0] = 0
        return True


def throttled(logger: logging.Logger, throttle: LogThrottle) -> logging.Logger:
    """``logger`` with ``throttle`` installed once (filters run before any handler)."""
    if throttle not in logger.filters:
        logger.addFilter(throttle)
    return logger
