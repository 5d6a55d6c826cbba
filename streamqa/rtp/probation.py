"""Source validation before a stream gets a scorer: RFC 3550 A.1's probation (sans-I/O).

A stream costs a decoder, a jitter buffer, a scorer and a start/end message to every
subscriber, and anyone who can send UDP to the port can invent SSRCs. So a (SSRC, address)
becomes a stream only after ``min_sequential`` packets in sequence order (RFC 3550 A.1's
MIN_SEQUENTIAL, 2 there too); one packet per SSRC, or SSRCs whose sequence numbers jump,
never get past this table. Candidates live in a bounded table (oldest out first) and hold
the few packets that validated them, so a real call loses no audio to its probation; every
packet dropped here is counted in ``discarded``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from .packet import RtpPacket

__all__ = ["Probation", "MIN_SEQUENTIAL"]

MIN_SEQUENTIAL = 2  # RFC 3550 A.1
# A candidate whose next packet takes longer than this starts its probation again: one
# packet every few seconds per SSRC (a cheap way to hold many SSRCs) never validates, while
# a real call (20-60 ms packets, 400 ms at most with DTX) validates within its first packets.
PROBATION_TIMEOUT_S = 1.0
MAX_HELD_PER_CANDIDATE = 8  # packets kept per candidate (more only while admission waits)


@dataclass(slots=True)
class _Candidate:
    sequence: int  # last in-order sequence number
    run: int  # packets in sequence so far
    last_seen: float
    held: list[RtpPacket] = field(default_factory=list)
    held_bytes: int = 0


class Probation:
    """Candidate sources by key. ``offer`` returns the in-order packets to replay once a
    key has sent ``min_sequential`` packets in sequence (fewer, even none, when the byte
    budget was spent), else None; the caller then
    ``admit``s it (the packets are its) or leaves it, and a later packet offers it again.

    ``max_candidates`` and ``max_held_bytes`` bound the table: beyond them the oldest
    candidate goes, and packets beyond the byte budget are counted and not held.
    """

    def __init__(self, *, min_sequential: int = MIN_SEQUENTIAL, max_candidates: int = 4096,
                 max_held_bytes: int = 1 << 20, timeout_s: float = PROBATION_TIMEOUT_S) -> None:
        if min_sequential < 1 or max_candidates < 1:
            raise ValueError(f"need min_sequential, max_candidates >= 1, got {min_sequential}, {max_candidates}")
        self.min_sequential = min_sequential
        self.max_candidates = max_candidates
        self.max_held_bytes = max_held_bytes
        self.timeout_s = timeout_s
        self.discarded = 0  # packets that ended here without reaching a stream
        # oldest first; OrderedDict evicts its first entry in O(1) where a dict, after many
        # evictions, scans the deleted slots at its front (a 50,000-SSRC burst showed it)
        self._table: OrderedDict[Hashable, _Candidate] = OrderedDict()
        self._held_bytes = 0

    def __len__(self) -> int:
        return len(self._table)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def offer(self, key: Hashable, pkt: RtpPacket, now: float) -> list[RtpPacket] | None:
        """One packet of a key that has no stream; see the class docstring."""
        table = self._table
        cand = table.get(key)
        if cand is None:  # the common case under a flood: one packet per SSRC
            if len(table) >= self.max_candidates:
                self._drop(table.popitem(last=False)[1])
            cand = table[key] = _Candidate(pkt.sequence, 1, now)
            self._hold(cand, pkt)
            return list(cand.held) if self.min_sequential <= 1 else None
        table.move_to_end(key)
        if pkt.sequence == cand.sequence and now - cand.last_seen <= self.timeout_s:
            self.discarded += 1  # a duplicate neither advances nor restarts the probation
        elif now - cand.last_seen > self.timeout_s or pkt.sequence != (cand.sequence + 1) & 0xFFFF:
            self._drop(cand)  # out of sequence or too slow: probation starts again
            cand = table[key] = _Candidate(pkt.sequence, 1, now)
            self._hold(cand, pkt)
        else:
            cand.sequence = pkt.sequence
            cand.run += 1
            cand.last_seen = now
            self._hold(cand, pkt)
        return list(cand.held) if cand.run >= self.min_sequential else None

    def admit(self, key: Hashable) -> None:
        """The key became a stream with the packets ``offer`` returned: forget it here."""
        cand = self._table.pop(key, None)
        if cand is not None:
            self._held_bytes -= cand.held_bytes

    def expire(self, now: float) -> None:
        """Drop candidates silent for longer than the timeout (called by the idle reaper)."""
        stale = [k for k, c in self._table.items() if now - c.last_seen > self.timeout_s]
        for key in stale:
            self._drop(self._table.pop(key))

    def clear(self) -> None:
        for cand in self._table.values():
            self._drop(cand)
        self._table.clear()

    def _hold(self, cand: _Candidate, pkt: RtpPacket) -> None:
        size = len(pkt.payload)
        if len(cand.held) >= MAX_HELD_PER_CANDIDATE:
            old = cand.held.pop(0)
            cand.held_bytes -= len(old.payload)
            self._held_bytes -= len(old.payload)
            self.discarded += 1
        if self._held_bytes + size > self.max_held_bytes:
            self.discarded += 1
            return
        cand.held.append(pkt)
        cand.held_bytes += size
        self._held_bytes += size

    def _drop(self, cand: _Candidate) -> None:
        self.discarded += len(cand.held)
        self._held_bytes -= cand.held_bytes
        cand.held.clear()
        cand.held_bytes = 0
