"""Soak the live monitor: many RTP calls, churning websocket subscribers, a long run.

    python -m benchmarks.soak --streams 50 --minutes 30 --model PATH --json OUT

The monitor runs as a real ``streamqa monitor`` subprocess (so its RSS is its own, not the
load generator's) listening on loopback. This process plays ``--streams`` concurrent PCMU
calls at 50 packets/s each; every call lasts a random 1-3 minutes and is then replaced by a
new SSRC, so per-stream state is created and torn down all run long. A trickle of hostile
datagrams (short, wrong version, CSRC overflow, RTCP, unknown payload type) rides along.
Websocket subscribers churn: readers come and go, some filter one stream, some stop reading
and must be shed by the server. One auditor subscriber stays connected and collects every
score and every end summary.

Checks written to the JSON (``ok`` is their conjunction):

- RSS of the monitor sampled every ``--sample-s`` seconds; growth from the end of warm-up
  (first ``--warmup-fraction`` of the run) to the end must stay below 5 %.
- No ERROR/CRITICAL/Traceback lines on the monitor's stderr (warnings, e.g. a stalled
  subscriber being disconnected, are counted separately: that is the server doing its job).
- Datagram identity: datagrams sent = sum over ended streams of jitter-buffer pushes
  (received + duplicates + late) + datagrams refused before a stream (max_streams,
  unknown_payload_type) + the parser's drop reasons + the kernel's drops at the monitor's
  socket (``/proc/net/udp``, receive buffer full: the monitor fell behind).
- Every stream published about one score per hop while it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from benchmarks import free_port, write_json
from streamqa.rtp.packet import build

PACKET_S = 0.02
PCMU_SAMPLES = 160
DEMO_AUDIO = Path(__file__).resolve().parent.parent / "streamqa" / "demo" / "caller.flac"
HOSTILE = {
    "short": b"\x80\x00\x00",
    "version": b"\x40" + b"\x00" * 20,
    "csrc_overflow": bytes([0x8F]) + b"\x00" * 15,
    "rtcp": b"\x80\xc8" + b"\x00" * 26,
}
_LAUNCH = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')\n"
    "from streamqa.cli import main\n"
    "main(sys.argv[1:])\n"
)


def ulaw_encode(x: np.ndarray) -> bytes:
    """G.711 mu-law of float PCM in [-1, 1] (the sender side the monitor never needs)."""
    s = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def speech_payloads() -> list[bytes]:
    """The bundled demo voice as 20 ms PCMU payloads (8 kHz), looped by the senders."""
    import soundfile as sf
    import soxr

    audio, sr = sf.read(str(DEMO_AUDIO), dtype="float32", always_2d=True)
    pcm = soxr.resample(audio.mean(axis=1), sr, 8000).astype(np.float32)
    pcm = pcm[: len(pcm) // PCMU_SAMPLES * PCMU_SAMPLES]
    data = ulaw_encode(pcm)
    return [data[i : i + PCMU_SAMPLES] for i in range(0, len(data), PCMU_SAMPLES)]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def udp_rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def udp_socket_drops(port: int) -> int:
    """Datagrams the kernel dropped at the monitor's own RTP socket (full receive buffer):
    the ``drops`` column of /proc/net/udp for the socket bound to ``port``."""
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    return 0


def scrape(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def packet_counters(metrics_text: str) -> dict[str, int]:
    """The sources' counts in /metrics by their own names (streamqa.sources.series): packet
    outcomes, stream events and source errors."""
    from streamqa.sources import STREAM_EVENTS

    names = {("event", v): k for k, v in STREAM_EVENTS.items()}
    out = {}
    pattern = r'^streamqa_(?:packets|stream_events|source_errors)_total\{(reason|event|kind)="([^"]+)"\} (\S+)$'
    for m in re.finditer(pattern, metrics_text, re.MULTILINE):
        out[names.get((m.group(1), m.group(2)), m.group(2))] = int(float(m.group(3)))
    return out


class Calls:
    """The RTP load: ``n`` concurrent calls, each a fresh SSRC for 1-3 minutes."""

    def __init__(self, n: int, addr: tuple[str, int], rng: random.Random, payloads: list[bytes]):
        self.addr, self.rng, self.payloads = addr, rng, payloads
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sent: Counter[int] = Counter()  # ssrc -> valid RTP packets sent
        self.hostile: Counter[str] = Counter()
        self.calls_started = 0
        self.slots = [self._new_call(time.monotonic()) for _ in range(n)]

    def _new_call(self, now: float) -> dict:
        self.calls_started += 1
        ssrc = self.rng.getrandbits(32)
        while ssrc in self.sent:
            ssrc = self.rng.getrandbits(32)
        return {"ssrc": ssrc, "seq": self.rng.getrandbits(16), "ts": self.rng.getrandbits(32),
                "pos": self.rng.randrange(len(self.payloads)), "until": now + self.rng.uniform(60, 180),
                "pause_until": 0.0}

    def tick(self, now: float) -> None:
        for i, c in enumerate(self.slots):
            if now < c["pause_until"]:
                continue
            if now >= c["until"]:  # hang up; the next call starts after the idle timeout
                nxt = self._new_call(now)
                nxt["pause_until"] = now + 4.0
                nxt["until"] += 4.0
                self.slots[i] = nxt
                continue
            payload = self.payloads[c["pos"] % len(self.payloads)]
            self.sock.sendto(build(0, c["seq"], c["ts"], c["ssrc"], payload), self.addr)
            self.sent[c["ssrc"]] += 1
            c["seq"] = (c["seq"] + 1) & 0xFFFF
            c["ts"] = (c["ts"] + PCMU_SAMPLES) & 0xFFFFFFFF
            c["pos"] += 1

    def send_hostile(self) -> None:
        reason = self.rng.choice([*HOSTILE, "unknown_payload_type"])
        data = HOSTILE.get(reason) or build(35, 0, 0, 0xDEAD0000 + self.hostile[reason], b"x")
        self.sock.sendto(data, self.addr)
        self.hostile[reason] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Send on an absolute 20 ms grid (catching up after a late wake-up)."""
        nxt = time.monotonic()
        last_hostile = nxt
        while not stop.is_set():
            now = time.monotonic()
            while nxt <= now:
                self.tick(nxt)
                nxt += PACKET_S
            if now - last_hostile >= 0.2:
                self.send_hostile()
                last_hostile = now
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))


