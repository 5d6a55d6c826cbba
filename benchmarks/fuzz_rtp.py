"""Fuzz the RTP receive path with random and mutated datagrams; write counts and throughput.

    python -m benchmarks.fuzz_rtp --inputs 1000000 --json OUT

Every input goes through the same code a live datagram does: ``parse`` (only MalformedPacket
may escape), a per-SSRC ``JitterBuffer`` (must never raise, counters must add up) and then
``RtpSource.handle_datagram`` with a counting sink (decoders and concealment included; it
must never raise and never count an internal error). Inputs are drawn from a seeded RNG:
a quarter pure random bytes, the rest valid packets of every header shape with random
bytes overwritten, truncated, extended, or their sequence/timestamp scrambled.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

from benchmarks import write_json
from streamqa.rtp.jitter import JitterBuffer
from streamqa.rtp.packet import MalformedPacket, build, parse
from streamqa.sources.rtp import RtpSource

_PAYLOAD_TYPES = [0, 8, 9, 10, 11, 96, 97, 13, 101, 33, 72, 127]
_SOURCE_LIFETIME = 2000  # inputs handled by one RtpSource before it is replaced
_RANDOM_SIZES = [0, 1, 11, 12, 13, 40, 172, 1500]


class CountingSink:
    """Cheapest sink that still looks at what it is given."""

    def __init__(self) -> None:
        self.calls = Counter()
        self.samples = 0

    def start(self, info) -> None:
        self.calls["start"] += 1

    def audio(self, stream_id, pcm, arrival) -> None:
        self.calls["audio"] += 1
        self.samples += pcm.size

    def net(self, stream_id, stats) -> None:
        self.calls["net"] += 1

    def end(self, stream_id) -> None:
        self.calls["end"] += 1


def _valid(rng: random.Random, seq: int, ts: int) -> bytes:
    pt = rng.choice(_PAYLOAD_TYPES)
    size = rng.choice([0, 1, 3, 20, 80, 160, 320, 961])
    csrcs = tuple(rng.getrandbits(32) for _ in range(rng.choice([0, 0, 0, 1, 15])))
    ext = (rng.getrandbits(16), rng.randbytes(4 * rng.choice([0, 1, 3]))) if rng.random() < 0.2 else None
    # mostly one SSRC per payload type, so the source's streams see a consistent codec and
    # the mutated payloads reach the decoders; sometimes a fresh SSRC (stream floods)
    ssrc = 1000 + pt if rng.random() < 0.9 else rng.getrandbits(32)
    return build(pt, seq, ts, ssrc, rng.randbytes(size),
                 marker=rng.random() < 0.1, csrcs=csrcs, extension=ext,
                 padding=rng.choice([0, 0, 0, 1, 4, 255]))


def inputs(n: int, seed: int):
    """Yield ``n`` datagrams: random, mutated valid, and valid with scrambled ordering.

    Valid packets come from a pre-built pool whose sequence and timestamp are rewritten for
    each input, and random bytes are slices of one pre-drawn block, so generating an input
    costs less than processing it."""
    rng = random.Random(seed)
    pool = [_valid(rng, 0, 0) for _ in range(4096)]
    noise = rng.randbytes(1 << 20)
    seq, ts = rng.getrandbits(16), rng.getrandbits(32)
    seq_steps = [1, 1, 1, 1, 2, 0, -1, -3, 40, 30000]
    ts_steps = [160, 160, 320, 0, 2**31, -160]
    for _ in range(n):
        roll = rng.random()
        seq = (seq + seq_steps[int(roll * 1000) % 10]) & 0xFFFF
        ts = (ts + ts_steps[int(roll * 10000) % 6]) & 0xFFFFFFFF
        if roll < 0.25:
            size = _RANDOM_SIZES[int(roll * 32) % 8]
            at = rng.getrandbits(19)
            yield noise[at:at + size]
            continue
        data = bytearray(pool[rng.getrandbits(12)])
        struct.pack_into("!HI", data, 2, seq, ts)
        if roll < 0.6:
            for _ in range(1 + (rng.getrandbits(2))):
                data[rng.getrandbits(16) % len(data)] = rng.getrandbits(8)
        elif roll < 0.7:
            del data[rng.getrandbits(16) % (len(data) + 1):]
        elif roll < 0.75:
            at = rng.getrandbits(19)
            data += noise[at:at + 1 + rng.getrandbits(6)]
        yield bytes(data)


def run(n: int, seed: int) -> dict:
    parse_counts: Counter = Counter()
    buffers: dict[int, JitterBuffer] = {}
    sink = CountingSink()
    source = RtpSource(sink, idle_timeout=1e9, max_streams=64)
    counters: Counter = Counter()
    addrs = [("198.51.100.1", 5004), ("198.51.100.2", 5004), ("203.0.113.9", 40000)]
    unexpected: Counter = Counter()
    pushed = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, data in enumerate(inputs(n, seed)):
        now = i * 0.001
        try:
            pkt = parse(data)
        except MalformedPacket as exc:
            parse_counts[exc.reason] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the fuzzer is to catch these
            unexpected[f"parse:{type(exc).__name__}"] += 1
        else:
            parse_counts["ok"] += 1
            jb = buffers.get(pkt.ssrc)
            if jb is None:
                if len(buffers) >= 256:
                    buffers.clear()  # bound memory under random SSRCs
                jb = buffers[pkt.ssrc] = JitterBuffer(8000, depth=3)
            try:
                jb.push(pkt, now)
                pushed += 1
            except Exception as exc:  # noqa: BLE001
                unexpected[f"jitter:{type(exc).__name__}"] += 1
            if jb.stats.pushed != jb.stats.received + jb.stats.duplicates + jb.stats.late:
                unexpected["jitter:inconsistent"] += 1
        try:
            source.handle_datagram(data, addrs[i % len(addrs)], now)
        except Exception as exc:  # noqa: BLE001
            unexpected[f"source:{type(exc).__name__}"] += 1
        if i % _SOURCE_LIFETIME == _SOURCE_LIFETIME - 1:
            # a fresh source now and then: random SSRCs would otherwise hold every slot
            # and starve the decoders; closing also exercises flush and end
            source.stop()
            counters.update(source.counters)
            source = RtpSource(sink, idle_timeout=1e9, max_streams=64)
    source.stop()
    counters.update(source.counters)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if counters.get("internal_error"):
        unexpected["source:internal_error"] += counters["internal_error"]
    return {
        "inputs": n,
        "seed": seed,
        "seconds": round(seconds, 3),
        "inputs_per_s": round(n / seconds, 1),
        "cpu_seconds": round(cpu_seconds, 3),  # wall time suffers on a shared machine
        "inputs_per_cpu_s": round(n / cpu_seconds, 1),
        "parse": dict(sorted(parse_counts.items())),
        "jitter_pushed": pushed,
        "source_counters": dict(sorted(counters.items())),
        "sink_calls": dict(sink.calls),
        "sink_samples": sink.samples,
        "unexpected": dict(unexpected),
    }


def fuzz_cli(run: Callable[[int, int], dict], description: str, argv: list[str] | None = None) -> int:
    """The command line of a fuzzing benchmark: ``run(inputs, seed)``, its JSON and a table;
    exit 1 when any input raised an exception the code under test does not declare."""
    ap = argparse.ArgumentParser(description=description.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    result = run(args.inputs, args.seed)
    if args.json:
        write_json(args.json, result)
    print(f"{'inputs':<24}{result['inputs']:>12}")
    print(f"{'inputs/s':<24}{result['inputs_per_s']:>12.0f}")
    print(f"{'inputs/cpu-s':<24}{result['inputs_per_cpu_s']:>12.0f}")
    for reason, count in result["parse"].items():
        print(f"{'parse ' + reason:<24}{count:>12}")
    for reason, count in result["source_counters"].items():
        print(f"{'source ' + reason:<24}{count:>12}")
    print(f"{'unexpected':<24}{sum(result['unexpected'].values()):>12}")
    return 1 if result["unexpected"] else 0


def main(argv: list[str] | None = None) -> int:
    return fuzz_cli(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
