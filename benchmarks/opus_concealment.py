"""Opus as conferencing sends it (issue 20, part 3): does libopus's concealment and in-band
FEC make lossy Opus sound better to the scorer than the silence it heard before?

ffmpeg encodes held-out speech (asterisk-carlo, never trained on) to Opus RTP with in-band
FEC on, as a conferencing client expecting loss sends it (``-fec:a 1 -packet_loss 10``: a
bare ``-fec`` is taken by ffmpeg's rtp protocol); a seeded fraction of the datagrams is
dropped; and the monitor's own RTP path (jitter buffer, ``RtpSource._deliver``) decodes the same surviving packets with three decoders:

* ``fec_plc``: the monitor's decoder (libopus, FEC from the packet after a gap, PLC);
* ``plc``: libopus concealment without FEC;
* ``silence``: every gap filled with silence (what FFmpeg's decoder gave before).

The bundled model scores each whole signal as ``streamqa score`` scores a file (consecutive
whole windows, those judged speech averaged), and the E-model figure each decoder's stream
would publish is reported beside it. ``clean`` is the same packets without loss.

    python -m benchmarks.opus_concealment --json benchmarks/results/opus_concealment.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import soundfile as sf
import soxr

from benchmarks import write_json
from benchmarks.rtp_degradation import SR, held_out_speech
from streamqa.api import score
from streamqa.model import Model, load_model
from streamqa.rtp import stream as rtp_stream
from streamqa.rtp.emodel import emodel_mos
from streamqa.rtp.opus import OpusDecoder
from streamqa.sources import StreamInfo
from streamqa.sources import rtp as rtp_source

PAYLOAD_TYPE = 97  # what ffmpeg sends Opus as
RATE = 48000


class _PlcOnly(OpusDecoder):
    """libopus concealment, FEC ignored."""

    recover = None


class _SilenceFilled(OpusDecoder):
    """Gaps filled with silence, as FFmpeg's decoder (through PyAV) filled them."""

    plc = False
    recover = None

    def conceal(self, n_samples: int) -> np.ndarray:
        return np.zeros(max(0, int(n_samples)), dtype=np.float32)


DECODERS: dict[str, type[OpusDecoder]] = {"fec_plc": OpusDecoder, "plc": _PlcOnly, "silence": _SilenceFilled}


def opus_sender(wav: Path, *, bitrate: str = "24k", loss_pct: int = 10) -> Callable[[tuple[str, int]], Awaitable[None]]:
    """A coroutine factory: ffmpeg sending ``wav`` as 20 ms Opus RTP packets with in-band
    FEC to an address, at four times real time (fast, yet paced enough that loopback
    buffers never overflow)."""

    async def send(address: tuple[str, int]) -> None:
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-readrate", "4", "-i", str(wav),
            "-ar", str(RATE), "-ac", "1", "-c:a", "libopus", "-application", "voip",
            "-b:a", bitrate, "-frame_duration", "20", "-fec:a", "1", "-packet_loss", str(loss_pct),
            "-payload_type", str(PAYLOAD_TYPE), "-f", "rtp", f"rtp://{address[0]}:{address[1]}",
            stdout=asyncio.subprocess.DEVNULL,  # the SDP ffmpeg prints
        )
        if await proc.wait():
            raise RuntimeError(f"ffmpeg exited with {proc.returncode}")

    return send


class _Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)


async def receive(send: Callable[[tuple[str, int]], Awaitable[None]], settle_s: float = 0.5) -> list[bytes]:
    """Every datagram that ``send(address)`` delivers to a local UDP port, in arrival order."""
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(_Collector, local_addr=("127.0.0.1", 0))
    try:
        await send(transport.get_extra_info("sockname")[:2])
        await asyncio.sleep(settle_s)
    finally:
        transport.close()
    return collector.datagrams


class _AudioSink:
    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.last_net: dict[str, Any] = {}

    def start(self, info: StreamInfo) -> None:
        pass

    def audio(self, stream_id: str, pcm: np.ndarray, arrival: float) -> None:
        self.chunks.append(pcm)

    def net(self, stream_id: str, stats: dict[str, Any]) -> None:
        self.last_net = stats

    def end(self, stream_id: str) -> None:
        pass


