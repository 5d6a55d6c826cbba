"""``streamqa score call.pcap``: score every RTP stream of a packet capture after the call.

Why a capture goes through the live path: the question after a bad call is "what did the
monitor see, hop by hop", so each UDP datagram is handed to the same
:class:`~streamqa.sources.rtp.RtpSource` a live socket feeds, with the capture's timestamp
as its arrival time. The jitter buffer, codecs, concealment, E-model and the engine's
scoring therefore run exactly as they would have live; only the clock is the capture's.

The capture is read with dpkt (pcap and pcapng; Ethernet, Linux cooked v1/v2, BSD loopback
and raw IP links; IPv4 and IPv6; UDP only, IP fragments are skipped and counted); frames of
the usual shape (a link header, IPv4 without options, UDP) skip dpkt's per-layer objects and
are decoded with one struct unpack (:class:`_PlainIpv4`, checked against dpkt's decode in
tests/test_capture.py), which cuts reading to a quarter of its cost. SIP over
UDP in the capture maps media to calls (streamqa.sdp): each SDP audio address gets its own
RtpSource with the SDP's payload-type map, and its streams are labelled with the Call-ID and
``to``: ``caller`` when the SDP naming that address came in a request (the INVITE's offer),
``callee`` when it came in a response (the answer); a re-INVITE from the callee swaps them.
RTCP (streamqa.rtp.rtcp) sent to an RTP port + 1, to the port an SDP's ``a=rtcp`` names, or
multiplexed on the RTP port, goes to that port's source as it would live: CNAME labels,
BYE ends its stream, SR/RR round trips enter the E-model.
Other destinations are read as RTP when their packets parse as RTP with a known payload type
(static, or ``--rtp-map``); the live source's probation then admits only SSRCs whose packets
come in sequence.
"""

from __future__ import annotations

import itertools
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamqa.engine import Engine
from streamqa.model import Model
from streamqa.rtp.codecs import STATIC_PAYLOAD_TYPES
from streamqa.rtp.packet import MalformedPacket, parse
from streamqa.rtp.rtcp import is_rtcp
from streamqa.sdp import SdpAudio, parse_sip
from streamqa.sources import StreamInfo
from streamqa.sources.rtp import RtpSource
from streamqa.timeline import Recorder, StreamResult

Address = tuple[str, int]
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
_REAP_EVERY = 0.5  # seconds of capture time between idle checks (at most), as the live reaper


class CaptureError(ValueError):
    """A file that cannot be read as a capture, with the reason in words."""


def is_capture(path: Path) -> bool:
    """True for a file named or made like a capture (suffix, or pcap/pcapng magic number), so
    a damaged ``call.pcap`` is reported as a bad capture, not as unreadable audio."""
    if path.suffix.lower() in CAPTURE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic == _PCAPNG_MAGIC or magic in _PCAP_MAGICS


def _link_decoder(linktype: int):
    """A function from one link-layer frame to its IP packet (a dpkt object) or None."""
    import dpkt

    def ethernet(buf: bytes):
        return dpkt.ethernet.Ethernet(buf).data

    def cooked(buf: bytes):
        return dpkt.sll.SLL(buf).data

    def cooked2(buf: bytes):
        return dpkt.sll2.SLL2(buf).data

    def loopback(buf: bytes):
        return dpkt.loopback.Loopback(buf).data

    def raw(buf: bytes):
        if not buf:
            return None
        return dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf) if buf[0] >> 4 == 6 else None

    decoders = {dpkt.pcap.DLT_EN10MB: ethernet, dpkt.pcap.DLT_LINUX_SLL: cooked, 276: cooked2,
                dpkt.pcap.DLT_NULL: loopback, dpkt.pcap.DLT_LOOP: loopback,
                dpkt.pcap.DLT_RAW: raw, 12: raw, 14: raw, 228: raw, 229: raw}
    decoder = decoders.get(linktype)
    if decoder is None:
        raise CaptureError(f"unsupported link type {linktype} (Ethernet, Linux cooked, loopback or raw IP)")
    return decoder


# Where a plain IPv4 header starts in a frame of a link type, and where the link header keeps
# its EtherType (None: raw IP); see _PlainIpv4.
_IPV4_AT = {1: (14, 12), 113: (16, 14), 276: (20, 0), 12: (0, None), 14: (0, None), 228: (0, None)}
_ETHERTYPE_IPV4 = b"\x08\x00"
_PLAIN_UDP = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags+offset, protocol
_MAX_ADDRESSES = 65536


