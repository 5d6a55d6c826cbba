"""Concurrent WHIP peers (issue 22 acceptance 3): ``--peers`` aiortc publishers, in a process
of their own, each send held-out speech (asterisk-carlo) over WHIP to ``streamqa monitor --webrtc``
(the real CLI, a subprocess) at once, and every stream must keep real time with no hop
dropped.

    python -m benchmarks.whip_peers --json benchmarks/results/whip_peers.json [--peers 20] [--seconds 60]
    python -m benchmarks.whip_peers --profile monitor.txt   # where the monitor's time goes (py-spy)

Why not 20 browser tabs: on this 2-core machine 20 tabs of headless chromium capturing
their fake microphones in real time starve before the monitor does (some tabs could not
even start the fake audio source, the others' media never flowed), and 20 aiortc clients
each encoding Opus in the monitor's own event loop starve the monitor. So the prompt is
encoded to Opus once, by aiortc's encoder, and the publishers (a separate process, one
event loop) only pace, encrypt and send the packets, 20 ms apart on a fixed schedule, as a
browser's sender does. The monitor's side is the one under test and is exactly as for a
browser: ICE, DTLS, SRTP, aiortc's jitter buffer and Opus decoder, the engine, the websocket.

A score's lag is its receipt by a websocket subscriber (same machine, same wall clock)
minus the moment its hop's last packet was due to leave the publisher. Real time holds when
the lag stays bounded (the last 10 s of every stream lag less than REAL_TIME_LAG_S); no hop
is dropped when every stream's scores come once per hop without a gap (the last, the
stream's partial end, may come sooner), cover the audio sent, its end summary counts them
all, and ``streamqa_hops_dropped_total`` stays 0.

Profiling (``--profile``) samples the monitor with py-spy without pausing it
(``--nonblocking``): py-spy's default stops every thread for each sample, which with the
monitor's 22 threads (20 decoders) slowed it enough to fall 20 s behind.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from benchmarks import free_port, write_json
from benchmarks.whip_client import publish
from benchmarks.whip_latency import TOKEN, start_monitor, stop_monitor, wait_port, write_prompt

REAL_TIME_LAG_S = 1.0  # the last 10 s of every stream must lag less than this
OPUS_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms, what browsers send


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus series over its labels (0 when absent)."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc): what the monitor needed,
    whatever share of the machine it was given."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def opus_packets(wav: Path) -> list[bytes]:
    """The WAV as 20 ms Opus packets at 48 kHz, by aiortc's own encoder (what a file track
    would go through), encoded once for every publisher."""
    audio, rate = sf.read(wav, dtype="int16")
    frame = av.AudioFrame.from_ndarray(audio[None, :], format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
    pcm = np.concatenate([f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)])
    encoder, packets = OpusEncoder(), []
    for start in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        chunk = av.AudioFrame.from_ndarray(pcm[None, start:start + FRAME_SAMPLES], format="s16", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = OPUS_RATE, start, fractions.Fraction(1, OPUS_RATE)
        packets += encoder.encode(chunk)[0]
    return packets


class OpusPacketTrack(MediaStreamTrack):
    """Sends ``packets`` in a loop in real time, 20 ms apart on one schedule (a late packet
    does not push the later ones back); aiortc's sender packs an ``av.Packet`` as it is.
    ``started`` is the wall time (time.time()) packet 0 was due: stream time t left this
    publisher at ``started + t``."""

    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self.packets = packets
        self.sent = 0
        self.started: float | None = None
        self._due = 0.0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError  # how an aiortc track tells its sender it has ended
        now = time.monotonic()
        if self.started is None:
            self.started, self._due = time.time(), now
        # Even when late: aiortc's sender does not yield between packets, so a late track
        # would send its whole backlog while the other 19 and every timer wait.
        await asyncio.sleep(max(0.0, self._due - now))
        packet = av.Packet(self.packets[self.sent % len(self.packets)])
        packet.pts, packet.time_base = self.sent * FRAME_SAMPLES, fractions.Fraction(1, OPUS_RATE)
        self.sent += 1
        self._due += FRAME_SAMPLES / OPUS_RATE
        return packet


async def publish_all(url: str, packets: list[bytes], peers: int, seconds: float) -> list[dict[str, Any]]:
    """``peers`` publishers at once; each sends for ``seconds`` once all are up, then DELETEs."""
    tracks = [OpusPacketTrack(packets) for _ in range(peers)]
    sessions = await asyncio.gather(*(publish(url, track, TOKEN) for track in tracks), return_exceptions=True)
    await asyncio.sleep(seconds)
    out = []
    for track, session in zip(tracks, sessions):
        if isinstance(session, BaseException):
            out.append({"error": f"{type(session).__name__}: {session}"})
            continue
        out.append({"stream": session.streams[0], "started": track.started, "packets": track.sent})
        track.stop()
        try:
            out[-1]["delete"] = await session.close()
        except (OSError, asyncio.TimeoutError) as exc:  # a monitor too busy to answer in 20 s
            out[-1]["delete"] = f"{type(exc).__name__}: {exc}"
            await session.pc.close()
    return out


def publisher_process(url: str, wav: Path, peers: int, seconds: float, out: Path) -> None:
    """The publishers' process: its own interpreter and event loop, apart from the monitor's
    and from the subscriber's. Its CPU time is written beside the sessions: on 2 cores the
    publishers' share is CPU the monitor does not get."""
    packets = opus_packets(wav)
    cpu0 = time.process_time()
    result = asyncio.run(publish_all(url, packets, peers, seconds))
    out.write_text(json.dumps({"sessions": result, "cpu_s": time.process_time() - cpu0}))


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy sampling ``pid`` for ``seconds`` into ``out``, as collapsed stacks (one line
    per stack and its sample count; threads apart, idle stacks left out)."""
    exe = Path(sys.executable).with_name("py-spy")  # the dev extra's, beside this interpreter
    return subprocess.Popen([str(exe) if exe.exists() else "py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--format", "raw", "--threads", "--rate", "100", "--nonblocking", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(args: argparse.Namespace, wav: Path, tmp: Path) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    ws_port, webrtc_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    proc = start_monitor(ws_port, webrtc_port, args.hop, ["--idle-timeout", "10"], tmp / "monitor.log")
    received: list[tuple[float, dict]] = []
    load = {"start": os.getloadavg()}
    try:
        await wait_port(ws_port, proc)
        async with connect(f"ws://127.0.0.1:{ws_port}/ws?token={TOKEN}", max_size=None, ping_interval=None) as ws:
            async def listen() -> None:
                async for raw in ws:
                    received.append((time.time(), json.loads(raw)))

            listener = asyncio.create_task(listen())
            out = tmp / "publishers.json"
            publishers = multiprocessing.get_context("spawn").Process(target=publisher_process, args=(
                f"http://127.0.0.1:{webrtc_port}/whip", wav, args.peers, args.seconds, out))
            cpu0 = cpu_seconds(proc.pid)
            publishers.start()
            profiler = py_spy(proc.pid, args.seconds, args.profile) if args.profile else None
            await asyncio.to_thread(publishers.join)
            load["end"] = os.getloadavg()
            published = json.loads(out.read_text())
            sent = published["sessions"]
            if profiler is not None:
                await asyncio.to_thread(profiler.wait)
            streams = [p["stream"] for p in sent if "stream" in p]
            deadline = time.monotonic() + 30  # the DELETEs end the streams; their summaries follow
            while time.monotonic() < deadline and sum(
                    1 for _, m in received if m["type"] == "stream" and m["event"] == "end") < len(streams):
                await asyncio.sleep(0.5)
            monitor_cpu = cpu_seconds(proc.pid) - cpu0  # the streams have ended: their audio is done
            metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{ws_port}/metrics?token={TOKEN}").read().decode())
            listener.cancel()
    finally:
        stop_monitor(proc)
    if args.messages:  # to look into a run: every message with its receipt (wall time)
        args.messages.write_text("".join(json.dumps([at, m]) + "\n" for at, m in received))
        (args.messages.parent / (args.messages.name + ".sent.json")).write_text(json.dumps(sent))
    window_s = next(m for _, m in received if m["type"] == "hello")["model"]["window_s"]
    per_stream, lags = [], []
    for peer in sent:
        if "stream" not in peer:
            continue
        stream, audio_s = peer["stream"], peer["packets"] * FRAME_SAMPLES / OPUS_RATE
        scores = [(at, m) for at, m in received if m["type"] == "score" and m["stream"] == stream]
        ends = [m for _, m in received if m["type"] == "stream" and m["event"] == "end" and m["stream"] == stream]
        ts = np.array([m["t"] for _, m in scores])
        lag = np.array([at - (peer["started"] + m["t"]) for at, m in scores if m["t"] <= audio_s])
        recent = lag[ts[ts <= audio_s] >= audio_s - 10] if lag.size else lag
        lags.append(lag)
        per_stream.append({
            "stream": stream, "audio_s": round(audio_s, 2), "scores": len(scores),
            # whole hops that audio_s of audio holds (the first is scored before its window is
            # full); the stream's last, partial hop is scored too, so it may come closer
            "hops_sent": int(audio_s // args.hop),
            "gaps": int(np.sum(~np.isclose(np.diff(ts[:-1]), args.hop, atol=0.03))
                        + (not 0 < ts[-1] - ts[-2] <= args.hop + 0.03)) if len(ts) > 2 else None,
            "summary_hops": ends[0]["summary"]["hops"] if ends else None,
            "ended_by": ends[0]["info"].get("ended_by") if ends else None,
            "lag_ms_p50": round(1000 * float(np.median(lag)), 1) if lag.size else None,
            "lag_ms_max": round(1000 * float(lag.max()), 1) if lag.size else None,
            "lag_ms_last10s": round(1000 * float(recent.mean()), 1) if recent.size else None,
            "loss_max": max((m.get("net", {}).get("loss", 0.0) for _, m in scores), default=None),
            "delete_status": peer["delete"],
        })
    all_lag = np.concatenate(lags) if any(lag.size for lag in lags) else np.array([])
    dropped = metric(metrics, "streamqa_hops_dropped_total")
    every_hop = bool(per_stream) and all(
        s["gaps"] == 0 and s["summary_hops"] == s["scores"] and s["scores"] >= s["hops_sent"] - 1 for s in per_stream)
    bounded = bool(per_stream) and all(
        s["lag_ms_last10s"] is not None and s["lag_ms_last10s"] < 1000 * REAL_TIME_LAG_S for s in per_stream)
    failed = [p["error"] for p in sent if "error" in p]
    return {
        "peers": args.peers, "published": len(per_stream), "not_published": failed,
        "seconds": args.seconds, "hop_s": args.hop, "window_s": window_s,
        "load_average_1m": {k: round(v[0], 2) for k, v in load.items()}, "cpus": os.cpu_count(),
        # the monitor's CPU per second of audio published: what real time needs of a core
        "monitor_cpu_s": round(monitor_cpu, 1),
        "monitor_cpu_per_audio_s": round(monitor_cpu / max(1e-9, sum(s["audio_s"] for s in per_stream)), 4),
        "publishers_cpu_s": round(published["cpu_s"], 1),
        "hops_dropped_total": dropped, "hops_scored_total": metric(metrics, "streamqa_hops_scored_total"),
        "every_hop_scored": every_hop,
        "lag_ms": {"p50": round(1000 * float(np.percentile(all_lag, 50)), 1),
                   "p99": round(1000 * float(np.percentile(all_lag, 99)), 1),
                   "max": round(1000 * float(all_lag.max()), 1), "n": int(all_lag.size)} if all_lag.size else None,
        "real_time": bounded, "passed": bool(not failed and every_hop and bounded and dropped == 0),
        "streams": per_stream,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0, help="publishing time once every peer published")
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--json")
    ap.add_argument("--messages", type=Path, help="write every websocket message (JSON lines) and the publishers' sessions")
    ap.add_argument("--profile", type=Path, help="py-spy's collapsed stacks of the monitor while the peers publish")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_prompt(Path(tmp))
        result = asyncio.run(run(args, wav, Path(tmp)))
    result["command"] = "python -m benchmarks.whip_peers " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps({k: v for k, v in result.items() if k != "streams"}))
    if args.json:
        write_json(args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
