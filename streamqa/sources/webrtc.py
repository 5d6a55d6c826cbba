"""One WebRTC audio track (a peer of streamqa.whip) as one stream of an AudioSink.

aiortc has already done ICE, DTLS, SRTP, its jitter buffer and the decoding: what arrives
here is decoded PCM (``av.AudioFrame``, 20 ms of s16), which is mixed to mono float32 and
handed to the sink on the event loop, as every other source does, so scoring happens on the
engine's thread like everything else. Once a second the sink gets the track's own figures as
``net``: loss and jitter from aiortc's receiver statistics (the ones its RTCP receiver
reports carry), the E-model estimate from them, and the level and clipping of the decoded
audio, because a quiet or clipping microphone is the fault a participant on /check can fix
themselves and the model's scores alone do not name it.

What aiortc does with a lost packet (read in aiortc 1.16's ``JitterBuffer`` and decoder
thread): no concealment. Its audio jitter buffer releases a frame once 4 newer ones are
complete; a missing packet holds everything behind it until 16 packets have piled up, then
the gap is dropped and the next packet goes to the decoder as if it followed directly (no
NACK for audio, no Opus PLC or FEC). The decoded frames' ``pts`` (the RTP timestamp from 0)
still show the gap, so ``run`` fills it with silence: the stream's time stays the sender's,
a lost 20 ms is heard as 20 ms of silence as on a G.722 stream, and the E-model is told
there is no concealment (``plc=False``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from ..rtp.emodel import emodel_mos
from . import AudioSink, StreamInfo

NET_INTERVAL = 1.0  # seconds between sink.net reports, as for RTP streams
CLIP_LEVEL = 0.99  # |sample| at or above this counts as clipped (int16 full scale, decoded)
# From the end of ICE and DTLS (streamqa.whip waits for them) to the first decoded frame:
# the publisher's sender starts and aiortc's jitter buffer fills; then the idle timeout applies.
FIRST_FRAME_TIMEOUT = 15.0
_S16 = 1.0 / 32768.0


class AudioTrack(Protocol):
    """What is used of an aiortc ``MediaStreamTrack``: ``recv()`` gives the next decoded
    frame and raises (aiortc's ``MediaStreamError``) once the track has ended."""

    async def recv(self) -> Any: ...


def frame_to_mono(frame: Any) -> np.ndarray:
    """A decoded ``av.AudioFrame`` (s16, packed or planar, any channel count) as mono float32."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        mono = samples.mean(axis=0, dtype=np.float32)
    else:
        mono = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return mono * np.float32(_S16)


class AudioLevel:
    """Level and clipping of the audio since the last report.

    ``level_dbfs`` is the RMS of the loudest tenth of the interval's frames (so pauses
    between words do not drag it down), in dB relative to full scale; None for digital
    silence. ``clipping`` is the share of samples at full scale."""

    def __init__(self) -> None:
        self._rms: list[float] = []
        self._samples = 0
        self._clipped = 0

    def add(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._rms.append(float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))))
            self._samples += len(pcm)
            self._clipped += int(np.count_nonzero(np.abs(pcm) >= CLIP_LEVEL))

    def report(self) -> dict[str, float | None]:
        loud = float(np.percentile(self._rms, 90)) if self._rms else 0.0
        out = {
            "level_dbfs": round(20.0 * math.log10(loud), 1) if loud > 1e-5 else None,
            "clipping": self._clipped / self._samples if self._samples else 0.0,
        }
        self._rms, self._samples, self._clipped = [], 0, 0
        return out


def inbound_stats(report: Any) -> tuple[int, int, int] | None:
    """(packets received, packets lost, jitter in RTP clock units) of the first
    ``inbound-rtp`` entry of an aiortc ``RTCStatsReport``; None before any RTP arrived."""
    for stats in report.values():
        if getattr(stats, "type", None) == "inbound-rtp":
            return int(stats.packetsReceived), max(0, int(stats.packetsLost)), int(stats.jitter)
    return None


class TrackSource:
    """Feeds one received audio track to ``sink`` as stream ``stream_id`` until the track
    ends, or no frame has come for ``idle_timeout`` seconds (``first_frame_timeout`` before
    the first one). The stream starts with the first frame, when its rate is known.

    ``receiver_stats`` is the receiver's ``getStats``; ``codec`` and ``clock_rate`` are the
    negotiated codec's (for the E-model and for jitter in ms). RTT stays ``None``: RTCP gives
    a round trip to the sender only (RFC 3550 6.4.1), and a WHIP peer sends, the monitor
    only receives; the browser shows its own RTT on /check.
    """

    def __init__(
        self,
        sink: AudioSink,
        track: AudioTrack,
        stream_id: str,
        info: dict[str, Any],
        receiver_stats: Callable[[], Awaitable[Any]],
        *,
        codec: str,
        clock_rate: int,
        idle_timeout: float,
        first_frame_timeout: float = FIRST_FRAME_TIMEOUT,
    ) -> None:
        self.sink = sink
        self.track = track
        self.stream_id = stream_id
        self.info = info
        self.receiver_stats = receiver_stats
        self.codec = codec
        self.clock_rate = clock_rate
        self.idle_timeout = idle_timeout
        self.first_frame_timeout = first_frame_timeout
        self.frames = 0
        self.ended_by = ""  # "track ended", "idle" or "no media" once run() returned
        self._info: dict[str, Any] = {}  # the stream's info; gains ``ended_by`` at the end
        self._level = AudioLevel()
        self._mark = (0, 0)  # (received, lost) at the previous report
        self._next_start: float | None = None  # sample where the next frame starts if none is lost
        self.filled = 0  # samples of silence put in for lost or missing audio

    async def run(self) -> None:
        """Consume the track; the stream (if it started) is ended on every way out."""
        started = False
        next_net = 0.0
        try:
            while True:
                timeout = self.idle_timeout if started else self.first_frame_timeout
                try:
                    frame = await asyncio.wait_for(self.track.recv(), timeout)
                except asyncio.TimeoutError:
                    self.ended_by = "idle" if started else "no media"
                    return
                except Exception:  # aiortc's MediaStreamError: the peer closed or went away
                    self.ended_by = "track ended"
                    return
                arrival = time.monotonic()
                pcm = self._gap(frame) + [frame_to_mono(frame)]
                if not started:
                    self._info = {"codec": self.codec, "rate": int(frame.sample_rate), **self.info}
                    self.sink.start(StreamInfo(self.stream_id, "webrtc", int(frame.sample_rate), self._info))
                    started = True
                    next_net = arrival + NET_INTERVAL
                self.frames += 1
                self._level.add(pcm[-1])
                for piece in pcm:
                    self.sink.audio(self.stream_id, piece, arrival)
                if arrival >= next_net:
                    next_net = arrival + NET_INTERVAL
                    self.sink.net(self.stream_id, await self.net_stats())
        finally:
            if started:
                self._info["ended_by"] = self.ended_by or "monitor stopped"
                self.sink.end(self.stream_id)

    def _gap(self, frame: Any) -> list[np.ndarray]:
        """Silence for the audio missing before ``frame`` (its ``pts`` is past where the
        previous frame ended: packets lost, or a sender that paused); at most the idle
        timeout's worth, since a longer pause would have ended the stream."""
        if frame.pts is None or frame.time_base is None:
            return []
        start = float(frame.pts * frame.time_base) * frame.sample_rate  # in samples
        expected, self._next_start = self._next_start, start + frame.samples
        missing = 0 if expected is None else round(start - expected)
        if missing <= 0:
            return []
        missing = min(missing, int(self.idle_timeout * frame.sample_rate))
        self.filled += missing
        return [np.zeros(missing, np.float32)]

    async def net_stats(self) -> dict[str, Any]:
        """Loss over the last report interval (the live picture, as for RTP), RFC 3550
        jitter, packet counts since the start, and the decoded audio's level and clipping."""
        counts = inbound_stats(await self.receiver_stats())
        received, lost, jitter = counts if counts is not None else (0, 0, 0)
        received0, lost0 = self._mark
        self._mark = (received, lost)
        expected = (received - received0) + (lost - lost0)
        loss = max(0, lost - lost0) / expected if expected > 0 else 0.0
        return {
            "loss": loss,
            "jitter_ms": 1000.0 * jitter / self.clock_rate,
            "emodel_mos": emodel_mos(self.codec, 100.0 * loss, plc=False),
            "rtt_ms": None,
            "packets": received,
            "lost": lost,
            "loss_total": lost / (received + lost) if received + lost else 0.0,
            **self._level.report(),
        }