class _PlainIpv4:
    """The frames nearly every capture of a call is made of (one link header, IPv4 without
    options, not a fragment, UDP) decoded with one struct unpack: dpkt's object decode of
    Ethernet, IP and UDP costs four times what the rest of the analysis spends on a packet.
    Anything else returns None and goes to dpkt; what this returns is what dpkt's decode
    would give (the datagram ends where the IP total length says, as dpkt cuts it)."""

    def __init__(self, linktype: int) -> None:
        self.ip_at, type_at = _IPV4_AT.get(linktype, (-1, None))
        # the link header's EtherType, or (raw IP) an empty slice that compares equal to b""
        self.type_slice = slice(type_at, type_at + 2) if type_at is not None else slice(0, 0)
        self.type_ipv4 = _ETHERTYPE_IPV4 if type_at is not None else b""
        # the 12 octets of addresses and ports -> (source, destination)
        self._addresses: dict[bytes, tuple[Address, Address]] = {}

    def __call__(self, frame: bytes) -> tuple[Address, Address, bytes] | None:
        at = self.ip_at
        if at < 0 or len(frame) < at + 28 or frame[self.type_slice] != self.type_ipv4:
            return None
        v_hl, length, fragment, proto = _PLAIN_UDP.unpack_from(frame, at)
        end = at + length if length else len(frame)
        if v_hl != 0x45 or proto != 17 or fragment & 0x3FFF or end - at < 28:
            return None
        key = frame[at + 12:at + 24]
        addresses = self._addresses.get(key)
        if addresses is None:
            if len(self._addresses) >= _MAX_ADDRESSES:
                self._addresses.clear()
            addresses = self._addresses[key] = _addresses(key)
        return addresses[0], addresses[1], frame[at + 28:end]


def _addresses(key: bytes) -> tuple[Address, Address]:
    """Source and destination of an IPv4 header's addresses and the UDP ports after them."""
    sport, dport = struct.unpack_from("!HH", key, 8)
    return (socket.inet_ntop(socket.AF_INET, key[:4]), sport), (socket.inet_ntop(socket.AF_INET, key[4:8]), dport)


def read_udp(path: Path, counters: Counter | None = None) -> Iterator[tuple[float, Address, Address, bytes]]:
    """Yield ``(time, source, destination, payload)`` for every UDP datagram in a capture.

    Frames that are not IPv4/IPv6 UDP, fragments and truncated frames are counted in
    ``counters`` (``not_udp``, ``fragment``, ``truncated``) and skipped."""
    import dpkt

    counters = counters if counters is not None else Counter()
    try:
        f = open(path, "rb", buffering=1 << 20)
    except OSError as exc:
        raise CaptureError(f"cannot open: {exc.strerror or exc}") from None
    with f:
        magic = f.read(4)
        f.seek(0)
        try:
            reader = dpkt.pcapng.Reader(f) if magic == _PCAPNG_MAGIC else dpkt.pcap.Reader(f)
        except (ValueError, dpkt.NeedData, dpkt.UnpackError) as exc:
            raise CaptureError(f"not a pcap or pcapng capture: {exc}") from None
        decode = _link_decoder(reader.datalink())
        plain = _PlainIpv4(reader.datalink())
        ip4, ip6, udp_type = dpkt.ip.IP, dpkt.ip6.IP6, dpkt.udp.UDP
        ntop, inet, inet6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6
        try:
            for ts, frame in reader:
                datagram = plain(frame)
                if datagram is not None:
                    yield (float(ts), *datagram)
                    continue
                try:
                    ip = decode(frame)
                except (dpkt.NeedData, dpkt.UnpackError):
                    counters["truncated"] += 1
                    continue
                udp = getattr(ip, "data", None)
                if type(ip) is ip4 and (ip.mf or ip.offset):  # dpkt decodes a first fragment
                    counters["fragment"] += 1                 # as if it held the whole datagram
                    continue
                if type(udp) is not udp_type:
                    counters["not_udp"] += 1
                    continue
                family = inet if type(ip) is ip4 else inet6 if type(ip) is ip6 else None
                if family is None:
                    counters["not_udp"] += 1
                    continue
                yield (float(ts), (ntop(family, ip.src), udp.sport), (ntop(family, ip.dst), udp.dport),
                       bytes(udp.data))
        except (dpkt.NeedData, dpkt.UnpackError, ValueError, EOFError):
            counters["truncated_capture"] += 1  # a capture cut short (tcpdump killed): keep what we have


def _remote(addr: Address) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


class _Destination:
    """Sink between one destination's RtpSource and the capture's shared engine: it gives
    streams ids unique in the capture (RtpSource numbers them per source) and adds the
    destination and SIP labels to their start info."""

    def __init__(self, engine: Engine, numbers: Iterator[int], labels: dict[str, Any]) -> None:
        self.engine = engine
        self.numbers = numbers
        self.labels = labels
        self.ids: dict[str, str] = {}  # RtpSource's stream id -> capture stream id

    def start(self, info: StreamInfo) -> None:
        sid = f"rtp-{info.info['ssrc']:08x}-{next(self.numbers)}"
        self.ids[info.stream_id] = sid
        self.engine.start(StreamInfo(sid, info.source, info.sample_rate, {**info.info, **self.labels}))

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        self.engine.audio(self.ids[stream_id], pcm, arrival)

    def samples_wanted(self, stream_id: str) -> int:
        return self.engine.samples_wanted(self.ids[stream_id])

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        self.engine.net(self.ids[stream_id], stats)

    def label(self, stream_id: str, cname: str) -> None:
        self.engine.label(self.ids[stream_id], cname)

    def end(self, stream_id: str) -> None:
        self.engine.end(self.ids.pop(stream_id))


