"""The bundled demo call: a sender (not a source) of RTP to the monitor's own port over loopback.

Two call legs (caller: G.722 wideband, callee: PCMU narrowband) are encoded and sent as
20 ms RTP packets, paced in real time, to the monitor's own RTP socket. The audio and its
schedule live in ``streamqa/demo``: clean, then noisy (noise baked into the audio), then
lossy (this sender drops packets at the rate the schedule asks, so loss happens on the
wire and the jitter buffer, concealment and E-model all see it), then clean again. Before
the RTP, each leg sends an RTCP SDES naming it (``caller@demo``, ``callee@demo``, multiplexed
on the RTP port as RFC 5761 allows), as ffmpeg and phones do: both legs come from one
address, so without a CNAME the overlay could not tell them apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamqa.rtp.codecs import encode_pcmu
from streamqa.rtp.packet import build
from streamqa.rtp.rtcp import build_sdes

DEMO_DIR = Path(__file__).resolve().parent / "demo"
PACKET_S = 0.02


class G722Encoder:
    """G.722 at 64 kbit/s through PyAV (FFmpeg's encoder): 320 samples in, 160 bytes out."""

    def __init__(self) -> None:
        import av

        self._av = av
        self._ctx = av.CodecContext.create("g722", "w")
        self._ctx.sample_rate = 16000
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        self._ctx.open()

    def encode(self, pcm16k: np.ndarray) -> bytes:
        frame = self._av.AudioFrame.from_ndarray(
            (np.clip(pcm16k, -1, 1) * 32767).astype(np.int16)[None, :], format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


@dataclass
class _Leg:
    name: str
    payload_type: int
    clock_rate: int
    packets: list[bytes]  # encoded payloads, one per 20 ms
    ssrc: int
    seq: int = 0
    ts: int = 0


def _load_legs(rng: random.Random) -> list[_Leg]:
    import soundfile as sf
    import soxr

    legs = []
    caller, sr = sf.read(str(DEMO_DIR / "caller.flac"), dtype="float32")
    caller = soxr.resample(caller, sr, 16000).astype(np.float32) if sr != 16000 else caller
    enc = G722Encoder()
    n = len(caller) // 320
    legs.append(_Leg("caller", 9, 8000, [enc.encode(caller[i * 320 : (i + 1) * 320]) for i in range(n)], rng.getrandbits(32)))
    callee, sr = sf.read(str(DEMO_DIR / "callee.flac"), dtype="float32")
    callee8k = soxr.resample(callee, sr, 8000).astype(np.float32)
    n = len(callee8k) // 160
    legs.append(_Leg("callee", 0, 8000, [encode_pcmu(callee8k[i * 160 : (i + 1) * 160]) for i in range(n)], rng.getrandbits(32)))
    return legs


def loss_at(schedule: dict, t: float) -> float:
    """Packet-loss rate the schedule asks for at time ``t`` within the call."""
    for seg in schedule["segments"]:
        if seg["start"] <= t < seg["end"]:
            return float(seg.get("loss", 0.0))
    return 0.0


class DemoCall:
    """Sends the demo call's two legs to ``addr`` as RTP, in real time."""

    def __init__(self, addr: tuple[str, int], *, seed: int = 1):
        self.addr = addr
        self.rng = random.Random(seed)
        self.schedule = json.loads((DEMO_DIR / "schedule.json").read_text())
        self.sent = 0
        self.dropped = 0

    async def run(self, *, loop_forever: bool = True) -> None:
        """Send the call once (or forever); the sender is paced by the loop clock."""
        legs = await asyncio.to_thread(_load_legs, self.rng)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Bound to loopback before the first send: an unbound socket would be bound to
        # 0.0.0.0 by it, a UDP port open to the network for the whole demo.
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        try:
            while True:
                for leg in legs:  # each leg's name, as a phone's RTCP SDES: the overlay shows it
                    sock.sendto(build_sdes(leg.ssrc, f"{leg.name}@demo"), self.addr)
                start = loop.time()
                n = min(len(leg.packets) for leg in legs)
                for i in range(n):
                    await asyncio.sleep(max(0.0, start + i * PACKET_S - loop.time()))
                    loss = loss_at(self.schedule, i * PACKET_S)
                    for leg in legs:
                        samples = round(PACKET_S * leg.clock_rate)
                        if self.rng.random() >= loss:
                            pkt = build(payload_type=leg.payload_type, sequence=leg.seq, timestamp=leg.ts, ssrc=leg.ssrc, payload=leg.packets[i], marker=(i == 0))
                            sock.sendto(pkt, self.addr)
                            self.sent += 1
                        else:
                            self.dropped += 1
                        leg.seq = (leg.seq + 1) & 0xFFFF
                        leg.ts = (leg.ts + samples) & 0xFFFFFFFF
                if not loop_forever:
                    return
        finally:
            sock.close()