def decode(datagrams: list[bytes], decoder: type[OpusDecoder]) -> tuple[np.ndarray, dict[str, Any]]:
    """The monitor's RTP path on ``datagrams`` with ``decoder`` for Opus: mono audio at the
    scorer's rate and the stream's last network report. Arrival times come from the RTP
    timestamps (a perfectly paced sender), so only the loss differs between runs."""
    sink = _AudioSink()
    made: list[OpusDecoder] = []

    def make(codec: str, rate: int, channels: int) -> OpusDecoder:
        made.append(decoder())
        return made[-1]

    # Patched where each stream builds its decoder (RtpStream): had the patch missed it, every
    # decoder's audio would be the monitor's and the comparison would see no difference.
    with mock.patch.object(rtp_stream, "make_decoder", make):
        source = rtp_source.RtpSource(sink, rtp_map={PAYLOAD_TYPE: ("opus", RATE, 2)})
        first = int.from_bytes(datagrams[0][4:8], "big")
        for data in datagrams:
            ts = (int.from_bytes(data[4:8], "big") - first) & 0xFFFFFFFF
            source.handle_datagram(data, ("127.0.0.1", 5004), ts / RATE)
        source.stop()
    if len(made) != 1:
        raise RuntimeError(f"expected the stream to build one {decoder.__name__}, it built {len(made)}: "
                           "where does streamqa's RTP path make its decoder now?")
    audio = np.concatenate(sink.chunks) if sink.chunks else np.zeros(0, np.float32)
    return soxr.resample(audio, RATE, SR).astype(np.float32), sink.last_net


def drop(datagrams: list[bytes], loss: float, seed: int) -> list[bytes]:
    """Bernoulli loss at rate ``loss`` (seeded), never the first two packets (the stream's
    probation)."""
    rng = random.Random(seed)
    return datagrams[:2] + [d for d in datagrams[2:] if rng.random() >= loss]


def compare(model: Model, datagrams: list[bytes]) -> dict[str, Any]:
    """Score ``datagrams`` through each decoder of DECODERS: MOS, E-model MOS and the loss
    the stream reported."""
    out: dict[str, Any] = {}
    for name, decoder in DECODERS.items():
        audio, net = decode(datagrams, decoder)
        mos = score(audio, model.info.sample_rate, model=model).mos
        out[name] = {"mos": mos, "loss": net["loss_total"], "packets_lost": net["lost"],
                     "emodel_mos": emodel_mos("opus", 100.0 * net["loss_total"], plc=decoder.plc)}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--loss", type=float, default=0.10)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--bitrate", default="24k")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    speech, prompts = held_out_speech(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        sf.write(wav, speech, SR)
        datagrams = asyncio.run(receive(opus_sender(wav, bitrate=args.bitrate, loss_pct=round(100 * args.loss))))
    t0 = time.perf_counter()
    clean, _ = decode(datagrams, OpusDecoder)
    runs = []
    for seed in range(args.seeds):
        run = compare(model, drop(datagrams, args.loss, seed))
        runs.append({"seed": seed, **run})
        print(f"seed {seed}: " + "  ".join(f"{k} {v['mos']:.3f}" for k, v in run.items()
                                             if isinstance(v, dict)), flush=True)
    mean = {name: float(np.mean([r[name]["mos"] for r in runs])) for name in DECODERS}
    result = {
        "benchmark": "opus_concealment", "model": model.info.name, "prompts": prompts,
        "seconds": args.seconds, "bitrate": args.bitrate, "loss_rate": args.loss,
        "packets": len(datagrams), "clean_mos": score(clean, model.info.sample_rate, model=model).mos,
        "mean_mos": mean,
        "fec_plc_minus_silence": mean["fec_plc"] - mean["silence"],
        "plc_minus_silence": mean["plc"] - mean["silence"],
        "fec_plc_beats_silence_every_seed": all(r["fec_plc"]["mos"] > r["silence"]["mos"] for r in runs),
        "runs": runs, "elapsed_s": time.perf_counter() - t0,
    }
    print(f"clean {result['clean_mos']:.3f}; mean at {100 * args.loss:.0f} % loss: "
          + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
