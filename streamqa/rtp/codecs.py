"""RTP payload decoders: PCMU, PCMA, L16 by hand (they are tables and byte order), Opus
through libopus (rtp.opus: its own concealment and in-band FEC), G.722 through PyAV
(FFmpeg's maintained decoder), all producing mono float32 in [-1, 1].

Each decoder also fills gaps: the jitter buffer reports how many samples were lost and the
decoder conceals them, so the scorer hears the gap the way a phone would, not a splice.
PCMU, PCMA and L16 repeat the last packet with a fade, Opus uses libopus's PLC (and FEC
from the packet after the gap, through ``recover``), and G.722 gets silence (FFmpeg's
decoder has no concealment to ask for). Each decoder says which with ``plc``, and the
E-model's loss assumption follows it (rtp.emodel).
:func:`safe_decode` is the only entry point the network shell uses: whatever a payload does
to a decoder (exception, NaN), the caller gets audio of a defined length and a reason.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Protocol

import numpy as np

from . import opus

log = logging.getLogger(__name__)

# RFC 3551 table 4: static audio payload types -> (codec, RTP clock rate, channels).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
}

_CANONICAL = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "l16": "L16", "opus": "opus"}
_FADE_SECONDS = 0.06  # repeat-with-fade reaches silence after this much concealment


class Decoder(Protocol):
    """One stream's payload decoder; ``sample_rate`` is the rate of its PCM output,
    ``clock_rate`` the RTP timestamp rate (they differ for G.722: 16 kHz audio, 8 kHz clock).
    A decoder may also offer ``decode_many(payloads)``; the RTP shell then calls it without
    safe_decode's guard, so it must accept any bytes and return finite samples in [-1, 1].

    A decoder may offer ``recover(n_samples, next_payload)`` as well: the gap's audio
    rebuilt with the help of the packet after it (Opus in-band FEC); it must not raise.
    ``plc`` says whether ``conceal`` synthesises speech-like audio (True) or silence."""

    sample_rate: int
    clock_rate: int
    plc: bool

    def decode(self, payload: bytes) -> np.ndarray:
        """Mono float32 PCM of one payload; may raise on garbage (see safe_decode)."""

    def conceal(self, n_samples: int) -> np.ndarray:
        """``n_samples`` of mono float32 standing in for lost audio."""


def _ulaw_table() -> np.ndarray:
    # G.711 mu-law: bits are inverted; sign, 3-bit segment, 4-bit step. The decoded
    # magnitude is ((step << 3) + 0x84) << segment, minus the 0x84 bias (16-bit scale).
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    segment = (codes >> 4) & 0x07
    step = codes & 0x0F
    magnitude = (((step << 3) + 0x84) << segment) - 0x84
    values = np.where(codes & 0x80, -magnitude, magnitude)
    return (values / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    # G.711 A-law: even bits inverted (xor 0x55); sign bit set means positive. Segment 0 is
    # linear ((step << 4) + 8); segment s > 0 is ((step << 4) + 0x108) << (s - 1).
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (codes >> 4) & 0x07
    step = codes & 0x0F
    magnitude = np.where(
        segment == 0, (step << 4) + 8, ((step << 4) + 0x108) << np.maximum(segment - 1, 0)
    )
    values = np.where(codes & 0x80, magnitude, -magnitude)
    return (values / 32768.0).astype(np.float32)


ULAW_TABLE = _ulaw_table()
ALAW_TABLE = _alaw_table()


def encode_pcmu(pcm: np.ndarray) -> bytes:
    """G.711 mu-law encode by nearest code in the decoder's own table (exact inverse on codes).

    For senders (the demo call, tests, benchmarks): the monitor itself only decodes."""
    order = np.argsort(ULAW_TABLE)
    sorted_vals = ULAW_TABLE[order]
    x = np.clip(pcm.astype(np.float32), -1.0, 1.0)
    idx = np.clip(np.searchsorted(sorted_vals, x), 1, len(sorted_vals) - 1)
    left, right = sorted_vals[idx - 1], sorted_vals[idx]
    idx -= (x - left) < (right - x)
    return order[idx].astype(np.uint8).tobytes()


class _RepeatFade:
    """Concealment for codecs without their own PLC: repeat the last decoded packet with a
    linearly falling gain, silent after _FADE_SECONDS (close to G.711 Appendix I's intent:
    no click at the gap, no buzzing on long outages)."""

    sample_rate: int
    plc = True

    def _init_conceal(self) -> None:
        self._last = np.zeros(0, dtype=np.float32)
        self._faded = 0  # samples already concealed since the last good packet

    def _remember(self, pcm: np.ndarray) -> np.ndarray:
        self._last = pcm
        self._faded = 0
        return pcm

    def conceal(self, n_samples: int) -> np.ndarray:
        n = max(0, int(n_samples))
        out = np.zeros(n, dtype=np.float32)
        fade_len = int(_FADE_SECONDS * self.sample_rate)
        if self._last.size and self._faded < fade_len and n:
            k = min(n, fade_len - self._faded)
            idx = np.arange(self._faded, self._faded + k)
            gain = 1.0 - (idx + 1) / fade_len
            out[:k] = self._last[idx % self._last.size] * gain
        self._faded += n
        return out


class G711Decoder(_RepeatFade):
    """PCMU / PCMA: one table lookup per octet."""

    def __init__(self, table: np.ndarray, rate: int = 8000) -> None:
        self._table = table
        self.sample_rate = rate
        self.clock_rate = rate
        self._init_conceal()

    def decode(self, payload: bytes) -> np.ndarray:
        return self._remember(self._table[np.frombuffer(payload, dtype=np.uint8)])

    def decode_many(self, payloads: list[bytes]) -> np.ndarray:
        """Consecutive payloads in one table lookup: the RTP shell holds G.711 payloads until
        the scorer can use them, so a hop costs one numpy call instead of fifty. Any octet
        is a valid code and every table entry is finite and within [-1, 1]."""
        pcm = self._table.take(np.frombuffer(b"".join(payloads), dtype=np.uint8))  # take: a third cheaper than []
        self._remember(pcm[len(pcm) - len(payloads[-1]):])  # concealment repeats the last packet
        return pcm


class L16Decoder(_RepeatFade):
    """L16 (RFC 3551): 16-bit big-endian, channels interleaved, mixed down to mono. A
    trailing partial sample frame is ignored."""

    def __init__(self, rate: int, channels: int) -> None:
        self.sample_rate = rate
        self.clock_rate = rate
        self.channels = channels
        self._init_conceal()

    def decode(self, payload: bytes) -> np.ndarray:
        frame = 2 * self.channels
        usable = len(payload) - len(payload) % frame
        samples = np.frombuffer(payload, dtype=">i2", count=usable // 2).astype(np.float32)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        return self._remember((samples / 32768.0).astype(np.float32, copy=False))


class PyAVDecoder:
    """G.722 (and Opus when libopus is missing) through PyAV. FFmpeg's decoders expose no
    packet-loss concealment through PyAV (an empty packet means end of stream), so lost
    audio is silence."""

    plc = False

    def __init__(self, codec_name: str, sample_rate: int, clock_rate: int) -> None:
        import av  # deferred: only streams that need it pay for loading FFmpeg

        ctx = av.CodecContext.create(codec_name, "r")
        ctx.sample_rate = sample_rate
        ctx.layout = "mono"  # FFmpeg's opus decoder downmixes stereo packets itself
        self._ctx = ctx
        self._packet = av.Packet
        self.sample_rate = sample_rate
        self.clock_rate = clock_rate

    def decode(self, payload: bytes) -> np.ndarray:
        if not payload:  # would be read as "drain" and end the decoder
            return np.zeros(0, dtype=np.float32)
        chunks = [_frame_to_mono(f) for f in self._ctx.decode(self._packet(payload))]
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def conceal(self, n_samples: int) -> np.ndarray:
        return np.zeros(max(0, int(n_samples)), dtype=np.float32)


def _frame_to_mono(frame) -> np.ndarray:
    """PyAV AudioFrame (any sample format, planar or packed) -> mono float32."""
    channels = len(frame.layout.channels)
    if channels == 1 and frame.format.name in ("flt", "fltp"):
        # the usual case (FFmpeg's opus decoder); to_ndarray's generic path costs as much
        # as decoding the packet
        return np.frombuffer(frame.planes[0], dtype=np.float32, count=frame.samples).copy()
    data = frame.to_ndarray()
    if not frame.format.is_planar and channels > 1:
        data = data.reshape(-1, channels).T
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(2 ** (8 * frame.format.bytes - 1))
    else:
        data = data.astype(np.float32, copy=False)
    return data.mean(axis=0) if data.shape[0] > 1 else data[0]


def make_decoder(codec: str, rate: int, channels: int) -> Decoder:
    """Decoder for ``codec`` at RTP clock ``rate`` with ``channels`` (as in an rtpmap)."""
    name = _CANONICAL.get(codec.lower())
    if name is None:
        raise ValueError(f"unsupported codec {codec!r}; known: {', '.join(_CANONICAL.values())}")
    if rate <= 0 or channels <= 0:
        raise ValueError(f"rate and channels must be positive, got {rate}/{channels}")
    if name == "PCMU":
        return G711Decoder(ULAW_TABLE, rate)
    if name == "PCMA":
        return G711Decoder(ALAW_TABLE, rate)
    if name == "L16":
        return L16Decoder(rate, channels)
    if name == "G722":
        if rate != 8000:
            raise ValueError(f"G722 uses an 8000 Hz RTP clock (RFC 3551), got {rate}")
        return PyAVDecoder("g722", 16000, 8000)
    if rate != 48000:
        raise ValueError(f"opus uses a 48000 Hz RTP clock (RFC 7587), got {rate}")
    if opus.load() is not None:
        return opus.OpusDecoder()
    _warn_no_libopus()
    return PyAVDecoder("opus", 48000, 48000)


@functools.cache
def _warn_no_libopus() -> None:
    """Once per process: without libopus, Opus loss is heard as silence."""
    log.warning("libopus not found: Opus streams are decoded by FFmpeg, lost packets as silence "
                "(install libopus0 for Opus's own concealment and FEC)")


_RTP_MAP = re.compile(r"^\s*(\d+)\s*=\s*([A-Za-z0-9]+)/(\d+)(?:/(\d+))?\s*$")


def parse_rtp_map(spec: str) -> tuple[int, str, int, int]:
    """Parse ``PT=codec/rate[/channels]`` (``96=opus/48000/2``, ``97=L16/16000``) into
    ``(payload_type, codec, rate, channels)`` with the codec name canonicalised."""
    m = _RTP_MAP.match(spec)
    if not m:
        raise ValueError(f"--rtp-map {spec!r}: expected PT=codec/rate[/channels], e.g. 96=opus/48000/2")
    pt, codec, rate, channels = int(m[1]), m[2], int(m[3]), int(m[4] or 1)
    if pt > 127:
        raise ValueError(f"--rtp-map {spec!r}: payload type {pt} is outside 0-127")
    name = _CANONICAL.get(codec.lower())
    if name is None:
        raise ValueError(f"--rtp-map {spec!r}: unknown codec {codec!r}; known: {', '.join(_CANONICAL.values())}")
    if not 1 <= rate <= 384000:
        raise ValueError(f"--rtp-map {spec!r}: rate {rate} is outside 1-384000")
    if not 1 <= channels <= 8:
        raise ValueError(f"--rtp-map {spec!r}: {channels} channels is outside 1-8")
    if name == "opus" and rate != 48000:
        raise ValueError(f"--rtp-map {spec!r}: opus always uses a 48000 Hz RTP clock (RFC 7587)")
    if name == "G722" and rate != 8000:
        raise ValueError(f"--rtp-map {spec!r}: G722 uses an 8000 Hz RTP clock (RFC 3551)")
    return pt, name, rate, channels


def parse_rtp_maps(specs: list[str]) -> dict[int, tuple[str, int, int]]:
    """Every ``--rtp-map`` spec as ``{payload_type: (codec, rate, channels)}``, the form
    ``RtpSource(rtp_map=...)`` takes (the later of two specs for one type wins)."""
    return {pt: (codec, rate, ch) for pt, codec, rate, ch in map(parse_rtp_map, specs)}


def safe_decode(decoder: Decoder, payload: bytes, fallback_samples: int) -> tuple[np.ndarray, str | None]:
    """Decode without ever raising: ``(pcm, None)`` on success, else concealment and a
    reason (``decode_error`` for an exception, ``non_finite`` for NaN/Inf output). Output
    is clipped to [-1, 1] (Opus may overshoot slightly)."""
    try:
        pcm = decoder.decode(payload)
    except Exception:  # noqa: BLE001 - any decoder failure on hostile input is a lost packet
        return decoder.conceal(fallback_samples), "decode_error"
    if pcm.size and not (pcm.max() <= 1.0 and pcm.min() >= -1.0):  # NaN fails both tests
        if not np.isfinite(pcm).all():
            return decoder.conceal(pcm.size), "non_finite"
        pcm = np.clip(pcm, -1.0, 1.0)
    return pcm, None
