"""RFC 3550 section 6 RTCP parsing (sans-I/O): SR, RR, SDES, BYE, and the round-trip time.

What the monitor takes from RTCP: the CNAME (SDES item 1), a stable human-readable name of
the sender that survives SSRC changes, becomes the stream's label; a BYE ends the stream at
once instead of after the idle timeout; and sender and receiver reports give the round-trip
time, which the E-model needs for its delay impairment (without RTCP it assumes 0).

A monitor is a third party: it cannot use its own NTP clock against the endpoints' (they are
not synchronised). It can time both halves of the exchange itself, though: it sees the SR
leave the sender (arrival time ``a0``), and later an RR or SR from the other side whose
report block about that sender echoes the SR's timestamp (LSR) together with how long the
reporter held it (DLSR). RTT = (arrival of that report - a0) - DLSR, measured on one clock:
the round trip between the monitor's vantage point and the far end, which for a copy taken
at the near end (a PBX, an SBC) is the call's round trip.

Like :func:`streamqa.rtp.packet.parse`, :func:`parse_compound` raises only
:class:`MalformedRtcp`, with a short ``reason`` for counters.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple, Union

SR, RR, SDES, BYE, APP = 200, 201, 202, 203, 204
CNAME = 1  # SDES item type

_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")  # SSRC, NTP timestamp, RTP timestamp, packets, octets
_BLOCK = struct.Struct("!IIIIII")  # SSRC, fraction+cumulative lost, highest seq, jitter, LSR, DLSR
_MAX_SR_REMEMBERED = 4096  # SRs awaiting their echo, across all sources


class MalformedRtcp(ValueError):
    """A datagram that is not usable RTCP; ``reason`` names why, for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ReportBlock(NamedTuple):
    """Reception statistics about source ``ssrc`` (RFC 3550 6.4.1); ``lsr`` and ``dlsr``
    in 1/65536 s (``lsr`` 0: no SR received yet)."""

    ssrc: int
    fraction_lost: int  # of 256
    cumulative_lost: int  # signed
    highest_sequence: int
    jitter: int  # RTP timestamp units
    lsr: int
    dlsr: int


class SenderReport(NamedTuple):
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packets: int
    octets: int
    reports: tuple[ReportBlock, ...]

    @property
    def lsr(self) -> int:
        """The middle 32 bits of the NTP timestamp: what a report about this SR echoes."""
        return (self.ntp >> 16) & 0xFFFFFFFF


class ReceiverReport(NamedTuple):
    ssrc: int
    reports: tuple[ReportBlock, ...]


class SourceDescription(NamedTuple):
    """One SDES chunk: the items of source ``ssrc`` by type (CNAME = 1)."""

    ssrc: int
    items: dict[int, str]

    @property
    def cname(self) -> str | None:
        return self.items.get(CNAME)


class Goodbye(NamedTuple):
    ssrcs: tuple[int, ...]
    reason: str


RtcpPacket = Union[SenderReport, ReceiverReport, SourceDescription, Goodbye]


