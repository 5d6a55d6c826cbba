"""Streaming benchmark: how many live RTP streams one host scores in real time.

    python -m benchmarks.streaming --streams N --seconds S --json OUT
    python -m benchmarks.streaming --search --json benchmarks/results/streaming.json

One trial: N PCMU streams (20 ms packets, pre-encoded speech) from real sender processes
over loopback, each stream on its own socket (its own 4-tuple) and starting at its own
phase of the hop, as independent calls would; the monitor (``streamqa.workers``: scoring
shards on one SO_REUSEPORT port behind one websocket) in its own process tree; M websocket
subscribers here. Latency as docs/architecture.md (section 3) defines it: from the moment the packet holding
a window's last sample was due to be sent to the moment a subscriber holds the score, on
CLOCK_MONOTONIC, which every process on the host shares. A trial *holds real time* when no
packet or message is dropped, every stream gets every hop on every subscriber, the p99
latency is under 100 ms, the monitor's memory grows by less than 1 MB per stream, and the
senders themselves kept to their 20 ms schedule (otherwise the trial measured them).

``--search`` doubles N from ``--streams`` until a trial fails, then bisects, for the
student and then for Distill-MOS as the scorer (benchmarks/distillmos_step.py) in the same
run, and reports the largest N that held for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import write_json

PACKET_S = 0.02
PACKET_SAMPLES = 160  # PCMU at 8 kHz
TAIL_PACKETS = 5  # sent past the last full hop so it is not left to the idle flush
SSRC_BASE = 0x51000000
DISTILLMOS_CACHE = Path.home() / ".cache" / "streamqa" / "distillmos.onnx"
LATENCY_LIMIT_MS = 100.0
WALL_MINUS_MONO = time.time() - time.monotonic()
RSS_LIMIT_MB_PER_STREAM = 1.0


@dataclass(frozen=True)
class TrialConfig:
    streams: int
    seconds: float
    model: str
    scorer: str = "student"
    hop_s: float = 1.0
    subscribers: int = 2
    senders: int = 2
    workers: int = 2


# --- audio -------------------------------------------------------------------------------
def speech_pcmu() -> bytes:
    """The bundled demo caller's minute of speech as 8 kHz PCMU: the payload every stream
    reads, each from its own offset."""
    import soundfile as sf
    import soxr

    from streamqa.democall import DEMO_DIR
    from streamqa.rtp.codecs import encode_pcmu

    audio, sr = sf.read(DEMO_DIR / "caller.flac", dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    return encode_pcmu(soxr.resample(audio, sr, 8000))


def offsets(n: int, hop_s: float) -> list[float]:
    """Stream start phases spread evenly over one hop: independent calls do not start in
    the same millisecond, and their hops should not all fall due together either."""
    return [hop_s * j / n for j in range(n)]


# --- sender processes --------------------------------------------------------------------
def _sender(streams: list[tuple[int, float]], addr: tuple[str, int], seconds: float,
            start_q: mp.Queue, result_q: mp.Queue) -> None:
    """Send ``streams`` [(ssrc, offset)] on a 20 ms schedule from the t0 the parent gives."""
    from streamqa.rtp.packet import build

    payload = speech_pcmu()
    n_pkt = round(seconds / PACKET_S) + TAIL_PACKETS
    total = len(payload) // PACKET_SAMPLES
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in streams]
    # Schedule: stream j's packet i is due at t0 + offset_j + i * 20 ms. Walk 20 ms cycles;
    # within a cycle, streams in order of their phase.
    phase = sorted(range(len(streams)), key=lambda j: streams[j][1] % PACKET_S)
    first_cycle = [int(streams[j][1] // PACKET_S) for j in range(len(streams))]
    # Pre-encoded, as a media server would send them: building headers while pacing would
    # put this harness's own CPU between the monitor and the cores it is measured on.
    packets = []
    for ssrc, _ in streams:
        first = (7919 * ssrc) % total
        packets.append([build(0, i, i * PACKET_SAMPLES, ssrc,
                              payload[((first + i) % total) * PACKET_SAMPLES:][:PACKET_SAMPLES])
                        for i in range(n_pkt)])
    result_q.put(("ready", os.getpid()))
    t0 = start_q.get()
    lags = np.zeros(len(streams) * n_pkt, np.float32)
    sent = 0
    last_cycle = max(first_cycle) + n_pkt
    for cycle in range(last_cycle):
        for j in phase:
            i = cycle - first_cycle[j]
            if not 0 <= i < n_pkt:
                continue
            due = t0 + streams[j][1] + i * PACKET_S
            now = time.monotonic()
            if due > now + 0.0005:
                time.sleep(due - now)
                now = time.monotonic()
            socks[j].sendto(packets[j][i], addr)
            lags[sent] = max(0.0, now - due)
            sent += 1
    for s in socks:
        s.close()
    lag = lags[:sent] * 1e3
    result_q.put(("done", {"sent": sent, "lag_ms_p99": float(np.percentile(lag, 99)) if sent else 0.0,
                           "lag_ms_max": float(lag.max()) if sent else 0.0}))


# --- monitor process ---------------------------------------------------------------------
def _monitor(cfg: TrialConfig, q: mp.Queue) -> None:
    from streamqa.monitor import MonitorOptions, run_monitor

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def announce(f: asyncio.Future) -> None:
            r = f.result()
            q.put(("ready", {"rtp": list(r["rtp"][0]), "ws": list(r["ws"]), "pids": [os.getpid(), *r["pids"]]}))

        ready.add_done_callback(announce)
        opts = MonitorOptions(model=cfg.model, rtp=[("127.0.0.1", 0)], ws=("127.0.0.1", 0), hop_s=cfg.hop_s,
                              idle_timeout=3.0, max_streams=max(1000, cfg.streams + 10), quiet=True,
                              workers=cfg.workers)
        await run_monitor(None, opts, ready=ready)
        metrics = ready.result()["metrics"]
        totals = {name: int(metrics.value(f"streamqa_{name}_total") or 0) for name in ("hops_scored", "hops_dropped")}
        q.put(("done", {"totals": totals, "ws_dropped": metrics.value("streamqa_ws_dropped_total") or 0}))

    asyncio.run(main())


# --- /proc sampling ----------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- subscribers -------------------------------------------------------------------------
class Subscriber:
    """One websocket client: counts messages, timestamps score receipt."""

    def __init__(self) -> None:
        self.ssrc: dict[str, int] = {}
        self.scores: list[tuple[str, float, float, float]] = []  # (stream, t, receipt, scored)
        self.ends: dict[str, dict[str, Any]] = {}
        self.packets: dict[str, int] = {}  # stream -> packets received, per its latest net report
        self.messages = 0

    async def run(self, url: str, connected: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        async with connect(url, max_queue=None) as ws:
            await ws.recv()  # hello
            connected.set()
            async for raw in ws:
                now = time.monotonic()
                msg = json.loads(raw)
                self.messages += 1
                if msg["type"] == "score":
                    self.scores.append((msg["stream"], msg["t"], now, msg["ts"] - WALL_MINUS_MONO))
                    self._count(msg["stream"], msg.get("net"))
                elif msg["type"] == "stream" and msg["event"] == "start":
                    self.ssrc[msg["stream"]] = msg["info"]["ssrc"]
                elif msg["type"] == "stream" and msg["event"] == "end":
                    self.ends[msg["stream"]] = msg
                    self._count(msg["stream"], msg.get("summary", {}).get("net"))

    def _count(self, stream: str, net: dict[str, Any] | None) -> None:
        """The end summary's count is final; a stream whose end never came (the monitor
        could not drain it) still counts up to its last score's report."""
        if net and "packets" in net:
            self.packets[stream] = max(self.packets.get(stream, 0), net["packets"])


