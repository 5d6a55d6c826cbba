"""Live RTP input: a thin asyncio UDP shell around the sans-I/O RTP core.

Each datagram is parsed (rtp.packet), routed to its stream by (SSRC, remote address), put
in order by that stream's jitter buffer (rtp.jitter), decoded or concealed (rtp.codecs) and
handed to the AudioSink, all synchronously in the socket's read callback: no per-packet
tasks or queues, so hundreds of streams at 50 packets/s stay cheap. The callback drains up
to READ_BATCH datagrams per wake-up rather than asyncio's one datagram per loop iteration,
and under load it wakes at most once per ``coalesce_s``: at thousands of packets per second
a wake-up per datagram (selector round trip, loop iteration) cost more than the packet's
own processing. A lightly loaded socket is read at once, so small calls see no delay.
G.711 payloads are held until the sink can complete a hop with them (``samples_wanted``)
and then decoded in one call. Anything hostile or unexpected (malformed datagrams, unknown
payload types, SSRC floods, decoder failures, a sink that raises) is counted in
``counters`` and dropped; the callback never raises into the loop.

Admission (issue 18): an SSRC gets a stream only after RFC 3550 A.1's probation
(rtp.probation), at most ``new_streams_per_s`` streams open per second, one source address
holds at most ``max_streams_per_address``, and when a cap is reached the stream that has
delivered the least received audio (of that address, or of the table) is ended to make
room: invented SSRCs cannot lock a real call out, and the calls that lose their slot are
the ones that brought least.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
import time
from collections import defaultdict
from typing import Any

try:  # FIONREAD tells the idle check about a socket backlog; absent on Windows
    import fcntl
    import termios
except ImportError:  # pragma: no cover - the check is then skipped
    fcntl = termios = None

from ..listen import listen_error
from ..logthrottle import LogThrottle, throttled
from ..metrics import Metrics
from ..ratelimit import TokenBucket
from ..rtp.codecs import STATIC_PAYLOAD_TYPES, make_decoder
from ..rtp.packet import MalformedPacket, RtpPacket, parse
from ..rtp.probation import MIN_SEQUENTIAL, Probation
from ..rtp.rtcp import MalformedRtcp, RtcpState
from ..rtp.stream import RtpStream
from . import AudioSink, SourceCounters, StreamInfo, samples_wanted

log = logging.getLogger(__name__)
# "Payload type not mapped" warnings: one per (SSRC, payload type), at most 5 at once then
# 1 a second however many senders there are (a scan must not fill the disk).
_pt_log = throttled(logging.getLogger(f"{__name__}.payload_type"), LogThrottle(per_s=1.0, burst=5))
MAX_UNMAPPED_WARNED = 4096  # (SSRC, payload type) pairs remembered as warned; then it starts over

_RCVBUF = 4 * 1024 * 1024  # room for bursts of many streams between loop iterations
# Longest the idle check waits for a socket backlog to drain before it ends streams anyway.
MAX_REAP_DEFERRAL = 10.0
# Datagrams read per readiness callback: large enough to amortise the event loop's own cost,
# small enough that timers and websocket writes still run every few milliseconds.
READ_BATCH = 64
# Shortest interval between two reads of a busy socket: datagrams arriving meanwhile wait
# in the kernel and are read in one batch (at most this much added latency per packet).
COALESCE_S = 0.005
_MAX_DATAGRAM = 65536
# Numbers in stream ids count the streams of the process, not of one socket: the monitor can
# listen on several ports (--rtp twice), and both directions of a call can share an SSRC.
_STREAM_NUMBERS = itertools.count(1)


class RtpSource:
    """Receives RTP on one UDP socket and feeds every stream on it to ``sink``.

    ``rtp_map`` adds or overrides payload types (``{96: ("opus", 48000, 2)}``) on top of
    the RFC 3551 static ones. A stream ends after ``idle_timeout`` seconds without packets.
    Admission (module docstring): ``min_sequential`` in-order packets of probation, at most
    ``max_streams`` at once and ``max_streams_per_address`` per source IP (the stream that
    delivered least audio is evicted to make room), ``new_streams_per_s`` openings per
    second (a burst of as many is allowed). ``counters`` go to ``metrics`` as they happen.

    A :class:`~streamqa.sources.Source`: ``start(host, port)`` binds, ``run()`` returns
    once ``close()`` has ended every stream. Without a socket, ``handle_datagram`` and
    ``handle_rtcp`` take datagrams with their own arrival times (streamqa.capture, tests).
    """

    def __init__(
        self,
        sink: AudioSink,
        *,
        rtp_map: dict[int, tuple[str, int, int]] | None = None,
        idle_timeout: float = 3.0,
        max_streams: int = 1000,
        max_streams_per_address: int = 500,
        new_streams_per_s: float = 100.0,
        min_sequential: int = MIN_SEQUENTIAL,
        jitter_depth: int = 3,
        coalesce_s: float = COALESCE_S,
        metrics: Metrics | None = None,
    ) -> None:
        if max_streams < 1 or max_streams_per_address < 1 or new_streams_per_s <= 0:
            raise ValueError("max_streams, max_streams_per_address and new_streams_per_s must be positive")
        self.sink = sink
        self.payload_types = {**STATIC_PAYLOAD_TYPES, **(rtp_map or {})}
        for codec, rate, channels in self.payload_types.values():
            make_decoder(codec, rate, channels)  # fail at start-up, not on the first packet
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self.max_streams_per_address = max_streams_per_address
        self._new_streams = TokenBucket(new_streams_per_s, max(1.0, new_streams_per_s), time.monotonic())
        self._probation = Probation(min_sequential=min_sequential)
        self._rtcp = RtcpState()
        self._rtcp_sock: socket.socket | None = None
        self._by_host: dict[str, set[tuple[int, Any]]] = defaultdict(set)
        self.jitter_depth = jitter_depth
        self.coalesce_s = coalesce_s
        self.counters = SourceCounters(metrics)
        self._unmapped_warned: set[tuple[int, int]] = set()
        self._streams: dict[tuple[int, Any], RtpStream] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_read = 0.0  # monotonic time of the last read
        self._drained = False  # that read emptied the socket
        self._paused: asyncio.TimerHandle | None = None  # reader detached until this fires
        self._reaper: asyncio.Task | None = None
        self._closed = asyncio.Event()

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> tuple[str, int]:
        """Bind (``port`` 0 picks a free one) and return the bound ``(host, port)``.

        ``reuse_port``: join a SO_REUSEPORT group, so several worker processes can share
        one port and the kernel keeps each sender (4-tuple) on one of them (streamqa.workers).
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            except OSError:
                pass  # the kernel's default buffer still works, just with less burst headroom
            sock.bind(address)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._read_ready)
        except OSError as exc:
            sock.close()
            raise listen_error("RTP", host, port, exc) from exc
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = loop
        self._reaper = loop.create_task(self._reap_idle())
        bound = sock.getsockname()
        if port:
            self._start_rtcp(family, (bound[0], bound[1] + 1, *bound[2:]), reuse_port)
        return bound[0], bound[1]

    def _start_rtcp(self, family: int, address: tuple, reuse_port: bool) -> None:
        """Listen for RTCP on the RTP port + 1 (RFC 3550 section 11); RTCP multiplexed on
        the RTP port (RFC 5761) is handled without it. A port + 1 already taken only costs
        the labels, BYEs and round trips it would have brought, so it is logged, not fatal."""
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.warning("no RTCP on port %s: %s", address[1], exc)
            return
        self._rtcp_sock = sock
        self._loop.add_reader(sock.fileno(), self._read_rtcp)

    def _read_rtcp(self) -> None:
        # The RTP that arrived before this RTCP first: the RTP reader may be in a coalescing
        # pause, and a BYE handled ahead of its stream's last packets would end the stream
        # early and let those packets (sent before the BYE) open a stream of their own.
        if self._sock is not None:
            self._read_batch()
        sock = self._rtcp_sock
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters.add("socket_error")
                return
            try:
                self.handle_rtcp(data, addr, time.monotonic())
            except Exception:  # noqa: BLE001 - as handle_datagram: count, never stop the socket
                self.counters.add("internal_error")
                log.exception("RTCP datagram handling failed")

    async def run(self) -> None:
        """Receive (the socket's reader runs from ``start``) until ``close()``."""
        await self._closed.wait()

    async def close(self) -> None:
        """Stop receiving and end every open stream; ``run()`` returns."""
        self.stop()
        self._closed.set()

    def stop(self) -> None:
        """Stop receiving and end every open stream (flushing its jitter buffer), without a
        loop: what ``close()`` does, for captures, fuzzers and tests."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._rtcp_sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._rtcp_sock.fileno())
            self._rtcp_sock.close()
            self._rtcp_sock = None
        for key in list(self._streams):
            self._end(key)
        self._probation.clear()
        self._count_probation()

    def _read_ready(self) -> None:
        """Drain up to READ_BATCH datagrams. If the previous read emptied the socket less
        than ``coalesce_s`` ago (a busy socket, not a backlog), detach the reader until that
        interval is over, so the datagrams arriving meanwhile are read together."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        now = time.monotonic()
        if self._drained and now - self._last_read < self.coalesce_s:
            loop.remove_reader(sock.fileno())
            self._paused = loop.call_at(self._last_read + self.coalesce_s, self._resume)
            return
        self._last_read = now
        self._read_batch()

    def _read_batch(self) -> None:
        """Read up to READ_BATCH datagrams from the RTP socket; ``_drained`` says whether
        the read emptied it."""
        sock = self._sock
        handle = self.handle_datagram
        clock = time.monotonic
        self._drained = False
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                self._drained = True
                return
            except OSError:  # e.g. ICMP errors reported on the socket; keep reading
                self.counters.add("socket_error")
                return
            handle(data, addr, clock())

    def _resume(self) -> None:
        """End of a coalescing pause: read what arrived, then watch the socket again."""
        self._paused = None
        if self._sock is None or self._loop is None:
            return
        self._drained = False  # the pause was the wait: read now
        self._read_ready()
        self._loop.add_reader(self._sock.fileno(), self._read_ready)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def handle_datagram(self, data: bytes, addr: Any, now: float) -> None:
        """Process one datagram received at ``now`` (time.monotonic()). Never raises.

        One function rather than a guard around a helper: it runs for every packet of
        every stream, live and for a capture (streamqa.capture), and each Python call
        on this path costs about as much as the packet's jitter-buffer work."""
        try:
            try:
                pkt = parse(data)
            except MalformedPacket as exc:
                if exc.reason == "rtcp":  # RFC 5761: RTCP multiplexed on the RTP port
                    self.handle_rtcp(data, addr, now)
                else:
                    self.counters.add(exc.reason)
                return
            key = (pkt.ssrc, addr)
            stream = self._streams.get(key)
            if stream is None:
                self._admit(key, pkt, addr, now)
                return
            pcm = stream.push(pkt, now)
            if pcm is not None:
                self._deliver(stream, pcm)
            if now >= stream.next_net:  # its network report, once a NET_INTERVAL
                self.sink.net(stream.stream_id, stream.net_report(now))
        except Exception:  # noqa: BLE001 - a bug or a sink failure must not stop the socket
            self.counters.add("internal_error")
            if self.counters["internal_error"] == 1:
                log.exception("RTP datagram handling failed (further failures only counted)")

    def handle_rtcp(self, data: bytes, addr: Any, now: float) -> None:
        """One RTCP datagram received at ``now``: CNAMEs label their streams (through the
        sink's optional ``label``), a BYE ends its streams at once, and a round trip timed
        from an SR and a report about it becomes the streams' ``rtt`` (rtp.rtcp). A BYE or a
        CNAME only touches streams from the RTCP sender's own host: anyone else who knows an
        SSRC could otherwise end or rename a call. Counted as ``rtcp`` (and ``rtcp_<reason>``
        when malformed, ``rtcp_bye`` per stream ended)."""
        self.counters.add("rtcp")
        try:
            events = self._rtcp.update(data, now)
        except MalformedRtcp as exc:
            self.counters.add(f"rtcp_{exc.reason}")
            return
        if not (events.cnames or events.byes or events.rtts):
            return
        label = getattr(self.sink, "label", None)
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        for key, stream in list(self._streams.items()):
            ssrc = key[0]
            if ssrc in events.rtts:
                stream.rtt = events.rtts[ssrc]
            if stream.host != host:
                continue
            if ssrc in events.byes:
                self.counters.add("rtcp_bye")
                self._end(key)
                continue
            cname = events.cnames.get(ssrc)
            if cname and cname != stream.cname:
                stream.cname = cname
                if label is not None:
                    label(stream.stream_id, cname)

    def _admit(self, key: tuple[int, Any], pkt: RtpPacket, addr: Any, now: float) -> None:
        """A packet of a key without a stream: probation, then the rate limit, then room
        in the table (evicting if needed); the validating packets replay into the stream."""
        if pkt.payload_type not in self.payload_types:
            self.counters.add("unknown_payload_type")
            self._warn_unmapped(pkt, addr)
            return
        packets = self._probation.offer(key, pkt, now)
        self._count_probation()
        if packets is None or not self._new_streams.take(now):
            return  # still on probation, or over the opening rate: a later packet retries
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        mine = self._by_host.get(host)
        if mine is not None and len(mine) >= self.max_streams_per_address:
            self._evict(mine)
        elif len(self._streams) >= self.max_streams:
            self._evict(self._streams)
        self._probation.admit(key)
        stream = self._open(key, (packets[0] if packets else pkt).payload_type, pkt.ssrc, addr, now, host)
        for held in packets:
            pcm = stream.push(held, now)
            if pcm is not None:
                self._deliver(stream, pcm)

    def _warn_unmapped(self, pkt: RtpPacket, addr: Any) -> None:
        """Say once per (SSRC, payload type) that a sender's packets are dropped for want of
        an ``--rtp-map``: otherwise the terminal and the websocket just stay silent (ffmpeg
        sends Opus as payload type 97, not the 96 many examples use)."""
        key = (pkt.ssrc, pkt.payload_type)
        if key in self._unmapped_warned:
            return
        if len(self._unmapped_warned) >= MAX_UNMAPPED_WARNED:
            self._unmapped_warned.clear()
        self._unmapped_warned.add(key)
        sender = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        _pt_log.warning("RTP from %s (SSRC 0x%08x) uses payload type %d, which is not mapped: dropped. "
                        "Declare it, e.g. --rtp-map %d=opus/48000/2", sender, pkt.ssrc, pkt.payload_type,
                        pkt.payload_type)

    def _evict(self, keys: Any) -> None:
        """End the stream among ``keys`` that has delivered the least received audio."""
        streams = self._streams
        victim = min(keys, key=lambda k: streams[k].received_s)
        self.counters.add("streams_evicted")
        self._end(victim)

    def _count_probation(self) -> None:
        self.counters.add("probation", self._probation.discarded - self.counters["probation"])

    def _open(self, key: tuple[int, Any], pt: int, ssrc: int, addr: Any, now: float, host: str) -> RtpStream:
        codec, rate, channels = self.payload_types[pt]
        stream_id = f"rtp-{ssrc:08x}-{next(_STREAM_NUMBERS)}"
        stream = RtpStream(stream_id, codec, pt, rate, channels, now, host=host,
                           jitter_depth=self.jitter_depth, counters=self.counters)
        self._streams[key] = stream
        self._by_host[host].add(key)
        self.counters.add("streams_started")
        if isinstance(addr, tuple):
            host = f"[{addr[0]}]" if ":" in str(addr[0]) else addr[0]  # IPv6 in brackets
            remote = f"{host}:{addr[1]}"
        else:
            remote = str(addr)
        info = {"codec": codec, "payload_type": pt, "ssrc": ssrc, "remote": remote,
                "clock_rate": rate, "channels": channels}
        stream.cname = self._rtcp.cnames.get(ssrc, "")
        if stream.cname:  # its sender's SDES came first (ffmpeg sends one before any RTP)
            info["cname"] = stream.cname
        self.sink.start(StreamInfo(stream_id, "rtp", stream.decoder.sample_rate, info))
        if stream.holds:
            stream.wanted = samples_wanted(self.sink, stream_id)
        return stream

    def _deliver(self, stream: RtpStream, pcm: Any) -> None:
        """Hand a stream's audio to the sink; a stream that holds audio learns how much the
        sink wants next."""
        self.sink.audio(stream.stream_id, pcm, stream.last_arrival)
        if stream.holds:
            stream.wanted = samples_wanted(self.sink, stream.stream_id)

    def _end(self, key: tuple[int, Any]) -> None:
        """Flush, report and end one stream; a failing sink is counted, never raised, so
        one bad stream cannot keep the others open."""
        stream = self._streams.pop(key)
        mine = self._by_host[stream.host]
        mine.discard(key)
        if not mine:
            del self._by_host[stream.host]
        self.counters.add("streams_ended")
        try:
            pcm = stream.flush()
            if pcm is not None:
                self.sink.audio(stream.stream_id, pcm, stream.last_arrival)
            self.sink.net(stream.stream_id, stream.net_stats())
        except Exception:  # noqa: BLE001
            self.counters.add("internal_error")
            log.exception("flushing RTP stream %s failed", stream.stream_id)
        try:
            self.sink.end(stream.stream_id)
        except Exception:  # noqa: BLE001
            self.counters.add("internal_error")
            log.exception("ending RTP stream %s failed", stream.stream_id)

    def _backlogged(self) -> bool:
        """True while a datagram waits unread in the socket buffer (FIONREAD)."""
        if self._sock is None or fcntl is None:
            return False
        try:
            fd = self._sock.fileno()
            pending = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        except (OSError, AttributeError):
            return False
        return int.from_bytes(pending, sys.byteorder) > 0

    async def _reap_idle(self) -> None:
        """End streams silent for ``idle_timeout``, but not while the socket has a backlog:
        behind a burst (an SSRC flood opening hundreds of streams) a live call's packets can
        wait in the kernel longer than the timeout and it would be ended for silence it never
        had."""
        period = min(0.5, self.idle_timeout / 2.0)
        deferred_since: float | None = None
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if self._backlogged():
                deferred_since = deferred_since or now
                if now - deferred_since < MAX_REAP_DEFERRAL:
                    continue
            deferred_since = None
            self.end_idle(now)

    def end_idle(self, now: float) -> None:
        """End the streams silent for ``idle_timeout`` at ``now`` (the reaper's clock, or a
        capture's timestamps when streamqa.capture replays one)."""
        deadline = now - self.idle_timeout
        for key in [k for k, s in self._streams.items() if s.last_seen < deadline]:
            self._end(key)
        self._probation.expire(now)
        self._count_probation()
