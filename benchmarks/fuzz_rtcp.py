"""Fuzz the RTCP receive path with random and mutated datagrams; write counts and throughput.

    python -m benchmarks.fuzz_rtcp --inputs 1000000 --json benchmarks/results/fuzz_rtcp.json

The companion of benchmarks/fuzz_rtp.py. Every input goes through ``parse_compound`` (only
MalformedRtcp may escape), through ``RtcpState.update`` (the same, and its CNAME table must
stay bounded), and then into an ``RtpSource`` twice, as a live datagram would arrive: on the
RTCP port (``handle_rtcp``) and multiplexed on the RTP port (``handle_datagram``, RFC 5761),
while a few RTP streams run on it whose SSRCs the RTCP names, so labels, BYEs and round
trips really reach streams. Neither call may raise or count an internal error. Inputs come
from a seeded RNG: a fifth pure random bytes, the rest valid compounds (SR, RR, SDES, BYE in
random combinations) with bytes overwritten, truncated, extended, or their lengths and
counts scrambled.
"""

from __future__ import annotations

import random
import struct
import sys
import time
from collections import Counter

from benchmarks.fuzz_rtp import CountingSink, fuzz_cli
from streamqa.rtp.packet import build
from streamqa.rtp.rtcp import (
    MalformedRtcp, ReportBlock, RtcpState, build_bye, build_rr, build_sdes, build_sr, parse_compound,
)
from streamqa.sources.rtp import RtpSource

_SSRCS = [0x1000, 0x1001, 0x1002, 0x1003]  # the RTP streams' SSRCs, so RTCP reaches them
_SOURCE_LIFETIME = 5000  # inputs handled by one RtpSource before it is replaced
_ADDRESS = ("198.51.100.7", 5005)


def _compound(rng: random.Random) -> bytes:
    """A valid compound packet about the streams' SSRCs (or random ones)."""
    ssrc = lambda: rng.choice(_SSRCS) if rng.random() < 0.8 else rng.getrandbits(32)  # noqa: E731
    blocks = tuple(ReportBlock(ssrc(), rng.getrandbits(8), rng.randrange(-2**23, 2**23), rng.getrandbits(32),
                               rng.getrandbits(32), rng.getrandbits(32) if rng.random() < 0.3 else 0,
                               rng.getrandbits(32)) for _ in range(rng.choice([0, 0, 1, 2, 31])))
    first = (build_sr(ssrc(), rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32), blocks)
             if rng.random() < 0.5 else build_rr(ssrc(), blocks))
    parts = [first]
    if rng.random() < 0.8:
        parts.append(build_sdes(ssrc(), rng.randbytes(rng.choice([0, 1, 12, 255])).decode("latin-1")))
    if rng.random() < 0.02:  # rarer than reports, as in real calls (each ends a stream)
        parts.append(build_bye(*(ssrc() for _ in range(rng.choice([0, 1, 3]))), reason=rng.choice(["", "bye"])))
    return b"".join(parts)


def inputs(n: int, seed: int):
    """Yield ``n`` datagrams: random bytes and mutated valid compounds."""
    rng = random.Random(seed)
    pool = [_compound(rng) for _ in range(4096)]
    noise = rng.randbytes(1 << 20)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.2:
            at = rng.getrandbits(19)
            yield noise[at:at + rng.choice([0, 1, 3, 4, 8, 28, 100, 600])]
            continue
        data = bytearray(pool[rng.getrandbits(12)])
        if roll < 0.5:
            for _ in range(1 + rng.getrandbits(2)):
                data[rng.getrandbits(16) % len(data)] = rng.getrandbits(8)
        elif roll < 0.6:
            del data[rng.getrandbits(16) % (len(data) + 1):]
        elif roll < 0.7:
            at = rng.getrandbits(19)
            data += noise[at:at + 1 + rng.getrandbits(6)]
        elif roll < 0.8:  # a length or count field scrambled (the parser's bounds checks)
            struct.pack_into("!H", data, 2, rng.getrandbits(16))
            data[0] = 0x80 | (data[0] & 0x20) | rng.getrandbits(5)
        yield bytes(data)


def run(n: int, seed: int) -> dict:
    parse_counts: Counter = Counter()
    unexpected: Counter = Counter()
    state = RtcpState(max_sources=256)
    sink = CountingSink()
    source = RtpSource(sink, idle_timeout=1e9)
    counters: Counter = Counter()
    seq = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, data in enumerate(inputs(n, seed)):
        now = i * 0.001
        try:
            packets = parse_compound(data)
        except MalformedRtcp as exc:
            parse_counts[exc.reason] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the fuzzer is to catch these
            unexpected[f"parse:{type(exc).__name__}"] += 1
        else:
            parse_counts["ok"] += 1
            parse_counts["packets"] += len(packets)
        try:
            state.update(data, now)
        except MalformedRtcp:
            pass
        except Exception as exc:  # noqa: BLE001
            unexpected[f"state:{type(exc).__name__}"] += 1
        if len(state.cnames) > state.max_sources:
            unexpected["state:unbounded"] += 1
        if i % 25 == 0:  # keep the streams alive (and reopen those a BYE ended)
            seq += 1
            for ssrc in _SSRCS:
                source.handle_datagram(build(0, seq, 160 * seq, ssrc, b"\xff" * 160), _ADDRESS, now)
        try:
            source.handle_rtcp(data, _ADDRESS, now)
            source.handle_datagram(data, _ADDRESS, now)
        except Exception as exc:  # noqa: BLE001
            unexpected[f"source:{type(exc).__name__}"] += 1
        if i % _SOURCE_LIFETIME == _SOURCE_LIFETIME - 1:
            source.stop()
            counters.update(source.counters)
            source = RtpSource(sink, idle_timeout=1e9)
    source.stop()
    counters.update(source.counters)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if counters.get("internal_error"):
        unexpected["source:internal_error"] += counters["internal_error"]
    return {
        "command": "python -m benchmarks.fuzz_rtcp " + " ".join(sys.argv[1:]),
        "inputs": n,
        "seed": seed,
        "seconds": round(seconds, 3),
        "inputs_per_s": round(n / seconds, 1),
        "cpu_seconds": round(cpu_seconds, 3),
        "inputs_per_cpu_s": round(n / cpu_seconds, 1),
        "parse": dict(sorted(parse_counts.items())),
        "source_counters": dict(sorted(counters.items())),
        "sink_calls": dict(sink.calls),
        "unexpected": dict(unexpected),
    }


def main(argv: list[str] | None = None) -> int:
    return fuzz_cli(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