def _latencies(sub: Subscriber, t0: float, phase: dict[int, float], hop_s: float) -> list[tuple[float, float]]:
    """(due -> receipt, due -> scored) in ms for every live hop's score; the second splits
    the path at the engine (``ts`` is wall time: mapped to monotonic with the offset taken at
    start). A stream's last, shorter hop (``t`` off the hop grid) is left out: it is scored
    only once the stream has ended (docs/protocol.md), so its delay is the end detection's,
    counted by :func:`_tail_hops`, not the scoring path's."""
    out = []
    for sid, t, receipt, scored in sub.scores:
        ssrc = sub.ssrc.get(sid)
        if ssrc is None or ssrc not in phase or not _on_hop_grid(t, hop_s):
            continue
        last_sample = round(t * 8000) - 1
        due = t0 + phase[ssrc] + (last_sample // PACKET_SAMPLES) * PACKET_S
        out.append((1e3 * (receipt - due), 1e3 * (scored - due)))
    return out


def _on_hop_grid(t: float, hop_s: float) -> bool:
    return abs(t / hop_s - round(t / hop_s)) < 1e-6


def _tail_hops(sub: Subscriber, hop_s: float) -> int:
    """Scores of streams' last, shorter hops, published when each stream ended."""
    return sum(1 for _, t, *_ in sub.scores if not _on_hop_grid(t, hop_s))


# --- one trial ---------------------------------------------------------------------------
async def _trial(cfg: TrialConfig) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    mq = ctx.Queue()
    monitor = ctx.Process(target=_monitor, args=(cfg, mq), name="bench-monitor")
    monitor.start()
    loop = asyncio.get_running_loop()
    senders: list[mp.process.BaseProcess] = []
    try:
        kind, info = await loop.run_in_executor(None, mq.get, True, 180)
        assert kind == "ready", info
        pids = info["pids"]
        url = f"ws://{info['ws'][0]}:{info['ws'][1]}/"
        subs = [Subscriber() for _ in range(cfg.subscribers)]
        tasks = []
        for sub in subs:
            connected = asyncio.Event()
            tasks.append(loop.create_task(sub.run(url, connected)))
            await asyncio.wait_for(connected.wait(), 30)
        await asyncio.sleep(1.0)
        idle_rss = rss_mb(pids)

        phases = offsets(cfg.streams, cfg.hop_s)
        streams = [(SSRC_BASE + j, phases[j]) for j in range(cfg.streams)]
        start_q, result_q = ctx.Queue(), ctx.Queue()
        n_senders = min(cfg.senders, cfg.streams)
        for p in range(n_senders):
            proc = ctx.Process(target=_sender, args=(streams[p::n_senders], tuple(info["rtp"]), cfg.seconds, start_q, result_q),
                               name=f"bench-sender-{p}")
            proc.start()
            senders.append(proc)
        for _ in senders:
            kind, _ = await loop.run_in_executor(None, result_q.get, True, 120)
            assert kind == "ready"
        t0 = time.monotonic() + 0.5
        for _ in senders:
            start_q.put(t0)
        # CPU over the steady state: every stream running (after the last phase + a hop).
        warm = t0 + cfg.hop_s * 2 + 0.5
        end_send = t0 + cfg.hop_s + cfg.seconds
        await asyncio.sleep(max(0.0, warm - time.monotonic()))
        cpu0, w0 = cpu_seconds(pids), time.monotonic()
        peak_rss = 0.0
        while time.monotonic() < end_send:
            peak_rss = max(peak_rss, rss_mb(pids))
            await asyncio.sleep(min(1.0, max(0.0, end_send - time.monotonic())))
        cpu1, w1 = cpu_seconds(pids), time.monotonic()
        sent_reports = [await loop.run_in_executor(None, result_q.get, True, 60) for _ in senders]
        await asyncio.sleep(cfg.hop_s + 1.0)  # the last hops' way to the subscribers
        monitor_pid = pids[0]
        os.kill(monitor_pid, signal.SIGTERM)  # workers end their streams: end summaries follow
        kind, done = await loop.run_in_executor(None, mq.get, True, 60)
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for proc in [monitor, *senders]:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return _summarise(cfg, subs, t0, dict(streams), sent_reports, done, idle_rss, peak_rss,
                      100.0 * (cpu1 - cpu0) / max(1e-9, w1 - w0))


def _summarise(cfg: TrialConfig, subs: list[Subscriber], t0: float, phase: dict[int, float],
               sent_reports: list[tuple[str, dict]], done: dict, idle_rss: float, peak_rss: float,
               cpu: float) -> dict[str, Any]:
    sent = sum(r["sent"] for _, r in sent_reports)
    lag_p99 = max(r["lag_ms_p99"] for _, r in sent_reports)
    first = subs[0]
    received = sum(first.packets.values())
    expected_hops = math.floor(cfg.seconds / cfg.hop_s + 1e-9)
    complete = 0
    for sub in subs:
        counts: dict[str, int] = {}
        for sid, *_ in sub.scores:
            counts[sid] = counts.get(sid, 0) + 1
        complete += sum(1 for sid in sub.ssrc if counts.get(sid, 0) >= expected_hops)
    pairs = np.array([x for sub in subs for x in _latencies(sub, t0, phase, cfg.hop_s)], np.float64).reshape(-1, 2)
    lat, to_score = pairs[:, 0], pairs[:, 1]
    totals = done["totals"]
    # Where a loss happened says what limits the run: the wire, the scorer or a subscriber.
    lost = {"packets": sent - received, "hops": totals.get("hops_dropped", 0), "messages": int(done["ws_dropped"])}
    dropped = sum(lost.values())
    per_stream = (peak_rss - idle_rss) / cfg.streams
    p99 = float(np.percentile(lat, 99)) if lat.size else float("inf")
    every_hop = complete == cfg.streams * cfg.subscribers and all(len(s.ssrc) == cfg.streams for s in subs)
    row = {
        "scorer": cfg.scorer,
        "streams": cfg.streams,
        "seconds": cfg.seconds,
        "packets_sent": sent,
        "packets_received": received,
        "hops_scored": totals.get("hops_scored", 0),
        "hops_expected": expected_hops * cfg.streams,
        "tail_hops_scored": _tail_hops(first, cfg.hop_s),
        "messages_received": sum(s.messages for s in subs),
        "dropped": dropped,
        "dropped_by_kind": lost,
        "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "latency_ms_p99": p99 if lat.size else None,
        "latency_ms_p99_to_score": float(np.percentile(to_score, 99)) if lat.size else None,
        "cpu_percent": round(cpu, 1),
        "rss_mb": round(peak_rss, 1),
        "idle_rss_mb": round(idle_rss, 1),
        "rss_mb_per_stream": round(per_stream, 3),
        "every_hop_scored": every_hop,
        "sender_lag_ms_p99": round(lag_p99, 2),
        "hop_s": cfg.hop_s,
        "workers": cfg.workers,
        "subscribers": cfg.subscribers,
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the host during the trial
    }
    row["holds"] = bool(dropped == 0 and every_hop and p99 < LATENCY_LIMIT_MS
                        and per_stream < RSS_LIMIT_MB_PER_STREAM and lag_p99 < PACKET_S * 1e3)
    return row


def run_trial(cfg: TrialConfig) -> dict[str, Any]:
    row = asyncio.run(_trial(cfg))
    print_rows([row])
    return row


def search(base: TrialConfig, start: int, limit: int, *, granularity: int) -> tuple[int, list[dict[str, Any]]]:
    """Largest N in [0, limit] that holds: double from ``start``, then bisect."""
    rows = []
    good, bad = 0, limit + 1
    n = start
    while n <= limit:
        row = run_trial(TrialConfig(**{**asdict(base), "streams": n}))
        rows.append(row)
        if not row["holds"]:
            bad = n
            break
        good = n
        n *= 2
    while bad - good > max(granularity, 1):
        n = (good + bad) // 2
        row = run_trial(TrialConfig(**{**asdict(base), "streams": n}))
        rows.append(row)
        good, bad = (n, bad) if row["holds"] else (good, n)
    return good, rows


COLUMNS = ("scorer", "streams", "packets_sent", "packets_received", "hops_scored", "messages_received", "dropped",
           "latency_ms_p50", "latency_ms_p99", "cpu_percent", "rss_mb", "rss_mb_per_stream", "holds")


def print_rows(rows: list[dict[str, Any]]) -> None:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
    print(" ".join(f"{c:>17}" for c in COLUMNS))
    for r in rows:
        print(" ".join(f"{fmt(r[c]):>17}" for c in COLUMNS), flush=True)


def distillmos_model() -> str:
    """Distill-MOS in the step()/state form, exported once and cached (torch is needed only here)."""
    if not DISTILLMOS_CACHE.exists():
        from benchmarks.distillmos_step import export

        export(DISTILLMOS_CACHE)
    return str(DISTILLMOS_CACHE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=100, help="streams (with --search: the first N tried)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of audio per stream")
    ap.add_argument("--model", default=None, help="student: bundled name or .onnx path")
    ap.add_argument("--scorer", choices=("student", "distillmos", "both"), default=None,
                    help="default: student; with --search: both")
    ap.add_argument("--distillmos-onnx", type=Path, default=None, help="Distill-MOS step graph (default: export and cache)")
    ap.add_argument("--hop", type=float, default=1.0, help="hop in seconds")
    ap.add_argument("--subscribers", type=int, default=2)
    ap.add_argument("--senders", type=int, default=2, help="sender processes")
    ap.add_argument("--workers", type=int, default=2, help="monitor scoring processes")
    ap.add_argument("--search", action="store_true", help="find the largest N that holds real time")
    ap.add_argument("--max-streams", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from streamqa.model import resolve

    # A SIGTERM (timeout, CI cancel) unwinds like Ctrl-C, so each trial's finally stops its
    # monitor and sender processes instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    scorer = args.scorer or ("both" if args.search else "student")
    plans = []
    if scorer in ("student", "both"):
        plans.append(("student", str(resolve(args.model)), args.streams))
    if scorer in ("distillmos", "both"):
        path = str(args.distillmos_onnx) if args.distillmos_onnx else distillmos_model()
        plans.append(("distillmos", path, 1 if scorer == "both" else args.streams))
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.streaming", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_avg_at_start": os.getloadavg()[0]},
        "criteria": {"latency_ms_p99_below": LATENCY_LIMIT_MS, "rss_mb_per_stream_below": RSS_LIMIT_MB_PER_STREAM,
                     "dropped": 0, "every_hop_scored": True},
        "runs": [],
    }
    for name, model, start in plans:
        base = TrialConfig(streams=start, seconds=args.seconds, model=model, scorer=name, hop_s=args.hop,
                           subscribers=args.subscribers, senders=args.senders, workers=args.workers)
        if args.search:
            granularity = 1 if name == "distillmos" else max(10, start // 4)
            largest, rows = search(base, start, args.max_streams, granularity=granularity)
            result.setdefault("largest_streams", {})[name] = largest
            result["runs"].extend(rows)
            print(f"{name}: largest N that holds real time: {largest}", flush=True)
        else:
            result["runs"].append(run_trial(base))
    print_rows(result["runs"])
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