def is_rtcp(data: bytes) -> bool:
    """Cheap test for RFC 5761 demultiplexing: version 2 and a packet type 192-223."""
    return len(data) >= 8 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Parse one RTCP datagram (a compound packet) into its SR, RR, SDES chunks and BYE
    packets, in order; APP and unknown types are skipped.

    Reasons: ``short`` (no room for a header), ``version`` (not 2), ``type`` (packet type
    outside 192-223), ``length`` (a length beyond the datagram), ``padding`` (padding not on
    the last packet, or longer than it), ``truncated`` (a report or chunk cut short)."""
    out: list[RtcpPacket] = []
    size = len(data)
    offset = 0
    if size < 4:
        raise MalformedRtcp("short", f"{size} octets")
    while offset < size:
        if size - offset < 4:
            raise MalformedRtcp("short", f"{size - offset} octets after the last packet")
        b0, pt, words = _HEADER.unpack_from(data, offset)
        if b0 >> 6 != 2:
            raise MalformedRtcp("version", str(b0 >> 6))
        if not 192 <= pt <= 223:
            raise MalformedRtcp("type", str(pt))
        end = offset + 4 + 4 * words
        if end > size:
            raise MalformedRtcp("length", f"{4 + 4 * words} octets declared, {size - offset} left")
        body_end = end
        if b0 & 0x20:
            if end != size:
                raise MalformedRtcp("padding", "padding bit before the last packet")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise MalformedRtcp("padding", f"{pad} padding octets")
            body_end = end - pad
        count = b0 & 0x1F
        body = offset + 4
        if pt == SR:
            out.append(_sender_report(data, body, body_end, count))
        elif pt == RR:
            if body + 4 > body_end:
                raise MalformedRtcp("truncated", "RR without SSRC")
            (ssrc,) = struct.unpack_from("!I", data, body)
            out.append(ReceiverReport(ssrc, _blocks(data, body + 4, body_end, count)))
        elif pt == SDES:
            out.extend(_chunks(data, body, body_end, count))
        elif pt == BYE:
            out.append(_goodbye(data, body, body_end, count))
        offset = end
    return out


def _sender_report(data: bytes, body: int, end: int, count: int) -> SenderReport:
    if body + _SR_INFO.size > end:
        raise MalformedRtcp("truncated", "SR sender info")
    ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(data, body)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _blocks(data, body + _SR_INFO.size, end, count))


def _blocks(data: bytes, at: int, end: int, count: int) -> tuple[ReportBlock, ...]:
    if at + count * _BLOCK.size > end:
        raise MalformedRtcp("truncated", f"{count} report blocks")
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, at + i * _BLOCK.size)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _chunks(data: bytes, at: int, end: int, count: int) -> list[SourceDescription]:
    chunks = []
    for _ in range(count):
        if at + 4 > end:
            raise MalformedRtcp("truncated", "SDES chunk")
        (ssrc,) = struct.unpack_from("!I", data, at)
        at += 4
        items: dict[int, str] = {}
        while True:
            if at >= end:
                raise MalformedRtcp("truncated", "SDES items without their end")
            kind = data[at]
            if kind == 0:  # end of the list, then padding to the next 32-bit boundary
                at = (at + 4) & ~3
                break
            if at + 2 > end or at + 2 + data[at + 1] > end:
                raise MalformedRtcp("truncated", "SDES item")
            length = data[at + 1]
            items[kind] = bytes(data[at + 2:at + 2 + length]).decode("utf-8", "replace")
            at += 2 + length
        chunks.append(SourceDescription(ssrc, items))
    return chunks


def _goodbye(data: bytes, at: int, end: int, count: int) -> Goodbye:
    if at + 4 * count > end:
        raise MalformedRtcp("truncated", f"BYE with {count} sources")
    ssrcs = struct.unpack_from(f"!{count}I", data, at)
    at += 4 * count
    reason = ""
    if at < end:
        length = data[at]
        if at + 1 + length > end:
            raise MalformedRtcp("truncated", "BYE reason")
        reason = bytes(data[at + 1:at + 1 + length]).decode("utf-8", "replace")
    return Goodbye(tuple(ssrcs), reason)


class RoundTrip:
    """Round-trip times from the SRs and reports a third party sees (module docstring).

    ``observe`` takes every parsed RTCP packet with its arrival time and returns the
    ``(sender SSRC, reporter SSRC, rtt seconds)`` measurements it completes."""

    def __init__(self, max_remembered: int = _MAX_SR_REMEMBERED) -> None:
        self.max_remembered = max_remembered
        self._sent: OrderedDict[tuple[int, int], float] = OrderedDict()  # (SSRC, LSR) -> arrival

    def observe(self, packet: RtcpPacket, arrival: float) -> list[tuple[int, int, float]]:
        if isinstance(packet, SenderReport):
            self._sent[(packet.ssrc, packet.lsr)] = arrival
            while len(self._sent) > self.max_remembered:
                self._sent.popitem(last=False)
        if not isinstance(packet, (SenderReport, ReceiverReport)):
            return []
        out = []
        for block in packet.reports:
            if not block.lsr:
                continue
            sent = self._sent.get((block.ssrc, block.lsr))
            if sent is None:
                continue
            rtt = arrival - sent - block.dlsr / 65536.0
            if 0.0 <= rtt < 60.0:  # negative or absurd: clocks or a reused LSR, not a measurement
                out.append((block.ssrc, packet.ssrc, rtt))
        return out


def _with_header(pt: int, count: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return _HEADER.pack(0x80 | count, pt, len(body) // 4) + body


def _block_bytes(block: ReportBlock) -> bytes:
    lost = ((block.fraction_lost & 0xFF) << 24) | (block.cumulative_lost & 0xFFFFFF)
    return _BLOCK.pack(block.ssrc, lost, block.highest_sequence, block.jitter, block.lsr, block.dlsr)


def build_sr(ssrc: int, ntp: int, rtp_timestamp: int = 0, packets: int = 0, octets: int = 0,
             reports: tuple[ReportBlock, ...] = ()) -> bytes:
    """Serialise a sender report."""
    body = _SR_INFO.pack(ssrc, ntp, rtp_timestamp, packets, octets) + b"".join(map(_block_bytes, reports))
    return _with_header(SR, len(reports), body)


def build_rr(ssrc: int, reports: tuple[ReportBlock, ...] = ()) -> bytes:
    """Serialise a receiver report."""
    return _with_header(RR, len(reports), struct.pack("!I", ssrc) + b"".join(map(_block_bytes, reports)))


def build_sdes(ssrc: int, cname: str) -> bytes:
    """Serialise an SDES packet with one chunk holding a CNAME."""
    text = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc, CNAME, len(text)) + text + b"\x00"
    return _with_header(SDES, 1, chunk)


def build_bye(*ssrcs: int, reason: str = "") -> bytes:
    """Serialise a BYE packet."""
    body = struct.pack(f"!{len(ssrcs)}I", *ssrcs)
    if reason:
        text = reason.encode()[:255]
        body += bytes([len(text)]) + text
    return _with_header(BYE, len(ssrcs), body)


class RtcpEvents(NamedTuple):
    """What one RTCP datagram changed: CNAMEs by SSRC (every SDES repeats them), SSRCs
    that said BYE, and round-trip times (seconds) completed for SSRCs."""

    cnames: dict[int, str]
    byes: frozenset[int]
    rtts: dict[int, float]


class RtcpState:
    """RTCP bookkeeping of one receiving socket (sans-I/O): remembers each SSRC's CNAME,
    so a stream that opens after its sender's first SDES (ffmpeg sends one before its first
    RTP packet) still starts with its label, and times SR/report pairs (:class:`RoundTrip`).
    Both directions of a measured round trip get its RTT: it is one conversation's delay."""

    def __init__(self, max_sources: int = _MAX_SR_REMEMBERED) -> None:
        self.max_sources = max_sources
        self.cnames: OrderedDict[int, str] = OrderedDict()
        self._round_trip = RoundTrip()

    def update(self, data: bytes, arrival: float) -> RtcpEvents:
        """Parse one datagram (raises :class:`MalformedRtcp`) and return what it changed."""
        cnames: dict[int, str] = {}
        byes: set[int] = set()
        rtts: dict[int, float] = {}
        for packet in parse_compound(data):
            if isinstance(packet, SourceDescription):
                if packet.cname:
                    cnames[packet.ssrc] = packet.cname
                    self.cnames[packet.ssrc] = packet.cname
                    self.cnames.move_to_end(packet.ssrc)
                    while len(self.cnames) > self.max_sources:
                        self.cnames.popitem(last=False)
            elif isinstance(packet, Goodbye):
                byes.update(packet.ssrcs)
            else:
                for sender, reporter, rtt in self._round_trip.observe(packet, arrival):
                    rtts[sender] = rtts[reporter] = rtt
        return RtcpEvents(cnames, frozenset(byes), rtts)
