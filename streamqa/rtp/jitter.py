"""Per-stream jitter buffer and network statistics (sans-I/O).

The buffer puts packets back in sequence order, holding at most ``depth`` packets while it
waits for a missing one; when it gives up it emits a :class:`Lost` frame whose duration comes
from the RTP timestamps, so the decoder can conceal exactly the missing stretch and the audio
timeline handed to the scorer stays continuous. It never sees a clock: arrival times are
passed in, which keeps it deterministic under test (aiortc's JitterBuffer is the model).

Sequence numbers are extended past 16 bits (RFC 3550 A.1) and timestamp differences are taken
modulo 2**32, so wrap-around of either is invisible to the caller.

Concealment is synthesised audio the scorer must then process, so one datagram must not be
able to buy much of it (issue 18): a forward jump whose timestamps run ahead of the arrival
clock is a sender restart (a new sequence, as RFC 3550 A.1 treats a large sequence jump),
not loss, and what a gap may conceal is capped per gap and by a budget that refills at the
wall-clock rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

from .packet import RtpPacket

_TS_MASK = 0xFFFFFFFF
_TS_HALF = 0x80000000
# Longest believable packet duration; a timestamp step beyond it (a sender restart, a
# corrupted header) must not turn into a multi-minute concealment.
MAX_PACKET_SECONDS = 0.2
DEFAULT_PACKET_SECONDS = 0.02
# Most audio one gap may conceal; also the size of the concealment budget, which refills at
# one second of audio per second of arrival clock (a stream can never conceal faster than
# real time, whatever its timestamps say).
MAX_CONCEAL_SECONDS = 1.0
# How far the timestamps of a forward jump may run ahead of the arrival clock (jitter, a
# sender that paces in blocks: ffmpeg -re sends 128 ms at a time) before the jump counts as
# a restart rather than loss.
CLOCK_SLACK_SECONDS = 0.5


class Received(NamedTuple):
    """A packet released in sequence order."""

    packet: RtpPacket
    arrival: float
    ext_sequence: int


class Lost(NamedTuple):
    """``packets`` consecutive packets that never arrived in time, spanning ``duration``
    RTP timestamp units; ``arrival`` is when the gap was given up on.

    ``duration`` assumes the missing packets were as long as their neighbours. ``span``
    (0 when the timestamps are implausible) is the exact distance from the start of the
    packet before the gap to the start of the one after it: a receiver that knows how long
    the packet before the gap was (it decoded it) gets the exact gap as ``span`` minus
    that, even when the sender's packet sizes vary."""

    packets: int
    duration: int
    arrival: float
    span: int = 0


Frame = Union[Received, Lost]
# Builds a Received from a tuple without the NamedTuple's Python-level __new__: one per packet.
_received = tuple.__new__


@dataclass(slots=True)
class JitterStats:
    """Counters of one stream. Every pushed packet is exactly one of received, duplicates
    or late; ``expected`` and ``lost`` count slots already released (played out)."""

    clock_rate: int
    received: int = 0
    expected: int = 0
    lost: int = 0
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    resyncs: int = 0
    bursts: int = 0
    unconcealed: int = 0  # RTP timestamp units of gaps left out by the concealment caps
    jitter: float = 0.0  # RFC 3550 A.8 interarrival jitter, RTP timestamp units

    @property
    def pushed(self) -> int:
        return self.received + self.duplicates + self.late

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self.jitter / self.clock_rate

    @property
    def loss_fraction(self) -> float:
        return self.lost / self.expected if self.expected else 0.0

    @property
    def mean_burst(self) -> float:
        """Mean length (packets) of a run of consecutive losses; 0 without losses."""
        return self.lost / self.bursts if self.bursts else 0.0

    @property
    def burst_ratio(self) -> float:
        """BurstR of the whole stream so far (:func:`burst_ratio`)."""
        return burst_ratio(self.lost, self.bursts, self.expected)


def burst_ratio(lost: int, bursts: int, expected: int) -> float:
    """BurstR of ITU-T G.107/G.113 for ``lost`` of ``expected`` packets lost in ``bursts``
    runs: observed mean loss-burst length divided by the mean expected under random
    (Bernoulli) loss at the same rate, which is 1 / (1 - p). 1 for random loss, > 1 for
    bursty loss; 1 when nothing was lost. A function of counts, so a report interval's
    differences of JitterStats give that interval's figure."""
    if not lost or not bursts or lost >= expected:
        return 1.0
    return (lost / bursts) * (1.0 - lost / expected)


