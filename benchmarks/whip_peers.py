"""Concurrent WHIP peers (issue 22 acceptance 3): ``--peers`` tabs of one headless chromium
open /check at once, each publishing the fake microphone (a held-out French prompt) over WHIP
to ``streamqa monitor --webrtc`` (the real CLI, a subprocess), and every stream must keep
real time with no hop dropped.

    python -m benchmarks.whip_peers --json benchmarks/results/whip_peers.json [--peers 20] [--seconds 60]

A score's lag is its receipt by a websocket subscriber minus the moment its hop had left
the tab's encoder (benchmarks.whip_latency's clock, per tab). Real time holds when the lag
stays bounded (no backlog grows: the last 10 s look like the rest); no hop is dropped when
every stream's scores come once per hop without a gap, its end summary counts them all,
and the monitor's ``streamqa_hops_dropped_total`` stays 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import free_port, write_json
from benchmarks.browser import Browser
from benchmarks.whip_latency import TOKEN, send_clock, start_monitor, stop_monitor, wait_port, write_prompt

REAL_TIME_LAG_S = 1.0  # the last 10 s of every stream must lag less than this


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus series over its labels (0 when absent)."""
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


async def run(args: argparse.Namespace, wav: Path, profile: Path) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    ws_port, webrtc_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    proc = start_monitor(ws_port, webrtc_port, args.hop, ["--idle-timeout", "10"])
    received: list[tuple[float, dict]] = []
    url = f"http://127.0.0.1:{webrtc_port}/check?token={TOKEN}"
    try:
        await wait_port(ws_port, proc)
        async with connect(f"ws://127.0.0.1:{ws_port}/ws?token={TOKEN}", max_size=None, ping_interval=None) as ws:
            async def listen() -> None:
                async for raw in ws:
                    received.append((time.time(), json.loads(raw)))

            listener = asyncio.create_task(listen())
            async with Browser(url, wav, profile) as browser:
                for _ in range(args.peers - 1):
                    await browser.new_page(url)
                streams: list[str | None] = [None] * args.peers
                deadline = time.monotonic() + 180
                while None in streams and time.monotonic() < deadline:
                    await asyncio.sleep(1)
                    streams = [await p.evaluate("window.streamqaCheck && window.streamqaCheck.stream")
                               for p in browser.pages]
                failed = [await p.evaluate("window.streamqaCheck && (window.streamqaCheck.error || window.streamqaCheck.state)")
                          for p, stream in zip(browser.pages, streams) if stream is None]
                pages = [p for p, stream in zip(browser.pages, streams) if stream is not None]
                streams = [stream for stream in streams if stream is not None]
                started = time.time()
                await asyncio.sleep(args.seconds)
                sent = [await p.evaluate("window.streamqaCheck.sent") for p in pages]
                metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
                    f"http://127.0.0.1:{ws_port}/metrics?token={TOKEN}").read().decode())
            deadline = time.monotonic() + 30  # closing the tabs ends the streams (idle timeout)
            while time.monotonic() < deadline and sum(
                    1 for _, m in received if m["type"] == "stream" and m["event"] == "end") < len(streams):
                await asyncio.sleep(0.5)
            listener.cancel()
    finally:
        stop_monitor(proc)
    per_stream, lags = [], []
    for stream, samples in zip(streams, sent):
        scores = [(at, m) for at, m in received if m["type"] == "score" and m["stream"] == stream]
        ends = [m for _, m in received if m["type"] == "stream" and m["event"] == "end" and m["stream"] == stream]
        ts = np.array([m["t"] for _, m in scores])
        steps = np.diff(ts)
        last_sent = max(s for _, s in samples)
        timed = [(at, m["t"]) for at, m in scores if m["t"] <= last_sent and at >= started]
        lag = np.array([at - (send_clock(samples) + t) for at, t in timed])
        recent = lag[np.array([t for _, t in timed]) >= last_sent - 10]
        lags.append(lag)
        per_stream.append({
            "stream": stream, "scores": len(scores),
            "gaps": int(np.sum(~np.isclose(steps, args.hop, atol=0.03))) if len(steps) else None,
            "summary_hops": ends[0]["summary"]["hops"] if ends else None,
            # None: no hop sent during the run was scored during it (the monitor fell behind)
            "lag_ms_p50": round(1000 * float(np.median(lag)), 1) if lag.size else None,
            "lag_ms_max": round(1000 * float(lag.max()), 1) if lag.size else None,
            "lag_ms_last10s": round(1000 * float(recent.mean()), 1) if recent.size else None,
            "loss_max": max((m.get("net", {}).get("loss", 0.0) for _, m in scores), default=None),
        })
    all_lag = np.concatenate(lags) if any(lag.size for lag in lags) else np.array([np.nan])
    dropped = metric(metrics, "streamqa_hops_dropped_total")
    no_gap = all(s["gaps"] == 0 and s["summary_hops"] == s["scores"] for s in per_stream)
    bounded = all(s["lag_ms_last10s"] is not None and s["lag_ms_last10s"] < 1000 * REAL_TIME_LAG_S
                  for s in per_stream)
    return {
        "peers": args.peers, "published": len(streams), "not_published": failed,
        "seconds": args.seconds, "hop_s": args.hop,
        "hops_dropped_total": dropped, "every_hop_scored": no_gap,
        "lag_ms": None if np.isnan(all_lag).all() else {
            "p50": round(1000 * float(np.nanpercentile(all_lag, 50)), 1),
            "p99": round(1000 * float(np.nanpercentile(all_lag, 99)), 1),
            "max": round(1000 * float(np.nanmax(all_lag)), 1), "n": int(np.sum(~np.isnan(all_lag)))},
        "real_time": bounded, "passed": bool(not failed and no_gap and bounded and dropped == 0),
        "streams": per_stream,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=60.0, help="publishing time once every tab published")
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wav = write_prompt(Path(tmp))
        result = asyncio.run(run(args, wav, Path(tmp) / "profile"))
    result["command"] = "python -m benchmarks.whip_peers " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps({k: v for k, v in result.items() if k != "streams"}))
    if args.json:
        write_json(args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
