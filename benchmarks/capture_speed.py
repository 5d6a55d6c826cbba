"""How much faster than real time ``streamqa score`` analyses a capture, on one core.

    python -m benchmarks.capture_speed --streams 20 --seconds 600 --timeline \
        --json benchmarks/results/capture_speed.json

Writes a capture of ``--streams`` PCMU calls of ``--seconds`` each (20 ms packets over
Ethernet/IPv4/UDP to one monitor port, the demo caller's speech from a different offset per
stream, every second stream losing 1 % of its packets and all of them jittered by up to
4 ms), then runs :func:`streamqa.capture.analyse_capture` on it with the shipped model,
pinned to one CPU with one ONNX Runtime thread, at the hop ``streamqa score call.pcap``
uses (the window: consecutive whole windows); ``--timeline`` analyses it a second time at
the monitor's hop, as ``streamqa score --timeline``/``--plot`` do (reported under
``timeline``). Reported for each: CPU and wall time, real-time factors (capture seconds per
analysis second), hops scored against the hops expected, and, to show where the time goes,
the CPU time of the model's step() calls within the analysis (with their mean batch: the
engine scores one hop of every stream that has one waiting in one call); and once, the CPU
time of reading the capture alone (dpkt and the link/IP/UDP decoding). The machine is
shared, so the CPU-time figures are the ones to compare.

Because the host's speed varies from day to day (by 2-3x on the shared development machine),
an absolute figure says little about a change on its own: ``--reference REV`` analyses the
same capture, in the same run and on the same core, with the ``streamqa`` package of git
revision REV (in a child process), and reports its CPU time, the speed-up against it and the
largest per-hop MOS difference between the two (``reference``). ``host_loop_cpu_s`` times a
fixed pure-Python loop (ten million additions) as a yardstick of the host's speed that day.
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks import write_json
from benchmarks.streaming import PACKET_SAMPLES, speech_pcmu
from streamqa.model import Model, State, load_model
from streamqa.scorer import framing
from streamqa.rtp.packet import build

LOSS = 0.01
JITTER_S = 0.004
EPOCH = 1_764_000_000.0  # capture start (Unix time)
TARGET_X = 50  # issue 21's bar: capture seconds per CPU second, on one core


def _frames(index: int, speech: bytes, seconds: float, rng: random.Random) -> Iterator[tuple[float, bytes]]:
    """One stream's captured frames as (time, Ethernet frame), in time order."""
    import dpkt

    ssrc = 0x5EED0000 + index
    lossy = index % 2 == 1
    packets = round(seconds * 8000 / PACKET_SAMPLES)
    phase = 0.02 * index / 20 + 0.001 * index
    start = (index * 8000 * 2) % len(speech)  # two seconds further into the speech per stream
    template = None
    frames = []
    for k in range(packets):
        if lossy and rng.random() < LOSS:
            continue
        at = (start + k * PACKET_SAMPLES) % (len(speech) - PACKET_SAMPLES)
        rtp = build(0, k & 0xFFFF, (k * PACKET_SAMPLES) & 0xFFFFFFFF, ssrc, speech[at:at + PACKET_SAMPLES])
        if template is None:  # every packet of the stream has the same length: one header
            udp = dpkt.udp.UDP(sport=40000 + 2 * index, dport=5004, data=rtp)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=bytes([10, 0, 0, 10 + index]), dst=bytes([10, 0, 1, 1]), p=17, data=udp)
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip)
            template = bytes(eth)[: -len(rtp)]
        frames.append((EPOCH + phase + 0.02 * k + rng.random() * JITTER_S, template + rtp))
    frames.sort()
    return iter(frames)


def write_capture(path: Path, streams: int, seconds: float, seed: int = 0) -> int:
    """Write the benchmark's capture; returns the number of packets."""
    import dpkt

    speech = speech_pcmu()
    rng = random.Random(seed)
    count = 0
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, nano=False)
        for ts, frame in heapq.merge(*(_frames(i, speech, seconds, rng) for i in range(streams))):
            writer.writepkt(frame, ts=ts)
            count += 1
    return count