class Auditor:
    """A subscriber that never leaves: every score and end summary, per stream."""

    def __init__(self) -> None:
        self.scores: Counter[str] = Counter()
        self.nan = 0
        self.ends: dict[str, dict] = {}
        self.starts = 0

    async def run(self, url: str, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        async with connect(url, max_size=None) as ws:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 1.0)
                except asyncio.TimeoutError:
                    continue
                if "NaN" in raw or "Infinity" in raw:
                    self.nan += 1
                msg = json.loads(raw)
                if msg["type"] == "score":
                    self.scores[msg["stream"]] += 1
                elif msg["type"] == "stream" and msg["event"] == "start":
                    self.starts += 1
                elif msg["type"] == "stream":
                    self.ends[msg["stream"]] = msg


async def churn(url: str, rng: random.Random, stop: asyncio.Event, stats: Counter) -> None:
    """One subscriber slot: connect, behave (read / filter / stall), leave, repeat."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    while not stop.is_set():
        kind = rng.choices(["reader", "filter", "staller"], weights=[8, 1, 1])[0]
        stay = rng.uniform(5, 30)
        try:
            async with connect(url, max_size=None, open_timeout=10, close_timeout=2) as ws:
                stats["connects"] += 1
                stats[f"connects_{kind}"] += 1
                end = time.monotonic() + stay
                if kind == "filter":
                    hello = json.loads(await ws.recv())
                    assert hello["type"] == "hello"
                    await ws.send(json.dumps({"type": "subscribe", "streams": [f"rtp-{rng.getrandbits(32):08x}-1"]}))
                if kind == "staller":  # never read: the server must shed it, not buffer for it
                    while time.monotonic() < end and not stop.is_set():
                        await asyncio.sleep(0.5)
                    continue
                while time.monotonic() < end and not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), 1.0)
                        stats["messages"] += 1
                    except asyncio.TimeoutError:
                        pass
        except (ConnectionClosed, InvalidStatus, OSError, asyncio.TimeoutError) as exc:
            stats[f"closed_{type(exc).__name__}"] += 1
        await asyncio.sleep(rng.uniform(0.1, 2.0))


async def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    ws_port, rtp_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    cmd = [sys.executable, "-c", _LAUNCH, "monitor", "--rtp", f"127.0.0.1:{rtp_port}",
           "--ws", f"127.0.0.1:{ws_port}", "--quiet", "--threads", "1"]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    stderr_path = Path(args.stderr_log)
    with stderr_path.open("w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = json.loads(scrape(ws_port, "/healthz"))
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"monitor did not start; see {stderr_path}") from None
                await asyncio.sleep(0.2)
        hop_s = float(json.loads(await _hello(ws_port))["model"]["hop_s"])
        url = f"ws://127.0.0.1:{ws_port}/"
        stop_load, stop_watch = asyncio.Event(), asyncio.Event()
        auditor = Auditor()
        audit_task = asyncio.create_task(auditor.run(url, stop_watch))
        await asyncio.sleep(0.5)
        calls = Calls(args.streams, ("127.0.0.1", rtp_port), rng, speech_payloads())
        rcvbuf0 = udp_rcvbuf_errors()
        sub_stats: Counter[str] = Counter()
        tasks = [asyncio.create_task(calls.run(stop_load))]
        tasks += [asyncio.create_task(churn(url, random.Random(rng.random()), stop_load, sub_stats))
                  for _ in range(args.subscribers)]
        t0 = time.monotonic()
        samples = []
        total = args.minutes * 60.0
        while (elapsed := time.monotonic() - t0) < total:
            if proc.poll() is not None:
                raise RuntimeError(f"monitor exited with {proc.returncode}; see {stderr_path}")
            health = json.loads(scrape(ws_port, "/healthz"))
            samples.append({"t_s": round(elapsed, 1), "rss_mb": round(rss_kb(proc.pid) / 1024, 2),
                            "clients": health["clients"], "streams": health["streams"]})
            print(f"soak t={elapsed:7.1f}s rss={samples[-1]['rss_mb']:.1f} MB clients={health['clients']} "
                  f"streams={health['streams']} scores={sum(auditor.scores.values())}", flush=True)
            await asyncio.sleep(min(args.sample_s, max(0.0, total - elapsed)))
        stop_load.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Let every call hit the idle timeout so each stream's end summary (its final
        # jitter counters) reaches the auditor before the monitor stops.
        wait_end = time.monotonic() + 30  # idle timeout + the reaper's backlog deferral
        while json.loads(scrape(ws_port, "/healthz"))["streams"] and time.monotonic() < wait_end:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        metrics_text = scrape(ws_port, "/metrics")
        rcvbuf1 = udp_rcvbuf_errors()
        socket_drops = udp_socket_drops(rtp_port)
        stop_watch.set()
        await asyncio.gather(audit_task, return_exceptions=True)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return report(args, samples, auditor, calls, sub_stats, packet_counters(metrics_text),
                  rcvbuf1 - rcvbuf0, socket_drops, hop_s, stderr_path, proc.returncode)


async def _hello(port: int) -> str:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/") as ws:
        return await asyncio.wait_for(ws.recv(), 5)


def report(args, samples, auditor: Auditor, calls: Calls, sub_stats: Counter, counters: dict[str, int],
           kernel_drops: int, socket_drops: int, hop_s: float, stderr_path: Path, returncode: int | None) -> dict:
    warmup_s = args.minutes * 60.0 * args.warmup_fraction
    after = [s["rss_mb"] for s in samples if s["t_s"] >= warmup_s]
    base = float(np.mean(after[:3])) if after else float("nan")
    last = float(np.mean(after[-3:])) if after else float("nan")
    growth = (last - base) / base if after else float("nan")

    lines = stderr_path.read_text().splitlines()
    errors = [ln for ln in lines if ln.startswith(("ERROR", "CRITICAL")) or "Traceback" in ln]
    warnings = Counter(ln.split(":", 1)[0] for ln in lines if ln.startswith("WARNING"))

    pushed = defaultdict(int)  # ssrc -> jitter-buffer pushes over all its streams
    for msg in auditor.ends.values():
        net = msg["summary"].get("net") or {}
        pushed[msg["info"]["ssrc"]] += net.get("packets", 0) + net.get("duplicates", 0) + net.get("late", 0)
    # The kernel does not say which datagrams it dropped, so the identity is on totals:
    # sent = pushed into a stream's jitter buffer + refused before a stream (cap, unknown
    # payload type) + refused by the parser + dropped at the socket by the kernel.
    refused = counters.get("max_streams", 0) + counters.get("unknown_payload_type", 0)
    valid_sent = sum(calls.sent.values())
    sent = valid_sent + sum(calls.hostile.values())
    accounted = sum(pushed.values()) + refused + sum(counters.get(r, 0) for r in HOSTILE) + socket_drops
    valid_accounted = sum(pushed.values()) + counters.get("max_streams", 0)  # before kernel drops
    identity_ok = sent == accounted and counters.get("internal_error", 0) == 0

    rates = []  # scores per hop of stream time, per ended stream that ran >= 30 s
    for sid, msg in auditor.ends.items():
        dur = msg["summary"].get("duration_s") or 0.0
        if dur >= 30:
            rates.append(auditor.scores[sid] * hop_s / dur)
    rate_ok = bool(rates) and min(rates) >= 0.95 and max(rates) <= 1.05

    result = {
        "command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]]),
        "streams": args.streams,
        "minutes": args.minutes,
        "model": args.model,
        "hop_s": hop_s,
        "subscriber_slots": args.subscribers,
        "warmup_s": warmup_s,
        "rss_mb_after_warmup": round(base, 2),
        "rss_mb_end": round(last, 2),
        "rss_growth": round(growth, 4),
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
        "error_lines": len(errors),
        "first_errors": errors[:5],
        "warning_lines": dict(warnings),
        "calls": calls.calls_started,
        "streams_ended_seen": len(auditor.ends),
        "stream_starts_seen": auditor.starts,
        "packets_sent_valid": valid_sent,
        "packets_accounted_valid": valid_accounted,
        "hostile_sent": dict(calls.hostile),
        "datagrams_sent": sent,
        "datagrams_accounted": accounted,
        "source_counters": counters,
        "socket_drops": socket_drops,
        "kernel_udp_rcvbuf_errors": kernel_drops,
        "counter_identity_ok": identity_ok,
        "scores_received": sum(auditor.scores.values()),
        "nan_messages": auditor.nan,
        "score_rate_per_hop_min": round(min(rates), 4) if rates else None,
        "score_rate_per_hop_max": round(max(rates), 4) if rates else None,
        "score_rate_ok": rate_ok,
        "subscribers": dict(sub_stats),
        "monitor_exit_code": returncode,
        "samples": samples,
    }
    result["ok"] = bool(
        growth < 0.05 and not errors and identity_ok and rate_ok and auditor.nan == 0 and returncode == 0
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--model", help="bundled model name or path to an .onnx student")
    ap.add_argument("--subscribers", type=int, default=20, help="concurrent churning subscriber slots")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--warmup-fraction", type=float, default=1 / 6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stderr-log", default="/tmp/soak-monitor.stderr")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    result = asyncio.run(soak(args))
    if args.json:
        write_json(args.json, result, indent=1)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
