"""One RTP stream's receive path, sans-I/O: packets in, audio and network statistics out.

``RtpStream.push(packet, now)`` is everything the live monitor does with a packet of a
known stream after routing it: the jitter buffer puts it in order (rtp.jitter), released
packets are decoded and gaps concealed (rtp.codecs), and the audio comes back for the
sink. No socket, clock or sink is involved, so a test drives it with packets and times of
its own; ``streamqa.sources.rtp`` is the shell that routes datagrams to streams and hands
what comes back to the engine.

G.711 payloads (decoders with ``decode_many``) are held until ``wanted`` samples are
there (the sink's next hop, ``streamqa.sources.samples_wanted``) and decoded in one call:
the hop could not complete earlier, so its latency is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .codecs import make_decoder, safe_decode
from .emodel import emodel_mos
from .jitter import Frame, JitterBuffer, Lost, Received, burst_ratio
from .packet import RtpPacket

if TYPE_CHECKING:
    from ..sources import SourceCounters

NET_INTERVAL = 1.0  # seconds between network reports of one stream


class RtpStream:
    """The per-stream state and logic of an RTP receiver (one SSRC from one address).

    ``counters`` (a ``SourceCounters``) takes ``payload_type_changed`` and the decoders'
    failures; ``received_s`` is the received (not concealed) audio delivered so far, which
    admission uses to choose whom to evict; ``rtt`` and ``cname`` come from RTCP."""

    __slots__ = (
        "stream_id", "codec", "payload_type", "decoder", "jitter", "last_seen",
        "last_arrival", "fallback", "last_units", "next_net", "net_mark", "held",
        "held_samples", "wanted", "host", "received_s", "cname", "rtt", "counters",
    )

    def __init__(self, stream_id: str, codec: str, payload_type: int, rate: int, channels: int,
                 now: float, *, host: str = "", jitter_depth: int = 3,
                 counters: SourceCounters | None = None) -> None:
        from ..sources import SourceCounters

        self.stream_id = stream_id
        self.host = host  # source address without the port: the unit of the per-address cap
        self.cname = ""  # RTCP CNAME, once its sender's SDES has been seen
        self.rtt = 0.0  # round-trip time (s) from RTCP SR/RR pairs; 0: not measured
        self.received_s = 0.0
        self.codec = codec
        self.payload_type = payload_type
        self.decoder = make_decoder(codec, rate, channels)
        self.jitter = JitterBuffer(rate, depth=jitter_depth)
        self.counters = counters if counters is not None else SourceCounters()
        self.last_seen = now
        self.last_arrival = now  # arrival of the newest sample handed out
        self.fallback = self.decoder.sample_rate // 50  # conceal 20 ms if a first payload fails
        self.last_units = 0  # RTP clock units the last decoded packet lasted (0: unknown)
        self.next_net = now + NET_INTERVAL
        self.net_mark = (0, 0, 0)  # (expected, lost, bursts) at the previous report
        # Payloads held for one decode_many call (decoders that have it), else None.
        self.held: list[bytes] | None = [] if hasattr(self.decoder, "decode_many") else None
        self.held_samples = 0
        self.wanted = 0  # samples the sink needs before its next hop (0: deliver at once)

    @property
    def holds(self) -> bool:
        """True when audio is held until ``wanted`` samples are there (set it after each
        delivery)."""
        return self.held is not None

    def push(self, packet: RtpPacket, now: float) -> np.ndarray | None:
        """One packet of this stream, received at ``now``: the audio it releases (mono float32
        at ``decoder.sample_rate``, its last sample arrived at ``last_arrival``), or None."""
        self.last_seen = now
        frames = self.jitter.push(packet, now)
        if not frames:
            return None
        if self.held is not None and len(frames) == 1:
            # the usual G.711 packet (one in order, this stream's payload type): held without
            # _decode's walk over frames, which cost as much as the jitter buffer
            frame = frames[0]
            if type(frame) is Received and frame.packet.payload_type == self.payload_type:
                self._hold(frame.packet.payload)
                if frame.arrival > self.last_arrival:
                    self.last_arrival = frame.arrival
                return self._release_held() if self.held_samples >= self.wanted else None
        return self._decode(frames, release=False)

    def flush(self) -> np.ndarray | None:
        """The end of the stream: everything still buffered or held, as audio (or None)."""
        return self._decode(self.jitter.flush(), release=True)

    def net_report(self, now: float) -> dict[str, Any] | None:
        """The network statistics once every NET_INTERVAL (None in between)."""
        if now < self.next_net:
            return None
        self.next_net = now + NET_INTERVAL
        return self.net_stats()

    def _decode(self, frames: list[Frame], *, release: bool) -> np.ndarray | None:
        """Decode or conceal released frames; held payloads are released when ``wanted``
        samples are there, before a gap, or with ``release``."""
        chunks = []
        arrival = self.last_arrival
        held = self.held
        payload_type = self.payload_type
        for i, frame in enumerate(frames):
            if type(frame) is Lost:
                if held:
                    chunks.append(self._release_held())
                pcm = self._conceal(frame, frames[i + 1] if i + 1 < len(frames) else None)
                if pcm.size:
                    chunks.append(pcm)
            elif frame.packet.payload_type != payload_type:
                # DTMF events (RFC 4733), comfort noise or a codec switch inside one SSRC:
                # they share the sequence space (so they pass the jitter buffer and are not
                # counted as loss) but are not audio for this stream's decoder.
                self.counters.add("payload_type_changed")
                self.last_units = 0  # its length is unknown: a gap after it falls back to duration
                continue
            elif held is not None:
                self._hold(frame.packet.payload)
            else:
                pcm = self._decode_one(frame.packet.payload)
                if pcm.size:
                    chunks.append(pcm)
            if frame.arrival > arrival:
                arrival = frame.arrival
        self.last_arrival = arrival
        if held and (chunks or release or self.held_samples >= self.wanted):
            chunks.append(self._release_held())
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _conceal(self, gap: Lost, after: Frame | None) -> np.ndarray:
        decoder = self.decoder
        units = gap.duration
        if 0 < self.last_units < gap.span:
            units = gap.span - self.last_units  # exact, whatever the packet sizes
        n_samples = units * decoder.sample_rate // decoder.clock_rate
        recover = getattr(decoder, "recover", None)
        if recover is not None and type(after) is Received and after.packet.payload_type == self.payload_type:
            # the jitter buffer releases a gap together with the packet after it, whose
            # in-band FEC (Opus) may rebuild the gap's last frame
            return recover(n_samples, after.packet.payload)
        return decoder.conceal(n_samples)

    def _decode_one(self, payload: bytes) -> np.ndarray:
        decoder = self.decoder
        pcm, error = safe_decode(decoder, payload, self.fallback)
        if error is not None:
            self.counters.add(error)
        elif pcm.size:
            self.fallback = pcm.size
            self.received_s += pcm.size / decoder.sample_rate
        self.last_units = pcm.size * decoder.clock_rate // decoder.sample_rate
        return pcm

    def _hold(self, payload: bytes) -> None:
        """Keep a G.711 payload for the next decode_many (one octet per sample, so its
        length is its duration and decoding it cannot fail)."""
        self.held.append(payload)
        n = len(payload)
        self.held_samples += n
        self.last_units = n
        self.received_s += n / self.decoder.clock_rate

    def _release_held(self) -> np.ndarray:
        pcm = self.decoder.decode_many(self.held)
        self.held.clear()
        self.held_samples = 0
        return pcm

    def net_stats(self) -> dict[str, Any]:
        """Loss and burstiness over the last report interval (the live picture), jitter as
        RFC 3550's running estimate, packet counts since the stream started."""
        st = self.jitter.stats
        expected0, lost0, bursts0 = self.net_mark
        self.net_mark = (st.expected, st.lost, st.bursts)
        expected, lost, bursts = st.expected - expected0, st.lost - lost0, st.bursts - bursts0
        loss = lost / expected if expected else 0.0
        burst = burst_ratio(lost, bursts, expected)
        return {
            "loss": loss,
            "jitter_ms": st.jitter_ms,
            # G.107's delay is mouth to ear; the network's half of the RTCP round trip is the
            # part a monitor can measure (0 until an SR/report pair has been timed); the loss
            # term assumes concealment only when this stream's decoder really conceals
            "emodel_mos": emodel_mos(self.codec, 100.0 * loss, burst, 500.0 * self.rtt, plc=self.decoder.plc),
            "rtt_ms": 1000.0 * self.rtt if self.rtt else None,
            "burst_ratio": burst,
            "packets": st.received,
            "lost": st.lost,
            "loss_total": st.loss_fraction,
            "duplicates": st.duplicates,
            "late": st.late,
            "reordered": st.reordered,
            "resyncs": st.resyncs,
        }