class _StepTimed(Model):
    """The shipped model, counting the CPU time, calls and rows of its step() calls."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, threads=1)
        self.cpu_s = 0.0
        self.calls = 0
        self.rows = 0
        self.samples = 0

    def step(self, audio: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        t0 = time.process_time()
        try:
            return super().step(audio, state)
        finally:
            self.cpu_s += time.process_time() - t0
            self.calls += 1
            self.rows += len(audio)
            self.samples += audio.size


def _expected_hops(model: Model, hop_samples: int, seconds: float) -> int:
    """Hops of one stream of ``seconds``: whole hops, and a last partial one of whole frames."""
    samples = round(seconds * model.info.sample_rate)
    return samples // hop_samples + (samples % hop_samples >= model.info.frame_samples)


def _analyse(model: _StepTimed, capture: Path, hop_s: float | None, seconds: float, packets: int,
             streams: int) -> tuple[dict, list[list[float | None]]]:
    """One timed analysis of the capture at ``hop_s`` (None: ``streamqa score``'s default,
    the window): the figures, and every stream's per-hop MOS."""
    from streamqa.capture import analyse_capture

    hop = framing(model, None, hop_s if hop_s is not None else model.info.window_seconds)

    model.cpu_s, model.calls, model.rows, model.samples = 0.0, 0, 0, 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results, counters = analyse_capture(model, capture, hop_s=hop_s)
    cpu_s = time.process_time() - cpu0
    wall_s = time.perf_counter() - wall0
    hops = sum(r.summary["hops"] for r in results if r.summary)
    lost = sum(r.summary["net"]["lost"] for r in results if r.summary and r.summary.get("net"))
    return {
        "hop_s": round(hop.hop_s, 3),
        "model_step_cpu_s": round(model.cpu_s, 2),
        "model_step_calls": model.calls,
        "model_step_mean_batch": round(model.rows / max(1, model.calls), 1),
        "model_ms_per_stream_hop_cpu": round(1e3 * model.cpu_s / max(1, model.rows), 3),
        # the model's cost per second of one stream's audio: whatever the hop, it needs
        # streams x seconds of them (TARGET_X allows seconds / TARGET_X of CPU for everything)
        "model_ms_per_stream_second_cpu": round(1e3 * model.cpu_s * model.info.sample_rate / max(1, model.samples), 3),
        "analysis_cpu_s": round(cpu_s, 2),
        "analysis_wall_s": round(wall_s, 2),
        "realtime_x_cpu": round(seconds / cpu_s, 1),
        "realtime_x_wall": round(seconds / wall_s, 1),
        "target_x_met": seconds / cpu_s >= TARGET_X,
        "streams_found": len(results),
        "hops_scored": hops,
        "hops_expected": streams * _expected_hops(model, hop.hop_samples, seconds),
        "packets_lost": lost,
        "us_per_packet_cpu": round(1e6 * cpu_s / packets, 2),
        "counters": dict(sorted(counters.items())),
    }, [[hop["mos"] for hop in r.hops] for r in results]


# Run in the child process of --reference, with the reference revision's streamqa first on
# sys.path: the analysis as streamqa score runs it, timed like _analyse (model loaded first).
_REFERENCE_CHILD = """
import json, sys, time
from pathlib import Path
from streamqa.capture import analyse_capture
from streamqa.model import load_model
model = load_model(None, threads=1)
hop_s = None if sys.argv[2] == "window" else float(sys.argv[2])
cpu0 = time.process_time()
results, _ = analyse_capture(model, Path(sys.argv[1]), hop_s=hop_s)
cpu_s = time.process_time() - cpu0
print(json.dumps({"cpu_s": cpu_s, "mos": [[hop["mos"] for hop in r.hops] for r in results]}))
"""


