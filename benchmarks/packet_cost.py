"""Per-packet CPU cost of the live path, in-process: RtpSource feeding the real Engine.

    python -m benchmarks.packet_cost --streams 200 --seconds 5 --label HEAD \
        --json benchmarks/results/packet_cost.json

The streaming benchmark (benchmarks/streaming.py) says whether N streams hold real time;
this one says where the event loop's time per packet goes, without sockets, senders or
subscribers in the way: ``--streams`` PCMU calls of real speech (the demo caller, each
stream from its own offset) are handed to ``RtpSource.handle_datagram`` 20 ms apart in
stream time, as fast as the CPU allows, with the shipped model scoring in the engine's
worker thread as it does live. Reported: CPU time of the feeding thread per packet (what
the event loop pays), CPU time of the whole process per packet (scoring included), and the
hops scored. The best of ``--repeats`` runs counts, since other jobs share the machine.

``--label`` names the result inside the JSON file, which keeps earlier labels: run the
same script against another checkout (``PYTHONPATH=that/checkout``) to compare versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from benchmarks import write_json
from benchmarks.streaming import PACKET_SAMPLES, speech_pcmu
from streamqa.engine import Engine
from streamqa.model import load_model
from streamqa.rtp.packet import build
from streamqa.sources.rtp import RtpSource


def one_run(streams: int, seconds: float, model: str | None) -> dict[str, float]:
    """Feed every stream's packets in stream-time order; return CPU per packet and hops."""
    speech = speech_pcmu()
    total = len(speech) // PACKET_SAMPLES
    n_pkt = round(seconds * 8000 / PACKET_SAMPLES)
    packets = [[build(0, i, i * PACKET_SAMPLES, 0x5000 + j,
                      speech[((7919 * j + i) % total) * PACKET_SAMPLES:][:PACKET_SAMPLES])
                for i in range(n_pkt)] for j in range(streams)]
    addrs = [("127.0.0.1", 20000 + j) for j in range(streams)]
    loop = asyncio.new_event_loop()  # never run: score messages are only queued on it
    engine = Engine(load_model(model), publish=lambda msg: None, loop=loop)
    source = RtpSource(engine)
    thread0, process0 = time.thread_time(), time.process_time()
    for i in range(n_pkt):
        now = i * PACKET_SAMPLES / 8000
        for j in range(streams):
            source.handle_datagram(packets[j][i], addrs[j], now)
    feed_cpu = time.thread_time() - thread0
    expected = streams * int(seconds)
    deadline = time.monotonic() + 120
    while engine.counters["hops_scored"] < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    process_cpu = time.process_time() - process0
    engine.close()
    loop.close()
    count = streams * n_pkt
    return {"event_loop_us_per_packet": 1e6 * feed_cpu / count,
            "process_us_per_packet": 1e6 * process_cpu / count,
            "hops_scored": engine.counters["hops_scored"], "hops_expected": expected}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.packet_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200, help="concurrent PCMU streams (default 200)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of audio per stream (default 5)")
    ap.add_argument("--model", default=None, help="bundled model name or .onnx path (default: the shipped one)")
    ap.add_argument("--repeats", type=int, default=3, help="runs; the one with the least event-loop CPU counts")
    ap.add_argument("--label", default="current", help="name of this result in the JSON file")
    ap.add_argument("--json", type=Path, help="JSON file to add the result to (other labels are kept)")
    args = ap.parse_args(argv)
    runs = [one_run(args.streams, args.seconds, args.model) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["event_loop_us_per_packet"])
    result = {"streams": args.streams, "seconds": args.seconds, "repeats": args.repeats, **best,
              "command": "python -m benchmarks.packet_cost " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"{args.label}: event loop {best['event_loop_us_per_packet']:.1f} us/packet, whole process "
          f"{best['process_us_per_packet']:.1f} us/packet, hops {best['hops_scored']}/{best['hops_expected']}")
    if args.json:
        results = json.loads(args.json.read_text()) if args.json.exists() else {}
        results[args.label] = result
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
