"""Does live MOS fall when a real call degrades? ISSUE 3 acceptance 2, measured end to end.

    python -m benchmarks.rtp_degradation --json benchmarks/results/rtp_degradation.json \
        [--model streamqa-s] [--seconds 20] [--loss 0.10] [--snr 5]

ffmpeg sends one RTP stream (L16/16000, 20 ms packets, paced with -re) to
``streamqa monitor --rtp`` (the real CLI, a subprocess): first ``--seconds`` of clean speech,
then the same speech with babble mixed in at ``--snr`` dB. The packet loss of the second half
happens on the wire: ffmpeg has no loss option, so a UDP relay between ffmpeg and the monitor
drops ``--loss`` of the second half's datagrams with a seeded RNG; the monitor's jitter
buffer, concealment and E-model see real gaps. A websocket subscriber records every score.

All audio comes from speakers held out of training (train.data.manifest
DEFAULT_TEST_SPEAKERS): the speech is the Italian asterisk prompt voice (asterisk-carlo), the
babble is the sum of five espeak-ng Polish voices, each saying its own sentences.

Clean and degraded means use only windows that lie wholly in one half (window end t with
window <= t <= seconds, or seconds + window <= t <= 2 * seconds), so the transition does not
blur them.
The acceptance threshold is ``difference = clean_mean_mos - degraded_mean_mos >= 0.8``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from benchmarks import free_port, write_json
from train.data.asterisk import asterisk_dir
from train.data.level import active_rms, normalise_level
from train.data.tts import ESPEAK_VARIANTS, make_text

SR = 16000
PACKET_S = 0.02
THRESHOLD = 0.8
# Silence after the call, so that packets lost at the very end (which no receiver can count
# or conceal) never cost the last hop of the degraded half.
TAIL_S = 0.5
# Long speech prompts of the held-out Italian voice (no beeps, jingles or silence files).
SPEECH_PROMPTS = ("demo-congrats", "demo-instruct", "priv-callee-options", "conf-adminmenu-18")
BABBLE_VOICES = ("pl",) + tuple(f"pl+{v}" for v in ESPEAK_VARIANTS)


def decode_prompt(path: Path) -> np.ndarray:
    """An asterisk G.722 prompt as 16 kHz float32 (FFmpeg's G.722 decoder)."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "g722", "-i", str(path),
         "-f", "f32le", "-ar", str(SR), "-ac", "1", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def held_out_speech(seconds: float) -> tuple[np.ndarray, list[str]]:
    """``seconds`` of asterisk-carlo speech: long prompts concatenated, 0.3 s pauses between."""
    pause = np.zeros(int(0.3 * SR), dtype=np.float32)
    parts, used, total = [], [], 0
    for name in SPEECH_PROMPTS:
        audio = decode_prompt(asterisk_dir("it") / f"{name}.g722")
        parts += [audio, pause]
        used.append(f"it/{name}.g722")
        total += len(audio) + len(pause)
        if total >= seconds * SR:
            break
    speech = np.concatenate(parts)[: int(seconds * SR)]
    if len(speech) < seconds * SR:
        raise SystemExit(f"only {len(speech) / SR:.1f} s of held-out speech for --seconds {seconds}")
    return normalise_level(speech), used


def espeak(voice: str, text: str) -> np.ndarray:
    """One espeak-ng utterance at 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "tts.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), sr, SR).astype(np.float32)


def babble(n: int, seed: int) -> np.ndarray:
    """Sum of the Polish talkers, each at the same active level and looped from its own
    random offset so their pauses do not line up (babble has no gaps)."""
    rng = np.random.default_rng(seed)
    mix = np.zeros(n, dtype=np.float64)
    for voice in BABBLE_VOICES:
        talk = normalise_level(espeak(voice, make_text("pl", rng, min_words=60)))
        talk = np.tile(talk, n // len(talk) + 2)
        start = int(rng.integers(len(talk) - n))
        mix += talk[start : start + n]
    return mix.astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so active speech level / noise RMS = ``snr_db``."""
    noise_rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    gain = active_rms(speech) / (noise_rms * 10 ** (snr_db / 20))
    return (speech + gain * noise).astype(np.float32)


def build_call(seconds: float, snr_db: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Clean half then degraded half, one gain for both so only the babble differs."""
    speech, used = held_out_speech(seconds)
    noisy = mix_at_snr(speech, babble(len(speech), seed), snr_db)
    peak = max(float(np.abs(speech).max()), float(np.abs(noisy).max()))
    gain = min(1.0, 0.95 / peak)
    call = np.concatenate([speech, noisy, np.zeros(int(TAIL_S * SR), dtype=np.float32)]) * gain
    return call.astype(np.float32), {"speech": used, "babble_voices": list(BABBLE_VOICES)}


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards RTP to the monitor, dropping ``loss`` of the datagrams whose RTP timestamp
    is at or after ``after_s`` (seeded, so a rerun drops the same packets)."""

    def __init__(self, target: tuple[str, int], *, loss: float, after_s: float, clock_rate: int, seed: int):
        self.target, self.loss, self.after_s, self.clock_rate = target, loss, after_s, clock_rate
        self.rng = random.Random(seed)
        self.transport: asyncio.DatagramTransport | None = None
        self.first_ts: int | None = None
        self.sent = {"clean": 0, "degraded": 0}
        self.dropped = {"clean": 0, "degraded": 0}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        ts = int.from_bytes(data[4:8], "big")
        if self.first_ts is None:
            self.first_ts = ts
        half = "degraded" if ((ts - self.first_ts) & 0xFFFFFFFF) / self.clock_rate >= self.after_s else "clean"
        if half == "degraded" and self.rng.random() < self.loss:
            self.dropped[half] += 1
            return
        self.sent[half] += 1
        self.transport.sendto(data, self.target)


def streamqa_command() -> list[str]:
    """How to start the ``streamqa`` CLI of this environment."""
    script = Path(sys.executable).with_name("streamqa")
    return [str(script)] if script.exists() else [sys.executable, "-m", "streamqa.cli"]


@contextlib.asynccontextmanager
async def monitor_session(hop: float, model: str | None) -> AsyncIterator[tuple[Any, int]]:
    """A ``streamqa monitor`` subprocess on free loopback ports (RTP with L16 as payload type
    97, websocket) and a websocket client connected to it: yields ``(websocket, rtp_port)``,
    then stops the monitor with SIGINT (SIGKILL after 15 s)."""
    from websockets.asyncio.client import connect

    rtp_port, ws_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    monitor = subprocess.Popen(
        streamqa_command() + ["monitor", "--rtp", f"127.0.0.1:{rtp_port}", "--ws", f"127.0.0.1:{ws_port}",
                              "--rtp-map", "97=L16/16000", "--hop", str(hop), "--idle-timeout", "2",
                              "--quiet"] + (["--model", model] if model else []),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if monitor.poll() is not None:
                raise SystemExit(f"streamqa monitor exited with {monitor.returncode}: {monitor.stderr.read()}")
            try:
                ws = await connect(f"ws://127.0.0.1:{ws_port}/", open_timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        async with ws:
            yield ws, rtp_port
    finally:
        monitor.send_signal(signal.SIGINT)
        try:
            monitor.wait(timeout=15)
        except subprocess.TimeoutExpired:
            monitor.kill()


async def run_call(wav: Path, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Start the monitor, relay and ffmpeg; collect every websocket message of the call."""
    loop = asyncio.get_running_loop()
    messages: list[dict[str, Any]] = []
    async with monitor_session(args.hop, args.model) as (ws, rtp_port):
        relay_tr, relay = await loop.create_datagram_endpoint(
            lambda: LossyRelay(("127.0.0.1", rtp_port), loss=args.loss, after_s=seconds, clock_rate=SR, seed=args.seed),
            local_addr=("127.0.0.1", 0),
        )
        relay_port = relay_tr.get_extra_info("sockname")[1]
        ffmpeg = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i", str(wav),
            "-ar", str(SR), "-ac", "1", "-c:a", "pcm_s16be", "-payload_type", "97",
            "-packetsize", str(12 + int(PACKET_S * SR) * 2), "-f", "rtp", f"rtp://127.0.0.1:{relay_port}",
            stdout=asyncio.subprocess.DEVNULL,
        )

        async def collect() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                messages.append(msg)
                if msg.get("type") == "stream" and msg.get("event") == "end":
                    return

        try:
            await asyncio.wait_for(collect(), 2 * seconds + 60)
        except asyncio.TimeoutError:
            raise SystemExit("no end of stream from the monitor: did any RTP arrive?") from None
        if await ffmpeg.wait() != 0:
            raise SystemExit("ffmpeg sender failed")
        relay_tr.close()
    return {"messages": messages, "relay_sent": relay.sent, "relay_dropped": relay.dropped}


def summarise(run: dict[str, Any], seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON result: half means over whole-half windows, message accounting, network view."""
    msgs = run["messages"]
    hello = next(m for m in msgs if m["type"] == "hello")
    window, hop = hello["model"]["window_s"], hello["model"]["hop_s"]
    scores = [m for m in msgs if m["type"] == "score"]
    end = next(m for m in msgs if m.get("event") == "end")
    eps = 1e-6
    clean = [m["mos"] for m in scores if window - eps <= m["t"] <= seconds + eps and m["mos"] is not None]
    degraded = [m["mos"] for m in scores
                if m["t"] - window >= seconds - eps and m["t"] <= 2 * seconds + eps and m["mos"] is not None]
    clean_mean = float(np.mean(clean)) if clean else None
    degraded_mean = float(np.mean(degraded)) if degraded else None
    diff = None if clean_mean is None or degraded_mean is None else clean_mean - degraded_mean
    sent, dropped = run["relay_sent"], run["relay_dropped"]
    net = end["summary"].get("net", {})
    return {
        "benchmark": "rtp_degradation",
        "model": hello["model"]["name"],
        "hop_s": hop,
        "window_s": window,
        "seconds_per_half": seconds,
        "codec": "L16/16000, 20 ms packets",
        "loss_rate": args.loss,
        "snr_db": args.snr,
        "seed": args.seed,
        "clean_mean_mos": clean_mean,
        "degraded_mean_mos": degraded_mean,
        "difference": diff,
        "threshold": THRESHOLD,
        "passed": diff is not None and diff >= THRESHOLD,
        "hops_clean": len(clean),
        "hops_degraded": len(degraded),
        "messages": len(scores),
        # One per hop of sent audio, the stream's last, shorter hop included (docs/protocol.md).
        "expected_messages": int(np.ceil((2 * seconds + TAIL_S) / hop - eps)),
        "end_summary_hops": end["summary"]["hops"],
        "mos_rolling_end_of_clean": next((m["mos_rolling"] for m in scores if abs(m["t"] - seconds) < hop / 2), None),
        "mos_rolling_end_of_call": scores[-1]["mos_rolling"] if scores else None,
        "packets_sent_degraded": sent["degraded"] + dropped["degraded"],
        "packets_dropped_degraded": dropped["degraded"],
        "monitor_loss_total": net.get("loss_total"),
        "monitor_lost": net.get("lost"),
        "monitor_jitter_ms": net.get("jitter_ms"),
        "per_hop": [{"t": m["t"], "mos": m["mos"], "mos_rolling": m["mos_rolling"], "speech": m["speech"],
                     "loss": m.get("net", {}).get("loss")} for m in scores],
    }


def print_table(res: dict[str, Any]) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"model {res['model']}  hop {res['hop_s']:g} s  window {res['window_s']:g} s  "
          f"{res['seconds_per_half']:g} s + {res['seconds_per_half']:g} s over RTP ({res['codec']})")
    print(f"{'half':<10}{'hops':>6}{'mean MOS':>10}")
    print(f"{'clean':<10}{res['hops_clean']:>6}{fmt(res['clean_mean_mos']):>10}")
    print(f"{'degraded':<10}{res['hops_degraded']:>6}{fmt(res['degraded_mean_mos']):>10}   "
          f"({res['loss_rate']:.0%} loss on the wire + {res['snr_db']:g} dB babble)")
    print(f"difference {fmt(res['difference'])} (need >= {res['threshold']}): {'PASS' if res['passed'] else 'FAIL'}")
    print(f"score messages {res['messages']} / expected {res['expected_messages']}; relay dropped "
          f"{res['packets_dropped_degraded']}/{res['packets_sent_degraded']} degraded packets, monitor "
          f"loss_total {fmt(res['monitor_loss_total'])}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--model", help="bundled model name or .onnx path (default: the monitor's default)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each half")
    ap.add_argument("--loss", type=float, default=0.10, help="packet-loss rate of the degraded half")
    ap.add_argument("--snr", type=float, default=5.0, help="babble SNR (dB) of the degraded half")
    ap.add_argument("--hop", type=float, default=1.0, help="monitor hop in seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    call, sources = build_call(args.seconds, args.snr, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "call.wav"
        sf.write(str(wav), call, SR, subtype="PCM_16")
        run = asyncio.run(run_call(wav, args, args.seconds))
    res = summarise(run, args.seconds, args)
    res.update(sources)
    res["command"] = "python -m benchmarks.rtp_degradation " + " ".join(argv if argv is not None else sys.argv[1:])
    print_table(res)
    if args.json:
        write_json(args.json, res)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
