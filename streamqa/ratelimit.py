"""Token buckets: the one rate limiter behind every "at most N per second" of the monitor.

Used where a peer can make the monitor spend work at will (new RTP streams, websocket
messages and pings, error log lines): each allows a burst, then a steady rate, and costs
two floats, so a limit per client or per stream is affordable. Time is passed in (any
monotonic clock), which keeps callers deterministic under test.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"need rate >= 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many (after refilling up to ``now``)."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