def _extract(rev: str, into: Path) -> None:
    """The ``streamqa`` package as it was at git revision ``rev``, written under ``into``."""
    archive = subprocess.run(["git", "archive", rev, "streamqa"], check=True, capture_output=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")


def _reference(tree: Path, rev: str, capture: Path, hop_s: float | None, own: dict,
               own_mos: list[list[float | None]]) -> dict:
    """The same analysis by revision ``rev`` (extracted at ``tree``), in a child process on
    this process's core: its CPU time, our speed-up against it, and the largest difference
    between the two runs' per-hop MOS; ``same_hops``: as many hops per stream, and the same
    ones without a score."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    hop = "window" if hop_s is None else str(hop_s)
    out = subprocess.run([sys.executable, "-c", _REFERENCE_CHILD, str(capture), hop],
                         check=True, capture_output=True, text=True, env=env, cwd=tree).stdout
    ref = json.loads(out)
    same_shape = [len(h) for h in ref["mos"]] == [len(h) for h in own_mos]
    diffs = [abs(a - b) for ours, theirs in zip(own_mos, ref["mos"]) for a, b in zip(ours, theirs)
             if a is not None and b is not None]
    nulls_agree = all((a is None) == (b is None)
                      for ours, theirs in zip(own_mos, ref["mos"]) for a, b in zip(ours, theirs))
    return {
        "rev": rev,
        "analysis_cpu_s": round(ref["cpu_s"], 2),
        "speedup_cpu": round(ref["cpu_s"] / own["analysis_cpu_s"], 3),
        "same_hops": same_shape and nulls_agree,
        "max_abs_mos_diff": max(diffs, default=0.0),
    }


def _host_loop() -> float:
    """CPU seconds of ten million pure-Python additions: how fast the host runs that day."""
    cpu0 = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return round(time.process_time() - cpu0, 2)


def run(streams: int, seconds: float, capture: Path, timeline: bool, reference: str | None = None) -> dict:
    from streamqa.capture import read_udp

    packets = write_capture(capture, streams, seconds)
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    model = _StepTimed(load_model(None, threads=1).info.path)

    cpu0 = time.process_time()
    read = sum(1 for _ in read_udp(capture))
    read_cpu = time.process_time() - cpu0

    result = {
        "command": "python -m benchmarks.capture_speed " + " ".join(sys.argv[1:]),
        "model": model.info.name,
        "streams": streams,
        "capture_seconds": seconds,
        "packets": packets,
        "datagrams_read": read,
        "capture_mb": round(capture.stat().st_size / 1e6, 1),
        "cpu": cpu,
        "onnx_threads": 1,
        "host_loop_cpu_s": _host_loop(),
        "read_only_cpu_s": round(read_cpu, 2),
        "target_x": TARGET_X,
    }
    hops = [("", None)]
    if timeline:
        hops.append(("timeline", model.info.hop_samples / model.info.sample_rate))
    with tempfile.TemporaryDirectory() as tree:
        if reference:
            _extract(reference, Path(tree))
        for key, hop_s in hops:
            row, mos = _analyse(model, capture, hop_s, seconds, packets, streams)
            if reference:  # right after ours, so both see the same host
                row["reference"] = _reference(Path(tree), reference, capture, hop_s, row, mos)
            if key:
                result[key] = row
            else:
                result.update(row)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--capture", help="keep the generated capture here (default: a temporary file)")
    ap.add_argument("--timeline", action="store_true",
                    help="also analyse at the monitor's hop, as streamqa score --timeline does")
    ap.add_argument("--reference", metavar="REV",
                    help="also analyse with the streamqa of this git revision, in the same run (before/after)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(args.capture) if args.capture else Path(tmp) / "bench.pcap"
        result = run(args.streams, args.seconds, capture, args.timeline, args.reference)
    if args.json:
        write_json(args.json, result)
    for key in ("streams", "capture_seconds", "packets", "host_loop_cpu_s", "read_only_cpu_s"):
        print(f"{key:<28}{result[key]:>12}")
    for name, row in (("", result), ("timeline ", result.get("timeline"))):
        for key in ("hop_s", "model_step_cpu_s", "model_step_mean_batch", "analysis_cpu_s", "analysis_wall_s",
                    "realtime_x_cpu", "realtime_x_wall", "hops_scored", "hops_expected"):
            if row is not None:
                print(f"{name + key:<28}{row[key]:>12}")
        if row is not None and "reference" in row:
            for key in ("analysis_cpu_s", "speedup_cpu", "same_hops", "max_abs_mos_diff"):
                print(f"{name + 'reference ' + key:<28}{row['reference'][key]!s:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