class CaptureAnalysis:
    """Feeds a capture's datagrams, in capture order, through live RTP sources and one
    offline engine; :meth:`finish` ends every stream and returns the results.

    ``hop_s`` defaults to the window, as for a recording (streamqa.api): a stream's summary
    is then the mean of consecutive whole windows, and the model steps once per window
    instead of once a second. ``streamqa score --timeline``/``--plot`` pass the monitor's
    hop, at which every hop is the one the live monitor published."""

    def __init__(self, model: Model, *, rtp_map: dict[int, tuple[str, int, int]] | None = None,
                 window_s: float | None = None, hop_s: float | None = None, idle_timeout: float = 3.0) -> None:
        if hop_s is None:
            hop_s = window_s if window_s is not None else model.info.window_seconds
        self.recorder = Recorder()
        self.engine = Engine(model, self.recorder.publish, loop=None, window_s=window_s, hop_s=hop_s)
        self.rtp_map = dict(rtp_map or {})
        self.idle_timeout = idle_timeout
        self.counters: Counter = Counter()
        self._known_types = {**STATIC_PAYLOAD_TYPES, **self.rtp_map}
        self._numbers = itertools.count(1)
        # SDP receive address -> (media, call-id, who sent that SDP: "caller" for a request)
        self._media: dict[Address, tuple[SdpAudio, str, str]] = {}
        self._sources: dict[Address, RtpSource] = {}
        self._rtcp_ports: dict[Address, Address] = {}  # SDP a=rtcp address -> its RTP address
        self._reap_every = min(_REAP_EVERY, idle_timeout / 2.0)
        self._next_reap = float("-inf")

    def feed(self, now: float, src: Address, dst: Address, payload: bytes) -> None:
        """One UDP datagram captured at ``now`` (Unix seconds)."""
        self.recorder.now = now
        if now >= self._next_reap:
            self._next_reap = now + self._reap_every
            for source in self._sources.values():
                source.end_idle(now)
        source = self._sources.get(dst)
        if source is not None:
            source.handle_datagram(payload, src, now)
            return
        if payload[:1].isalpha():  # SIP is text; an RTP packet starts with 0x80-0xBF
            sip = parse_sip(payload)
            if sip is not None:
                self.counters["sip"] += 1
                for media in sip.audio:
                    party = "caller" if sip.is_request else "callee"
                    self._media[(media.host, media.port)] = (media, sip.call_id, party)
                    self._rtcp_ports[(media.host, media.rtcp_port)] = (media.host, media.port)
                return
        if is_rtcp(payload):  # RTCP to the RTP port + 1, or to the port its SDP named
            rtp_dst = self._rtcp_ports.get(dst, (dst[0], dst[1] - 1))
            source = self._sources.get(rtp_dst) or self._open(rtp_dst)
            source.handle_rtcp(payload, src, now)
            return
        if dst in self._media:
            self._open(dst).handle_datagram(payload, src, now)
            return
        self._consider(now, src, dst, payload)

    def _consider(self, now: float, src: Address, dst: Address, payload: bytes) -> None:
        """A destination no SDP announced gets a source once an RTP packet with a payload
        type we can decode arrives; the source's own probation (RFC 3550 A.1, as live) then
        decides which of its SSRCs are streams, which keeps DNS, STUN and the like out."""
        try:
            pkt = parse(payload)
        except MalformedPacket:
            self.counters["not_rtp"] += 1
            return
        if pkt.payload_type not in self._known_types:
            self.counters["unknown_payload_type"] += 1
            return
        self._open(dst).handle_datagram(payload, src, now)

    def _open(self, dst: Address) -> RtpSource:
        labels: dict[str, Any] = {"dst": _remote(dst)}
        rtp_map = dict(self.rtp_map)
        known = self._media.get(dst)
        if known is not None:
            media, call_id, party = known
            labels.update(call_id=call_id, to=party)
            rtp_map.update(media.payload_types)
        sink = _Destination(self.engine, self._numbers, labels)
        source = RtpSource(sink, rtp_map=rtp_map, idle_timeout=self.idle_timeout)
        self._sources[dst] = source
        return source

    def finish(self) -> list[StreamResult]:
        """End every stream still open (end of capture) and score what is left."""
        for source in self._sources.values():
            source.stop()
            self.counters.update(source.counters)
        self.engine.score_pending()
        self.engine.close()
        return self.recorder.results


def analyse_capture(model: Model, path: Path, *, rtp_map: dict[int, tuple[str, int, int]] | None = None,
                    window_s: float | None = None, hop_s: float | None = None,
                    idle_timeout: float = 3.0) -> tuple[list[StreamResult], Counter]:
    """Score every RTP stream in the capture at ``path``; results in order of first packet,
    and counters of what was skipped and why."""
    analysis = CaptureAnalysis(model, rtp_map=rtp_map, window_s=window_s, hop_s=hop_s, idle_timeout=idle_timeout)
    for now, src, dst, payload in read_udp(path, analysis.counters):
        analysis.feed(now, src, dst, payload)
    return analysis.finish(), analysis.counters
