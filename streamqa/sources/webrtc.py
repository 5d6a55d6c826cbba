"""One WebRTC audio track (a peer of streamqa.whip) as one stream of an AudioSink.

aiortc has already done ICE, DTLS, SRTP, its jitter buffer and the decoding: what arrives
here is decoded PCM (``av.AudioFrame``, 20 ms of s16), which is mixed to mono float32 and
handed to the sink on the event loop, as every other source does, so scoring happens on the
engine's thread like everything else. Frames are held until the sink's next hop needs them
(``samples_wanted``) and converted in one piece: the event loop is the one thread that every
peer's packets go through (aiortc's ICE, SRTP and jitter buffer run there too), and numpy's
per-call cost on 20 ms frames was the largest part of it with 20 peers (docs/monitor.md,
"WebRTC"). A hop's latency is unchanged: it cannot complete before its last frame anyway. Once a second the sink gets the track's own figures as
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
from . import AudioSink, StreamInfo, samples_wanted

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


def frames_to_mono(frames: list[Any]) -> np.ndarray:
    """Decoded ``av.AudioFrame``s of one format (s16, packed or planar, any channel count) as
    one mono float32 array: one conversion for many frames."""
    first = frames[0]
    channels = len(first.layout.channels)
    if first.format.name == "s16":  # packed, aiortc's decoders: the plane's bytes as they are
        # (to_ndarray's generic path costs several times as much per 20 ms frame)
        data = np.concatenate([np.frombuffer(f.planes[0], np.int16, f.samples * channels) for f in frames])
    else:
        data = np.concatenate([f.to_ndarray() for f in frames], axis=1)  # (planes, samples x packed channels)
    if not first.format.is_planar:
        data = data.reshape(-1, channels).T
    mono = data[0].astype(np.float32)
    for channel in data[1:]:  # a sum per channel: numpy's mean across a short axis is slow
        mono += channel
    mono *= np.float32(_S16 / channels)
    return mono


class AudioLevel:
    """Level and clipping of the audio since the last report.

    ``level_dbfs`` is the RMS of the loudest tenth of the interval's 20 ms blocks (so pauses
    between words do not drag it down), in dB relative to full scale; None for digital
    silence. ``clipping`` is the share of samples at full scale."""

    def __init__(self) -> None:
        self._rms: list[np.ndarray] = []
        self._samples = 0
        self._clipped = 0

    def add(self, pcm: np.ndarray, rate: int) -> None:
        """Decoded audio (no filled gaps: silence put in for lost packets is not the
        microphone's level) at ``rate``; a last partial block counts as a block."""
        block = max(1, rate // 50)
        whole = len(pcm) // block * block
        power = np.square(pcm, dtype=np.float64)
        rms = [np.sqrt(power[:whole].reshape(-1, block).mean(axis=1))]
        if whole < len(pcm):
            rms.append(np.sqrt(power[whole:].mean(keepdims=True)))
        self._rms += rms
        self._samples += len(pcm)
        self._clipped += int(np.count_nonzero(np.abs(pcm) >= CLIP_LEVEL))

    def report(self) -> dict[str, float | None]:
        rms = np.sort(np.concatenate(self._rms)) if self._rms else np.zeros(0)
        loud = float(rms[round(0.9 * (rms.size - 1))]) if rms.size else 0.0  # nearest rank
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
        self._held: list[Any] = []  # frames, and ints (samples of silence), not yet handed over
        self._held_samples = 0
        self._wanted = 0  # samples the sink's next hop needs (0: hand over every frame)
        self._rate = 0

    async def run(self) -> None:
        """Consume the track; the stream (if it started) is ended on every way out."""
        started = False
        next_net = arrival = 0.0
        loop = asyncio.get_running_loop()
        try:
            # One timer, moved on at each frame: wait_for would wrap every recv in a task of
            # its own, and a timeout per frame costs a context's setup and teardown.
            async with asyncio.timeout(loop.time() + self.first_frame_timeout) as deadline:
                while True:
                    try:
                        frame = await self.track.recv()
                    except Exception:  # aiortc's MediaStreamError: the peer closed or went away
                        self.ended_by = "track ended"
                        return
                    arrival = time.monotonic()
                    deadline.reschedule(loop.time() + self.idle_timeout)
                    if not started:
                        self._rate = int(frame.sample_rate)
                        self._info = {"codec": self.codec, "rate": self._rate, **self.info}
                        self.sink.start(StreamInfo(self.stream_id, "webrtc", self._rate, self._info))
                        self._wanted = samples_wanted(self.sink, self.stream_id)
                        started = True
                        next_net = arrival + NET_INTERVAL
                    self.frames += 1
                    self._hold(frame)
                    report = arrival >= next_net
                    if self._held_samples >= self._wanted or report:
                        self._deliver(arrival)
                    if report:
                        next_net = arrival + NET_INTERVAL
                        self.sink.net(self.stream_id, await self.net_stats())
        except TimeoutError:
            self.ended_by = "idle" if started else "no media"
        finally:
            if started:
                self._deliver(arrival)
                self._info["ended_by"] = self.ended_by or "monitor stopped"
                self.sink.end(self.stream_id)

    def _hold(self, frame: Any) -> None:
        """Keep ``frame`` for the next hand-over, behind silence for the audio missing before
        it (its ``pts`` is past where the previous frame ended: packets lost, or a sender that
        paused); at most the idle timeout's worth, since a longer pause would have ended the
        stream."""
        if frame.pts is not None and frame.time_base is not None:
            base = frame.time_base
            start = frame.pts * frame.sample_rate * base.numerator / base.denominator  # in samples
            expected, self._next_start = self._next_start, start + frame.samples
            missing = 0 if expected is None else round(start - expected)
            if missing > 0:
                missing = min(missing, int(self.idle_timeout * frame.sample_rate))
                self.filled += missing
                self._held.append(missing)
                self._held_samples += missing
        self._held.append(frame)
        self._held_samples += frame.samples

    def _deliver(self, arrival: float) -> None:
        """Hand the held audio to the sink in one piece (``arrival``: of its last frame)."""
        if not self._held:
            return
        frames = [x for x in self._held if not isinstance(x, int)]
        audio = frames_to_mono(frames) if frames else np.zeros(0, np.float32)
        self._level.add(audio, self._rate)
        if len(frames) < len(self._held):  # silence goes where the lost audio was
            pieces, at = [], 0
            for x in self._held:
                if isinstance(x, int):
                    pieces.append(np.zeros(x, np.float32))
                else:
                    pieces.append(audio[at:at + x.samples])
                    at += x.samples
            audio = np.concatenate(pieces)
        self._held, self._held_samples = [], 0
        self.sink.audio(self.stream_id, audio, arrival)
        self._wanted = samples_wanted(self.sink, self.stream_id)

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