class JitterBuffer:
    """Reorders one RTP stream (one SSRC) and turns gaps into :class:`Lost` frames.

    ``depth``: packets held while waiting for a missing one (latency vs. late losses).
    ``max_gap``: a sequence jump (forward, or backward beyond the recent history) larger
    than this is a sender restart, not loss: the buffer flushes and resynchronises on it. So
    is a forward jump whose timestamp advance exceeds the arrival time elapsed since the
    highest packet by more than ``clock_slack_s``.
    ``max_conceal_s``: most audio a gap conceals, and the budget that refills at one second
    per second of arrival time; a gap beyond either is concealed only up to it.
    """

    def __init__(self, clock_rate: int, *, depth: int = 3, max_gap: int = 100,
                 max_conceal_s: float = MAX_CONCEAL_SECONDS,
                 clock_slack_s: float = CLOCK_SLACK_SECONDS) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate must be positive, got {clock_rate}")
        if depth < 0 or max_gap < 1:
            raise ValueError(f"need depth >= 0 and max_gap >= 1, got {depth}, {max_gap}")
        if max_conceal_s < 0 or clock_slack_s < 0:
            raise ValueError(f"need max_conceal_s, clock_slack_s >= 0, got {max_conceal_s}, {clock_slack_s}")
        self.clock_rate = clock_rate
        self.depth = depth
        self.max_gap = max_gap
        self.stats = JitterStats(clock_rate)
        self._max_conceal = int(max_conceal_s * clock_rate)
        self._slack = clock_slack_s * clock_rate
        self._budget = float(self._max_conceal)  # concealment still allowed, timestamp units
        self._budget_at: float | None = None  # arrival time the budget was last refilled
        self._highest_ts = 0  # timestamp and arrival of the highest accepted packet
        self._highest_arrival = 0.0
        self._max_step = int(MAX_PACKET_SECONDS * clock_rate)
        self._step = max(1, int(DEFAULT_PACKET_SECONDS * clock_rate))
        self._buffer: dict[int, Received] = {}
        self._next: int | None = None  # extended sequence of the next slot to release
        self._highest = 0  # highest extended sequence accepted
        self._last_ts = 0  # timestamp of the last released packet
        # Ring of recently released extended sequences: tells a duplicate of a played
        # packet from a late arrival of a slot already concealed, in O(1) and bounded memory.
        self._ring_size = max_gap + depth + 1
        self._ring = [-1] * self._ring_size
        self._prev_arrival = 0.0  # arrival and timestamp of the previous accepted packet
        self._prev_ts = 0

    def push(self, pkt: RtpPacket, arrival: float) -> list[Frame]:
        """Accept one packet (``arrival`` in seconds, any monotonic origin); return the
        frames that became releasable, in order.

        Runs once per packet of every stream, so the usual case (the next packet, in order,
        nothing buffered) is written out here: the jitter estimate and the release
        accounting are inline rather than calls, which were a fifth of its cost."""
        stats = self.stats
        nxt = self._next
        if nxt is None:
            return self._begin(pkt, arrival, [])
        sequence, ts = pkt.sequence, pkt.timestamp
        highest = self._highest
        delta = ((sequence - highest + 0x8000) & 0xFFFF) - 0x8000
        ext = highest + delta
        if delta > self.max_gap or ext < nxt - self.max_gap or (
                delta > 1 and self._outruns_clock(ts, arrival)):
            out = self.flush()
            stats.resyncs += 1
            return self._begin(pkt, arrival, out)
        if ext < nxt:
            if self._ring[ext % self._ring_size] == ext:
                stats.duplicates += 1
            else:
                stats.late += 1
            return []
        buffer = self._buffer
        if ext in buffer:
            stats.duplicates += 1
            return []
        stats.received += 1
        if ext < highest:
            stats.reordered += 1
        else:
            self._highest = ext
            self._highest_ts = ts
            self._highest_arrival = arrival
        # RFC 3550 A.8: D = (Rj - Ri) - (Sj - Si) in timestamp units, J += (|D| - J) / 16
        # (_begin set the previous packet's arrival and timestamp)
        ts_delta = ((ts - self._prev_ts + _TS_HALF) & _TS_MASK) - _TS_HALF
        d = (arrival - self._prev_arrival) * self.clock_rate - ts_delta
        stats.jitter += (abs(d) - stats.jitter) / 16.0
        self._prev_arrival = arrival
        self._prev_ts = ts
        item = _received(Received, (pkt, arrival, ext))
        if ext == nxt and not buffer:  # the usual packet: in order, nothing waiting for it
            self._play(ts, ext)
            return [item]
        buffer[ext] = item
        return self._release(arrival, self.depth, [])

    def flush(self) -> list[Frame]:
        """Release everything held (end of stream), concealing the gaps between."""
        if not self._buffer:
            return []
        last_arrival = max(r.arrival for r in self._buffer.values())
        return self._release(last_arrival, 0, [])

    def _begin(self, pkt: RtpPacket, arrival: float, out: list[Frame]) -> list[Frame]:
        # Pick a fresh extended number above everything in the ring, with the packet's
        # 16 low bits, so old ring entries can never match new packets.
        base = self._highest + self._ring_size + 1
        ext = base + ((pkt.sequence - base) & 0xFFFF)
        self._next = ext
        self._highest = ext
        self._highest_ts = pkt.timestamp
        self._highest_arrival = arrival
        self._prev_arrival = arrival  # a new sequence: the next packet's transit is compared with this one's
        self._prev_ts = pkt.timestamp
        self.stats.received += 1
        self._buffer[ext] = _received(Received, (pkt, arrival, ext))
        return self._release(arrival, self.depth, out)

    def _release(self, arrival: float, hold: int, out: list[Frame]) -> list[Frame]:
        buffer = self._buffer
        stats = self.stats
        assert self._next is not None
        while buffer:
            nxt = self._next
            item = buffer.pop(nxt, None)
            if item is not None:
                self._play(item.packet.timestamp, nxt)
                out.append(item)
            elif len(buffer) > hold:
                target = min(buffer)
                lost = target - nxt
                next_ts = buffer[target].packet.timestamp
                duration, span = self._capped(*self._gap_duration(lost, next_ts), arrival)
                out.append(Lost(lost, duration, arrival, span))
                stats.lost += lost
                stats.expected += lost
                stats.bursts += 1
                self._next = target
            else:
                break
        return out

    def _play(self, ts: int, ext: int) -> None:
        """Account for the release of the packet of the next slot (timestamp ``ts``,
        extended sequence ``ext``)."""
        step = (ts - self._last_ts) & _TS_MASK
        if 0 < step <= self._max_step:
            self._step = step
        self._last_ts = ts
        self._ring[ext % self._ring_size] = ext
        self._next = ext + 1
        self.stats.expected += 1

    def _gap_duration(self, lost: int, next_ts: int) -> tuple[int, int]:
        """``(duration, span)`` of a gap of ``lost`` packets between the last released
        packet and the one at ``next_ts`` (see :class:`Lost`); the duration falls back to the
        last packet step, and the span to 0, if the timestamps are implausible (backwards,
        or more than MAX_PACKET_SECONDS per packet)."""
        span = (next_ts - self._last_ts) & _TS_MASK
        if span < _TS_HALF and 0 < span <= self._max_step * (lost + 1):
            return span * lost // (lost + 1), span
        return self._step * lost, 0

    def _outruns_clock(self, ts: int, arrival: float) -> bool:
        """True if ``ts`` lies further ahead of the highest packet's timestamp than the
        arrival clock has moved since it came, plus the slack: audio that cannot have been
        sent yet, so the jump is a restart and not loss to conceal."""
        advance = (ts - self._highest_ts) & _TS_MASK
        if advance >= _TS_HALF:
            return False  # backwards: the gap's own plausibility check handles it
        return advance > (arrival - self._highest_arrival) * self.clock_rate + self._slack

    def _capped(self, duration: int, span: int, arrival: float) -> tuple[int, int]:
        """Cap a gap's concealment at ``max_conceal_s`` and at the budget (refilled at the
        arrival clock's rate); a capped gap reports no exact span."""
        if self._budget_at is not None:
            self._budget = min(float(self._max_conceal),
                               self._budget + max(0.0, arrival - self._budget_at) * self.clock_rate)
        self._budget_at = arrival
        allowed = min(self._max_conceal, int(self._budget))
        if duration > allowed:
            self.stats.unconcealed += duration - allowed
            duration, span = allowed, 0
        self._budget -= duration
        return duration, span
